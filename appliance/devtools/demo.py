"""``neopain demo``: the whole appliance on one laptop -- broker, simulated bed, daemon, and live scores.

Why this shape: the README's first command must show the real thing, not a mock-up: a mosquitto broker on
127.0.0.1 (free port, temporary config), a :class:`appliance.devtools.simulate.SimulatedBed` playing a synthetic
infant through the real camera/ALSA/serial paths, the daemon started exactly as systemd would start it
(a subprocess ``python -m appliance.daemon --config ...``, CPU backends), and a subscriber printing every
score as it arrives.

The model: a tiny fusion model trained on a 30-infant synthetic cohort for 12 epochs (the learning curve's recipe,
``DEMO_INFANTS``; as ``neopain train --final``: with a model card, which health then names) and exported to a model
directory, cached under ``~/.cache/neopain/demo/model-<RECIPE>`` (or ``<workdir>/model-<RECIPE>`` when the home
cache is not writable) so only the first run pays for it (about a minute on 2 CPU cores; progress is shown). Its scores
are demonstrations of the pipeline, not clinical estimates.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.mqtt import topics
from models.recipe import DEFAULT_CONFIG, DEFAULT_EPOCHS

ROOT = Path(__file__).resolve().parents[2]
DEMO_CACHE = Path("~/.cache/neopain/demo").expanduser()
#: The synthetic faces' rendering, in the names of everything made from them: a model trained on (or a bed
#: playing) the earlier drawn ovals, which no real face detector finds, is not reused.
FACES = "faces2"
#: The demo model's recipe, from the learning curve (docs/benchmarks/learning_curve.md): data is what limits the
#: tiny fusion model (ICC(A,1) on unseen infants 0.67 / 0.81 / 0.86 at 15 / 30 / 60 training infants), and its
#: validation MAE is flat by the studies' 12 epochs. 30 infants keep the demo's first run to a few CPU minutes.
DEMO_INFANTS = 30
DEMO_EPOCHS = DEFAULT_EPOCHS
#: In the names of the cached cohort and model: a model trained by another recipe is not reused.
RECIPE = f"{FACES}-n{DEMO_INFANTS}-e{DEMO_EPOCHS}"
MODEL_DIR = f"model-{RECIPE}"
MANIFEST = "manifest.json"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


# ------------------------------------------------------------------------------------------------- model
def find_model(workdir: Path) -> Path | None:
    """An exported demo model already cached (home cache first, then the workdir)."""
    from models.manifest import check_preprocessing, read_manifest

    for candidate in (DEMO_CACHE / MODEL_DIR, workdir / MODEL_DIR):
        if (candidate / MANIFEST).is_file():
            try:
                check_preprocessing(read_manifest(candidate))
            except Exception as exc:  # exported by an older version of the code: train again
                _say(f"ignoring cached model {candidate}: {exc}")
                continue
            return candidate
    return None


def _model_target(workdir: Path) -> Path:
    try:
        DEMO_CACHE.mkdir(parents=True, exist_ok=True)
        probe = DEMO_CACHE / ".write-test"
        probe.write_text("")
        probe.unlink()
        return DEMO_CACHE / MODEL_DIR
    except OSError:
        return workdir / MODEL_DIR


def build_demo_model(workdir: Path, *, infants: int = DEMO_INFANTS, minutes: float = 1.0, epochs: int = DEMO_EPOCHS,
                     seed: int = 0) -> Path:
    """Synthesise a small cohort, train the tiny fusion model as ``neopain train --final`` does (all infants, a
    model card beside it), export it with its card; returns the model dir."""
    import torch

    from models.card import card_beside
    from models.configs import get_config
    from models.data.synth import SynthOptions, synth_cohort
    from models.export import export_model_dir, load_estimator_checkpoint
    from models.training import TrainConfig
    from models.training.command import run_training

    work = workdir / f"training-{RECIPE}"
    cohort = work / "cohort"
    if not (cohort / "subjects.csv").is_file():
        _say(f"1/3 synthesising a {infants}-infant cohort ({minutes:g} min each) in {cohort}")
        options = SynthOptions(minutes=minutes)
        options = dataclasses.replace(options, video=dataclasses.replace(options.video, size=64, fps=8.0))
        synth_cohort(cohort, infants, seed, options, progress=True, overwrite=True)
    _say("2/3 pre-processing windows and training the tiny fusion model on every infant "
         f"({epochs} epochs on the CPU, like `neopain train --final`)")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    run_training(cohort, work, get_config(DEFAULT_CONFIG), TrainConfig(epochs=epochs, folds=0, seed=seed, device="cpu"),
                 ["fusion"], final=True)
    checkpoint = work / "final" / "fusion.pt"
    model, cfg = load_estimator_checkpoint(checkpoint)
    target = _model_target(workdir)
    _say(f"3/3 exporting to {target} (four ONNX parts, parity-checked, with the model card)")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    export_model_dir(model, cfg, tmp, progress=True, card_path=card_beside(checkpoint), checkpoint_path=checkpoint)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# ------------------------------------------------------------------------------------------------- broker
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto on 127.0.0.1 (only) on a free port, anonymous, no persistence; returns (process, port)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    log = open(workdir / "mosquitto.log", "wb")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(workdir / 'mosquitto.log').read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not listen on port {port}")


# ------------------------------------------------------------------------------------------------- printing
def format_score(msg: dict[str, Any]) -> str:
    """One line per score: time, NIPS, intensity, modalities with weights, latency."""
    mods = " ".join(f"{m}={v['weight']:.2f}" if v["used"] else f"{m}=-" for m, v in sorted(msg["modalities"].items()))
    lat = msg.get("latency_ms", {})
    flags = ",".join(f for f in msg.get("quality_flags", []) if f != "uncalibrated")
    return (f"{msg['window']['end_utc'][11:23]}  #{msg['sequence']:<4d} NIPS {msg['nips']:4.2f}/7  "
            f"intensity {msg['intensity']:4.1f}/10  conf {msg['confidence']:.2f}  [{mods}]  "
            f"pre {lat.get('preprocess', 0):5.1f} ms  infer {lat.get('infer', 0):6.1f} ms  "
            f"end-to-publish {lat.get('window_to_publish', 0):6.1f} ms" + (f"  ({flags})" if flags else ""))


def subscribe(port: int, prefix: str, out: Any = sys.stdout, on_score: Any = None) -> Any:
    """A paho subscriber printing scores and health state changes of one bed as they arrive.

    ``prefix`` is the bed's topic prefix (``topics.bed_prefix``). ``on_score(message, received_mono_ns)``,
    when given, also receives every score (for measurements).
    """
    from appliance.mqtt.client import make_client

    state: dict[str, Any] = {"health": None, "scores": 0}
    client = make_client(client_id="", logger_name=__name__ + ".paho")

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        c.subscribe([(topics.topic(prefix, leaf), 1) for leaf in (topics.SCORE, topics.HEALTH, topics.STATUS)])

    def on_message(c: Any, u: Any, msg: Any) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        try:
            if leaf == topics.SCORE:
                received = time.monotonic_ns()
                state["scores"] += 1
                score = json.loads(msg.payload)
                if on_score is not None:
                    on_score(score, received)
                print(format_score(score), file=out, flush=True)
            elif leaf == topics.HEALTH:
                h = json.loads(msg.payload)
                key = (h["state"], h.get("detail"))
                if key != state["health"]:
                    state["health"] = key
                    print(f"[health] {h['state']}" + (f": {h['detail']}" if h.get("detail") else "")
                          + f"  sources {h['sources']}  backend {h['engine_backend']}", file=out, flush=True)
                model = h.get("model")
                if model and model != state.get("model"):
                    state["model"] = model
                    card = model["card"]
                    print(f"[health] model {model['version']} ({model['config']}); "
                          + (f"card {card['path']}: {card['summary']}" if card else "no model card"), file=out, flush=True)
            else:
                print(f"[status] {msg.payload.decode(errors='replace')}", file=out, flush=True)
        except (ValueError, KeyError) as exc:
            print(f"[demo] unreadable message on {msg.topic}: {exc}", file=out, flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.demo_state = state  # type: ignore[attr-defined]
    return client


# ------------------------------------------------------------------------------------------------- the demo
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain demo``."""
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds of scoring (default: until Ctrl-C)")
    parser.add_argument("--workdir", type=Path, default=Path("out/demo"),
                        help="where the bed, broker, daemon config and logs go (default: ./out/demo)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="any exported model directory (`neopain export`; tiny or full: the daemon takes the "
                        "network size from its manifest) to use instead of the cached demo model")
    parser.add_argument("--retrain", action="store_true", help="train and export the demo model again")
    parser.add_argument("--cadence", type=float, default=2.0, help="seconds between scores (default: 2)")
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="engine backends in order (default: onnxruntime,torch: the CPU)")
    parser.add_argument("--protocol", choices=("masimo", "intellivue"), default="intellivue",
                        help="monitor protocol the simulated bed speaks (intellivue also sends ECG for HRV)")
    parser.add_argument("--measure", type=Path, default=None, metavar="DIR",
                        help="also measure end-to-end latency at the subscriber and the daemon's CPU %%, RSS, fds"
                             " and threads; writes DIR/daemon_measure.json and .png, raw DIR/daemon_samples.json")


