"""``neopain calibrate capture-int8``: a representative set of windows from this bed for TensorRT INT8.

Why from the bed, and through the daemon's own pieces: INT8 calibration sets the quantisation ranges of every
layer from the activations it sees, so it must see exactly what the engines will see at this cot -- this
camera's framing and light, this room's noise, this monitor. The command therefore runs the daemon's chain
(sources -> ring buffers -> :class:`appliance.scoring.windows.WindowBuilder` ->
:func:`appliance.scoring.pipeline.prepare`, the quality gate and the one raw-window -> model-input
conversion the scoring loop runs) every ``--every`` seconds, keeps only windows in which every
enabled modality passed the gate (a window with the face missing would calibrate the video encoder on
zeros), and writes each as one ``.npz`` in the format ``neopain build-engines --calibration`` reads
(:func:`models.engines.build.write_calibration_window`).

Privacy: the files are model inputs (normalised face crops at network size, log-Mel patches, vitals grid),
not recordings, but they are still patient data: they stay on the device, in a 0700 folder (default under
the device's state directory, next to the outbox), each file 0600.

Exit codes: 0 the requested windows were written, 1 fewer (sources or quality never good enough before
``--timeout``), 2 bad configuration or output folder.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from appliance.config import DEFAULT_CONFIG_PATH, MODEL_CONFIG_AUTO, Config, ConfigError, load_config
from calibration.commission.files import private_dir

EXIT_OK = 0
EXIT_SHORT = 1
EXIT_CONFIG = 2
DEFAULT_WINDOWS = 64
DEFAULT_EVERY_S = 5.0
CALIBRATION_DIR_NAME = "int8-calibration"
_NAME = re.compile(r"^window-(\d+)\.npz$")


def default_out_dir(config: Config) -> Path:
    """``<state dir>/int8-calibration``: the state dir is the outbox's folder (systemd StateDirectory)."""
    return Path(config.outbox.path).parent / CALIBRATION_DIR_NAME


def required_modalities(config: Config) -> tuple[str, ...]:
    """The model modalities whose sensor is enabled: each must be present in a kept window."""
    enabled = {"video": config.camera.enabled, "audio": config.microphone.enabled, "vitals": config.monitor.enabled}
    return tuple(m for m, on in enabled.items() if on)


def model_config_for(config: Config) -> Any:
    """The model the engines will be built for: the exported manifest's config when ``scoring.model_dir``
    holds one (a pinned ``scoring.model_config`` must match it), else ``scoring.model_config`` by name."""
    from models.configs import get_config
    from models.manifest import read_manifest

    s = config.scoring
    if (Path(s.model_dir) / "manifest.json").is_file():
        cfg = read_manifest(s.model_dir).model_config()
        refusal = s.model_size_refusal(cfg.name)
        if refusal:
            raise ConfigError(refusal, key="scoring.model_config")
        return cfg
    if s.model_config == MODEL_CONFIG_AUTO:
        raise ConfigError(f"{s.model_dir} holds no exported model (manifest.json) to take the network size from; "
                          "export one there or pin scoring.model_config", key="scoring.model_dir")
    return get_config(s.model_config)


@dataclass(frozen=True)
class Decision:
    """What became of one window: ``kept`` with its file, or the reason it was rejected."""

    t_ns: int
    kept: bool
    reason: str
    path: Path | None = None


def judge(verdict: Any, inputs: Mapping[str, np.ndarray] | None, required: tuple[str, ...]) -> str | None:
    """Why a window must not calibrate (None when it may): a required modality the gate removed, or one that
    ``model_inputs`` could not use (e.g. less than one log-Mel patch of audio)."""
    from models.vocabulary import MODALITIES

    missing = [m for m in required if not verdict.presence.get(m, False)]
    if missing:
        return "; ".join(f"{m}: {verdict.reasons.get(m, 'missing')}" for m in missing)
    if inputs is not None:
        unused = [m for m in required if inputs["presence"][MODALITIES.index(m)] < 0.5]
        if unused:
            return f"too short for the model: {', '.join(unused)}"
    return None


@dataclass
class WindowCapture:
    """Cuts, gates and writes windows (one call to :meth:`step` per window); independent of the sources, so
    a test can drive it with buffers it fills itself."""

    builder: Any  # appliance.scoring.windows.WindowBuilder
    model_config: Any
    out_dir: Path
    required: tuple[str, ...]
    quality: Any = None  # appliance.scoring.quality.QualityConfig (default limits when None)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        existing = [int(m.group(1)) for p in self.out_dir.glob("window-*.npz") if (m := _NAME.match(p.name))]
        self._next = max(existing, default=-1) + 1  # never overwrite an earlier capture's windows

    @property
    def kept(self) -> list[Path]:
        return [d.path for d in self.decisions if d.kept and d.path is not None]

    def step(self, t_ns: int | None = None) -> Decision:
        from appliance.scoring.pipeline import prepare
        from models.engines.build import write_calibration_window

        prepared = prepare(self.builder.build(t_ns), self.model_config, self.quality)
        window, inputs = prepared.window, prepared.inputs
        reason = judge(prepared.verdict, inputs, self.required)
        if reason is None and (inputs is None or prepared.refusal is not None):
            reason = prepared.refusal or "nothing to score"
        if reason is not None:
            decision = Decision(window.t_ns, False, reason)
        else:
            path = self.out_dir / f"window-{self._next:06d}.npz"
            self._next += 1
            write_calibration_window(path, inputs)
            os.chmod(path, 0o600)
            decision = Decision(window.t_ns, True, "ok", path)
        self.decisions.append(decision)
        return decision


