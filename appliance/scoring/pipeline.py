"""The scoring pipeline: window builder -> quality gate -> engines -> calibration -> publisher, on a cadence.

Why one loop in its own thread: sources (camera, microphone, monitor) push into ring buffers from their own
threads and never wait for the model; this loop wakes every ``cadence_s``, cuts the window ending *now*,
and scores it with batch 1. Inference can therefore never block acquisition, and a slow cycle only delays
the next score (ticks that were missed are skipped, not queued: a late score of an old window is worthless).

Safety rules, all enforced here:

- only modalities the quality gate passes (fresh, present, good quality) are shown to the model as present;
- when no modality is usable, or the engines fail, **no score** is made: the health message says
  ``state: no_score`` with the reason instead (and is pushed at once, not at the next health interval);
- an exception in a cycle is caught, counted and reported in health; it never ends the loop;
- :meth:`appliance.service.Watchdog.progress` is called only when a cycle ran to its end (a score, or a
  decided "nothing usable"), so a wedged or constantly failing engine stops the systemd watchdog pings;
- raw video and audio never leave the device: only numbers are handed to the publisher. With
  ``debug.save_raw_media`` the scored windows' crops and audio are written to a local folder, nowhere else.

Per-item NIPS: the expected value of each item's class distribution (softmax of its logits), e.g. cry
``0*p0 + 1*p1 + 2*p2``. The expected value keeps the model's uncertainty visible (0.5 means "torn between
0 and 1") and its sum is comparable to the total; an argmax would jump between integers. The published
items are then scaled to add up to the published total (:func:`items_matching_total`): the total comes from
the model's own NIPS head and the site calibration, the items from the item heads, and a message whose items
and total disagree (median gap 0.26 NIPS, at most 1.1, in a 60-s demo) contradicts itself at the bedside.

Confidence (a heuristic in [0, 1], not a calibrated probability): ``certainty * coverage`` where
``certainty = 1 - mean normalised entropy`` of the six item distributions (1 = every item decided,
0 = uniform) and ``coverage = 0.5 + 0.5 * used / 3`` (fewer modalities, less trust; one modality alone
can at most give 2/3 of the certainty).

Latency breakdown (``latency_ms`` of each score): ``preprocess`` (window cut, quality gate, features),
``infer_<part>`` per engine part and ``infer`` in total, ``calibration``, ``window_to_publish`` (from the
window's end to handing the score to the publisher). The publisher's enqueue (outbox write, fsync) happens
after the message is serialised, so it cannot be inside that same message: it is logged with every score and
reported in the pipeline statistics (``publish_enqueue_ms``).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from appliance import clock
from appliance.config import default
from appliance.scoring.calibration_stage import CalibrationStage
from appliance.scoring.presence_debounce import DebounceConfig, PresenceDebounce
from appliance.scoring.quality import QualityConfig, QualityVerdict, assess
from appliance.scoring.windows import Window, WindowBuilder
from models.vocabulary import MODALITIES, NIPS_ITEM_MAXIMA, NIPS_ITEM_MESSAGE_NAMES, NIPS_ITEMS

log = logging.getLogger(__name__)



class ScoringEngines(Protocol):
    """What the pipeline needs from ``models.engines.runtime.ScoringEngines`` (or any engine).

    ``run`` takes the six estimator inputs with a batch dimension and returns something indexable by
    ``nips``, ``item_logits`` and ``modality_weights`` (a dict, or ``ScoringResult`` whose ``timings_ms``
    gives the per-part times in milliseconds).
    """

    backend: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, Any]: ...


class ScoreSink(Protocol):
    """What the pipeline needs from :class:`appliance.mqtt.publisher.Publisher`."""

    def publish_score(self, **fields: Any) -> dict[str, Any]: ...

    def request_health(self) -> None: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Cadence and gates of the loop."""

    cadence_s: float = default("scoring", "cadence_s")
    quality: QualityConfig = field(default_factory=QualityConfig)
    raw_media_dir: Path | None = None  # debug.save_raw_media: where scored windows are kept (device only)
    raw_media_keep: int = 200
    presence: DebounceConfig = field(default_factory=DebounceConfig)  # what health reports as lost/back, and when

    def __post_init__(self) -> None:
        if not self.cadence_s > 0:
            raise ValueError(f"PipelineConfig.cadence_s must be > 0, got {self.cadence_s!r}")


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did: ``kind`` is ``score``, ``no_score`` (nothing usable / engines failed) or ``error``."""

    kind: str
    t_ns: int
    message: dict[str, Any] | None = None
    verdict: QualityVerdict | None = None
    detail: str | None = None
    progressed: bool = True  # the loop did its job (a score, or a decided "nothing usable"): watchdog food
    raw_nips: float | None = None  # the model's score before the calibration map (what calibration fits)


@dataclass
class PipelineStats:
    cycles: int = 0
    scores: int = 0
    no_score: int = 0
    engine_failures: int = 0
    errors: int = 0  # unexpected exceptions caught in a cycle
    skipped_ticks: int = 0  # cadence ticks missed because a cycle ran long
    last_error: str | None = None
    last_nips: float | None = None
    last_sequence: int | None = None
    publish_enqueue_ms: float | None = None
    last_latency_ms: dict[str, float] = field(default_factory=dict)


def expected_items(item_logits: np.ndarray, items: tuple[tuple[str, int], ...]) -> tuple[dict[str, float], float]:
    """Per-item expected NIPS and the mean normalised entropy of the item distributions (see module doc)."""
    logits = np.asarray(item_logits, dtype=np.float64).reshape(-1)
    total = sum(n for _, n in items)
    if logits.size != total:
        raise ValueError(f"item_logits: expected {total} values for items {[n for n, _ in items]}, got {logits.size}")
    out: dict[str, float] = {}
    entropies = []
    offset = 0
    for name, n in items:
        z = logits[offset:offset + n]
        offset += n
        p = np.exp(z - z.max())
        p /= p.sum()
        out[NIPS_ITEM_MESSAGE_NAMES.get(name, name)] = float(np.clip(np.dot(p, np.arange(n)), 0, n - 1))
        entropies.append(float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum() / math.log(n)))
    return out, float(np.mean(entropies))


def items_matching_total(items: Mapping[str, float], maxima: Mapping[str, float], total: float) -> dict[str, float]:
    """``items`` scaled so that they add up to ``total`` and each stays within ``[0, maxima[item]]``.

    Scaling keeps the items' profile (which behaviours drive the score): down in proportion to each item,
    up in proportion to each item's headroom below its maximum (so an item at 0 can rise when the total says
    more pain than the items show, and none passes its maximum). ``total`` is clipped to ``[0, sum(maxima)]``.
    """
    names = list(items)
    value = np.array([min(max(float(items[n]), 0.0), float(maxima[n])) for n in names])
    top = np.array([float(maxima[n]) for n in names])
    target = min(max(float(total), 0.0), float(top.sum()))
    current = float(value.sum())
    if target <= current:
        scaled = value * (target / current) if current > 0 else value
    else:
        headroom = top - value
        scaled = value + headroom * ((target - current) / float(headroom.sum()))
    return {n: float(min(max(v, 0.0), m)) for n, v, m in zip(names, scaled, top)}


def confidence_of(mean_entropy: float, used: int) -> float:
    """``(1 - mean normalised entropy) * (0.5 + 0.5 * used / 3)``, clipped to [0, 1]."""
    certainty = 1.0 - min(max(mean_entropy, 0.0), 1.0)
    coverage = 0.5 + 0.5 * used / len(MODALITIES)
    return float(min(max(certainty * coverage, 0.0), 1.0))


def raw_window(window: Window, presence: Mapping[str, bool]) -> Any:
    """The builder's window as ``models.features.inputs.RawWindow`` (crops BGR -> RGB, ns -> s)."""
    from models.features.inputs import RawWindow

    frames = window.video.frames if presence["video"] else None
    if frames is not None:
        frames = np.ascontiguousarray(frames[..., ::-1])  # OpenCV BGR -> the RGB the model was trained on
    audio = window.audio.samples if presence["audio"] else None
    return RawWindow(
        end_s=window.t_ns / clock.NS_PER_S,
        frames=frames,
        audio=audio,
        audio_rate=window.audio.rate,
        rr_ms=window.rr.rr_ms,
        rr_times_s=window.rr.times_ns / clock.NS_PER_S,
        spo2_pct=window.vitals.spo2_pct,
        spo2_times_s=window.vitals.times_ns / clock.NS_PER_S,
        presence=dict(presence),
    )


