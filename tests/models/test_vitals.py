"""Vitals grid, HRV features and the vitals encoder, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.configs import VitalsConfig, full_config, tiny_config
from models.features.vitals import (
    HR_CENTER_BPM,
    HR_SCALE_BPM,
    SPO2_CENTER_PCT,
    SPO2_SCALE_PCT,
    build_vitals_grid,
    grid_times,
    hrv_features,
    reject_artifacts,
)
from models.vitals import conv_output_length, create_vitals_encoder

CFG = VitalsConfig()
END = 1000.0



def beats(rr_ms: list[float], start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Beat times (closing R peak of each interval) for a sequence of RR intervals."""
    rr = np.asarray(rr_ms, dtype=float)
    return rr, start_s + np.cumsum(rr) / 1000.0


def flat_spo2(value: float = 97.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(END - 32, END + 1, 1.0)
    return np.full(t.shape, value), t


# --- grid ---------------------------------------------------------------------------------------------


def test_grid_times_end_at_window_end_with_grid_spacing() -> None:
    t = grid_times(END, CFG)
    assert t.shape == (CFG.samples,) == (120,)
    assert t[-1] == END
    np.testing.assert_allclose(np.diff(t), 1.0 / CFG.grid_hz)
    assert math.isclose(t[-1] - t[0], CFG.window_s - 1.0 / CFG.grid_hz)


def test_constant_rr_400_gives_hr_150_everywhere_and_valid() -> None:
    rr, t = beats([400.0] * 90, END - 33)  # 36 s of beats covering the window
    spo2, ts = flat_spo2(97.0)
    grid = build_vitals_grid(rr, t, spo2, ts, END, CFG)
    assert grid.dtype == np.float32 and grid.shape == (4, CFG.samples)
    np.testing.assert_allclose(grid[0], (150.0 - 140.0) / 30.0, atol=1e-6)
    np.testing.assert_array_equal(grid[1], 1.0)
    np.testing.assert_allclose(grid[2], (97.0 - 95.0) / 5.0, atol=1e-6)
    np.testing.assert_array_equal(grid[3], 1.0)


def test_hr_is_linear_between_beats() -> None:
    # Two beats 1 s apart with HR 120 then 150; a grid point midway between them reads 135 bpm.
    rr = np.array([500.0, 400.0])
    t = np.array([END - 1.5, END - 0.5])
    grid = build_vitals_grid(rr, t, *flat_spo2(), END, CFG)
    times = grid_times(END, CFG)
    mid = int(np.flatnonzero(np.isclose(times, END - 1.0))[0])
    assert grid[1, mid] == 1.0
    assert math.isclose(grid[0, mid] * HR_SCALE_BPM + HR_CENTER_BPM, 135.0, abs_tol=1e-3)
    # The newest point (after the last beat, within 2 s) holds the last HR.
    assert math.isclose(grid[0, -1] * HR_SCALE_BPM + HR_CENTER_BPM, 150.0, abs_tol=1e-3)
    # Points more than 2 s before the first beat are invalid and zeroed.
    early = times < t[0] - 2.0
    assert early.any()
    np.testing.assert_array_equal(grid[1, early], 0.0)
    np.testing.assert_array_equal(grid[0, early], 0.0)


def test_gap_longer_than_2s_is_invalid_and_zeroed() -> None:
    rr, t = beats([400.0] * 90, END - 33)
    gap = (t > END - 20) & (t < END - 15)  # drop 5 s of beats (e.g. ECG lead off)
    grid = build_vitals_grid(rr[~gap], t[~gap], *flat_spo2(), END, CFG)
    times = grid_times(END, CFG)
    last_before = t[~gap][t[~gap] <= END - 20].max()
    first_after = t[~gap][t[~gap] >= END - 15].min()
    inside = (times > last_before) & (times < first_after)
    assert inside.sum() >= 16
    np.testing.assert_array_equal(grid[1, inside], 0.0)
    np.testing.assert_array_equal(grid[0, inside], 0.0)
    np.testing.assert_array_equal(grid[1, ~inside], 1.0)


def test_invalid_flags_and_artifacts_do_not_enter_hr() -> None:
    rr, t = beats([400.0] * 90, END - 33)
    rr = rr.copy()
    rr[40] = 2000.0  # out of neonatal range: would read 30 bpm
    valid = np.ones(rr.size, dtype=bool)
    valid[60] = False
    rr[60] = 250.0  # flagged invalid by the source: would read 240 bpm
    grid = build_vitals_grid(rr, t, *flat_spo2(), END, CFG, rr_valid=valid)
    np.testing.assert_allclose(grid[0], 1.0 / 3.0, atol=1e-6)
    np.testing.assert_array_equal(grid[1], 1.0)


def test_spo2_linear_ramp_is_interpolated_and_normalised() -> None:
    ts = np.arange(END - 31, END + 1.0, 1.0)
    spo2 = 90.0 + (ts - ts[0]) * 0.25  # 90 % rising 0.25 %/s
    rr, t = beats([400.0] * 90, END - 33)
    grid = build_vitals_grid(rr, t, spo2, ts, END, CFG)
    times = grid_times(END, CFG)
    expected = ((90.0 + (times - ts[0]) * 0.25) - SPO2_CENTER_PCT) / SPO2_SCALE_PCT
    np.testing.assert_allclose(grid[2], expected, atol=1e-5)
    np.testing.assert_array_equal(grid[3], 1.0)


def test_spo2_invalid_samples_make_a_gap() -> None:
    ts = np.arange(END - 31, END + 1.0, 1.0)
    spo2 = np.full(ts.shape, 96.0)
    valid = np.ones(ts.size, dtype=bool)
    valid[10:15] = False  # 5 s of "sensor off"
    spo2[12] = np.nan  # a "--" reading may arrive as NaN too
    grid = build_vitals_grid(*beats([400.0] * 90, END - 33), spo2, ts, END, CFG, spo2_valid=valid)
    times = grid_times(END, CFG)
    inside = (times > ts[9]) & (times < ts[15])
    np.testing.assert_array_equal(grid[3, inside], 0.0)
    np.testing.assert_array_equal(grid[2, inside], 0.0)
    np.testing.assert_allclose(grid[2, ~inside], (96.0 - 95.0) / 5.0, atol=1e-6)


def test_no_samples_at_all_is_all_invalid() -> None:
    grid = build_vitals_grid([], [], [], [], END, CFG)
    assert grid.shape == (4, CFG.samples)
    assert not grid.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rr_ms=[400, 400], rr_times_s=[1.0]), "rr_times_s"),
        (dict(rr_ms=[400, 400], rr_times_s=[2.0, 1.0]), "strictly increasing"),
        (dict(rr_ms=[[400]], rr_times_s=[[1.0]]), "one-dimensional"),
        (dict(spo2_pct=[97, 98], spo2_times_s=[1.0]), "spo2_times_s"),
        (dict(rr_valid=[True]), "rr_valid"),
        (dict(rr_times_s=[1.0, float("nan")]), "non-finite"),
    ],
)
def test_bad_inputs_raise_naming_the_field(kwargs: dict, match: str) -> None:
    args = dict(rr_ms=[400.0, 400.0], rr_times_s=[1.0, 1.4], spo2_pct=[97.0], spo2_times_s=[1.0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_vitals_grid(args.pop("rr_ms"), args.pop("rr_times_s"), args.pop("spo2_pct"), args.pop("spo2_times_s"), END, CFG, **args)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build_vitals_grid([], [], [], [], END, VitalsConfig(in_channels=3))


# --- HRV ----------------------------------------------------------------------------------------------


def test_constant_rr_hrv() -> None:
    f = hrv_features([400.0] * 75)
    assert math.isclose(f.mean_hr_bpm, 150.0)
    assert f.rmssd_ms == 0.0 and f.sdnn_ms == 0.0
    assert f.accepted == 75 and f.rejected == 0 and f.complete


def test_alternating_rr_hrv_matches_hand_computation() -> None:
    n = 70
    rr = [400.0 if i % 2 == 0 else 440.0 for i in range(n)]
    f = hrv_features(rr)
    # By hand: every successive difference is 40 ms -> RMSSD 40; mean 420, every deviation 20 ms.
    mean = sum(rr) / n
    sdnn = math.sqrt(sum((x - mean) ** 2 for x in rr) / (n - 1))
    assert math.isclose(f.rmssd_ms, 40.0, rel_tol=1e-12)
    assert math.isclose(f.sdnn_ms, sdnn, rel_tol=1e-12)
    assert math.isclose(f.sdnn_ms, 20.0 * math.sqrt(n / (n - 1)), rel_tol=1e-12)
    assert math.isclose(f.mean_hr_bpm, 60000.0 / 420.0, rel_tol=1e-12)


def test_artifacts_are_rejected_and_rmssd_skips_pairs_across_them() -> None:
    rr = [400.0, 410.0, 2000.0, 420.0, 430.0, 600.0, 400.0, 180.0, 410.0]
    accepted = reject_artifacts(rr)
    # 2000 (range), 600 (+40 % vs 430), 180 (range) are rejected.
    assert accepted.tolist() == [True, True, False, True, True, False, True, False, True]
    f = hrv_features(rr)
    clean = [400.0, 410.0, 420.0, 430.0, 400.0, 410.0]
    pairs = [(400.0, 410.0), (420.0, 430.0)]  # adjacent in the original sequence, both accepted
    rmssd = math.sqrt(sum((b - a) ** 2 for a, b in pairs) / len(pairs))
    mean = sum(clean) / len(clean)
    assert math.isclose(f.rmssd_ms, rmssd)
    assert math.isclose(f.sdnn_ms, math.sqrt(sum((x - mean) ** 2 for x in clean) / (len(clean) - 1)))
    assert math.isclose(f.mean_hr_bpm, 60000.0 / mean)
    assert (f.accepted, f.rejected) == (6, 3)


def test_artifact_at_start_does_not_poison_the_rest() -> None:
    accepted = reject_artifacts([1200.0] + [400.0] * 20)  # in range, but 3x the rhythm
    assert not accepted[0] and accepted[1:].all()


def test_too_few_beats_give_nan_and_zero_network_input() -> None:
    f = hrv_features([400.0])
    assert math.isclose(f.mean_hr_bpm, 150.0)
    assert math.isnan(f.rmssd_ms) and math.isnan(f.sdnn_ms) and not f.complete
    x = f.normalised()
    assert x.dtype == np.float32 and x.shape == (3,)
    assert math.isclose(float(x[0]), 1.0 / 3.0, rel_tol=1e-6)
    assert x[1] == 0.0 and x[2] == 0.0


def test_normalised_hrv_is_monotone_in_rmssd() -> None:
    low = hrv_features([400.0, 405.0] * 30).normalised()
    high = hrv_features([400.0, 440.0] * 30).normalised()
    assert high[1] > low[1] and high[2] > low[2]
    assert np.isfinite(low).all() and np.isfinite(high).all()


# --- encoder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [tiny_config().vitals, full_config().vitals], ids=["tiny", "full"])
def test_encoder_token_shape(cfg: VitalsConfig) -> None:
    enc = create_vitals_encoder(cfg).eval()
    length = conv_output_length(cfg.samples, cfg.kernel_size, len(cfg.conv_channels))
    assert length == 15  # 120 -> 60 -> 30 -> 15
    out = enc(torch.randn(3, cfg.in_channels, cfg.samples), torch.randn(3, cfg.hrv_features))
    assert enc.out_dim == cfg.out_dim
    assert out.shape == (3, 1 + length, cfg.out_dim)
    assert torch.isfinite(out).all()


def test_hrv_reaches_only_its_own_token() -> None:
    cfg = tiny_config().vitals
    enc = create_vitals_encoder(cfg).eval()
    series = torch.randn(2, cfg.in_channels, cfg.samples)
    with torch.no_grad():
        a = enc(series, torch.zeros(2, cfg.hrv_features))
        b = enc(series, torch.ones(2, cfg.hrv_features))
    assert not torch.allclose(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], b[:, 1:])


def test_encoder_trains_end_to_end() -> None:
    cfg = tiny_config().vitals
    enc = create_vitals_encoder(cfg).train()
    out = enc(torch.randn(4, cfg.in_channels, cfg.samples), torch.randn(4, cfg.hrv_features))
    out.square().mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert enc.blocks[0][0].weight.grad.abs().sum() > 0


def test_encoder_rejects_wrong_shapes() -> None:
    cfg = tiny_config().vitals
    enc = create_vitals_encoder(cfg)
    with pytest.raises(ValueError, match="vitals series"):
        enc(torch.randn(1, cfg.in_channels, cfg.samples - 1), torch.randn(1, 3))
    with pytest.raises(ValueError, match="hrv"):
        enc(torch.randn(1, cfg.in_channels, cfg.samples), torch.randn(1, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        create_vitals_encoder(VitalsConfig(kernel_size=4))


def test_grid_feeds_encoder() -> None:
    """The pre-processing output is exactly what the encoder takes."""
    cfg = tiny_config().vitals
    grid = build_vitals_grid(*beats([400.0] * 90, END - 33), *flat_spo2(), END, cfg)
    hrv = hrv_features([400.0, 420.0] * 30).normalised()
    out = create_vitals_encoder(cfg).eval()(torch.from_numpy(grid)[None], torch.from_numpy(hrv)[None])
    assert out.shape[0] == 1 and torch.isfinite(out).all()
