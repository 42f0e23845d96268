"""`neopain watch` and `neopain bridge` against a real mosquitto, real device publishers, a local MLLP receiver
and a local FHIR server (all 127.0.0.1)."""
from __future__ import annotations

import argparse
import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable


from appliance.mqtt import messages
from appliance.station import fhir, hl7
from appliance.station.bridge import Bridge, BridgeService, add_bridge_arguments, run_bridge
from appliance.station.connection import BrokerOptions
from appliance.station.watch import add_watch_arguments, run_watch

def parse(add: Callable[[argparse.ArgumentParser], None], argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- watch
def test_watch_once_shows_every_bed(broker: Any, device: Any, send_score: Any, wait: Any) -> None:
    bed1, bed2, bed3 = device(broker.port, "1"), device(broker.port, "2"), device(broker.port, "3")
    out = io.StringIO()
    args = parse(add_watch_arguments, ["--port", str(broker.port), "--once", "2.5", "--stale-after", "30", "--wide"])
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(run_watch(args, out=out)))
    t.start()
    # Scores are not retained: publish only once the watcher's subscription reached the broker.
    assert wait(lambda: "neopain/+/+/score" in broker.log_text()), broker.log_text()[-2000:]
    time.sleep(0.1)  # SUBACK on its way back
    for n in (1.0, 2.0, 3.0):
        send_score(bed1, n)
    send_score(bed2, 6.0, ended_ago_s=120)  # an old window replayed late: must read stale
    bed3.stop()  # clean shutdown publishes the retained offline status
    t.join(10)
    assert rc == [0]
    rows = {ln.split()[0]: ln.split() for ln in out.getvalue().splitlines()[2:]}
    assert set(rows) == {"nicu/1", "nicu/2", "nicu/3"}
    assert rows["nicu/1"][1:3] == ["3.0", "4.3"] and "online" in rows["nicu/1"] and "V.H" in rows["nicu/1"]
    assert rows["nicu/2"][1] == "stale" and "6.0" not in rows["nicu/2"]
    assert rows["nicu/3"][1] == "-" and "offline" in rows["nicu/3"]
    assert "ok" in rows["nicu/1"]  # health state from the retained health message


def test_watch_site_filter(broker: Any, device: Any) -> None:
    device(broker.port, "1", site="nicu")
    device(broker.port, "1", site="other")
    out = io.StringIO()
    args = parse(add_watch_arguments, ["--port", str(broker.port), "--once", "0.5", "--site", "nicu"])
    assert run_watch(args, out=out) == 0
    assert "nicu/1" in out.getvalue() and "other/1" not in out.getvalue()


def test_watch_unreachable_broker_is_one_error_line(unused_port: int, capsys: Any) -> None:
    args = parse(add_watch_arguments, ["--port", str(unused_port), "--once", "0", "--connect-timeout", "3"])
    assert run_watch(args, out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unused_port) in err[0]


def test_watch_refused_by_broker_is_an_error(broker_factory: Any, capsys: Any) -> None:
    b = broker_factory(["allow_anonymous false"])
    args = parse(add_watch_arguments, ["--port", str(b.port), "--once", "0", "--connect-timeout", "3"])
    assert run_watch(args, out=io.StringIO()) == 2
    assert "refused" in capsys.readouterr().err


def test_watch_bad_options(tmp_path: Path, capsys: Any) -> None:
    for argv, word in ([["--password-file", "x"], "--password-file"], [["--tls-ca", str(tmp_path / "no.pem")], "--tls-ca"],
                       [["--stale-after", "0"], "--stale-after"]):
        assert run_watch(parse(add_watch_arguments, argv), out=io.StringIO()) == 2
        assert word in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bridge
def test_bridge_delivers_each_score_once_to_fhir_and_mllp(broker: Any, device: Any, mllp_server: Any,
                                                          fhir_server: Any, raw_publish: Any, send_score: Any,
                                                          wait: Any) -> None:
    mllp_server.drop_first = 1  # the hospital side drops the first connection: the bridge must retry
    bridge = Bridge(fhir_sink=fhir.FhirHttpSink(fhir_server.url, timeout_s=3),
                            mllp=hl7.MllpClient("127.0.0.1", mllp_server.port, timeout_s=3), retry_min_s=0.05)
    service = BridgeService(bridge, BrokerOptions(port=broker.port))
    service.start(5)
    try:
        pub = device(broker.port, "4")
        sent = [send_score(pub, n) for n in (0.0, 1.5, 3.0, 4.5, 7.0)]
        assert wait(lambda: bridge.stats.delivered == 5), bridge.stats
        # A re-delivered copy (same message id) is recognised and not sent again.
        raw_publish(broker.port, "neopain/nicu/4/score", messages.encode(sent[2]))
        raw_publish(broker.port, "neopain/nicu/4/score", b"{broken")
        assert wait(lambda: bridge.stats.duplicates == 1 and bridge.stats.invalid == 1), bridge.stats
    finally:
        service.stop()
    ids = [s["message_id"] for s in sent]
    assert [o["id"] for o in fhir_server.posts] == ids
    assert all(fhir.validate_observation(o) == [] for o in fhir_server.posts)
    assert [o["valueQuantity"]["value"] for o in fhir_server.posts] == [s["nips"] for s in sent]
    got = mllp_server.messages()
    assert [hl7.parse_segments(m)[0][9] for m in got] == ids
    assert [float(hl7.parse_segments(m)[4][5]) for m in got] == [s["nips"] for s in sent]
    assert bridge.stats.retries >= 1 and bridge.stats.mllp_sent == 5 and bridge.stats.fhir_sent == 5


