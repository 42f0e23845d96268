"""Issue 8, parser fuzzing: at least 100,000 mutated inputs per parser, and only the documented outcome.

Every parser that reads bytes from outside the process is fuzzed with the seeded mutation fuzzer of
``mutate.py``: the monitor line and frame parsers (serial port), the IntelliVue message decoder, the MQTT
command parser (``CommandGuard``, with and without a station key), the TOML config parser and the dataset's
CSV readers. "No crash" means: the parser returns its documented result or raises its documented error, and
never anything else -- not even its own catch-all (``parser_error`` / ``decoder_error`` rejections exist so a
bug cannot kill the reader thread, and here they count as crashes).

``NEOPAIN_FUZZ_INPUTS`` (default 100,000) sets the count per parser; the slow tests record count and rate per
parser (section ``fuzz``); the quick smoke runs 2,000 per parser in every test run.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from appliance.mqtt import messages
from appliance.config import Config, ConfigError, parse_config, render_toml
from appliance.sources.monitor import intellivue_protocol as proto
from appliance.sources.monitor import masimo
from appliance.sources.monitor.intellivue_framing import MAX_DATA, Deframer, encode_frame
from appliance.sources.monitor.types import PLAUSIBLE, Rejection, VitalSample
from models.configs import NIPS_ITEMS
from models.data import layout
from tests.appliance.sources.monitor.intellivue_messages import VALID_MESSAGES
from tests.reliability.mutate import FUZZER, Mutator


INPUTS = int(os.environ.get("NEOPAIN_FUZZ_INPUTS", "100000"))
SMOKE_INPUTS = 2000
SEED = 20260801

# The IntelliVue tests' valid messages (association, MDS create, polls, numeric and wave replies).
INTELLIVUE_MESSAGES: list[bytes] = [*VALID_MESSAGES, proto.encode_release_request(), proto.encode_release_response()]


@dataclass
class Target:
    """One parser under fuzz: its seeds, a dictionary, and ``check(data) -> outcome label`` which returns for a
    documented outcome, raises ``AssertionError`` for a documented type with wrong content, and lets anything
    undocumented escape (a crash)."""

    name: str
    documented: str
    seeds: Callable[[], list[bytes]]
    make_check: Callable[[Path], Callable[[bytes], str]]
    tokens: tuple[bytes, ...] = ()


# ------------------------------------------------------------------------------------------- masimo
def _masimo_seeds() -> list[bytes]:
    f = masimo.format_line
    return [f(97, 142, 1.2), f(None, None, None, exc=0x21), f(91, 180, 0.4, exc=0x4, alarm=0x2), f(100, 25, 20.0),
            b"02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- "
            b"PIDELTA=+-- ALARM=0000 EXC=000800\r\n"]


def _masimo_check(_: Path) -> Callable[[bytes], str]:
    def check(data: bytes) -> str:
        r = masimo.parse_line(data.decode("latin-1") if data[:1] == b"0" else data, t_mono_ns=1)
        if isinstance(r, Rejection):
            assert r.reason and r.reason != "parser_error", r
            return "rejected:" + r.reason.split(":")[0]
        assert isinstance(r, VitalSample), type(r)
        for value, key in ((r.spo2, "spo2"), (r.pulse_rate, "pulse_rate"), (r.perfusion_index, "perfusion_index")):
            lo, hi = PLAUSIBLE.get(key, (float("-inf"), float("inf")))
            assert value is None or lo <= value <= hi, (key, value)
        return "accepted"

    return check


# ------------------------------------------------------------------------------------------ framing
def _framing_seeds() -> list[bytes]:
    frames = [encode_frame(m) for m in INTELLIVUE_MESSAGES]
    return frames + [frames[0] + frames[-1], b"noise" + frames[2] + b"\x7d" + frames[3], frames[4] * 3]


def _framing_check(_: Path) -> Callable[[bytes], str]:
    deframer = Deframer()  # one stream across all inputs: state carried over is part of what is fuzzed

    def check(data: bytes) -> str:
        cut = len(data) // 3
        out = deframer.feed(data[:cut]) + deframer.feed(data[cut:])
        frames = 0
        for item in out:
            if isinstance(item, Rejection):
                assert item.reason, item
            else:
                assert isinstance(item, bytes) and len(item) <= MAX_DATA, type(item)
                frames += 1
        return f"frames:{min(frames, 3)}" if frames else ("rejected" if out else "buffered")

    return check


# ----------------------------------------------------------------------------------------- protocol
def _protocol_check(_: Path) -> Callable[[bytes], str]:
    waves = proto.WaveCache()

    def check(data: bytes) -> str:
        msg = proto.decode_message(data)
        if isinstance(msg, Rejection):
            assert msg.reason and msg.reason != "decoder_error", msg
            return "rejected:" + msg.reason
        if isinstance(msg, proto.PollReply):
            for result in (proto.numerics(msg), waves.waves(msg)):
                assert isinstance(result, (list, Rejection)), type(result)
        return type(msg).__name__

    return check


# ----------------------------------------------------------------------------------------- commands
STATION_KEY = bytes(range(16, 48))
CMD_PREFIX = "neopain/fuzz/bed-12/cmd/"


def _command_seeds() -> list[bytes]:
    t = CMD_PREFIX
    return [
        b"", b"{}", b'{"infant": "I07"}', b'{"infant": "I07", "by": "RN3", "at": "2024-05-01T10:00:00Z"}',
        b'{"nips": 3, "rater": "RN12", "at": "2024-05-01T10:00:00Z"}',
        b'{"command_id": "c-1", "sent_utc": "2024-05-01T10:00:00Z", "bed": "bed-12"}',
        messages.sign_command(t + "calibration/rate", {"nips": 3, "rater": "RN12"}, STATION_KEY, bed="bed-12"),
        messages.sign_command(t + "calibration/start", {"infant": "I07"}, STATION_KEY),
        messages.sign_command(t + "health/request", {}, STATION_KEY),
    ]


def _command_check(_: Path) -> Callable[[bytes], str]:
    guards = (messages.CommandGuard(bed="bed-12"), messages.CommandGuard(bed="bed-12", key=STATION_KEY))
    names = sorted(messages.KNOWN_COMMANDS)
    kinds = {"malformed", "unknown", "unauthenticated", "stale", "replayed"}
    state = {"i": 0}

    def check(data: bytes) -> str:
        state["i"] += 1
        i = state["i"]
        name = names[i % len(names)] if i % 10 else data[:12].decode("utf-8", "replace")  # 10 %: a hostile name
        guard = guards[i % 2]
        try:
            command = guard.check(name, data, topic=CMD_PREFIX + name)
        except messages.CommandError as exc:
            assert exc.kind in kinds and str(exc), exc
            return f"refused:{exc.kind}"
        assert isinstance(command, messages.Command) and isinstance(command.args, dict)
        assert not set(command.args) & set(messages.ENVELOPE_KEYS)
        return "accepted" + (":signed" if guard.requires_signature else "")

    return check


# ------------------------------------------------------------------------------------------- config
def _config_seeds() -> list[bytes]:
    small = ('[device]\nid = "dev-7"\nsite = "nicu-a"\nbed = "b3"\n[camera]\nsource = 0\nfps = 25\n'
             '[scoring]\ncadence_s = 2\nbackends = ["onnxruntime", "torch"]\nmodel_dir = "models"\n'
             '[mqtt]\nhost = "broker.local"\nport = 8883\nmessage_expiry_s = 20\n'
             'tls_ca_file = """ca.pem"""\nusername = \'bed\'\n[camera.x]\n')
    return [render_toml(docs=False).encode(), small.encode(), b'[device]\nid = "a"\n', b"a.b.c = [[1, 2], {x = 1}]\n"]


def _config_check(_: Path) -> Callable[[bytes], str]:
    def check(data: bytes) -> str:
        try:
            config = parse_config(data.decode("utf-8", "replace"), file="fuzz.toml")
        except ConfigError as exc:
            assert exc.one_line().startswith("fuzz.toml") and "\n" not in exc.one_line(), exc
            return "refused:" + (exc.key or "syntax").split(".")[0]
        assert isinstance(config, Config)
        return "accepted"

    return check


# ------------------------------------------------------------------------------------------- layout
def _layout_seeds() -> list[bytes]:
    vitals = "t_s,hr_bpm,spo2_pct,rr_ms\n0.0,142,97,423\n0.25,141.5,,425\n0.5,,96,\n1.0,150,98,400\n"
    items = [n for n, _ in NIPS_ITEMS]
    header = ",".join(layout.RATING_COLUMNS)
    rows = [f"0,10,R1,{','.join(['1'] * len(items))},{len(items)}", f"10,20,R2,{','.join(['0'] * len(items))},0"]
    ratings = header + "\n" + "\n".join(rows) + "\n"
    return [b"V" + vitals.encode(), b"R" + ratings.encode()]


def _layout_check(workdir: Path) -> Callable[[bytes], str]:
    """The first byte picks the reader (V: vitals.csv, R: ratings.csv); the rest is the file."""
    path = workdir / "fuzz.csv"

    def check(data: bytes) -> str:
        reader = layout.read_ratings if data[:1] == b"R" else layout.read_vitals
        path.write_bytes(data[1:])
        try:
            result = reader(path)
        except layout.DatasetError as exc:
            assert str(exc).startswith(str(path)), exc
            return "refused:" + (exc.field or "file")
        assert result is not None
        return f"accepted:{reader.__name__}"

    return check


TARGETS = [
    Target("Masimo ASCII 1 line (masimo.parse_line)", "VitalSample or Rejection (never parser_error)",
           _masimo_seeds, _masimo_check, (b"SPO2=", b"BPM=", b"PI=", b"EXC=", b"ALARM=", b"---", b"%", b"=", b"--.-")),
    Target("IntelliVue frames (Deframer.feed, one stream)", "user data or Rejection per frame",
           _framing_seeds, _framing_check, (b"\xc0", b"\xc1", b"\x7d", b"\x7d\x5d", b"\x7d\xe0", b"\xc0\x11\x01")),
    Target("IntelliVue messages (decode_message, numerics, waves)", "Message or Rejection (never decoder_error)",
           lambda: INTELLIVUE_MESSAGES, _protocol_check,
           (b"\xe1\x00", b"\x00\x02", b"\xff\xff", b"\x00\x00\x00\x00", b"\x0d", b"\xff")),
    Target("MQTT commands (CommandGuard.check, with/without station key)", "Command or CommandError",
           _command_seeds, _command_check,
           (b'"command_id":', b'"sent_utc":', b'"hmac":', b'"bed":', b"[", b"{", b"}", b"NaN", b"Infinity",
            b'"\\ud800"', b'"', b"\\", b"null", b"true", b"1e999", b'"2024-13-45T99:99:99Z"',
            b"[" * 1500, b'{"a":' * 700)),  # nesting past the JSON parser's recursion limit
    Target("TOML config (config.parse_config)", "Config or ConfigError (one line)", _config_seeds, _config_check,
           (b"[", b"]", b"[[", b"=", b'"', b"'''", b'"""', b"\\u0000", b"[mqtt]", b"[scoring]", b"port = ",
            b"1979-05-27T07:32:00Z", b"{", b"}", b",", b".", b"#")),
    Target("dataset CSV (layout.read_vitals / read_ratings)", "tables or DatasetError", _layout_seeds, _layout_check,
           (b",", b'"', b'""', b"\n", b"\r\n", b"\x00", b"1e308", b"NaN", b"-inf", b",,,,", b"t_s")),
]


