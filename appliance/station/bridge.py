"""``neopain bridge``: score messages from the ward broker -> FHIR Observation (files or POST) and/or IHE PCD-01
ORU^R01 over MLLP, for the hospital's record and alarm systems.

Nothing may be lost between the broker and the hospital: each score is de-duplicated by message id and
acknowledged to the broker (QoS 1, manual ack) only after every sink has it, so a bridge crash or a hospital
system outage loses nothing (with ``--client-id``: a persistent broker session, so scores published while the
bridge is down are delivered when it returns). Once every sink has a score, the bridge confirms it to the
device (``station.confirm``: per bed, retained, rate-limited) unless ``--no-confirm``; a score a sink refused
for good is not confirmed, since the hospital does not have it.

Patient identity (``--patients DB``, kept current by ``--adt-listen`` or ``neopain adt``): each score goes to the
patient whose stay in the bed covers its whole window (``patients.PatientRegistry.patient_for_window``): PID-3
and PID-5 of the ORU^R01, ``subject`` of the Observation. A bed with no patient for that window -- none
admitted, or the window straddles an admission, transfer or discharge -- gets the location-only message
(PV1-3 / a Location subject), never a guessed patient; the journal says so once per bed each time its
assignment changes, not once per score.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import paho.mqtt.client as mqtt

from appliance.mqtt import topics
from appliance.mqtt.client import read_password
from appliance.isotime import parse_utc
from appliance.station import adt, fhir, hl7
from appliance.station.patients import Patient, PatientRegistry, bed_id
from appliance.station.confirm import Confirmer, add_confirm_arguments, station_id_from_args
from appliance.station.connection import BrokerOptions, StationConnection, add_broker_arguments

log = logging.getLogger(__name__)


@dataclass
class BridgeStats:
    """What the bridge did since it started: its one-line summary at exit, and what tests wait on."""

    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    invalid: int = 0
    fhir_sent: int = 0
    fhir_failed: int = 0
    mllp_sent: int = 0
    mllp_failed: int = 0
    retries: int = 0
    with_patient: int = 0  # scores sent with a patient (PID-3/5, FHIR subject Patient)
    location_only: int = 0  # scores sent without one (the registry had nobody in the bed for the window)


class Bridge:
    """Turns score messages into hospital messages, once per message id.

    ``fhir_sink`` is a ``fhir.FhirFileSink`` or ``fhir.FhirHttpSink``; ``mllp`` an ``hl7.MllpClient``. For each
    sink a retryable failure (network, 5xx, timeout) is retried with backoff until it succeeds or the bridge
    stops (then the message stays unacknowledged and the broker redelivers it); a permanent one (4xx, NAK) is
    counted and logged, because resending the same content cannot help. ``handle`` returns True when the
    message is finished with (delivered, duplicate, invalid or permanently refused) and may be acknowledged.
    ``on_stored(site, bed, device_id, sequence, new=...)`` is told of each score every sink has (a
    ``Confirmer.stored``). ``patients``: the station's registry (None: every score goes out location-only);
    ``mrn_system``: the FHIR identifier system of MRNs whose authority has no universal id.
    """

    def __init__(self, *, fhir_sink: Any = None, mllp: hl7.MllpClient | None = None, dedup_size: int = 100_000,
                 hl7_options: Mapping[str, Any] | None = None, retry_min_s: float = 0.5,
                 retry_max_s: float = 30.0, patients: PatientRegistry | None = None,
                 mrn_system: str = fhir.MRN_SYSTEM_BASE) -> None:
        if fhir_sink is None and mllp is None:
            raise ValueError("bridge: give at least one of --fhir-out, --fhir-url, --mllp")
        self.fhir_sink = fhir_sink
        self.mllp = mllp
        self.hl7_options = dict(hl7_options or {})
        self.stats = BridgeStats()
        self._seen: OrderedDict[str, bool] = OrderedDict()  # message id -> every sink has it (not refused)
        self._dedup_size = dedup_size
        self._retry = (retry_min_s, retry_max_s)
        self.stopping = threading.Event()
        self.on_stored: Callable[..., None] | None = None
        self.patients = patients
        self.mrn_system = mrn_system
        self._assigned: dict[str, tuple[str, str] | None] = {}  # bed id -> patient key last sent (for the journal)

    def seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def handle(self, topic: str, payload: bytes) -> bool:
        parsed = topics.parse_topic(topic)
        if parsed is None or parsed[2] != topics.SCORE:
            return True
        site, bed, _ = parsed
        self.stats.received += 1
        try:
            score = json.loads(payload)
            if not isinstance(score, dict):
                raise ValueError("score: not a JSON object")
            mid = score.get("message_id")
            if not isinstance(mid, str) or not mid:
                raise ValueError("score.message_id: missing")
            if mid in self._seen:
                self.stats.duplicates += 1
                if self._seen[mid]:
                    self._confirm(site, bed, score, new=False)
                return True
            patient = self._patient(site, bed, score)
            obs = fhir.score_to_observation(score, site=site, bed=bed, patient=patient, mrn_system=self.mrn_system) \
                if self.fhir_sink is not None else None
            if obs is not None:
                problems = fhir.validate_observation(obs)
                if problems:
                    raise ValueError("FHIR Observation invalid: " + "; ".join(problems))
            oru = hl7.build_oru_r01(score, site=site, bed=bed, patient=patient, **self.hl7_options) \
                if self.mllp is not None else None
        except (ValueError, UnicodeDecodeError) as exc:
            self.stats.invalid += 1
            log.warning("bridge: invalid score on %s: %s", topic, exc)
            return True
        refused_before = self.stats.fhir_failed + self.stats.mllp_failed
        if obs is not None and not self._deliver("fhir", lambda: self.fhir_sink.send(obs), mid):
            return False
        if oru is not None and not self._deliver("mllp", lambda: self.mllp.send(oru), mid):  # type: ignore[union-attr]
            return False
        stored = self.stats.fhir_failed + self.stats.mllp_failed == refused_before  # no sink refused it for good
        self._seen[mid] = stored
        while len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        self.stats.delivered += 1
        self._note_assignment(site, bed, patient)
        if stored:
            self._confirm(site, bed, score, new=True)
        return True

    def _patient(self, site: str, bed: str, score: Mapping[str, Any]) -> Patient | None:
        """Who was in the bed for the score's whole window (None without a registry or without a patient)."""
        if self.patients is None:
            return None
        window = score.get("window")
        if not isinstance(window, Mapping):
            raise ValueError("score.window: missing")
        start = parse_utc(str(window.get("start_utc")), "score.window.start_utc")
        end = parse_utc(str(window.get("end_utc")), "score.window.end_utc")
        return self.patients.patient_for_window(bed_id(site, bed), start, end)

    def _note_assignment(self, site: str, bed: str, patient: Patient | None) -> None:
        """Count the score; journal the bed's assignment when it differs from the last score's (once per change)."""
        if patient is None:
            self.stats.location_only += 1
        else:
            self.stats.with_patient += 1
        key = bed_id(site, bed)
        now = None if patient is None else patient.key
        if key in self._assigned and self._assigned[key] == now:
            return
        self._assigned[key] = now
        if patient is None:
            why = "no patient registry (--patients)" if self.patients is None else \
                "no patient assigned to the bed for the whole window"
            log.warning("bridge: bed %s: scores go out location-only (PV1-3 / Location subject): %s", key, why)
        else:
            log.info("bridge: bed %s: scores go to patient %s/%s", key, patient.authority, patient.mrn)

    def _confirm(self, site: str, bed: str, score: Mapping[str, Any], *, new: bool) -> None:
        device, seq = score.get("device_id"), score.get("sequence")
        if self.on_stored is not None and isinstance(device, str) and isinstance(seq, int):
            self.on_stored(site, bed, device, seq, new=new)

    def _deliver(self, sink: str, send: Callable[[], Any], mid: str) -> bool:
        """True when done (sent or permanently refused); False only when stopping before success."""
        delay = self._retry[0]
        while True:
            try:
                send()
                setattr(self.stats, f"{sink}_sent", getattr(self.stats, f"{sink}_sent") + 1)
                return True
            except (fhir.FhirHttpError, hl7.MllpError) as exc:
                if not exc.retry:
                    setattr(self.stats, f"{sink}_failed", getattr(self.stats, f"{sink}_failed") + 1)
                    log.error("bridge: %s refused %s for good: %s", sink, mid, exc)
                    return True
                log.warning("bridge: %s failed for %s, retrying in %.1fs: %s", sink, mid, delay, exc)
            except OSError as exc:  # a file sink: disk full, permissions; worth another try
                log.warning("bridge: %s failed for %s, retrying in %.1fs: %s", sink, mid, delay, exc)
            self.stats.retries += 1
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, self._retry[1])


