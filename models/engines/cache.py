"""The on-device engine cache: one file per (GPU, SM count, TensorRT version, precision, ONNX hash).

A TensorRT plan only runs on the GPU model and TensorRT version that built it. The cache key holds exactly
what makes a plan valid, so a device never rebuilds needlessly and never loads a plan built elsewhere.
Each file is a small container — magic, JSON header (the key and the plan's sha256), plan — so that a
foreign, truncated or corrupted file is recognised before TensorRT sees it and gives a clear error
(:class:`EngineCacheError`) that tells the caller to rebuild, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from models.engines.base import EngineError

MAGIC = b"NEOPAIN-TRT\x00"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


class EngineCacheError(EngineError):
    """A cached engine that must not be used: missing, corrupt, or built for another GPU/version/model."""


@dataclass(frozen=True)
class EngineKey:
    """Everything that decides whether a serialized TensorRT plan is valid on this device."""

    model: str  # e.g. "video_encoder"
    gpu_name: str
    sm_count: int
    trt_version: str
    precision: str
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be 64 hex digits, not {self.onnx_sha256!r}")

    def digest(self) -> str:
        """Stable short hash of every field: the file name changes when any part of the key changes."""
        payload = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def filename(self) -> str:
        return f"{self.model}.{self.precision}.{self.digest()}.engine"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_engine(path: str | Path, key: EngineKey, plan: bytes, *, max_batch: int | None = None) -> Path:
    """Write a plan with its key; atomically (rename) so a crash never leaves half a file under the name.

    ``max_batch``: the largest batch of the plan's optimisation profile, recorded beside the key (not in it:
    the daemon loads whatever plan was built and runs batch 1; only a rebuild asks whether the plan is large
    enough, :meth:`EngineCache.has_valid`)."""
    path = Path(path)
    header = json.dumps(
        {"format": FORMAT_VERSION, "key": asdict(key), "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan),
         "max_batch": max_batch},
        sort_keys=True,
    ).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + struct.pack("<I", len(header)) + header + plan)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_engine(path: str | Path, expected: EngineKey) -> bytes:
    """Return the plan in ``path`` if and only if it is intact and was built for ``expected``."""
    return _read(path, expected)[0]


def _read(path: str | Path, expected: EngineKey) -> tuple[bytes, dict]:
    """(plan, header) of ``path``, refused like :func:`read_engine` refuses."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EngineCacheError(f"engine file {path} does not exist; build it with `neopain build-engines`") from None
    if not data.startswith(MAGIC):
        raise EngineCacheError(f"{path} is not a neopain engine file (bad magic); rebuild it")
    offset = len(MAGIC)
    if len(data) < offset + 4:
        raise EngineCacheError(f"{path} is truncated (no header length); rebuild it")
    (header_len,) = struct.unpack_from("<I", data, offset)
    offset += 4
    try:
        header = json.loads(data[offset : offset + header_len])
        stored = EngineKey(**header["key"])
        plan_sha, plan_bytes = header["plan_sha256"], int(header["plan_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineCacheError(f"{path} has a corrupt header ({exc}); rebuild it") from exc
    if header.get("format") != FORMAT_VERSION:
        raise EngineCacheError(f"{path} has container format {header.get('format')}, expected {FORMAT_VERSION}; rebuild it")
    if stored != expected:
        differing = [f"{k}: file {getattr(stored, k)!r} vs here {getattr(expected, k)!r}" for k in asdict(expected) if getattr(stored, k) != getattr(expected, k)]
        raise EngineCacheError(f"{path} was built for another device or model ({'; '.join(differing)}); rebuild it")
    plan = data[offset + header_len :]
    if len(plan) != plan_bytes or hashlib.sha256(plan).hexdigest() != plan_sha:
        raise EngineCacheError(f"{path} is corrupted (plan checksum mismatch); rebuild it")
    return plan, header


class EngineCache:
    """A directory of engine files (on the device: systemd's CacheDirectory, /var/cache/neopain)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, key: EngineKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: EngineKey) -> bytes:
        return read_engine(self.path_for(key), key)

    def store(self, key: EngineKey, plan: bytes, *, max_batch: int | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return write_engine(self.path_for(key), key, plan, max_batch=max_batch)

    def has_valid(self, key: EngineKey, *, max_batch: int | None = None) -> bool:
        """A valid plan for ``key`` is here, and, when ``max_batch`` is given, its profile takes batches that
        large (a plan built for a smaller maximum, or one that does not say, is rebuilt)."""
        try:
            _, header = _read(self.path_for(key), key)
        except EngineCacheError:
            return False
        if max_batch is None:
            return True
        built = header.get("max_batch")
        return isinstance(built, int) and built >= max_batch