def fuzz(target: Target, count: int, workdir: Path, seed: int = SEED) -> tuple[Counter, float, float]:
    """Run ``count`` inputs; returns outcome counts, wall and CPU seconds (the CPU figure is the fair rate on
    a shared machine). A crash fails with the input that reproduces it."""
    mutator = Mutator(target.seeds(), seed=seed, tokens=target.tokens)
    check = target.make_check(workdir)
    outcomes: Counter = Counter()
    started, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        data = mutator.next()
        try:
            outcomes[check(data)] += 1
        except Exception as exc:
            raise AssertionError(f"{target.name}: input {index} (seed {seed}) gave {type(exc).__name__}: {exc!s:.300}"
                                 f"\ninput: {data[:400]!r}") from exc
    return outcomes, time.perf_counter() - started, time.process_time() - cpu


@pytest.fixture
def workdir(tmp_path: Path):
    """Where the CSV target writes its file: /dev/shm when there is one (a disk write per input triples the
    cost), else ``tmp_path``."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="neopain-fuzz-") as d:
            yield Path(d)
    else:
        yield tmp_path


def _summary(outcomes: Counter) -> str:
    accepted = sum(n for k, n in outcomes.items() if k.startswith(("accepted", "frames")) or k[:1].isupper())
    refused = sum(outcomes.values()) - accepted
    return f"{accepted:,} accepted/decoded, {refused:,} refused ({len(outcomes)} distinct outcomes)"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name.split(" (")[0])
def test_fuzz_smoke(target: Target, workdir: Path) -> None:
    """A quick pass in every run, on a different seed than the long one."""
    outcomes, _, _ = fuzz(target, SMOKE_INPUTS, workdir, seed=SEED + 1)
    assert sum(outcomes.values()) == SMOKE_INPUTS
    assert len(outcomes) >= 2, outcomes  # the mutations reach both the accepting and the refusing paths


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name.split(" (")[0])
def test_fuzz_100k(target: Target, workdir: Path, record_result) -> None:
    assert INPUTS >= 1
    outcomes, seconds, cpu = fuzz(target, INPUTS, workdir)
    assert sum(outcomes.values()) == INPUTS
    record_result("fuzz", target.name, f"only {target.documented}; never another exception",
                  f"{INPUTS:,} inputs in {seconds:.1f} s wall, {cpu:.1f} s CPU ({INPUTS / max(cpu, 1e-9):,.0f}/CPU-s); "
                  f"{_summary(outcomes)}; 0 crashes; "
                  f"seed {SEED}; {FUZZER.split(' (')[0]}", True,
                  extra={"inputs": INPUTS, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                         "outcomes": dict(outcomes.most_common(12))})
