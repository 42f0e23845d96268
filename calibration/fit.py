"""``neopain calibrate fit``: a monotone map from the model's raw NIPS to the local nurses' NIPS.

Why monotone: the map must fix a site's bias/scale without reordering scores (a higher raw score never maps
to a lower published one). Two families:

- ``isotonic``: the least-squares non-decreasing step function (``scipy.optimize.isotonic_regression``,
  pool-adjacent-violators), interpolated linearly between the pooled blocks; flexible, needs many ratings;
- ``linear``: least squares ``a + b * raw`` with ``b >= 0``, clipped to [0, 7]; two parameters, for small
  samples.

Why subject-wise cross-validation: ratings of one infant are correlated (same face, same nurse, minutes
apart); folds that split an infant's ratings would reward a map that memorised that infant. Folds hold out
whole infants, and the held-out MAE of the map is compared with the MAE of the raw score on the same pairs.
The fit is refused (:class:`FitRefused`, a clear message) with too few infants or ratings, or when the map
does not lower cross-validated MAE by at least ``min_improvement``: a device must not be "calibrated" by a
map that makes it worse. ``auto`` picks the family with the lower cross-validated MAE (isotonic only from
``ISOTONIC_MIN_RATINGS`` ratings on).
"""
from __future__ import annotations

import argparse
import sys
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import isotonic_regression

from appliance.scoring.ratings import DEFAULT_DB, Pair, SessionStore
from calibration import bundle
from calibration.bundle import DEFAULT_KEY_FILE
from models import stats
from models.vocabulary import NIPS_MAX

MIN_INFANTS = 5
MIN_RATINGS = 20
ISOTONIC_MIN_RATINGS = 60
METHODS = ("auto", "isotonic", "linear")


class FitRefused(ValueError):
    """The data cannot support a map (too few infants/ratings, or no cross-validated improvement)."""


@dataclass(frozen=True)
class MonotoneMap:
    """Knots of a piecewise-linear non-decreasing map on [0, 7] (the appliance stage's x/y)."""

    method: str
    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        r = np.clip(np.asarray(raw, dtype=float), 0.0, NIPS_MAX)
        return np.clip(np.interp(r, self.x, self.y), 0.0, NIPS_MAX)


# ---------------------------------------------------------------------------------------------- the maps
def fit_isotonic(raw: np.ndarray, ref: np.ndarray) -> MonotoneMap:
    """Isotonic regression on the unique raw values (weights = ratings per value), as knots.

    A constant block of the step function becomes two knots (its first and last raw value) so the
    appliance's linear interpolation reproduces the fit at every observed raw value.
    """
    raw = np.clip(np.asarray(raw, dtype=float), 0.0, NIPS_MAX)
    ref = np.asarray(ref, dtype=float)
    xs, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=ref) / counts
    fitted = np.clip(isotonic_regression(means, weights=counts.astype(float), increasing=True).x, 0.0, NIPS_MAX)
    if xs.size == 1:
        return MonotoneMap("isotonic", (0.0, float(NIPS_MAX)), (float(fitted[0]),) * 2)
    keep = [0]
    for i in range(1, xs.size - 1):  # drop interior knots inside a flat block
        if not (fitted[i] == fitted[keep[-1]] and fitted[i] == fitted[i + 1]):
            keep.append(i)
    keep.append(xs.size - 1)
    return MonotoneMap("isotonic", tuple(float(xs[i]) for i in keep), tuple(float(fitted[i]) for i in keep))


def fit_linear(raw: np.ndarray, ref: np.ndarray) -> MonotoneMap:
    """Least squares ``a + b * raw`` with ``b >= 0`` (else the mean), clipped to [0, 7], as exact knots."""
    raw = np.clip(np.asarray(raw, dtype=float), 0.0, NIPS_MAX)
    ref = np.asarray(ref, dtype=float)
    var = float(np.var(raw))
    b = float(np.cov(raw, ref, bias=True)[0, 1] / var) if var > 0 else 0.0
    b = max(b, 0.0)
    a = float(ref.mean() - b * raw.mean())
    xs = {0.0, float(NIPS_MAX)}
    if b > 0:  # where the line crosses 0 and 7: extra knots so interpolation equals the clipped line
        xs |= {x for x in ((0.0 - a) / b, (NIPS_MAX - a) / b) if 0.0 < x < NIPS_MAX}
    x = sorted(xs)
    y = [float(np.clip(a + b * v, 0.0, NIPS_MAX)) for v in x]
    return MonotoneMap("linear", tuple(x), tuple(y))