def window_start_ns(window: Window, presence: Mapping[str, bool]) -> int:
    """Start of the data actually used: the oldest sample of the used modalities (never after the end)."""
    starts = []
    if presence.get("video") and window.video.times_ns is not None and len(window.video.times_ns):
        starts.append(int(window.video.times_ns.min()))
    if presence.get("audio"):
        starts.append(int(window.audio.start_ns))
    if presence.get("vitals"):
        for times in (window.vitals.times_ns, window.rr.times_ns):
            if len(times):
                starts.append(int(times.min()))
    return min(min(starts), window.t_ns) if starts else window.t_ns


@dataclass(frozen=True)
class PreparedWindow:
    """A window after the quality gate and the one raw-window -> model-input conversion.

    ``inputs`` is None when the gate passed no modality; ``used`` is what the model is shown as present (the
    gate's verdict, minus modalities too short for the network); ``refusal`` says why the window cannot be
    scored (None when it can); ``flags`` are the quality flags of the score.
    """

    window: Window
    verdict: QualityVerdict
    inputs: dict[str, np.ndarray] | None
    used: dict[str, bool]
    flags: tuple[str, ...]
    refusal: str | None = None


def prepare(window: Window, model_config: Any, quality: QualityConfig | None = None) -> PreparedWindow:
    """Gate ``window`` and convert what passed into model inputs: the step the daemon scores and
    ``calibrate capture-int8`` stores, so INT8 calibration sees exactly what the engines will see."""
    from models.features.inputs import model_inputs

    verdict = assess(window, quality or QualityConfig())
    nothing = {m: False for m in MODALITIES}
    if not verdict.any_present:
        return PreparedWindow(window, verdict, None, nothing, tuple(verdict.flags),
                              f"all modalities missing: {verdict.detail()}")
    inputs = model_inputs(raw_window(window, verdict.presence), model_config)
    used = {m: bool(inputs["presence"][i] > 0.5) for i, m in enumerate(MODALITIES)}
    flags = list(verdict.flags)
    flags += [f"{m}_too_short" for m in MODALITIES if verdict.presence[m] and not used[m]]  # e.g. < 1 log-Mel patch
    refusal = None if any(used.values()) else f"no modality long enough to score: {verdict.detail()}"
    return PreparedWindow(window, verdict, inputs, used, tuple(flags), refusal)


