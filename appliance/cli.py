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


def _demo(args: argparse.Namespace) -> int:
    from models.demo import run_smoke_demo

    return run_smoke_demo(config_name=args.config, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neopain", description="Bedside neonatal pain estimation (NIPS 0-7).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo (currently: the model smoke demo on the CPU)")
    demo.add_argument("--config", default="tiny", choices=["tiny", "full"], help="network size (default: tiny)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)

    models = sub.add_parser("models", help="inspect the networks")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    summary = models_sub.add_parser("summary", help="parameters and GMACs of every network for its input")
    summary.add_argument("--config", default="full", choices=["tiny", "full"], help="network size (default: full)")
    summary.set_defaults(handler=_models_summary)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