def fit_map(method: str, raw: np.ndarray, ref: np.ndarray) -> MonotoneMap:
    if method == "isotonic":
        return fit_isotonic(raw, ref)
    if method == "linear":
        return fit_linear(raw, ref)
    raise ValueError(f"method: expected isotonic or linear, got {method!r}")


# ------------------------------------------------------------------------------------ cross-validation
def subject_folds(infants: np.ndarray, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Boolean test masks: each infant in exactly one fold (shuffled with ``seed``, reproducible)."""
    ids = np.unique(infants)
    rng = np.random.default_rng(seed)
    ids = ids[rng.permutation(ids.size)]
    k = min(k, ids.size)
    return [np.isin(infants, ids[i::k]) for i in range(k)]


def cross_validated(method: str, raw: np.ndarray, ref: np.ndarray, infants: np.ndarray, k: int = 5,
                    seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions: each infant's ratings predicted by a map fitted without that infant."""
    pred = np.empty_like(ref, dtype=float)
    for test in subject_folds(infants, k, seed):
        pred[test] = fit_map(method, raw[~test], ref[~test])(raw[test])
    return pred


@dataclass
class FitResult:
    """The chosen map, its cross-validated figures, and the data summary that goes into the bundle."""

    map: MonotoneMap
    n_infants: int
    n_ratings: int
    n_raters: int
    folds: int
    cv_mae_before: float
    cv_mae_after: float
    icc_before: float
    icc_after: float
    bias_before: float
    bias_after: float
    cv_mae_by_method: dict[str, float] = field(default_factory=dict)
    oof: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-safe figures for the bundle's ``fit`` and the report.

        An undefined figure is ``None`` (JSON null), not NaN: e.g. ICC has no value when every nurse gave the
        same rating (zero variance), and the bundle's canonical JSON -- what is signed -- cannot hold NaN.
        """
        d = {k: v for k, v in asdict(self).items() if k not in ("map", "oof")}
        return {k: _json_number(v) for k, v in d.items()} | {"method": self.map.method}


def _json_number(v: Any) -> Any:
    """Round floats to 4 decimals and turn non-finite ones into None (also inside dicts)."""
    if isinstance(v, dict):
        return {k: _json_number(x) for k, x in v.items()}
    if isinstance(v, float):
        return round(v, 4) if math.isfinite(v) else None
    return v


def _fmt(v: float | None, spec: str = ".3f") -> str:
    """A report figure, or "n/a" for one that is undefined (see :meth:`FitResult.summary`)."""
    return "n/a" if v is None else format(v, spec)


def _arrays(pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    for i, p in enumerate(pairs):
        for name in ("raw", "nips"):
            v = getattr(p, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= NIPS_MAX:
                raise ValueError(f"pairs[{i}].{name}: expected a number in [0, 7], got {v!r}")
        if not p.infant or not p.rater:
            raise ValueError(f"pairs[{i}]: infant and rater ids must be non-empty")
    raw = np.array([p.raw for p in pairs], dtype=float)
    ref = np.array([p.nips for p in pairs], dtype=float)
    return raw, ref, np.array([p.infant for p in pairs]), np.array([p.rater for p in pairs])


def fit_calibration(pairs: Sequence[Pair], *, method: str = "auto", k: int = 5, seed: int = 0,
                    min_infants: int = MIN_INFANTS, min_ratings: int = MIN_RATINGS,
                    min_improvement: float = 0.02) -> FitResult:
    """Fit, cross-validate by infant and decide; raises :class:`FitRefused` with the reason."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    raw, ref, infants, raters = _arrays(pairs)
    n_inf = int(np.unique(infants).size)
    if n_inf < min_infants:
        raise FitRefused(f"too few infants: {n_inf} rated, at least {min_infants} needed (a map fitted on fewer "
                         f"infants follows those infants, not the unit)")
    if len(pairs) < min_ratings:
        raise FitRefused(f"too few ratings: {len(pairs)} matched pairs, at least {min_ratings} needed")
    candidates = ["linear", "isotonic"] if method == "auto" else [method]
    if method == "auto" and len(pairs) < ISOTONIC_MIN_RATINGS:
        candidates = ["linear"]
    oof = {m: cross_validated(m, raw, ref, infants, k, seed) for m in candidates}
    by_method = {m: stats.mae(p, ref) for m, p in oof.items()}
    best = min(by_method, key=by_method.get)
    before = np.clip(raw, 0.0, NIPS_MAX)
    mae_before, mae_after = stats.mae(before, ref), by_method[best]
    if not mae_after < mae_before - min_improvement:
        raise FitRefused(f"the {best} map does not improve cross-validated MAE: {mae_after:.3f} with the map vs "
                         f"{mae_before:.3f} raw (needs at least {min_improvement:g} lower); keeping the current map")
    final = fit_map(best, raw, ref)

    def icc(p: np.ndarray) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):  # no variance (one rating value): NaN -> null
            return stats.icc_absolute(np.column_stack([p, ref])).value

    return FitResult(final, n_inf, len(pairs), int(np.unique(raters).size), min(k, n_inf), mae_before, mae_after,
                     icc(before), icc(oof[best]), stats.bland_altman(before, ref).bias,
                     stats.bland_altman(oof[best], ref).bias, by_method, oof[best])


