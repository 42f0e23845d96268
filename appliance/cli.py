"""The ``neopain`` command: parses arguments and calls into the packages, nothing more.

Each subcommand is one row of :data:`COMMANDS`: the module that owns it, the function there that adds its
arguments and the one that runs it (returning the exit code). Modules are imported only for the chosen
subcommand, so ``neopain --help`` and ``neopain run`` on the device do not load torch, scipy or the
dataset generator when they do not need them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Command:
    """A subcommand (``path`` is the words after ``neopain``) and where its code lives."""

    path: tuple[str, ...]
    module: str
    add_arguments: str
    run: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command(("run",), "appliance.daemon", "add_run_arguments", "run_daemon",
            "the bedside daemon: sensors -> windows -> engines -> score -> MQTT"),
    Command(("demo",), "appliance.devtools.demo", "add_demo_arguments", "run_demo",
            "mosquitto + simulated bed + daemon on the CPU + a score subscriber"),
    Command(("soak",), "appliance.devtools.soak", "add_soak_arguments", "run_soak",
            "the demo for 30 min at production cadence; RSS/fd/thread leak and p99 verdicts"),
    Command(("config", "check"), "appliance.config", "add_config_arguments", "run_config_check",
            "validate a config file without starting anything"),
    Command(("simulate-bed",), "appliance.devtools.simulate", "add_simulate_arguments", "run_simulate",
            "drive the real input paths from a synthetic recording"),
    Command(("watch",), "appliance.station.watch", "add_watch_arguments", "run_watch",
            "central station: live table of every bed on a broker"),
    Command(("bridge",), "appliance.station.bridge", "add_bridge_arguments", "run_bridge",
            "re-publish scores as FHIR R4 Observations and/or HL7 PCD-01 over MLLP"),
    Command(("station", "run"), "appliance.station.web.server", "add_station_arguments", "run_station",
            "the central station as a web page: live board, trends, nurse ratings (127.0.0.1:8080)"),
    Command(("station", "user"), "appliance.station.web.server", "add_user_arguments", "run_user",
            "add/passwd/remove/list the web station's users (password from the terminal or stdin)"),
    Command(("adt",), "appliance.station.adt", "add_adt_arguments", "run_adt",
            "HL7 v2 ADT listener (A01/A02/A03 over MLLP) keeping the station's bed -> patient registry"),
    Command(("synth",), "models.data.synth", "add_synth_arguments", "run_synth",
            "generate a synthetic neonatal cohort in the dataset layout"),
    Command(("train",), "models.training.command", "add_train_arguments", "run_train",
            "subject-wise k-fold training of the fusion model and the baselines"),
    Command(("evaluate",), "models.evaluation.command", "add_evaluate_arguments", "run_evaluate",
            "clinical report (Markdown + PNG) of a training run, or of trained models on any dataset"),
    Command(("study", "fusion"), "models.studies.command", "add_fusion_arguments", "run_fusion",
            "benchmark: fusion vs early fusion over seeds, paired per infant, overall and per confounder"),
    Command(("study", "learning-curve"), "models.studies.command", "add_curve_arguments", "run_curve",
            "benchmark: each model trained on growing cohorts, scored on one unseen cohort, with the ceiling"),
    Command(("export",), "models.export", "add_export_arguments", "run_export",
            "export the estimator's four parts to ONNX with a manifest and parity check"),
    Command(("build-engines",), "appliance.build_engines", "add_build_engines_arguments", "run_build_engines",
            "build and cache TensorRT FP16/INT8 engines on this GPU"),
    Command(("bench",), "models.bench", "add_bench_arguments", "run_bench",
            "latency/throughput/memory of each available backend, with pre-processing"),
    Command(("models", "summary"), "models.summary", "add_summary_arguments", "run_summary",
            "parameters and GMACs of every network for its input"),
    Command(("models", "demo"), "models.demo", "add_smoke_demo_arguments", "run_smoke_demo_cli",
            "one synthetic window through the (untrained) estimator, every modality subset"),
    Command(("calibrate", "start"), "calibration.sessions", "add_start_arguments", "run_start",
            "open a calibration session for one infant"),
    Command(("calibrate", "stop"), "calibration.sessions", "add_stop_arguments", "run_stop",
            "close the open calibration session"),
    Command(("calibrate", "rate"), "calibration.sessions", "add_rate_arguments", "run_rate",
            "add a nurse's NIPS rating (--nips N --rater ID [--at TIME])"),
    Command(("calibrate", "fit"), "calibration.fit", "add_fit_arguments", "run_fit",
            "fit a monotone map with subject-wise CV; report + signed bundle"),
    Command(("calibrate", "install"), "calibration.bundle", "add_install_arguments", "run_install",
            "verify and install a signed calibration bundle"),
    Command(("calibrate", "list"), "calibration.bundle", "add_list_arguments", "run_list",
            "list installed calibration bundles"),
    Command(("calibrate", "rollback"), "calibration.bundle", "add_rollback_arguments", "run_rollback",
            "make an earlier bundle current"),
    Command(("calibrate", "keygen"), "calibration.bundle", "add_keygen_arguments", "run_keygen",
            "create the device's bundle-signing key (0600)"),
    Command(("calibrate", "capture-int8"), "calibration.capture_int8", "add_capture_int8_arguments",
            "run_capture_int8", "store quality-gated bedside windows (0600, on the device) for TensorRT INT8"),
    Command(("commission",), "calibration.commission.command", "add_commission_arguments", "run_commission",
            "bedside checks (camera, microphone, monitor) with a report; stores a face snapshot unless --no-snapshot"),
)

GROUP_HELP = {
    "config": "appliance configuration",
    "models": "inspect the networks",
    "calibrate": "site calibration: sessions, fit, signed bundles",
    "station": "the web central station and its users",
    "study": "benchmarks run end to end: synth, train, evaluate, report",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``argv``, only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="neopain", description="Bedside neonatal pain estimation (NIPS 0-7).")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        subparsers = top
        if len(command.path) == 2:
            group = command.path[0]
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUP_HELP[group])
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command", required=True, metavar="SUBCOMMAND")
            subparsers = groups[group]
        sub = subparsers.add_parser(command.path[-1], help=command.help)
        sub.set_defaults(command_spec=command)
        if argv is None or tuple(argv[: len(command.path)]) == command.path:
            getattr(importlib.import_module(command.module), command.add_arguments)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    command: Command = args.command_spec
    return int(getattr(importlib.import_module(command.module), command.run)(args))


if __name__ == "__main__":
    sys.exit(main())
