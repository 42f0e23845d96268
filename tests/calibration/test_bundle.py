"""Signed calibration bundles: sign/verify, tampering, foreign keys and models, install/list/rollback, and the
appliance's calibration stage loading (or refusing) them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.scoring.calibration_map import CalibrationError, write_calibration
from appliance.scoring.calibration_stage import CalibrationStage, load_calibration
from appliance.scoring import bundles
from calibration import bundle as B


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    return B.generate_key(tmp_path / "keys" / "device.key")


def make(key: bytes, version: str = "site-v1", model: str = "m-A", y: tuple[float, ...] = (1.0, 7.0)) -> dict:
    return B.make_bundle(version=version, model_version=model, x=[0.0, 7.0], y=list(y), key=key, method="linear",
                         fit={"n_infants": 6, "n_ratings": 80, "cv_mae_before": 1.0, "cv_mae_after": 0.5},
                         created_by="tester")


def test_key_file_is_private_and_never_overwritten(key_file: Path) -> None:
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert len(B.read_key(key_file)) == B.KEY_BYTES
    with pytest.raises(FileExistsError):
        B.generate_key(key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(B.BundleError, match="group/others.*chmod 600"):
        B.read_key(key_file)


def test_sign_verify_and_every_refusal(key_file: Path) -> None:
    key = B.read_key(key_file)
    b = make(key)
    v = bundles.verify_bundle(json.loads(json.dumps(b)), key, model_version="m-A")  # survives a JSON round trip
    assert v.version == "site-v1" and v.map.apply(0.0) == pytest.approx(1.0)
    assert v.payload["fit"]["n_infants"] == 6 and v.payload["created_by"] == "tester"

    tampered = json.loads(json.dumps(b))
    tampered["payload"]["map"]["y"] = [2.0, 7.0]
    with pytest.raises(B.BundleError, match="signature.value.*tampered"):
        bundles.verify_bundle(tampered, key)
    with pytest.raises(B.BundleError, match="key_id.*another device"):
        bundles.verify_bundle(b, bytes(32))
    with pytest.raises(B.BundleError, match="model_version.*'m-A'.*'m-B'"):
        bundles.verify_bundle(b, key, model_version="m-B")
    unsigned = {k: v for k, v in b.items() if k != "signature"}
    with pytest.raises(B.BundleError, match="signature: missing"):
        bundles.verify_bundle(unsigned, key)
    plain_map = b["payload"]["map"]
    with pytest.raises(B.BundleError, match="unsigned map is not accepted"):
        bundles.verify_bundle(plain_map, key)
    with pytest.raises(B.BundleError, match="version"):
        make(key, version="../etc")


def test_install_list_rollback(tmp_path: Path, key_file: Path) -> None:
    key = B.read_key(key_file)
    d = tmp_path / "calibration"
    for i, y0 in enumerate((1.0, 2.0, 0.5), start=1):
        B.write_bundle(tmp_path / f"b{i}.json", make(key, version=f"site-v{i}", y=(y0, 7.0)))
    B.install_bundle(tmp_path / "b1.json", d, key, model_version="m-A")
    B.install_bundle(tmp_path / "b2.json", d, key, model_version="m-A")
    assert B.current_version(d) == "site-v2"
    # a tampered bundle is refused and the current one stays
    bad = json.loads((tmp_path / "b3.json").read_text())
    bad["payload"]["map"]["y"] = [3.0, 7.0]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(B.BundleError, match="tampered"):
        B.install_bundle(tmp_path / "bad.json", d, key)
    assert B.current_version(d) == "site-v2" and not (d / "bundles" / "site-v3").exists()
    B.install_bundle(tmp_path / "b3.json", d, key)
    listed = B.list_bundles(d)
    assert [b.version for b in listed] == ["site-v1", "site-v2", "site-v3"]
    assert [b.current for b in listed] == [False, False, True] and listed[0].method == "linear"
    assert B.rollback(d, key).version == "site-v2" and B.current_version(d) == "site-v2"
    assert B.rollback(d, key).version == "site-v1"
    with pytest.raises(B.BundleError, match="oldest"):
        B.rollback(d, key)
    assert B.rollback(d, key, to="site-v3").version == "site-v3"
    with pytest.raises(B.BundleError, match="not installed"):
        B.rollback(d, key, to="site-v9")
    # same version, other content: immutable
    B.write_bundle(tmp_path / "b1b.json", make(key, version="site-v1", y=(1.5, 7.0)))
    with pytest.raises(B.BundleError, match="already installed with different content"):
        B.install_bundle(tmp_path / "b1b.json", d, key)


def test_stage_loads_signed_bundle_and_refuses_others(tmp_path: Path, key_file: Path) -> None:
    key = B.read_key(key_file)
    d = tmp_path / "calibration"
    B.write_bundle(tmp_path / "b1.json", make(key, version="site-v1", y=(1.0, 7.0)))
    B.install_bundle(tmp_path / "b1.json", d, key)
    current = d / B.CURRENT
    stage = CalibrationStage(current, model_version="m-A", key_file=key_file, require_signature=True)
    assert stage.current.version == "site-v1"
    nips, cal = stage.apply(3.5)
    assert nips == pytest.approx(1.0 + 3.5 * 6 / 7) and cal.calibrated

    # the same bundle for a daemon running another model, or without a key: refused at start
    with pytest.raises(CalibrationError, match="model_version"):
        CalibrationStage(current, model_version="m-B", key_file=key_file)
    with pytest.raises(CalibrationError, match="no device key"):
        load_calibration(current, model_version="m-A")
    # an unsigned map when signatures are required: refused
    plain = write_calibration(tmp_path / "map.json", version="plain", x=[0.0, 7.0], y=[0.0, 6.0])
    with pytest.raises(CalibrationError, match="unsigned calibration map refused"):
        load_calibration(plain, key_file=key_file, require_signature=True)

    # a foreign bundle installed behind the daemon's back (current re-pointed by hand): reload keeps site-v1
    other = B.make_bundle(version="foreign", model_version="m-A", x=[0.0, 7.0], y=[3.0, 7.0], key=bytes(range(32)),
                          method="linear")
    (d / "bundles" / "foreign").mkdir()
    B.write_bundle(d / "bundles" / "foreign" / B.BUNDLE_FILE, other)
    B._point_current(d, "foreign")
    stage.request_reload()
    assert stage.reload_if_requested() is False
    assert stage.current.version == "site-v1" and "key_id" in (stage.last_error or "")
    # a proper new bundle: reload picks it up
    B.write_bundle(tmp_path / "b2.json", make(key, version="site-v2", y=(2.0, 7.0)))
    B.install_bundle(tmp_path / "b2.json", d, key)
    stage.request_reload()
    assert stage.reload_if_requested() is True and stage.current.version == "site-v2"
    assert stage.apply(0.0)[0] == pytest.approx(2.0)