# ------------------------------------------------------------------------------------------------ report
def write_report(result: FitResult, pairs: Sequence[Pair], out_dir: str | Path) -> dict[str, Path]:
    """``calibration_fit.md`` + ``calibration_fit.png`` (map, Bland-Altman before/after) + ``fit.json``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: the device and CI have no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw, ref, infants, _ = _arrays(pairs)
    before = np.clip(raw, 0.0, NIPS_MAX)
    after = result.oof if result.oof is not None else result.map(raw)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    ax = axes[0]
    ax.scatter(raw, ref, s=8, alpha=0.4, label="nurse NIPS")
    grid = np.linspace(0, NIPS_MAX, 200)
    ax.plot(grid, result.map(grid), "r-", label=f"{result.map.method} map")
    ax.plot([0, 7], [0, 7], "k:", lw=0.8, label="identity")
    ax.set(xlabel="raw model NIPS", ylabel="NIPS", title="calibration map", xlim=(0, 7), ylim=(0, 7))
    ax.legend(fontsize=7)
    for ax, pred, title in ((axes[1], before, "before (raw)"), (axes[2], after, "after (cross-validated)")):
        ba = stats.bland_altman(pred, ref, subjects=infants) if np.unique(infants).size >= 2 and len(ref) > \
            np.unique(infants).size else stats.bland_altman(pred, ref)
        ax.scatter((pred + ref) / 2, pred - ref, s=8, alpha=0.4)
        for v, style in ((ba.bias, "r-"), (ba.loa_low, "r--"), (ba.loa_high, "r--")):
            ax.axhline(v, color=style[0], ls=style[1:], lw=1)
        ax.set(xlabel="mean of device and nurse", ylabel="device - nurse",
               title=f"Bland-Altman {title}\nbias {ba.bias:+.2f}, LoA [{ba.loa_low:+.2f}, {ba.loa_high:+.2f}]")
    fig.tight_layout()
    png = out / "calibration_fit.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    s = result.summary()
    md = out / "calibration_fit.md"
    md.write_text("\n".join([
        "# Site calibration fit", "",
        f"Method: **{result.map.method}**; {s['n_infants']} infants, {s['n_ratings']} ratings, {s['n_raters']} raters; "
        f"{s['folds']}-fold cross-validation by infant.", "",
        "| | raw model | with map (cross-validated) |", "|---|---|---|",
        f"| MAE (NIPS points) | {_fmt(s['cv_mae_before'])} | {_fmt(s['cv_mae_after'])} |",
        f"| ICC(A,1) device vs nurse | {_fmt(s['icc_before'])} | {_fmt(s['icc_after'])} |",
        f"| Bias (device - nurse) | {_fmt(s['bias_before'], '+.3f')} | {_fmt(s['bias_after'], '+.3f')} |", "",
        "Cross-validated MAE per method: " + ", ".join(f"{m} {_fmt(v)}" for m, v in s["cv_mae_by_method"].items()),
        "",
        f"Knots: x = {[round(v, 3) for v in result.map.x]}, y = {[round(v, 3) for v in result.map.y]}", "",
        f"![map and Bland-Altman]({png.name})", ""]), encoding="utf-8")
    js = out / "fit.json"
    js.write_text(json.dumps(s | {"x": list(result.map.x), "y": list(result.map.y)}, indent=1) + "\n",
                  encoding="utf-8")
    return {"markdown": md, "png": png, "json": js}


# ------------------------------------------------------------------------------------------------ input
def read_pairs_csv(path: str | Path) -> list[Pair]:
    """Pairs from a CSV with columns raw, nips, rater, infant[, time, message_id]; errors name the row."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"raw", "nips", "rater", "infant"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for i, row in enumerate(reader, start=2):
            try:
                out.append(Pair(float(row["raw"]), float(row["nips"]), row["rater"], row["infant"],
                                float(row.get("time") or 0.0), row.get("message_id") or None))
            except ValueError as exc:
                raise ValueError(f"{path}: line {i}: {exc}") from None
    return out


