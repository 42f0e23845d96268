"""``neopain run``: the bedside daemon: starts, runs and stops the scoring graph that ``appliance/wiring.py``
composes (sources -> ring buffers -> windows -> gate -> engines -> calibration -> MQTT).

Why the order of start-up: systemd (``Type=notify``) must only hear ``READY=1`` when the device can really
score -- sources opened and engines loaded -- so start-up is: check the config (exit 2 on the first error,
one line), install the signal handlers (a SIGTERM during a slow engine load still stops cleanly), take the
state directory's instance lock (before anything opens a state file), start the publisher (so health can say
what is wrong even if the engines fail), open the engines (exit 3 when no backend loads, after publishing a
``no_score`` health saying so), load the calibration map (exit 2 when the installed file is invalid), open the
sources and wait (bounded) for them, then ``READY=1`` and the scoring loop. A source that does not open in time does not block readiness forever: each source reconnects on its
own and the health message and ``STATUS=`` say which one is missing.

Signals: SIGTERM/SIGINT stop gracefully (``STOPPING=1``, finish the cycle, stop sources, publish ``offline``,
leave unacknowledged scores in the outbox for the next start); SIGHUP reloads the calibration map (the
scoring thread does it between cycles; a bad file keeps the previous map).

Exit codes: 0 clean stop, 1 unexpected failure, 2 configuration error (config file, secrets, calibration
file) or another ``neopain run`` holding the state directory (``appliance/instance_lock.py``: the line names
its PID), 3 no engine backend could load the model.

State files: the outbox and the calibration sessions heal themselves (``appliance/storage.py``): a damaged
file is moved aside and salvaged, at start or when the damage is met at run time, and scoring goes on. Health
is ``degraded`` with each moved file named in ``detail`` (and ``STATUS=`` counts them) until the next
restart, so the ward sees it and someone looks at the moved-aside file and the disk.

Simulated beds set ``camera.loop`` (replay the recording's video file forever) and
``microphone.pace_realtime`` (a PCM replayed through ALSA's file plugin is not paced); a real device
sets neither.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appliance import service, wiring
from appliance.instance_lock import InstanceLock, InstanceLocked
from appliance.config import DEFAULT_CONFIG_PATH, Config, ConfigError, check_config
from appliance.scoring.calibration_map import CalibrationError
from appliance.scoring.calibration_stage import CalibrationStage
from appliance.sources.bed import SOURCE_OPEN_TIMEOUT_S
from appliance.storage import health_note
from appliance.textcut import cut

log = logging.getLogger("neopain.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_ENGINES = 3

STATUS_INTERVAL_S = 5.0
MANIFEST_CARD_KEY = "manifest.json#model_card"  # where the card is when its files were not copied beside it
SOURCE_CHECK_S = 1.0  # how often a source going down / coming back is looked for (and journalled)


# ------------------------------------------------------------------------------------------------- the daemon
class Daemon:
    """One running appliance; :meth:`run` blocks until stopped and returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        self.publisher: Any = None
        self.engines: Any = None
        self.model: dict[str, Any] | None = None  # health's ``model`` block, once the engines are loaded
        self.graph: wiring.ScoringGraph | None = None  # the stages from the sensors to the publisher
        self.sources: Any = None  # appliance.sources.bed.BedSources, once opened
        self.calibration: CalibrationStage | None = None
        self.recorder: Any = None  # appliance.scoring.ratings.CalibrationRecorder, once started
        self.pipeline: Any = None
        self.watchdog = service.Watchdog()
        self.instance_lock: InstanceLock | None = None
        self._startup_detail = "starting"

    # -- health -------------------------------------------------------------------------------------------
    def health_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"sources": self.sources.up() if self.sources else {},
                                  "fps": self.sources.fps() if self.sources else {}}
        if self.sources:  # driver threads that died and were restarted (supervised): a crash loop shows here
            fields["source_restarts"] = self.sources.restarts()
        if self.model is not None:
            fields["model"] = self.model
        if self.pipeline is not None:
            fields.update(self.pipeline.health_fields())
        else:
            fields.update(state="no_score", detail=self._startup_detail,
                          engine_backend=getattr(self.engines, "backend", None))
        storage = self.storage_problems()
        if storage:
            # A state file moved aside (or failing) stays in health until a restart, after someone looked at it.
            if fields.get("state") == "ok":
                fields["state"] = "degraded"
            fields["detail"] = "; ".join(x for x in (*storage, fields.get("detail")) if x)
        if self.calibration is not None:
            # The active map first (never cut off by the 500-character limit): after a SIGHUP the ward can
            # see which bundle scores are calibrated with, and a refused reload's reason follows it.
            active = f"calibration {self.calibration.current.version} active"
            fields["detail"] = "; ".join(x for x in (active, fields.get("detail")) if x)
        if fields.get("detail"):
            fields["detail"] = fields["detail"][:500]
        return fields

    def storage_problems(self) -> list[str]:
        """The state files (outbox, calibration sessions) that were damaged and healed, or are failing: each
        names the file (``appliance/storage.py``)."""
        notes: list[str] = []
        if self.publisher is not None and (note := health_note(self.publisher.outbox.healed)):
            notes.append(note)
        if self.recorder is not None:
            notes += self.recorder.storage_problems()
        return notes

    def status_text(self) -> str:
        if self.pipeline is None:
            return self._startup_detail
        h = self.pipeline.health_fields()
        s = self.pipeline.stats
        last = f"nips {s.last_nips:.1f}" if s.last_nips is not None else "no score yet"
        presence = ",".join(m for m, ok in self.pipeline.presence().items() if ok) or "none"
        pub = self.publisher.stats() if self.publisher is not None else None
        mqtt = "mqtt -"
        if pub is not None:  # not connected: say why (a host that cannot be resolved, a refusal, ...)
            why = f" ({pub.last_error[:200]})" if pub.state.value != "connected" and pub.last_error else ""
            mqtt = f"mqtt {pub.state.value}{why}, outbox {pub.outbox_depth}"
        storage = self.storage_problems()
        moved = f"; {len(storage)} state file problem(s), see health" if storage else ""
        return (f"{h['state']}: {last}; {s.scores} scores; modalities {presence}; "
                f"{getattr(self.engines, 'backend', '-')}; {mqtt}{moved}")

    def _on_command(self, command: Any) -> None:
        # Runs on paho's thread: hand over and return (the recorder queues it for its own writer thread).
        if command.name.startswith("calibration/") and self.recorder is not None:
            self.recorder.on_command(command)
        else:
            log.info("command %s received (args %s): not handled by this daemon", command.name, cut(command.args))

    # -- lifecycle ----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_reload(self) -> None:
        if self.calibration is not None:
            self.calibration.request_reload()
        else:
            log.warning("SIGHUP before the calibration was loaded: ignored")

    def run(self) -> int:
        from appliance.mqtt.publisher import Publisher

        cfg = self.config
        # Before anything opens the state directory: a second daemon on it stops here (exit 2, naming the PID).
        self.instance_lock = InstanceLock(Path(cfg.outbox.path).parent).acquire()
        self.publisher = Publisher(wiring.publisher_config(cfg), health_provider=self.health_fields,
                                   on_command=self._on_command)
        self.publisher.start()
        try:
            return self._run()
        finally:
            self._shutdown()

    def _run(self) -> int:
        cfg = self.config
        service.set_status("loading engines")
        self._startup_detail = "starting: loading engines"
        try:
            self.engines, model_cfg = self._open_engines()
        except Exception as exc:
            self._startup_detail = f"engines failed to load: {exc}"[:500]
            log.error("no score possible: %s", self._startup_detail)
            service.set_status(self._startup_detail)
            # Wait for *this* health to go out: one sent on connect (detail "starting") must not count, or
            # the process can exit before the ward is told why there is no score.
            sent_before = self.publisher.stats().health_sent
            self.publisher.request_health()
            self.publisher.wait_for(lambda p: p.stats().health_sent > sent_before or p.state.is_error, 5.0)
            return EXIT_ENGINES
        try:
            graph = wiring.build(cfg, engines=self.engines, model_config=model_cfg, publisher=self.publisher,
                                 watchdog=self.watchdog)
        except CalibrationError as exc:
            print(f"neopain run: calibration.bundle: {exc}", file=sys.stderr)
            self._startup_detail = f"calibration refused: {exc}"[:500]
            return EXIT_CONFIG
        self.graph, self.calibration, self.recorder = graph, graph.calibration, graph.recorder
        if self.stop_requested.is_set():
            return EXIT_OK

        service.set_status("opening sources")
        self._startup_detail = "starting: opening sources"
        self.sources = graph.sources.open()
        deadline = time.monotonic() + SOURCE_OPEN_TIMEOUT_S
        while not all(self.sources.opened().values()) and time.monotonic() < deadline:
            if self.stop_requested.wait(0.1):
                return EXIT_OK
        missing = [name for name, ok in self.sources.opened().items() if not ok]
        if missing:
            log.warning("sources not open after %.0f s (they keep retrying): %s", SOURCE_OPEN_TIMEOUT_S,
                        ", ".join(missing))

        self.pipeline = graph.pipeline
        self.watchdog.start()
        self.pipeline.start()
        service.ready(f"scoring every {cfg.scoring.cadence_s:g} s with {self.engines.backend}"
                      + (f"; waiting for {', '.join(missing)}" if missing else ""))
        log.info("ready: model %s on %s, model card %s, calibration %s, sources %s", self.engines.model_version,
                 self.engines.backend, self.model["card"]["version"] if self.model and self.model["card"] else "none",
                 self.calibration.current.version, self.sources.opened())
        was_up = self.sources.up()
        next_status = time.monotonic() + STATUS_INTERVAL_S
        while not self.stop_requested.wait(SOURCE_CHECK_S):
            was_up = self._log_source_changes(was_up)
            if time.monotonic() >= next_status:
                try:
                    text = self.status_text()
                except Exception as exc:  # e.g. an outbox that cannot be read: say so, never exit over STATUS=
                    text = f"status unavailable: {type(exc).__name__}: {exc}"[:300]
                service.set_status(text)
                next_status += STATUS_INTERVAL_S
        return EXIT_OK

    def _log_source_changes(self, was_up: dict[str, bool]) -> dict[str, bool]:
        """Journal a line when a source goes down or comes back (health says it too, at once)."""
        assert self.sources is not None
        now_up = self.sources.up()
        for name, ok in now_up.items():
            if ok == was_up.get(name):
                continue
            if ok:
                log.info("source %s up", name)
            else:
                log.warning("source %s down: %s", name, self.sources.why_down(name))
            self.publisher.request_health()
        return now_up

    def _open_engines(self) -> tuple[Any, Any]:
        from models.engines.select import open_scoring_engines

        s = self.config.scoring
        engines = open_scoring_engines(s.model_dir, order=tuple(s.backends), cache_dir=s.engine_cache_dir,
                                       precision=s.precision)
        model_cfg = engines.config  # the manifest's: the network size comes from the model itself
        refusal = s.model_size_refusal(model_cfg.name)
        if refusal:
            engines.close()
            raise RuntimeError(refusal)
        self.model = model_health(engines, s.model_dir)
        card = self.model["card"]
        log.info("model %s (%s) from %s; %s", self.model["version"], self.model["config"], s.model_dir,
                 f"model card {card['path']}: {card['summary']}" if card else "no model card (an export of a "
                 "checkpoint without model_card.json)")
        self._warm_up(engines, model_cfg)
        return engines, model_cfg

    @staticmethod
    def _warm_up(engines: Any, model_cfg: Any) -> None:
        """One throw-away run before READY: the first cycle would otherwise pay for lazy imports, kernel
        selection and allocations (seconds on a CPU), and its score would be late."""
        import numpy as np

        from models.features.inputs import RawWindow, model_inputs

        empty = np.zeros(0)
        frames = np.zeros((model_cfg.video.frames, model_cfg.video.crop_size, model_cfg.video.crop_size, 3), np.uint8)
        raw = RawWindow(end_s=30.0, frames=frames, audio=np.zeros(16000 * 2, np.float32), audio_rate=16000,
                        rr_ms=empty, rr_times_s=empty, spo2_pct=empty, spo2_times_s=empty,
                        presence={"video": True, "audio": True, "vitals": False})
        started = time.perf_counter()
        try:
            engines.run({k: v[None, ...] for k, v in model_inputs(raw, model_cfg).items()})
        except Exception as exc:  # a real failure shows up (and is reported) in the first cycle
            log.warning("engine warm-up failed: %s", exc)
        log.info("engines warmed up in %.0f ms", (time.perf_counter() - started) * 1e3)

    def _shutdown(self) -> None:
        service.stopping("stopping")
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.recorder is not None:
            self.recorder.stop()
        self.watchdog.stop()
        if self.sources is not None:
            self.sources.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.engines is not None:
            try:
                self.engines.close()
            except Exception as exc:
                log.warning("engines did not close cleanly: %s", exc)
        if self.instance_lock is not None:
            self.instance_lock.release()
        log.info("stopped")


