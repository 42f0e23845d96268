"""The engine cache: its key changes with each part, and bad files give clear errors, never a crash."""

import dataclasses

import pytest

from models.engines.cache import EngineCache, EngineCacheError, EngineKey, read_engine, write_engine

BASE = EngineKey(
    model="video_encoder",
    gpu_name="Orin (nvgpu)",
    sm_count=16,
    trt_version="10.3.0",
    precision="fp16",
    onnx_sha256="a" * 64,
)
PLAN = bytes(range(256)) * 40


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", "audio_encoder"),
        ("gpu_name", "NVIDIA H100 80GB HBM3"),
        ("sm_count", 132),
        ("trt_version", "10.4.0"),
        ("precision", "int8"),
        ("onnx_sha256", "b" * 64),
    ],
)
def test_key_changes_with_each_part(field, value):
    other = dataclasses.replace(BASE, **{field: value})
    assert other.digest() != BASE.digest()
    assert other.filename() != BASE.filename()


def test_key_is_stable():
    assert dataclasses.replace(BASE).digest() == BASE.digest()


def test_key_rejects_bad_values():
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(BASE, precision="int4")
    with pytest.raises(ValueError, match="onnx_sha256"):
        dataclasses.replace(BASE, onnx_sha256="xyz")


def test_round_trip(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    path = cache.store(BASE, PLAN)
    assert path.name == BASE.filename()
    assert cache.load(BASE) == PLAN
    assert cache.has_valid(BASE)


def test_a_plan_whose_profile_is_too_small_for_the_batch_asked_is_not_valid(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    cache.store(BASE, PLAN, max_batch=4)
    assert cache.has_valid(BASE) and cache.has_valid(BASE, max_batch=1) and cache.has_valid(BASE, max_batch=4)
    assert not cache.has_valid(BASE, max_batch=8)  # `build-engines --max-batch 8` rebuilds it
    assert cache.load(BASE) == PLAN  # the daemon (batch 1) loads it whatever its maximum
    cache.store(BASE, PLAN)  # a plan that does not say how large a batch it takes is rebuilt when asked
    assert cache.has_valid(BASE) and not cache.has_valid(BASE, max_batch=1)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(EngineCacheError, match="does not exist"):
        EngineCache(tmp_path).load(BASE)


def test_foreign_engine_names_the_differing_part(tmp_path):
    path = write_engine(tmp_path / "e.engine", dataclasses.replace(BASE, gpu_name="NVIDIA A100"), PLAN)
    with pytest.raises(EngineCacheError, match="gpu_name: file 'NVIDIA A100' vs here 'Orin") as info:
        read_engine(path, BASE)
    assert "rebuild" in str(info.value)


def test_corrupted_plan_is_detected(tmp_path):
    path = write_engine(tmp_path / "e.engine", BASE, PLAN)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineCacheError, match="corrupted"):
        read_engine(path, BASE)


def test_truncated_file_is_detected(tmp_path):
    path = write_engine(tmp_path / "e.engine", BASE, PLAN)
    full = path.read_bytes()
    for cut in (5, len(b"NEOPAIN-TRT\x00") + 2, len(full) // 3, len(full) - 1):
        path.write_bytes(full[:cut])
        with pytest.raises(EngineCacheError):
            read_engine(path, BASE)


def test_raw_tensorrt_plan_is_not_accepted(tmp_path):
    """A bare plan file (e.g. from trtexec) carries no key: refuse it instead of guessing."""
    path = tmp_path / "raw.engine"
    path.write_bytes(b"ftrt" + PLAN)
    with pytest.raises(EngineCacheError, match="not a neopain engine file"):
        read_engine(path, BASE)


def test_unreadable_header(tmp_path):
    import struct

    path = tmp_path / "e.engine"
    path.write_bytes(b"NEOPAIN-TRT\x00" + struct.pack("<I", 5) + b"{nope" + PLAN)
    with pytest.raises(EngineCacheError, match="corrupt header"):
        read_engine(path, BASE)


def test_store_does_not_leave_temp_files(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(BASE, PLAN)
    assert [p.name for p in tmp_path.iterdir()] == [BASE.filename()]