def test_bridge_persistent_session_gets_scores_published_while_it_was_down(
        broker: Any, device: Any, tmp_path: Path, send_score: Any, wait: Any) -> None:
    """With --client-id the broker queues scores for the bridge; the FHIR files appear after it returns."""
    out = tmp_path / "fhir"
    argv = ["--port", str(broker.port), "--client-id", "bridge-test", "--fhir-out", str(out)]

    def run_for(seconds: float) -> int:
        return run_bridge(parse(add_bridge_arguments, argv + ["--duration", str(seconds)]))

    assert run_for(0.3) == 0  # creates the session and its subscription
    pub = device(broker.port, "5")
    sent = [send_score(pub, n) for n in (1.0, 2.0, 3.0)]
    assert pub.wait_for(lambda p: p.stats().scores_acked == 3, 5)
    assert not out.exists() or not list(out.iterdir())
    t = threading.Thread(target=run_for, args=(2.0,))
    t.start()
    assert wait(lambda: out.exists() and len(list(out.glob("Observation-*.json"))) == 3)
    t.join(10)
    stored = {json.loads(p.read_text())["id"] for p in out.glob("Observation-*.json")}
    assert stored == {s["message_id"] for s in sent}


def test_bridge_holds_a_score_until_the_hospital_side_takes_it(broker: Any, device: Any, mllp_server: Any,
                                                                unused_port: int, send_score: Any, wait: Any) -> None:
    """MLLP receiver down: the score is retried, not dropped, and delivered once the receiver is back."""
    client = hl7.MllpClient("127.0.0.1", unused_port, timeout_s=1)
    bridge = Bridge(mllp=client, retry_min_s=0.05, retry_max_s=0.2)
    service = BridgeService(bridge, BrokerOptions(port=broker.port))
    service.start(5)
    try:
        pub = device(broker.port, "6")
        sent = send_score(pub, 2.0)
        assert wait(lambda: bridge.stats.retries >= 3)
        assert bridge.stats.delivered == 0
        client.port = mllp_server.port  # the receiver comes back (at the address the bridge retries)
        assert wait(lambda: bridge.stats.delivered == 1), bridge.stats
    finally:
        service.stop()
    assert [hl7.parse_segments(m)[0][9] for m in mllp_server.messages()] == [sent["message_id"]]


def test_bridge_needs_an_output(capsys: Any) -> None:
    assert run_bridge(parse(add_bridge_arguments, [])) == 2
    assert "--fhir-out" in capsys.readouterr().err
    assert run_bridge(parse(add_bridge_arguments, ["--mllp", "nohost"])) == 2
    assert "--mllp" in capsys.readouterr().err


def test_unacknowledged_score_is_redelivered_to_a_restarted_bridge(broker: Any, device: Any, mllp_server: Any,
                                                                    unused_port: int, send_score: Any,
                                                                    wait: Any) -> None:
    """The bridge acks the broker only after delivery: stopped mid-retry, the next bridge gets the score."""
    options = BrokerOptions(port=broker.port, client_id="bridge-restart")
    first = Bridge(mllp=hl7.MllpClient("127.0.0.1", unused_port, timeout_s=1), retry_min_s=0.05)
    service = BridgeService(first, options)
    service.start(5)
    pub = device(broker.port, "7")
    sent = send_score(pub, 5.0)
    assert wait(lambda: first.stats.retries >= 2)
    service.stop()  # like a crash from the broker's point of view: no PUBACK was sent
    assert first.stats.delivered == 0
    second = Bridge(mllp=hl7.MllpClient("127.0.0.1", mllp_server.port, timeout_s=2))
    service = BridgeService(second, options)
    service.start(5)
    try:
        assert wait(lambda: second.stats.delivered == 1), second.stats
    finally:
        service.stop()
    assert [hl7.parse_segments(m)[0][9] for m in mllp_server.messages()] == [sent["message_id"]]