def model_health(engines: Any, model_dir: str | Path) -> dict[str, Any]:
    """Health's ``model`` block: the version scores carry, the network size, and the model card the export
    carries (its version, the card file on the device, a one-line summary), or None (docs/mqtt.md)."""
    from appliance.mqtt.messages import MODEL_SUMMARY_MAX
    from models.card import CARD_JSON, CARD_MARKDOWN, summary

    card = engines.manifest.model_card
    if card is not None:
        path = next((Path(model_dir) / n for n in (CARD_MARKDOWN, CARD_JSON) if (Path(model_dir) / n).is_file()),
                    Path(model_dir) / MANIFEST_CARD_KEY)
        card = {"version": card["model_version"], "path": str(path), "summary": summary(card)[:MODEL_SUMMARY_MAX]}
    return {"version": engines.model_version, "config": engines.config.name, "card": card}


# ------------------------------------------------------------------------------------------------- CLI glue
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain run``."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"appliance config file (default: {DEFAULT_CONFIG_PATH})")


def run_daemon(args: argparse.Namespace) -> int:
    """``neopain run``: the exit code (see module docstring)."""
    try:
        config = check_config(args.config)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    service.setup_logging(config.debug.log_level)
    daemon = Daemon(config)
    with service.SignalHandlers(on_stop=daemon.request_stop, on_reload=daemon.request_reload):
        try:
            return daemon.run()
        except InstanceLocked as exc:  # one line, like a configuration error
            print(f"neopain run: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except (OSError, ValueError) as exc:  # e.g. an unreadable outbox folder or TLS file
            log.error("cannot run: %s", exc)
            print(f"neopain run: {exc}", file=sys.stderr)
            return EXIT_CONFIG if isinstance(exc, (ValueError, FileNotFoundError, PermissionError)) else EXIT_FAILURE
        except Exception:
            log.exception("neopain run failed")
            return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.daemon --config PATH`` (what ``neopain run`` calls)."""
    parser = argparse.ArgumentParser(prog="neopain run", description="Run the bedside scoring daemon.")
    add_run_arguments(parser)
    return run_daemon(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
