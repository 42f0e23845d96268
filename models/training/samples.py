"""A dataset's windows pre-processed once per run folder (``samples.<config>-<hash>.pt``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from models.configs import ModelConfig
from models.samples import SampleSet
from models.training.distributed import Distributed


def samples_path(out_dir: Path, cfg: ModelConfig) -> Path:
    """The cache file: named by the config's name and a hash of all of it and of the pre-processing rules
    (the manifest's constants), because pre-processing follows the config (crop size, frames, the normalisation
    an init checkpoint's family brings) and the code (a changed resize): a stale cache is never reused."""
    from models.manifest import preprocessing_constants

    key = {"config": cfg.to_dict(), "preprocessing": preprocessing_constants(cfg)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return out_dir / f"samples.{cfg.name}-{digest}.pt"


def prepare_samples(data_root: str | Path, out_dir: str | Path, cfg: ModelConfig, progress: bool = True,
                    dist: Distributed | None = None) -> SampleSet:
    """Load the dataset's windows and pre-process them once; cached in the run folder.

    Under torchrun process 0 builds the cache and the others read it after a barrier.
    """
    from models.data.loader import load_windows
    from models.samples import samples_from_windows

    out_dir = Path(out_dir)
    cache = samples_path(out_dir, cfg)
    main = dist is None or dist.is_main
    if main and not cache.is_file():
        windows = load_windows(data_root, progress=progress, cache_dir=out_dir / "window-cache")
        samples = samples_from_windows(windows, cfg, progress=progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        samples.save(tmp)
        os.replace(tmp, cache)
    if dist is not None:
        dist.barrier()
    return SampleSet.load(cache)