class BridgeService:
    """A ``Bridge`` fed from the broker: paho's thread queues, one worker delivers in order and then acks.

    With a ``station_id`` it confirms what every sink has to the devices (``station.confirm.Confirmer``).
    """

    def __init__(self, bridge: Bridge, options: BrokerOptions, *, site: str | None = None,
                 persistent_session_s: int = 3600, station_id: str | None = None,
                 confirm_interval_s: float = 1.0) -> None:
        self.bridge = bridge
        self._queue: "queue.Queue[tuple[mqtt.MQTTMessage, int] | None]" = queue.Queue()
        filters = topics.station_filters(site, (topics.SCORE,), name="--site")
        self.confirmer = None if station_id is None else Confirmer(
            station_id, lambda topic, payload: self.connection.publish_retained(topic, payload),
            min_interval_s=confirm_interval_s)
        self.connection = StationConnection(options, filters, lambda msg, gen: self._queue.put((msg, gen)),
                                            manual_ack=True, persistent_session_s=persistent_session_s,
                                            on_ready=None if self.confirmer is None else self.confirmer.resend_all)
        if self.confirmer is not None:
            bridge.on_stored = self.confirmer.stored
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._worker.start()
        if self.confirmer is not None:
            self.confirmer.start()
        self.connection.start()
        self.connection.wait_ready(connect_timeout_s)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            msg, gen = item
            try:
                done = self.bridge.handle(msg.topic, bytes(msg.payload))
            except Exception:  # noqa: BLE001 - a bug for one message must not stop the bridge; not acked
                log.exception("bridge: unexpected error on %s", msg.topic)
                continue
            if done and msg.qos > 0:
                self.connection.ack(msg.mid, msg.qos, gen)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.bridge.stopping.set()
        self._queue.put(None)
        self._worker.join(timeout_s)
        if self.confirmer is not None:
            self.confirmer.stop()  # a last flush while still connected
        self.connection.stop()
        if self.bridge.mllp is not None:
            self.bridge.mllp.close()