def run_demo(args: argparse.Namespace) -> int:
    """``neopain demo``: returns 0 after a clean stop, 1 when something could not start."""
    from appliance.devtools.simulate import SimulatedBed, synth_bed_cohort

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or (None if args.retrain else find_model(workdir))
    if model_dir is None:
        _say("no demo model cached: training one (first run only, a few minutes)")
        model_dir = build_demo_model(workdir)
    _say(f"model: {model_dir}")

    bed_cohort = workdir / f"bed-cohort-{FACES}"
    if not (bed_cohort / "subjects.csv").is_file():
        _say("synthesising the simulated bed's infant")
        shutil.rmtree(bed_cohort, ignore_errors=True)
        synth_bed_cohort(bed_cohort, minutes=1.0, seed=7)  # at the bed camera's resolution: the detector runs
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    broker, port = start_broker(run_dir)
    _say(f"mosquitto on 127.0.0.1:{port}")
    bed = SimulatedBed(bed_cohort, protocol=args.protocol, workdir=run_dir / "bed").start()
    daemon: subprocess.Popen[bytes] | None = None
    client = None
    site, bed_name = "demo", "bed-01"
    try:
        config = bed.write_appliance_config(
            run_dir / "appliance.toml",
            device={"id": "demo-0001", "site": site, "bed": bed_name},
            mqtt={"host": "127.0.0.1", "port": port, "health_interval_s": 10.0},
            scoring={"model_dir": str(model_dir), "cadence_s": float(args.cadence),  # size: the model's manifest
                     "backends": [b.strip() for b in args.backends.split(",") if b.strip()]},
            calibration={"bundle": ""},
        )
        latency = sampler = None
        if args.measure:
            from appliance.devtools.measure import LatencyRecorder

            latency = LatencyRecorder()
        client = subscribe(port, topics.bed_prefix(site, bed_name), on_score=latency.on_score if latency else None)
        env = dict(os.environ, **bed.environment())
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        log_path = run_dir / "daemon.log"
        _say(f"starting the daemon: neopain run --config {config}  (log: {log_path})")
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "appliance.daemon", "--config", str(config)],
                                      env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # Ctrl-C reaches the demo, which stops it
        if latency is not None:
            from appliance.devtools.measure import ProcessSampler

            sampler = ProcessSampler(daemon.pid).start()
        _say("scores appear below as the subscriber receives them" +
             (f" for {args.duration:g} s" if args.duration else "; Ctrl-C stops"))
        started = time.monotonic()
        first_score: float | None = None
        while daemon.poll() is None:
            now = time.monotonic()
            if first_score is None and client.demo_state["scores"]:
                first_score = now
            if args.duration and first_score is not None and now - first_score >= args.duration:
                break
            if first_score is None and now - started > 180:
                _say(f"no score arrived within 180 s; see {log_path}")
                return 1
            time.sleep(0.2)
        if sampler is not None and latency is not None:
            from appliance.devtools.measure import write_report

            sampler.stop()
            summary = write_report(args.measure, latency, sampler,
                                   {"duration_s": args.duration, "cadence_s": args.cadence, "backends": args.backends,
                                    "model_dir": str(model_dir)})
            _say(f"measurement: {args.measure / 'daemon_measure.json'}: end-to-end p50 "
                 f"{summary['latency_ms']['end_to_end_ms'].get('p50', float('nan')):.1f} ms")
        if daemon.poll() is not None:
            _say(f"the daemon exited with code {daemon.returncode}; last log lines:")
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-15:]))
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        time.sleep(0.3)  # let the retained "offline" arrive
        if client is not None:
            _say(f"{client.demo_state['scores']} scores received")
            client.disconnect()
            client.loop_stop()
        bed.stop()
        broker.terminate()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