def test_watch_live_mode_redraws_until_interrupted(broker: Any, device: Any, send_score: Any) -> None:
    import signal
    import subprocess
    import sys

    pub = device(broker.port, "8")
    code = ("import sys, argparse; from appliance.station import watch; p = argparse.ArgumentParser(); "
            "watch.add_watch_arguments(p); sys.exit(watch.run_watch(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(broker.port), "--refresh", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[3])
    try:
        for _ in range(12):  # keep scoring while the watcher starts (scores are not retained)
            send_score(pub, 2.0)
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    text = out.decode()
    frames = text.split("\x1b[H\x1b[2J")
    assert len(frames) >= 4  # redrawn in place, several times
    assert "nicu/8" in frames[-1] and "2.0" in frames[-1]


def test_watch_with_password(broker_factory: Any, tmp_path: Path, capsys: Any) -> None:
    import subprocess

    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "station", "s3cret"], check=True)
    b = broker_factory([f"password_file {pwfile}", "allow_anonymous false"])
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    base = ["--port", str(b.port), "--once", "0", "--connect-timeout", "3", "--username", "station"]
    assert run_watch(parse(add_watch_arguments, base + ["--password-file", str(good)]),
                             out=io.StringIO()) == 0
    assert run_watch(parse(add_watch_arguments, base + ["--password-file", str(bad)]),
                             out=io.StringIO()) == 2
    assert "refused" in capsys.readouterr().err


def _pki(d: Path, name: str) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (same recipe as the MQTT tests)."""
    import subprocess

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", "-days", "2", "-subj", "/CN=ca")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{who}.ext").write_text(ext + "\n")
        ssl("req", *ec, "-keyout", f"{name}-{who}.key", "-out", f"{name}-{who}.csr", "-subj", f"/CN={who}")
        ssl("x509", "-req", "-in", f"{name}-{who}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
            "-CAcreateserial", "-out", f"{name}-{who}.crt", "-days", "2", "-extfile", f"{who}.ext")


def test_watch_over_tls_with_client_certificate(broker_factory: Any, tmp_path: Path, capsys: Any) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _pki(pki, "good")
    _pki(pki, "other")
    tls_port = station_free_port()
    broker_factory([f"listener {tls_port} 127.0.0.1", f"cafile {pki}/good-ca.crt", f"certfile {pki}/good-server.crt",
                    f"keyfile {pki}/good-server.key", "require_certificate true"])
    certs = ["--tls-cert", str(pki / "good-client.crt"), "--tls-key", str(pki / "good-client.key")]
    base = ["--port", str(tls_port), "--once", "0", "--connect-timeout", "3"]
    out = io.StringIO()
    assert run_watch(parse(add_watch_arguments,
                                   base + ["--tls-ca", str(pki / "good-ca.crt")] + certs), out=out) == 0
    assert "beds:" in out.getvalue()
    assert run_watch(parse(add_watch_arguments,
                                   base + ["--tls-ca", str(pki / "other-ca.crt")] + certs), out=io.StringIO()) == 2
    assert "certificate verify failed" in capsys.readouterr().err


def station_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_watch_fits_an_80_column_terminal_and_shows_full_health(broker: Any, device: Any,
                                                                send_score: Any) -> None:
    """`neopain watch` in a real pseudo-terminal of 80 columns (its size is all it is told): the narrow table,
    every line at most 80 characters, and with --health full each bed's whole health text below it."""
    import fcntl
    import os
    import pty
    import re
    import select
    import signal
    import struct
    import subprocess
    import sys
    import termios

    detail = ("calibration site-2026-11 active; scoring without audio (audio: underfilled: captured samples fill "
              "70% of the window (need 80%)); 2 engine failures")
    pubs = [device(broker.port, "isolette-west-12-long-name", health={"state": "degraded", "detail": detail}),
            device(broker.port, "2", health={"state": "ok"})]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "watch", "--port", str(broker.port),
                             "--refresh", "0.2", "--health", "full"], stdout=slave, stderr=subprocess.PIPE,
                            env=env, cwd=Path(__file__).resolve().parents[3])
    os.close(slave)
    screen, frames = b"", []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for pub in pubs:  # scores are not retained: keep scoring until the watcher shows them
                send_score(pub, 5.0)
            if select.select([master], [], [], 0.3)[0]:
                screen += os.read(master, 65536)
            frames = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", f).replace("\r", "")
                      for f in screen.decode("utf-8", "replace").split("\x1b[H\x1b[2J")[1:-1]]
            if frames and "5.0" in frames[-1] and "nicu/2" in frames[-1] and "health:" in frames[-1]:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        os.close(master)
    assert proc.returncode == 0, err
    assert frames and "5.0" in frames[-1], screen[-3000:]
    lines = frames[-1].rstrip("\n").split("\n")
    assert max(len(line) for line in lines) <= 80, "\n".join(x for x in lines if len(x) > 80)
    assert lines[2].split() == ["BED", "NIPS", "T", "AGE", "IN", "HEALTH"]  # the narrow layout
    row = next(i for i, line in enumerate(lines) if line.startswith("nicu/isolette"))
    assert "…" in lines[row].split()[0] and lines[row].split()[1] == "5.0"
    full = " ".join(x.strip() for x in lines[row + 1:] if not x.startswith("nicu/"))
    assert f"health: degraded ({detail})" in full  # the whole text, wrapped, nothing cut
