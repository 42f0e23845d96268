"""``neopain build-engines`` on the device: the appliance config's ``[scoring]`` table -> the engine builder.

Why this wrapper lives in appliance/: ``models.engines.build`` builds TensorRT engines from a model folder and
knows nothing about the appliance (models/ is the bottom layer). The device's
``neopain-engines.service`` runs ``neopain build-engines --config /etc/neopain/appliance.toml``: this module
reads ``scoring.model_dir``, ``engine_cache_dir``, ``model_config``, ``backends`` and ``precision`` from that
file (flags override the folders and the precision), refuses a model of another size than a pinned
``scoring.model_config`` (``auto``, the default, takes the manifest's), and builds nothing
when TensorRT is not among the configured backends (it only verifies the exported parts then).
"""
from __future__ import annotations

import argparse
import sys

from appliance.config import ConfigError, load_config
from models.engines.base import EngineError
from models.engines.build import add_build_engines_arguments as add_builder_arguments
from models.engines.build import run_build_engines as run_builder
from models.manifest import read_manifest, verify_part

EXIT_BAD_INPUT = 1


def add_build_engines_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus the builder's own arguments (``--model-dir``/``--cache-dir`` override the config)."""
    parser.add_argument("--config", help="appliance TOML: takes scoring.model_dir and scoring.engine_cache_dir from it")
    add_builder_arguments(parser)


def run_build_engines(args: argparse.Namespace) -> int:
    """0 built/valid (or nothing to build), 1 bad input or failed build, 3 TensorRT/GPU unavailable."""
    if args.config:
        try:
            scoring = load_config(args.config).scoring
            args.model_dir = args.model_dir or scoring.model_dir
            args.cache_dir = args.cache_dir or scoring.engine_cache_dir
            args.precision = args.precision or scoring.precision
            manifest = read_manifest(args.model_dir)
            refusal = scoring.model_size_refusal(manifest.config_name)
            if refusal:
                raise EngineError(f"{args.config}: {refusal} ({manifest.model_version})")
            if "tensorrt" not in scoring.backends:
                for name in manifest.parts:
                    verify_part(args.model_dir, manifest, name)
                print(f"build-engines: tensorrt is not in scoring.backends {scoring.backends}; nothing to build "
                      f"({manifest.model_version} in {args.model_dir} verified)")
                return 0
        except (ConfigError, EngineError) as exc:
            print(f"neopain build-engines: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    elif not args.model_dir or not args.cache_dir:
        print("neopain build-engines: error: give --model-dir and --cache-dir, or --config with [scoring] "
              "model_dir/engine_cache_dir", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_builder(args)