class ScoringPipeline:
    """The scoring loop. ``score_once(t_ns)`` runs one cycle (tests drive it with explicit times);
    ``start()``/``stop()`` run it every ``cadence_s`` in a thread."""

    def __init__(
        self,
        builder: WindowBuilder,
        engines: ScoringEngines,
        calibration: CalibrationStage,
        sink: ScoreSink,
        *,
        model_config: Any,
        config: PipelineConfig | None = None,
        watchdog: Any = None,
        on_cycle: Callable[[CycleResult], None] | None = None,
    ) -> None:
        self.builder = builder
        self.engines = engines
        self.calibration = calibration
        self.sink = sink
        self.model_config = model_config
        self.model_version = getattr(engines, "model_version", None) or "unknown"
        self.config = config or PipelineConfig()
        self.watchdog = watchdog
        self.on_cycle = on_cycle
        self.stats = PipelineStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = ("no_score", "starting: no window scored yet")
        self._presence: dict[str, bool] = {m: False for m in MODALITIES}
        self._reported = PresenceDebounce(self.config.presence)  # health's view of the modalities (debounced)
        self._items = NIPS_ITEMS

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "ScoringPipeline":
        if self._thread is not None:
            raise RuntimeError("ScoringPipeline.start: already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scoring", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the current cycle and end the loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("scoring: loop did not stop within %.1f s", timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        cadence_ns = clock.to_ns(self.config.cadence_s)
        next_tick = clock.now_ns()
        while not self._stop.is_set():
            now = clock.now_ns()
            if now < next_tick:
                if self._stop.wait((next_tick - now) / clock.NS_PER_S):
                    break
            self.score_once()
            next_tick += cadence_ns
            now = clock.now_ns()
            if now >= next_tick:  # the cycle overran: skip the missed ticks instead of bursting
                missed = (now - next_tick) // cadence_ns + 1
                with self._lock:
                    self.stats.skipped_ticks += int(missed)
                next_tick += missed * cadence_ns

    # ------------------------------------------------------------------------------------------ one cycle
    def score_once(self, t_ns: int | None = None) -> CycleResult:
        """Score the window ending at ``t_ns`` (default: now). Never raises: failures become results."""
        t = clock.now_ns() if t_ns is None else int(t_ns)
        try:
            self.calibration.reload_if_requested()
            result = self._cycle(t)
        except Exception as exc:  # the loop must survive anything a cycle throws
            log.exception("scoring: cycle failed")
            with self._lock:
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            result = CycleResult("error", t, detail=f"cycle failed: {type(exc).__name__}: {exc}", progressed=False)
            self._set_state("no_score", result.detail)
        with self._lock:
            self.stats.cycles += 1
        if result.progressed and self.watchdog is not None:
            self.watchdog.progress()
        if self.on_cycle is not None:
            try:
                self.on_cycle(result)
            except Exception:
                log.exception("scoring: on_cycle callback failed")
        return result

    def _cycle(self, t: int) -> CycleResult:
        """window -> gate and inputs -> engines -> calibration -> message -> publisher, for the window ending at t."""
        t0 = time.perf_counter()
        prepared = prepare(self.builder.build(t), self.model_config, self.config.quality)
        window, verdict = prepared.window, prepared.verdict
        with self._lock:
            self._presence = dict(verdict.presence)
            too_short = {m: "too short for the network" for m in MODALITIES
                         if verdict.presence[m] and not prepared.used[m]}
            self._reported.update(prepared.used, t, {**verdict.reasons, **too_short})
        if prepared.inputs is None or prepared.refusal is not None:
            return self._no_score(t, verdict, prepared.refusal or "nothing to score")
        t1 = time.perf_counter()
        try:
            outputs, raw, logits, weights = self._infer(prepared.inputs)
        except Exception as exc:
            with self._lock:
                self.stats.engine_failures += 1
                self.stats.last_error = f"engine: {type(exc).__name__}: {exc}"
            log.error("scoring: engine %s failed: %s", getattr(self.engines, "backend", "?"), exc)
            return self._no_score(t, verdict, f"engines failed: {type(exc).__name__}: {exc}", progressed=False)
        t2 = time.perf_counter()
        nips, cal = self.calibration.apply(raw)
        items, entropy = expected_items(logits, self._items)
        items = items_matching_total(items, NIPS_ITEM_MAXIMA, nips)
        t3 = time.perf_counter()
        used, flags = prepared.used, list(prepared.flags)
        if not cal.calibrated:
            flags.append("uncalibrated")
        latency = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "calibration": (t3 - t2) * 1e3}
        for part, ms in self._timings(outputs).items():
            latency[f"infer_{part}"] = float(ms)
        modalities = {m: {"used": used[m], "weight": float(np.clip(weights[i], 0.0, 1.0)) if used[m] else 0.0}
                      for i, m in enumerate(MODALITIES)}
        latency["window_to_publish"] = max(0.0, (clock.now_ns() - window.t_ns) / 1e6)
        latency = {k: round(max(0.0, v), 3) for k, v in latency.items()}
        t4 = time.perf_counter()
        message = self.sink.publish_score(
            window_start_ns=window_start_ns(window, used),
            window_end_ns=window.t_ns,
            nips=nips,
            confidence=confidence_of(entropy, sum(used.values())),
            modalities=modalities,
            model_version=self.model_version,
            calibration_version=cal.version,
            latency_ms=latency,
            nips_items=items,
            quality_flags=flags,
        )
        enqueue_ms = (time.perf_counter() - t4) * 1e3
        self._record_score(window, used, message, nips, raw, latency, enqueue_ms)
        return CycleResult("score", t, message, verdict, raw_nips=float(raw))

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> tuple[Any, float, np.ndarray, np.ndarray]:
        """Batch-1 inference: (outputs, raw NIPS, item logits, modality weights); raises on non-finite outputs."""
        outputs = self.engines.run({k: v[None, ...] for k, v in inputs.items()})
        raw = float(np.asarray(outputs["nips"]).reshape(-1)[0])
        logits = np.asarray(outputs["item_logits"])[0]
        weights = np.asarray(outputs["modality_weights"]).reshape(-1)
        if not math.isfinite(raw) or not np.all(np.isfinite(logits)) or not np.all(np.isfinite(weights)):
            raise ValueError(f"engine returned non-finite outputs (nips={raw!r})")
        return outputs, raw, logits, weights

    def _record_score(self, window: Window, used: Mapping[str, bool], message: Mapping[str, Any], nips: float,
                      raw: float, latency: Mapping[str, float], enqueue_ms: float) -> None:
        """Journal line, optional raw media, statistics and health state of a published score. Health's state
        follows the *reported* presence (``presence_debounce``: lost or back only after lasting a while), and a
        degraded state names why each lost modality was missing, e.g. a face ROI beyond the frame."""
        seq = message.get("sequence")
        log.info("score seq=%s id=%s nips=%.2f raw=%.2f used=%s infer=%.1fms enqueue=%.1fms", seq,
                 message.get("message_id"), nips, raw, ",".join(m for m in MODALITIES if used[m]) or "-",
                 latency["infer"], enqueue_ms)
        if self.config.raw_media_dir is not None:
            self._save_raw_media(window, used, seq)
        with self._lock:
            self.stats.scores += 1
            self.stats.last_nips = nips
            self.stats.last_sequence = seq
            self.stats.publish_enqueue_ms = round(enqueue_ms, 3)
            self.stats.last_latency_ms = dict(latency)
            degraded = self._reported.lost()
            why = "; ".join(f"{m}: {r}" for m in degraded if (r := self._reported.reason(m)))
        self._set_state("degraded" if degraded else "ok",
                        f"scoring without {', '.join(degraded)}" + (f" ({why})" if why else "") if degraded else None)

    def _no_score(self, t: int, verdict: QualityVerdict, detail: str, progressed: bool = True) -> CycleResult:
        with self._lock:
            self.stats.no_score += 1
        log.debug("scoring: no score at t=%d: %s", t, detail)  # state changes are logged by _set_state
        self._set_state("no_score", detail)
        return CycleResult("no_score", t, None, verdict, detail, progressed)

    def _timings(self, outputs: Mapping[str, Any]) -> dict[str, float]:
        """Per-part timings: ``ScoringResult.timings_ms`` (models.engines.runtime), or any mapping among the
        outputs, or the engine's ``last_timings_ms``; the total is already ``infer``."""
        found: dict[str, float] = {}
        sources = [getattr(outputs, "timings_ms", None), getattr(self.engines, "last_timings_ms", None)]
        if isinstance(outputs, Mapping):
            sources += [v for v in outputs.values() if isinstance(v, Mapping)]
        for timings in sources:
            if isinstance(timings, Mapping):
                found.update({str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float))})
        return {k.removesuffix("_ms"): v for k, v in found.items()
                if k != "total" and math.isfinite(v) and v >= 0}

    def _save_raw_media(self, window: Window, used: Mapping[str, bool], seq: Any) -> None:
        """debug.save_raw_media only: keep the scored window's crops/audio on the device's own disk."""
        directory = self.config.raw_media_dir
        assert directory is not None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, np.ndarray] = {"t_ns": np.array([window.t_ns])}
            if used.get("video") and window.video.frames is not None:
                arrays["frames_bgr"] = window.video.frames
            if used.get("audio") and window.audio.samples is not None:
                arrays["audio"] = window.audio.samples
            np.savez_compressed(directory / f"window-{seq}.npz", **arrays)
            old = sorted(directory.glob("window-*.npz"), key=lambda p: p.stat().st_mtime)
            for p in old[:-self.config.raw_media_keep]:
                p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("scoring: could not save raw media: %s", exc)

    # ------------------------------------------------------------------------------------------ health
    def _set_state(self, state: str, detail: str | None) -> None:
        with self._lock:
            changed = self._state[0] != state
            self._state = (state, detail)
        if changed:
            log.log(logging.WARNING if state == "no_score" else logging.INFO, "scoring: state %s%s", state,
                    f" ({detail})" if detail else "")
            try:
                self.sink.request_health()
            except Exception:
                log.exception("scoring: health request failed")

    def health_fields(self) -> dict[str, Any]:
        """``state``/``detail``/``engine_backend`` for :func:`appliance.mqtt.messages.build_health`."""
        with self._lock:
            state, detail = self._state
            s = self.stats
            extra = []
            if s.engine_failures:
                extra.append(f"{s.engine_failures} engine failures")
            if s.errors:
                extra.append(f"{s.errors} cycle errors (last: {s.last_error})")
            if self.calibration.last_error:
                extra.append(f"calibration reload refused: {self.calibration.last_error}")
        text = "; ".join(x for x in [detail, *extra] if x)
        return {
            "state": state,
            "detail": text[:500] if text else None,
            "engine_backend": getattr(self.engines, "backend", None),
        }

    def presence(self) -> dict[str, bool]:
        """The last cycle's presence mask (for STATUS= text and health)."""
        with self._lock:
            return dict(self._presence)