def add_bridge_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain bridge``: the broker group, a client id, the outputs and how long to run."""
    add_broker_arguments(parser)
    parser.add_argument("--client-id", help="MQTT client id; enables a persistent session so scores published "
                                            "while the bridge is down are delivered when it returns")
    g = parser.add_argument_group("outputs (at least one)")
    g.add_argument("--fhir-out", metavar="DIR", help="write each Observation to DIR/Observation-<id>.json")
    g.add_argument("--fhir-file-mode", type=_file_mode, default=fhir.FHIR_FILE_MODE, metavar="OCTAL",
                   help=f"mode of the --fhir-out files (default {fhir.FHIR_FILE_MODE:o}: owner read/write, group "
                        "read, so an integration engine in the bridge's group can read them; never world-readable "
                        "by default, they name a patient)")
    g.add_argument("--fhir-url", metavar="URL", help="POST each Observation to URL (FHIR base) as conditional create")
    g.add_argument("--fhir-token-file", metavar="FILE", help="bearer token for --fhir-url (first line of FILE)")
    g.add_argument("--mllp", metavar="HOST:PORT", help="send IHE PCD-01 ORU^R01 over MLLP to HOST:PORT")
    g.add_argument("--receiving-application", default="", help="MSH-5 of the HL7 messages")
    g.add_argument("--receiving-facility", default="", help="MSH-6 of the HL7 messages")
    p = parser.add_argument_group("patient identity (PID-3/PID-5 and FHIR subject; without it: location only)")
    adt.add_listen_arguments(p)
    p.add_argument("--mrn-system", default=fhir.MRN_SYSTEM_BASE, metavar="URI",
                   help="FHIR identifier system of MRNs whose assigning authority came without a universal id: "
                        "URI/<authority> (default: %(default)s)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until killed)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="give up when the broker does not accept us within S seconds (default: 10)")
    add_confirm_arguments(parser, "bridge")


def _file_mode(text: str) -> int:
    try:
        return fhir.parse_file_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--fhir-file-mode: ")) from None


def _bridge_from_args(args: argparse.Namespace) -> Bridge:
    if args.fhir_out and args.fhir_url:
        raise ValueError("--fhir-out and --fhir-url: give one of them")
    sink: Any = None
    if args.fhir_out:
        sink = fhir.FhirFileSink(Path(args.fhir_out), mode=args.fhir_file_mode)
    elif args.fhir_url:
        token = read_password(Path(args.fhir_token_file)) if args.fhir_token_file else None
        sink = fhir.FhirHttpSink(args.fhir_url, bearer_token=token)
    mllp = None
    if args.mllp:
        host, port = hl7.parse_host_port(args.mllp)
        mllp = hl7.MllpClient(host, port)
    if not args.mrn_system.startswith(("http://", "https://", "urn:")):
        raise ValueError(f"--mrn-system: expected an http(s) or urn: URI, got {args.mrn_system!r}")
    adt.local_zone(args.adt_timezone)  # checked before anything starts
    patients = PatientRegistry(Path(args.patients)) if args.patients else None
    return Bridge(fhir_sink=sink, mllp=mllp, hl7_options={"receiving_application": args.receiving_application,
                                                          "receiving_facility": args.receiving_facility},
                  patients=patients, mrn_system=args.mrn_system)


def run_bridge(args: argparse.Namespace) -> int:
    """``neopain bridge``: runs until SIGTERM/SIGINT or ``--duration``; prints a one-line summary at the end."""
    try:
        bridge = _bridge_from_args(args)
        listener = adt.listener_from_args(args, bridge.patients)
        service = BridgeService(bridge, BrokerOptions.from_args(args), site=args.site,
                                station_id=station_id_from_args(args, "bridge", args.client_id),
                                confirm_interval_s=args.confirm_interval)
    except (ValueError, OSError) as exc:
        print(f"neopain bridge: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    if listener is not None:
        listener.start()
    try:
        service.start(args.connect_timeout)
    except ConnectionError as exc:
        print(f"neopain bridge: {exc}", file=sys.stderr)
        service.stop()
        if listener is not None:
            listener.stop()
        return 2
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        if listener is not None:
            listener.stop()
    s = bridge.stats
    print(f"neopain bridge: received {s.received}, delivered {s.delivered}, duplicates {s.duplicates}, "
          f"invalid {s.invalid}, fhir sent {s.fhir_sent} failed {s.fhir_failed}, "
          f"mllp sent {s.mllp_sent} failed {s.mllp_failed}, retries {s.retries}, "
          f"with patient {s.with_patient}, location only {s.location_only}")
    return 0