def capture_int8(config: Config, out_dir: Path, windows: int = DEFAULT_WINDOWS, every_s: float = DEFAULT_EVERY_S,
                 *, timeout_s: float | None = None, warmup_s: float | None = None, progress: bool = True,
                 stop: threading.Event | None = None,
                 on_decision: Callable[[Decision], None] | None = None) -> WindowCapture:
    """Open the sensors as the daemon does and capture up to ``windows`` good windows, one every ``every_s``.

    ``warmup_s`` (default: the longest window span, 30 s of vitals, capped by ``timeout_s``) lets the buffers
    fill before the first window; ``timeout_s`` (default ``warmup + 4 * windows * every``) ends a capture
    whose windows keep failing the gate.
    """
    from tqdm import tqdm

    from appliance.scoring.buffers import ModalityBuffers
    from appliance.scoring.windows import WindowBuilder
    from appliance.sources.bed import BedSources
    from appliance.wiring import buffer_sinks, quality_config, source_settings, window_config
    from models.features.cry import CryDetector

    if windows < 1 or not every_s > 0:
        raise ValueError(f"need windows >= 1 and every > 0 s, got {windows}, {every_s}")
    model_cfg = model_config_for(config)
    wcfg = window_config(config)
    warmup = wcfg.vitals_span_s if warmup_s is None else warmup_s
    timeout = warmup + 4 * windows * every_s if timeout_s is None else timeout_s
    warmup = min(warmup, timeout)
    private_dir(out_dir)
    stop = stop or threading.Event()
    buffers = ModalityBuffers()
    cry = CryDetector() if config.microphone.enabled else None
    builder = WindowBuilder(buffers, wcfg, cry=cry)
    sources = BedSources(source_settings(config), buffer_sinks(buffers, cry, clip_grid=builder.grid)).open()
    try:
        capture = WindowCapture(builder, model_cfg, out_dir,
                                required_modalities(config), quality=quality_config(config))
        t0 = time.monotonic()
        with tqdm(total=windows, unit="window", desc="INT8 calibration windows", disable=not progress) as bar:
            if stop.wait(warmup):
                return capture
            next_due = time.monotonic()
            while len(capture.kept) < windows and time.monotonic() - t0 < timeout:
                decision = capture.step()
                if decision.kept:
                    bar.update(1)
                else:
                    bar.set_postfix_str(f"rejected: {decision.reason}"[:60])
                if on_decision is not None:
                    on_decision(decision)
                next_due += every_s
                if stop.wait(max(0.0, next_due - time.monotonic())):
                    break
        return capture
    finally:
        sources.close()


def add_capture_int8_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain calibrate capture-int8``."""
    parser.description = ("Capture pre-processed windows from this bed's sensors for TensorRT INT8 calibration "
                          "(neopain build-engines --precision int8 --calibration DIR). The files are patient data: "
                          "they stay on the device, in a 0700 folder, each 0600.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"appliance config file (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"folder for the windows (default: <state dir>/{CALIBRATION_DIR_NAME}, next to the outbox)")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS, metavar="N",
                        help=f"windows to keep (default: {DEFAULT_WINDOWS})")
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY_S, metavar="S",
                        help=f"seconds between windows, to spread them over time (default: {DEFAULT_EVERY_S:g})")
    parser.add_argument("--warmup", type=float, metavar="S",
                        help="seconds to fill the buffers before the first window (default: 30, the vitals span)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="give up after S seconds (default: warmup + 4 x windows x every)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_capture_int8(args: argparse.Namespace) -> int:
    """``neopain calibrate capture-int8``: see the module docstring for the exit codes."""
    try:
        config = load_config(args.config)
        if args.windows < 1 or not args.every > 0:
            raise ConfigError(f"--windows must be >= 1 and --every > 0, got {args.windows}, {args.every}")
        model_config_for(config)  # a mismatched model dir is a configuration error, before opening sensors
    except (ConfigError, ValueError) as exc:
        print(exc.one_line() if isinstance(exc, ConfigError) else f"neopain calibrate capture-int8: {exc}",
              file=sys.stderr)
        return EXIT_CONFIG
    out = args.out or default_out_dir(config)
    try:
        private_dir(out)
    except OSError as exc:
        print(f"neopain calibrate capture-int8: --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"note: calibration windows are patient data (face crops at network size, audio features, vitals); "
          f"they stay on this device in {out} (0700)", file=sys.stderr)
    capture = capture_int8(config, out, args.windows, args.every, timeout_s=args.timeout, warmup_s=args.warmup,
                           progress=not args.no_progress)
    rejected = [d for d in capture.decisions if not d.kept]
    print(f"kept {len(capture.kept)} of {args.windows} windows in {out}; rejected {len(rejected)}")
    for reason in sorted({d.reason for d in rejected}):
        print(f"  rejected: {reason}")
    return EXIT_OK if len(capture.kept) >= args.windows else EXIT_SHORT


def main(argv: list[str] | None = None) -> int:
    """``python -m calibration.capture_int8`` (what ``neopain calibrate capture-int8`` calls)."""
    parser = argparse.ArgumentParser(prog="neopain calibrate capture-int8")
    add_capture_int8_arguments(parser)
    return run_capture_int8(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