def write_pairs_csv(path: str | Path, pairs: Iterable[Pair]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["raw", "nips", "rater", "infant", "time", "message_id"])
        for p in pairs:
            w.writerow([p.raw, p.nips, p.rater, p.infant, p.t, p.message_id or ""])
    return Path(path)


# -------------------------------------------------------------------------------------------------- CLI
def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--db", type=Path, default=None, help=f"calibration sessions database (default {DEFAULT_DB})")
    src.add_argument("--pairs", type=Path, default=None, help="CSV of pairs: raw,nips,rater,infant[,time]")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (and bundle.json)")
    parser.add_argument("--method", choices=METHODS, default="auto")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--min-infants", type=int, default=MIN_INFANTS)
    parser.add_argument("--min-ratings", type=int, default=MIN_RATINGS)
    parser.add_argument("--max-gap-s", type=float, default=None, help="rating-to-score matching tolerance (--db)")
    parser.add_argument("--version", dest="bundle_version", default=None,
                        help="bundle version name; with --model-version, writes a signed bundle.json")
    parser.add_argument("--model-version", default=None, help="model version the map applies to")
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY_FILE, help="device key to sign the bundle")
    parser.add_argument("--created-by", default=None)


def run_fit(args: argparse.Namespace) -> int:
    try:
        if args.pairs is not None:
            pairs = read_pairs_csv(args.pairs)
        else:
            store = SessionStore(args.db or DEFAULT_DB)
            kw = {} if args.max_gap_s is None else {"max_gap_s": args.max_gap_s}
            pairs = store.matched_pairs(**kw)
            store.close()
        result = fit_calibration(pairs, method=args.method, k=args.folds, min_infants=args.min_infants,
                                 min_ratings=args.min_ratings)
    except (FitRefused, ValueError, OSError) as exc:
        print(f"neopain calibrate fit: refused: {exc}", file=sys.stderr)
        return 2
    files = write_report(result, pairs, args.out)
    print(f"{result.map.method} map: CV MAE {result.cv_mae_before:.3f} -> {result.cv_mae_after:.3f} "
          f"({result.n_infants} infants, {result.n_ratings} ratings); report {files['markdown']}")
    if args.bundle_version and args.model_version:
        try:
            b = bundle.make_bundle(version=args.bundle_version, model_version=args.model_version,
                                   x=list(result.map.x), y=list(result.map.y), key=bundle.read_key(args.key),
                                   method=result.map.method, fit=result.summary(), created_by=args.created_by)
        except bundle.BundleError as exc:
            print(f"neopain calibrate fit: bundle not written: {exc}", file=sys.stderr)
            return 2
        path = bundle.write_bundle(args.out / bundle.BUNDLE_FILE, b)
        print(f"signed bundle {path}; install it with `neopain calibrate install {path}`")
    return 0
