"""The scoring pipeline on explicit timestamps, with the real tiny estimator (PyTorch engine), the real window
builder and a real (unstarted) Publisher whose disk outbox receives the scores.

Covers: fresh data -> a schema-valid score; stale modalities dropped from the presence mask; everything
missing -> no score, health ``no_score``; an engine that throws -> no score, counted, the loop survives and the
watchdog is not fed; the calibration map (monotone, validated, reloaded, previous kept on a bad file)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import numpy as np
import pytest

from appliance.mqtt import messages
from appliance.scoring.buffers import ModalityBuffers, RRInterval, VitalsSample
from appliance.scoring.calibration_map import CalibrationError, CalibrationMap, parse_calibration, write_calibration
from appliance.scoring.calibration_stage import CalibrationStage, load_calibration
from appliance.scoring.pipeline import (PipelineConfig, ScoringPipeline, confidence_of, expected_items,
                                        items_matching_total)
from appliance.mqtt.publisher import Publisher, PublisherConfig
from appliance.scoring.quality import QualityConfig, assess, level_dbfs
from appliance.scoring.presence_debounce import DebounceConfig
from appliance.service import Watchdog
from appliance.sources.face import FaceObservation
from appliance.sources.microphone import AudioPeriod
from appliance.scoring.windows import WindowBuilder, WindowConfig
from models.configs import NIPS_ITEMS, tiny_config
from models.engines.base import Engine, EngineError
from models.engines.torch import TorchEngine
from models.estimator import INPUT_NAMES, OUTPUT_NAMES, create_pain_estimator

S = 10**9
SR = 16000
T0 = 5_000 * S
SCORE_VALIDATOR = jsonschema.Draft202012Validator(messages.SCORE_SCHEMA)
HEALTH_VALIDATOR = jsonschema.Draft202012Validator(messages.HEALTH_SCHEMA)


# ---------------------------------------------------------------------------------------------- fixtures
def fill(b: ModalityBuffers, t_end: int, *, video: bool = True, audio: bool = True, vitals: bool = True,
         audio_scale: float = 0.05, seconds: int = 35) -> None:
    """Fresh data ending at ``t_end``: 30 fps face crops (4 s), 5 s of noise audio, 1 Hz vitals + RR."""
    rng = np.random.default_rng(1)
    if video:
        n = 120
        for i in range(n):
            t = t_end - int((n - 1 - i) * S / 30)
            img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            b.frames.append(FaceObservation(t, img, (0, 0, 64, 64), "detected", True, i))
    if audio:
        x = (rng.normal(0, audio_scale, 5 * SR) * 32767).clip(-32768, 32767).astype(np.int16)
        t_first = t_end - 5 * S
        for k in range(0, x.size - 511, 512):
            t = t_first + (k + 511) * S // SR
            b.audio.append(AudioPeriod(t, x[k:k + 512], SR, k // 512))
    if vitals:
        for s in range(seconds * 2):
            t = t_end - (seconds * 2 - 1 - s) * S // 2
            if s % 2 == 0:
                b.vitals.append(VitalsSample(t, hr_bpm=140.0 + s % 3, spo2_pct=97.0))
            b.rr.append(RRInterval(t, rr_ms=420.0 + 5 * (s % 4)))


class _TinyEngines:
    """The tiny estimator behind the ScoringEngines surface (backend, model_version, run)."""

    def __init__(self) -> None:
        self.engine = TorchEngine(create_pain_estimator(tiny_config()), INPUT_NAMES, OUTPUT_NAMES)
        self.backend = "torch"
        self.model_version = "tiny-test"
        self.calls = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        self.calls += 1
        return self.engine.run(inputs)


class _BrokenEngine(Engine):
    """An engine whose backend fails (what a lost GPU context or a corrupt engine looks like)."""

    backend = "broken"
    input_names = INPUT_NAMES

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        raise EngineError("CUDA error: an illegal memory access was encountered")


@pytest.fixture(scope="module")
def engines() -> _TinyEngines:
    return _TinyEngines()


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    pub = Publisher(PublisherConfig(host="127.0.0.1", site="s", bed="b1", device_id="dev-1",
                                    outbox_path=tmp_path / "outbox.sqlite3"))
    yield pub
    pub.outbox.close()


def make_pipeline(buffers: ModalityBuffers, engines: Any, publisher: Publisher, *,
                  calibration: CalibrationStage | None = None, watchdog: Watchdog | None = None,
                  cadence_s: float = 2.0, max_age_s: float | None = None,
                  presence: DebounceConfig | None = None) -> ScoringPipeline:
    """``max_age_s`` (every modality) for a loop on real time, so that data stay fresh however slow the machine;
    ``presence``: health's debounce (default: the config's)."""
    video_audio, vitals = (1.0, 5.0) if max_age_s is None else (max_age_s, max_age_s)
    builder = WindowBuilder(buffers, WindowConfig(video_max_age_s=video_audio, audio_max_age_s=video_audio,
                                                  vitals_max_age_s=vitals, rr_max_age_s=vitals))
    return ScoringPipeline(builder, engines, calibration or CalibrationStage(None), publisher,
                           model_config=tiny_config(), watchdog=watchdog,
                           config=PipelineConfig(cadence_s=cadence_s, presence=presence or DebounceConfig()))


def stored_scores(pub: Publisher) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in pub.outbox.pending(limit=1000, now_wall_ns=0)]


def health_message(pipe: ScoringPipeline) -> dict[str, Any]:
    msg = messages.build_health(device_id="dev-1", sources={"camera": True}, **pipe.health_fields())
    HEALTH_VALIDATOR.validate(msg)
    return msg


# ---------------------------------------------------------------------------------------------- scoring
def test_fresh_window_gives_one_schema_valid_score(engines: _TinyEngines, publisher: Publisher) -> None:
    b = ModalityBuffers()
    fill(b, T0)
    pipe = make_pipeline(b, engines, publisher)
    result = pipe.score_once(T0 + S // 10)
    assert result.kind == "score", result.detail
    (msg,) = stored_scores(publisher)
    SCORE_VALIDATOR.validate(msg)
    assert msg["message_id"] == result.message["message_id"]
    assert 0.0 <= msg["nips"] <= 7.0 and msg["intensity"] == pytest.approx(msg["nips"] * 10 / 7, abs=1e-3)
    assert {m: v["used"] for m, v in msg["modalities"].items()} == {"video": True, "audio": True, "vitals": True}
    assert sum(v["weight"] for v in msg["modalities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert msg["window"]["end_mono_ns"] == T0 + S // 10
    assert msg["window"]["start_mono_ns"] < T0 - 25 * S  # 30 s of vitals were used
    assert msg["calibration_version"] == "uncalibrated" and "uncalibrated" in msg["quality_flags"]
    assert msg["model_version"] == "tiny-test"
    assert {"preprocess", "infer", "calibration", "window_to_publish"} <= set(msg["latency_ms"])
    assert set(msg["nips_items"]) == set(messages.NIPS_ITEMS)
    assert 0.0 < msg["confidence"] <= 1.0
    assert health_message(pipe)["state"] == "ok"


def test_published_items_add_up_to_the_published_total(engines: _TinyEngines, publisher: Publisher,
                                                        tmp_path: Path) -> None:
    """The items a nurse reads beside the total must not contradict it: their sum is nips within rounding,
    calibrated or not, and each item keeps 4 decimals like nips (not 19)."""
    b = ModalityBuffers()
    fill(b, T0)
    shifted = write_calibration(tmp_path / "map.json", version="site-plus-2", x=[0.0, 5.0, 7.0], y=[2.0, 7.0, 7.0])
    for calibration in (None, CalibrationStage(shifted)):
        pipe = make_pipeline(b, engines, publisher, calibration=calibration)
        msg = pipe.score_once(T0 + S // 10).message
        items = msg["nips_items"]
        assert sum(items.values()) == pytest.approx(msg["nips"], abs=6 * 5e-5)
        assert all(0.0 <= v <= messages.NIPS_ITEMS[k] and round(v, 4) == v for k, v in items.items())


@pytest.mark.parametrize("total", [0.0, 0.3, 2.5, 6.9, 7.0, 9.0, -1.0])
def test_items_matching_total_keeps_bounds_and_profile(total: float) -> None:
    maxima = messages.NIPS_ITEMS
    items = {"facial_expression": 0.8, "cry": 1.0, "breathing": 0.2, "arms": 0.0, "legs": 0.5, "state_of_arousal": 0.9}
    out = items_matching_total(items, maxima, total)
    assert sum(out.values()) == pytest.approx(min(max(total, 0.0), 7.0), abs=1e-9)
    assert all(0.0 <= out[k] <= maxima[k] for k in out)
    if 0 < total < sum(items.values()):  # scaled down: the profile (ratios) is kept, zeros stay zero
        assert out["arms"] == 0.0 and out["cry"] / out["legs"] == pytest.approx(items["cry"] / items["legs"])
    zero = items_matching_total(dict.fromkeys(items, 0.0), maxima, 3.5)  # nothing to scale: headroom takes it
    assert sum(zero.values()) == pytest.approx(3.5) and zero["cry"] == pytest.approx(2 * zero["arms"])


def test_stale_modalities_are_not_presented_as_current(engines: _TinyEngines, publisher: Publisher) -> None:
    b = ModalityBuffers()
    fill(b, T0)
    pipe = make_pipeline(b, engines, publisher, presence=DebounceConfig(lost_after_s=0.0))  # health at once
    # 3 s later: camera and microphone went quiet (limits 1 s), vitals are within their 5 s limit
    result = pipe.score_once(T0 + 3 * S)
    assert result.kind == "score"
    msg = result.message
    assert {m: v["used"] for m, v in msg["modalities"].items()} == {"video": False, "audio": False, "vitals": True}
    assert msg["modalities"]["video"]["weight"] == 0.0 and msg["modalities"]["audio"]["weight"] == 0.0
    assert {"video_stale", "audio_stale"} <= set(msg["quality_flags"])
    health = health_message(pipe)
    assert health["state"] == "degraded" and "video" in health["detail"]
    # 10 s later everything is stale: no score at all, health says why
    result = pipe.score_once(T0 + 10 * S)
    assert result.kind == "no_score" and "all modalities missing" in result.detail
    assert len(stored_scores(publisher)) == 1
    health = health_message(pipe)
    assert health["state"] == "no_score" and "vitals" in health["detail"]


def test_health_debounces_a_cry_that_comes_and_goes(engines: _TinyEngines, publisher: Publisher) -> None:
    """Each score uses the audio its own window has, while health reports audio lost only after it has been
    missing for ``lost_after_s`` and back only after ``back_after_s`` of presence (explicit window times)."""
    lost_s, back_s, cadence = 6.0, 4.0, 2 * S
    b = ModalityBuffers()
    fill(b, T0)
    pipe = make_pipeline(b, engines, publisher, presence=DebounceConfig(lost_after_s=lost_s, back_after_s=back_s))
    rng = np.random.default_rng(2)
    t, period = T0, 10_000
    log: list[tuple[int, bool, str, str]] = []  # (t, audio used by the score, health state and detail after it)

    def step(audio: bool) -> None:
        nonlocal t, period
        t_next = t + cadence
        for i in range(1, 61):  # 30 fps face crops, 1 Hz vitals/RR, 512-sample audio periods, in (t, t_next]
            ft = t + i * cadence // 60
            b.frames.append(FaceObservation(ft, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (0, 0, 64, 64),
                                            "detected", True, period + i))
        for k in (1, 2):
            b.vitals.append(VitalsSample(t + k * S, hr_bpm=140.0, spo2_pct=97.0))
            b.rr.append(RRInterval(t + k * S, rr_ms=425.0))
        if audio:
            for k in range(1, 2 * SR // 512 + 1):
                x = (rng.normal(0, 0.05, 512) * 32767).astype(np.int16)
                b.audio.append(AudioPeriod(t + k * 512 * S // SR, x, SR, period + k))
        period += 100
        t = t_next
        result = pipe.score_once(t)
        assert result.kind == "score", result.detail
        health = pipe.health_fields()
        log.append((t, result.message["modalities"]["audio"]["used"], health["state"], health["detail"] or ""))

    step(True)
    for k in range(12):  # a microphone gap every third cycle: the audio of 2 of 3 windows is missing
        step(k % 3 != 0)
    used = [u for _, u, _, _ in log]
    assert sum(a != b for a, b in zip(used, used[1:])) >= 6  # the scores follow each window...
    assert {state for _, _, state, _ in log} == {"ok"}  # ...health does not flap
    start = len(log)
    for _ in range(6):  # the microphone stops
        step(False)
    for _ in range(6):  # and comes back
        step(True)
    tail = log[start - 1:]
    first_missing = next(i for i, (_, u, _, _) in enumerate(tail) if not u)
    first_degraded = next(i for i, (_, _, st, _) in enumerate(tail) if st == "degraded")
    waited = (tail[first_degraded][0] - tail[first_missing][0]) / S
    assert lost_s <= waited < lost_s + cadence / S  # lost once missing for lost_after_s, not a window sooner
    assert all(not u for _, u, _, _ in tail[first_missing:first_degraded + 1])
    assert tail[first_degraded][3].startswith("scoring without audio (audio: ")  # and why it is missing
    first_back = next(i for i, (_, u, _, _) in enumerate(tail) if i > first_degraded and u)
    first_ok = next(i for i, (_, _, st, _) in enumerate(tail) if i > first_degraded and st == "ok")
    waited = (tail[first_ok][0] - tail[first_back][0]) / S
    assert back_s <= waited < back_s + cadence / S  # back once present for back_after_s
    assert all(u for _, u, _, _ in tail[first_back:first_ok + 1]) and tail[first_ok][3] == ""


def test_all_missing_publishes_health_not_score(engines: _TinyEngines, publisher: Publisher) -> None:
    watchdog = Watchdog(interval_s=1.0, send=lambda m: True)
    pipe = make_pipeline(ModalityBuffers(), engines, publisher, watchdog=watchdog)
    calls = engines.calls
    result = pipe.score_once(T0)
    assert result.kind == "no_score" and stored_scores(publisher) == []
    assert engines.calls == calls  # the model never saw an empty window
    health = health_message(pipe)
    assert health["state"] == "no_score"
    assert "no camera frames" in health["detail"] and "no audio periods" in health["detail"]
    assert watchdog.ping_if_progressed()  # a decided "nothing to score" is progress of the loop


def test_engine_failure_no_score_loop_survives_watchdog_starves(engines: _TinyEngines, publisher: Publisher) -> None:
    b = ModalityBuffers()
    watchdog = Watchdog(interval_s=1.0, send=lambda m: True)
    # the loop runs on real time: the data must stay fresh for the whole test, however long a loaded machine
    # takes over it (freshness is not what is tested here)
    pipe = make_pipeline(b, _BrokenEngine(), publisher, watchdog=watchdog, cadence_s=0.25, max_age_s=300.0)
    from appliance.clock import now_ns

    fill(b, now_ns())
    pipe.start()
    try:
        deadline = time.monotonic() + 5
        while pipe.stats.engine_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.running and pipe.stats.engine_failures >= 2
        assert stored_scores(publisher) == []
        health = health_message(pipe)
        assert health["state"] == "no_score" and "illegal memory access" in health["detail"]
        assert not watchdog.ping_if_progressed()  # failing cycles must not feed the watchdog
        pipe.engines = engines  # the backend recovers (e.g. after a reload): scoring resumes in the same loop
        deadline = time.monotonic() + 5
        while pipe.stats.scores < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.stats.scores >= 1 and pipe.running
        assert watchdog.ping_if_progressed()
    finally:
        pipe.stop()
    assert not pipe.running
    assert len(stored_scores(publisher)) == pipe.stats.scores


def test_unexpected_exception_is_counted_and_reported(engines: _TinyEngines, publisher: Publisher) -> None:
    class BadBuilder(WindowBuilder):
        def build(self, t_ns: int | None = None) -> Any:
            raise RuntimeError("ring buffer corrupted")

    pipe = ScoringPipeline(BadBuilder(ModalityBuffers()), engines, CalibrationStage(None), publisher,
                           model_config=tiny_config())
    result = pipe.score_once(T0)
    assert result.kind == "error" and not result.progressed
    assert pipe.stats.errors == 1 and "ring buffer corrupted" in health_message(pipe)["detail"]


def test_digital_silence_removes_audio(engines: _TinyEngines, publisher: Publisher) -> None:
    b = ModalityBuffers()
    fill(b, T0, audio_scale=0.0)
    verdict = assess(WindowBuilder(b).build(T0), QualityConfig())
    assert not verdict.presence["audio"] and "audio_digital_silence" in verdict.flags
    assert verdict.presence["video"] and verdict.presence["vitals"]
    assert level_dbfs(np.zeros(10, np.float32)) < -150 and level_dbfs(np.ones(10, np.float32)) == pytest.approx(0)


def test_raw_media_only_written_when_enabled(engines: _TinyEngines, publisher: Publisher, tmp_path: Path) -> None:
    b = ModalityBuffers()
    fill(b, T0)
    pipe = make_pipeline(b, engines, publisher)
    assert pipe.score_once(T0).kind == "score"
    assert not list(tmp_path.rglob("*.npz"))
    pipe.config = PipelineConfig(raw_media_dir=tmp_path / "raw")
    assert pipe.score_once(T0).kind == "score"
    (saved,) = list((tmp_path / "raw").glob("*.npz"))
    with np.load(saved) as z:
        assert z["frames_bgr"].dtype == np.uint8 and z["audio"].size > SR
    # the messages themselves carry numbers only
    for msg in stored_scores(publisher):
        assert len(json.dumps(msg)) < 4000


def test_expected_items_and_confidence() -> None:
    n = sum(k for _, k in NIPS_ITEMS)
    sure = np.full(n, -30.0)
    offset = 0
    for _, k in NIPS_ITEMS:  # put all mass on the top class of each item
        sure[offset + k - 1] = 30.0
        offset += k
    items, entropy = expected_items(sure, NIPS_ITEMS)
    assert items == pytest.approx({name: messages.NIPS_ITEMS[name] for name in messages.NIPS_ITEMS}, abs=1e-6)
    assert entropy == pytest.approx(0.0, abs=1e-6)
    items, entropy = expected_items(np.zeros(n), NIPS_ITEMS)
    assert items["cry"] == pytest.approx(1.0) and items["arms"] == pytest.approx(0.5)
    assert entropy == pytest.approx(1.0)
    assert confidence_of(0.0, 3) == 1.0 and confidence_of(1.0, 3) == 0.0
    assert confidence_of(0.2, 1) < confidence_of(0.2, 3)
    with pytest.raises(ValueError, match="item_logits"):
        expected_items(np.zeros(n + 1), NIPS_ITEMS)


# ---------------------------------------------------------------------------------------------- calibration
def test_calibration_map_is_monotone_and_clipped() -> None:
    cal = parse_calibration({"format": "neopain-calibration-map", "format_version": 1, "version": "site-a",
                             "x": [0.0, 2.0, 5.0, 7.0], "y": [0.5, 3.0, 6.0, 7.0]})
    xs = np.linspace(-1, 8, 200)
    ys = [cal.apply(float(x)) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:])) and min(ys) >= 0 and max(ys) <= 7
    assert cal.apply(1.0) == pytest.approx(1.75) and cal.apply(2.0) == pytest.approx(3.0)
    ident = CalibrationMap.identity()
    assert not ident.calibrated and ident.apply(3.3) == pytest.approx(3.3) and ident.apply(9) == 7.0


@pytest.mark.parametrize("change, message", [
    ({"y": [0.0, 4.0, 3.0]}, r"y\[2\]: the map must be monotone"),
    ({"x": [0.0, 4.0, 4.0]}, r"x\[2\]: knots must be strictly increasing"),
    ({"x": [0.0, 4.0, 8.0]}, r"x\[2\]: 8.0 is outside"),
    ({"y": [0.0, 1.0]}, "3 knots but 2 values"),
    ({"version": "uncalibrated"}, "version"),
    ({"format_version": 2}, "format_version"),
    ({"slope": 1}, "unknown key"),
])
def test_calibration_payload_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    payload = {"format": "neopain-calibration-map", "format_version": 1, "version": "v1",
               "x": [0.0, 4.0, 7.0], "y": [0.0, 5.0, 7.0], **change}
    with pytest.raises(CalibrationError, match=message):
        parse_calibration(payload, where="map.json")


def test_calibration_reload_and_keep_previous_on_bad_file(engines: _TinyEngines, publisher: Publisher,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    path.mkdir()
    stage = CalibrationStage(path)  # a folder without map.json: not installed yet
    assert stage.current.version == "uncalibrated"
    write_calibration(path / "map.json", version="site-v1", x=[0.0, 7.0], y=[1.0, 7.0])
    b = ModalityBuffers()
    fill(b, T0)
    pipe = make_pipeline(b, engines, publisher, calibration=stage)
    before = pipe.score_once(T0).message
    stage.request_reload()  # what SIGHUP does; the scoring thread picks it up at the next cycle
    after = pipe.score_once(T0).message
    assert before["calibration_version"] == "uncalibrated" and after["calibration_version"] == "site-v1"
    assert "uncalibrated" not in after["quality_flags"]
    # same window, same model: the calibrated score is the map of the raw one
    assert after["nips"] == pytest.approx(1.0 + before["nips"] * 6.0 / 7.0, abs=1e-3)
    (path / "map.json").write_text('{"format": "neopain-calibration-map", "format_version": 1, "version": "v2",'
                                   ' "x": [0, 7], "y": [7, 0]}')
    stage.request_reload()
    third = pipe.score_once(T0).message
    assert third["calibration_version"] == "site-v1" and "monotone" in (stage.last_error or "")
    assert "calibration reload refused" in pipe.health_fields()["detail"]


def test_calibration_for_another_model_is_refused(tmp_path: Path) -> None:
    f = write_calibration(tmp_path / "map.json", version="v1", x=[0.0, 7.0], y=[0.0, 7.0], model_version="m-A")
    assert load_calibration(f, model_version="m-A").version == "v1"
    with pytest.raises(CalibrationError, match="model_version.*m-A.*m-B"):
        load_calibration(f, model_version="m-B")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON: line 1"):
        load_calibration(tmp_path / "bad.json")
    assert load_calibration(tmp_path / "absent.json").version == "uncalibrated"
