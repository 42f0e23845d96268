"""The ``neopain`` command: parses arguments and calls into the packages, nothing more.

Imports are done inside each handler so that ``neopain --help`` and light subcommands start fast on the
device and do not load torch when they do not need it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _models_summary(args: argparse.Namespace) -> int:
    from models.summary import format_summary, summarize

    print(format_summary(summarize(args.config, batch=1)))
    return 0


def _models_demo(args: argparse.Namespace) -> int:
    from models.demo import run_smoke_demo

    return run_smoke_demo(config_name=args.config, seed=args.seed)


def _demo(args: argparse.Namespace) -> int:
    from appliance.demo import run_demo

    return run_demo(args)


def _run(args: argparse.Namespace) -> int:
    from appliance.daemon import run_daemon

    return run_daemon(args)


def _synth(args: argparse.Namespace) -> int:
    from models.data.synth import run_synth

    return run_synth(args)


def _config_check(args: argparse.Namespace) -> int:
    from appliance.config import run_config_check

    return run_config_check(args)


def _train(args: argparse.Namespace) -> int:
    from models.configs import get_config
    from models.train import TrainConfig, run_training

    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, folds=args.folds, seed=args.seed, device=args.device
    )
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    path = run_training(args.data, args.out, get_config(args.config), train_cfg, kinds, progress=not args.quiet)
    print(f"out-of-fold predictions: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.evaluate import evaluate

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "report"
    evaluate(run / "predictions.csv", out)
    print(f"report: {out / 'report.md'}")
    return 0


def _simulate_bed(args: argparse.Namespace) -> int:
    from appliance.simulate import run_simulate

    return run_simulate(args)


def _watch(args: argparse.Namespace) -> int:
    from appliance.station import run_watch

    return run_watch(args)


def _bridge(args: argparse.Namespace) -> int:
    from appliance.station import run_bridge

    return run_bridge(args)


def _export(args: argparse.Namespace) -> int:
    from models.export import run_export

    return run_export(args)


def _build_engines(args: argparse.Namespace) -> int:
    from models.engines.build import run_build_engines

    return run_build_engines(args)


def _bench(args: argparse.Namespace) -> int:
    from models.bench import run_bench

    return run_bench(args)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``argv``, only the chosen subcommand's arguments are built.

    Why: some subcommands' argument builders import heavy modules (scipy, the dataset generator);
    ``neopain run`` on the device and ``neopain --help`` should not pay for them.
    """

    def wanted(command: str) -> bool:
        return argv is None or (len(argv) > 0 and argv[0] == command)

    parser = argparse.ArgumentParser(prog="neopain", description="Bedside neonatal pain estimation (NIPS 0-7).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the bedside daemon: sensors -> windows -> engines -> score -> MQTT")
    if wanted("run"):
        from appliance.daemon import add_run_arguments

        add_run_arguments(run)
    run.set_defaults(handler=_run)

    demo = sub.add_parser("demo", help="mosquitto + simulated bed + daemon on the CPU + a score subscriber")
    if wanted("demo"):
        from appliance.demo import add_demo_arguments

        add_demo_arguments(demo)
    demo.set_defaults(handler=_demo)

    models = sub.add_parser("models", help="inspect the networks")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    summary = models_sub.add_parser("summary", help="parameters and GMACs of every network for its input")
    summary.add_argument("--config", default="full", choices=["tiny", "full"], help="network size (default: full)")
    summary.set_defaults(handler=_models_summary)
    smoke = models_sub.add_parser("demo", help="one synthetic window through the (untrained) estimator, every modality subset")
    smoke.add_argument("--config", default="tiny", choices=["tiny", "full"], help="network size (default: tiny)")
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(handler=_models_demo)

    synth = sub.add_parser("synth", help="generate a synthetic neonatal cohort in the dataset layout")
    if wanted("synth"):
        from models.data.synth import add_synth_arguments

        add_synth_arguments(synth)
    synth.set_defaults(handler=_synth)

    train = sub.add_parser("train", help="subject-wise k-fold training of the fusion model and the baselines")
    train.add_argument("--data", required=True, help="dataset root (see docs/dataset.md)")
    train.add_argument("--out", required=True, help="run folder: checkpoints, samples cache, predictions.csv")
    train.add_argument("--config", default="tiny", choices=["tiny", "full"], help="network size (default: tiny)")
    train.add_argument("--models", default="fusion,video,audio,vitals,early", help="comma-separated model kinds")
    train.add_argument("--folds", type=int, default=4)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="clinical evaluation report (Markdown + PNG) of a training run")
    evaluate.add_argument("--run", required=True, help="run folder written by `neopain train`")
    evaluate.add_argument("--out", help="report folder (default: RUN/report)")
    evaluate.set_defaults(handler=_evaluate)

    export = sub.add_parser("export", help="export the estimator's four parts to ONNX with a manifest and parity check")
    if wanted("export"):
        from models.export import add_export_arguments

        add_export_arguments(export)
    export.set_defaults(handler=_export)

    build = sub.add_parser("build-engines", help="build and cache TensorRT FP16/INT8 engines on this GPU")
    if wanted("build-engines"):
        from models.engines.build import add_build_engines_arguments

        add_build_engines_arguments(build)
    build.set_defaults(handler=_build_engines)

    bench = sub.add_parser("bench", help="latency/throughput/memory of each available backend, with pre-processing")
    if wanted("bench"):
        from models.bench import add_bench_arguments

        add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)

    config = sub.add_parser("config", help="appliance configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="validate a config file without starting anything")
    if wanted("config"):
        from appliance.config import add_config_arguments

        add_config_arguments(check)
    check.set_defaults(handler=_config_check)

    bed = sub.add_parser("simulate-bed", help="drive the real input paths from a synthetic recording")
    if wanted("simulate-bed"):
        from appliance.simulate import add_simulate_arguments

        add_simulate_arguments(bed)
    bed.set_defaults(handler=_simulate_bed)

    watch = sub.add_parser("watch", help="central station: live table of every bed on a broker")
    bridge = sub.add_parser("bridge", help="re-publish scores as FHIR R4 Observations and/or HL7 PCD-01 over MLLP")
    if wanted("watch") or wanted("bridge"):
        from appliance.station import add_bridge_arguments, add_watch_arguments

        add_watch_arguments(watch)
        add_bridge_arguments(bridge)
    watch.set_defaults(handler=_watch)
    bridge.set_defaults(handler=_bridge)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
