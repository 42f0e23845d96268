"""``neopain commission``: guided checks at the bed, with numbers, a pass/fail table and a report.

Why a command of its own: before a device scores an infant, an engineer must know that the camera frames the
face, the microphone hears without clipping or silence, and the monitor link delivers plausible HR/SpO2 (and
an ECG wave for HRV). The command opens the sensors exactly as ``neopain run`` does (same TOML config, same
source classes, see :mod:`calibration.commission.collect`), listens for ``--duration`` seconds, computes the
metrics of :mod:`calibration.commission.metrics` and writes the report of
:mod:`calibration.commission.report`.

Run it while the daemon is stopped (``systemctl stop neopain``): a camera, ALSA device or serial port is
normally opened by one process at a time.

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 bad configuration or output folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

if TYPE_CHECKING:
    from calibration.commission.collect import Collected
    from calibration.commission.metrics import Check

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
DEFAULT_DURATION_S = 30.0


def run_checks(collected: "Collected") -> list["Check"]:
    """The checks of every enabled sensor, in table order."""
    from calibration.commission.metrics import camera_checks, microphone_checks, monitor_checks

    checks: list[Check] = []
    if collected.camera is not None:
        checks += camera_checks(collected.camera)
    if collected.microphone is not None:
        checks += microphone_checks(collected.microphone)
    if collected.monitor is not None:
        checks += monitor_checks(collected.monitor)
    return checks


def add_commission_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain commission``."""
    parser.description = ("Check camera framing, microphone level and monitor link at the bed; print a pass/fail "
                          "table and write a report. PRIVACY: unless --no-snapshot is given, the report includes "
                          "a small PNG of the infant's face with the detection box (patient data, stored with "
                          "mode 0600 in a 0700 folder on the device).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"appliance config file (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="S",
                        help=f"seconds to listen (default: {DEFAULT_DURATION_S:g})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="report folder (created 0700): report.md, commission.json, PNGs")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="do not store the face snapshot (the report then holds no image of the infant)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_commission(args: argparse.Namespace) -> int:
    """``neopain commission``: see the module docstring for the exit codes."""
    from calibration.commission.collect import collect
    from calibration.commission.metrics import overall
    from calibration.commission.files import private_dir
    from calibration.commission.report import format_table, write_report

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    if not args.duration > 0:
        print(f"neopain commission: --duration must be > 0 s, got {args.duration}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        private_dir(args.out)
    except OSError as exc:
        print(f"neopain commission: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.no_snapshot:
        print(f"note: a face snapshot (patient data) will be stored in {args.out} (0600); --no-snapshot to skip",
              file=sys.stderr)
    collected = collect(config, args.duration, progress=not args.no_progress)
    checks = run_checks(collected)
    files = write_report(args.out, collected, checks, snapshot=not args.no_snapshot, config_path=args.config)
    verdict = overall(checks)
    print(format_table(checks))
    print(f"\nresult: {verdict.upper()}; report: {files['report']}")
    return EXIT_FAILED if verdict == "fail" else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m calibration.commission.command`` (what ``neopain commission`` calls)."""
    parser = argparse.ArgumentParser(prog="neopain commission")
    add_commission_arguments(parser)
    return run_commission(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
