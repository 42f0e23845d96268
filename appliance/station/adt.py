"""The hospital's HL7 v2 ADT feed -> ``patients.PatientRegistry``: an MLLP listener for A01, A02 and A03.

Events and what they do (the time is EVN-6 "event occurred", else EVN-2 "recorded", else MSH-7):

- ``ADT^A01`` admit: the patient (PID) is in the bed (PV1-3) from that time on;
- ``ADT^A02`` transfer: the patient is in the new bed (PV1-3) from that time on; PV1-6 (prior location) is
  only compared with the registry and a mismatch logged -- the registry's own record of where the patient was
  is what ends;
- ``ADT^A03`` discharge: the patient's stay ends at that time (PV1 is not needed).

Bed mapping (PV1-3, a PL): component 1 *point of care* is the device's ``[device] site``, component 3 *bed* its
``[device] bed`` -- exactly the topic levels ``neopain/<site>/<bed>``, and what the bridge's own ORU^R01 writes
into PV1-3. Component 2 (room) is not used: NICU beds are addressed by unit and bed. So name each device's site
and bed as the hospital's ADT system names the unit and the bed.

The patient: PID-3 is read as a list of CX; the one with identifier type ``MR`` (else the first) gives the MRN
(CX.1) and the assigning authority (CX.4: namespace, universal id, its type); PID-5 (first XPN) the family and
given name; PID-7 the birth date and PID-8 the sex (HL7 table 0001) when present.

Every message is answered with an ACK: ``AA`` when applied (or already applied: a message whose control id
MSH-10 was seen before is acknowledged again, not applied twice), ``AE`` with an ERR segment naming the
segment and field (ERR-2, e.g. ``PID^1^3^1^4``; also in MSA-3 as "PID-3.4: ...") when the content is wrong,
``AR`` when the message cannot be processed at all (not ADT, an event other than A01/A02/A03, an MSH that
cannot be read). The feed is parsed with hl7apy (TOLERANT: real feeds carry local Z-segments and fields beyond
what a strict structure allows; the fields read here are checked one by one).
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from typing import Any, Callable

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, UnsupportedVersion
from hl7apy.parser import parse_message

from appliance.mqtt import topics
from appliance.station import hl7
from appliance.station.hl7 import ErrorLocation
from appliance.station.patients import SEXES, Patient, PatientRegistry, bed_id

log = logging.getLogger(__name__)

EVENTS = {"A01": "admit", "A02": "transfer", "A03": "discharge"}
MAX_MESSAGE_BYTES = 1 << 20  # an ADT message is a few kB; a stream without an end block is cut here


class AdtError(ValueError):
    """A message that cannot be applied: ``code`` AE (content) or AR (rejected), where, and the 0357 condition."""

    def __init__(self, location: ErrorLocation, text: str, *, code: str = "AE",
                 condition: int = hl7.ERR_REQUIRED_FIELD_MISSING) -> None:
        super().__init__(f"{location}: {text}")
        self.location, self.code, self.condition = location, code, condition


@dataclass(frozen=True)
class AdtEvent:
    """One ADT message, read: what happened to whom, where and when."""

    event: str  # A01 / A02 / A03
    control_id: str  # MSH-10, qualified by the sender (MSH-3, MSH-4) for de-duplication
    patient: Patient
    bed: str | None  # "<site>/<bed>" from PV1-3 (None for A03 without PV1)
    at: datetime
    prior_bed: str | None = None  # PV1-6 of an A02


# ---------------------------------------------------------------------------------------------- reading
def _segment(message: Any, name: str) -> Any | None:
    for child in message.children:
        if child.name == name:
            return child
    return None


def _field(segment: Any, index: int) -> list[str]:
    """Field ``index`` of ``segment`` as its repetitions (each the raw ER7 text of one repetition)."""
    if segment is None:
        return []
    name = f"{segment.name.lower()}_{index}"
    reps = [r.to_er7() for r in segment.children if r.name.lower() == name]
    return [r for r in reps if r.strip()]


def _components(text: str) -> list[str]:
    return text.split("^")


def _part(parts: list[str], n: int) -> str:
    """1-based component ``n`` of ``parts``, its first subcomponent, unescaped (empty when absent). Split before
    unescaping, so an escaped ``\\T\\`` in a name stays an ``&`` of the name."""
    return hl7.unescape(parts[n - 1].split("&")[0]).strip() if len(parts) >= n else ""


def _required(segment: Any, seg: str, field: int) -> list[str]:
    if segment is None:
        raise AdtError(ErrorLocation(seg, field), f"segment {seg} missing (required for this event)")
    value = _field(segment, field)
    if not value:
        raise AdtError(ErrorLocation(seg, field), "required field is empty")
    return value


def _patient(pid: Any) -> Patient:
    ids = [_components(r) for r in _required(pid, "PID", 3)]
    chosen = next((c for c in ids if _part(c, 5).upper() == "MR"), ids[0])
    mrn = _part(chosen, 1)
    if not mrn:
        raise AdtError(ErrorLocation("PID", 3, 1), "MRN (CX.1 ID number) is empty")
    hd = chosen[3].split("&") if len(chosen) >= 4 else [""]
    authority = hl7.unescape(hd[0]).strip()
    if not authority:
        raise AdtError(ErrorLocation("PID", 3, 4), f"assigning authority (CX.4) is empty for MRN {mrn!r}; an MRN "
                       "without its authority cannot identify a patient")
    authority_id = hl7.unescape(hd[1]).strip() if len(hd) > 1 else ""
    authority_type = hl7.unescape(hd[2]).strip() if len(hd) > 2 else ""
    name = _components(_required(pid, "PID", 5)[0])
    family = _part(name, 1)  # XPN.1 is an FN: surname & own surname prefix & ...
    if not family:
        raise AdtError(ErrorLocation("PID", 5, 1), "family name (XPN.1) is empty")
    birth: date | None = None
    if (dob := _field(pid, 7)):
        text = dob[0].split("^")[0]
        try:
            birth = date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except (ValueError, IndexError):
            raise AdtError(ErrorLocation("PID", 7), f"birth date {text!r} is not YYYYMMDD[...]",
                           condition=hl7.ERR_DATA_TYPE) from None
    sex = None
    if (sx := _field(pid, 8)):
        sex = hl7.unescape(sx[0]).strip().upper()
        if sex not in SEXES:
            raise AdtError(ErrorLocation("PID", 8), f"sex {sex!r} is not in HL7 table 0001 ({', '.join(SEXES)})",
                           condition=hl7.ERR_TABLE_VALUE)
    return Patient(mrn=mrn, authority=authority, family=family, given=_part(name, 2), birth_date=birth, sex=sex,
                   authority_id=authority_id or None, authority_id_type=authority_type or None)


def _location(pv1: Any, field: int, *, required: bool) -> str | None:
    reps = _required(pv1, "PV1", field) if required else _field(pv1, field)
    if not reps:
        return None
    pl = _components(reps[0])
    site, bed = _part(pl, 1), _part(pl, 3)  # PL.1 and PL.3 are HDs: namespace id first
    for n, value, what in ((1, site, "point of care (the device's site)"), (3, bed, "bed (the device's bed)")):
        if not value:
            raise AdtError(ErrorLocation("PV1", field, n), f"{what} is empty")
        try:
            topics.check_level(what, value)
        except ValueError as exc:
            raise AdtError(ErrorLocation("PV1", field, n), str(exc), condition=hl7.ERR_DATA_TYPE) from None
    return bed_id(site, bed)


def _event_time(msh: Any, evn: Any, local_tz: tzinfo | None) -> datetime:
    for seg, name, field in ((evn, "EVN", 6), (evn, "EVN", 2), (msh, "MSH", 7)):
        value = _field(seg, field)
        if value:
            try:
                return hl7.parse_hl7_timestamp(value[0], f"{name}-{field}", local_tz=local_tz)
            except ValueError as exc:
                raise AdtError(ErrorLocation(name, field), str(exc).split(": ", 1)[-1],
                               condition=hl7.ERR_DATA_TYPE) from None
    raise AdtError(ErrorLocation("EVN", 2), "no event time (EVN-6, EVN-2 and MSH-7 are all empty)")


def read_adt(text: str, *, local_tz: tzinfo | None = None) -> AdtEvent:
    """Parse one ADT message (hl7apy) into an :class:`AdtEvent`; :class:`AdtError` names what is wrong."""
    message_text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        message = parse_message(message_text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except UnsupportedVersion as exc:
        raise AdtError(ErrorLocation("MSH", 12), str(exc), code="AR", condition=hl7.ERR_UNSUPPORTED_VERSION) from None
    except (HL7apyException, ValueError, KeyError, IndexError) as exc:
        raise AdtError(ErrorLocation("MSH", 1), f"not a readable HL7 v2 message: {exc}", code="AR",
                       condition=hl7.ERR_APPLICATION) from None
    msh, evn, pid, pv1 = (_segment(message, n) for n in ("MSH", "EVN", "PID", "PV1"))
    kind = _components(_field(msh, 9)[0] if _field(msh, 9) else "")
    if _part(kind, 1) != "ADT":
        raise AdtError(ErrorLocation("MSH", 9, 1), f"message type {_part(kind, 1)!r} is not ADT", code="AR",
                       condition=hl7.ERR_UNSUPPORTED_MESSAGE_TYPE)
    event = _part(kind, 2) or (_part(_components(_field(evn, 1)[0]), 1) if _field(evn, 1) else "")
    if event not in EVENTS:
        raise AdtError(ErrorLocation("MSH", 9, 2), f"event {event!r} is not handled (only "
                       f"{', '.join(f'{k} {v}' for k, v in EVENTS.items())})", code="AR",
                       condition=hl7.ERR_UNSUPPORTED_EVENT)
    control = _field(msh, 10)
    if not control:
        raise AdtError(ErrorLocation("MSH", 10), "message control id is empty", code="AR")
    sender = "^".join(hl7.unescape(v[0]) if v else "" for v in (_field(msh, 3), _field(msh, 4)))
    if pid is None:
        raise AdtError(ErrorLocation("PID", 3), "segment PID missing")
    patient = _patient(pid)
    bed = prior = None
    if event in ("A01", "A02"):
        bed = _location(pv1, 3, required=True)
    if event == "A02":
        prior = _location(pv1, 6, required=False)
    return AdtEvent(event=event, control_id=f"{sender}|{hl7.unescape(control[0])}", patient=patient, bed=bed,
                    at=_event_time(msh, evn, local_tz), prior_bed=prior)


def apply_event(registry: PatientRegistry, event: AdtEvent) -> str:
    """Apply one event to the registry; returns the journal line. ``AdtError`` for a discharge of nobody."""
    p = event.patient
    if event.event == "A01":
        return "A01 admit: " + registry.admit(p, event.bed or "", event.at, source="adt A01")
    if event.event == "A02":
        was = registry.bed_of(*p.key)
        if event.prior_bed and was and was != event.prior_bed:
            log.warning("adt: A02 for %s/%s says prior bed %s, the registry has %s", *p.key, event.prior_bed, was)
        return "A02 transfer: " + registry.transfer(p, event.bed or "", event.at, source="adt A02")
    try:
        return "A03 discharge: " + registry.discharge(p.authority, p.mrn, event.at, source="adt A03")
    except KeyError:
        raise AdtError(ErrorLocation("PID", 3), f"patient {p.authority}/{p.mrn} is in no bed",
                       condition=hl7.ERR_UNKNOWN_KEY) from None


def handle_message(registry: PatientRegistry, text: str, *, local_tz: tzinfo | None = None,
                   now: datetime | None = None) -> str:
    """One received ADT message -> its ACK (AA / AE / AR, see the module doc). Never raises for bad input."""
    try:
        event = read_adt(text, local_tz=local_tz)
        if registry.seen_message(event.control_id, now):
            log.info("adt: %s %s already applied; acknowledged again", event.event, event.control_id)
            return _ack(text, "AA", "already applied")
        try:
            line = apply_event(registry, event)
        except BaseException:
            registry.forget_message(event.control_id)
            raise
        log.info("adt: %s", line)
        return _ack(text, "AA", "")
    except AdtError as exc:
        log.warning("adt: %s %s", exc.code, exc)
        return _ack(text, exc.code, str(exc), location=exc.location, condition=exc.condition)
    except Exception as exc:  # noqa: BLE001 - a bug or a full disk: AE, the sender retries
        log.exception("adt: applying failed")
        return _ack(text, "AE", f"application error: {type(exc).__name__}: {exc}",
                    location=ErrorLocation("MSH", 10), condition=hl7.ERR_APPLICATION)


def _ack(text: str, code: str, reply: str, *, location: ErrorLocation | None = None,
         condition: int | None = None) -> str:
    try:
        return hl7.build_ack(text, code, reply[:500], location=location, error_code=condition)
    except (ValueError, IndexError):  # no usable MSH to answer: a bare reject
        now = hl7.hl7_timestamp(datetime.now(timezone.utc))
        return "\r".join([f"MSH|^~\\&|NEOPAIN|||||{now}||ACK|NEOPAIN-ACK|P|2.6",
                          f"MSA|AR||{hl7.escape(reply[:500])}",
                          f"ERR||MSH^1^1^1|{hl7.ERR_APPLICATION}^Application internal error^HL70357|E"]) + "\r"


# ---------------------------------------------------------------------------------------------- listening
class AdtListener:
    """A threaded TCP server speaking MLLP: each received message is applied and answered on its connection.

    Messages of one connection are handled in order (an A01 before the A02 sent after it); the registry's
    lock orders those of different connections. ``port`` 0 picks a free port (``self.port`` tells which).
    """

    def __init__(self, registry: PatientRegistry, host: str, port: int, *, local_tz: tzinfo | None = None,
                 on_message: Callable[[str, str], None] | None = None) -> None:
        self.registry, self.local_tz, self.on_message = registry, local_tz, on_message
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((host, port), Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    def _serve(self, conn: socket.socket) -> None:
        decoder = hl7.MllpDecoder(MAX_MESSAGE_BYTES)
        while True:
            try:
                data = conn.recv(65536)
                if not data:
                    return
                for text in decoder.feed(data):
                    ack = handle_message(self.registry, text, local_tz=self.local_tz)
                    conn.sendall(hl7.mllp_frame(ack))
                    if self.on_message is not None:
                        self.on_message(text, ack)
            except (OSError, ValueError) as exc:  # a dropped peer, a stream without end blocks
                log.info("adt: connection ended: %s", exc)
                return

    def start(self) -> "AdtListener":
        self._thread = threading.Thread(target=self._server.serve_forever, name="adt-listener", daemon=True)
        self._thread.start()
        log.info("adt: listening for HL7 ADT over MLLP on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)


# ---------------------------------------------------------------------------------------------- command line
def add_listen_arguments(group: Any, *, listen: str = "--adt-listen", timezone_flag: str = "--adt-timezone",
                         required: bool = False) -> None:
    """``--patients``, the listen address and the feed's time zone: shared by ``neopain adt`` and ``bridge``."""
    group.add_argument("--patients", metavar="DB", required=required,
                       help="the station's patient registry (SQLite; created when missing): bed -> patient over "
                            "time, fed by the ADT listener")
    group.add_argument(listen, dest="adt_listen", metavar="HOST:PORT", required=required,
                       help="listen for HL7 v2 ADT A01/A02/A03 over MLLP on HOST:PORT (PV1-3 point of care = the "
                            "device's site, PV1-3 bed = its bed); needs --patients")
    group.add_argument(timezone_flag, dest="adt_timezone", metavar="ZONE",
                       help="IANA time zone (e.g. Europe/Berlin) of ADT times sent without a UTC offset; without "
                            "it such a message is answered AE naming the field")


def local_zone(name: str | None, option: str = "--adt-timezone") -> tzinfo | None:
    """``zoneinfo.ZoneInfo(name)``, or ValueError naming the option and the value."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{option}: {name!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)") from None


def listener_from_args(args: Any, registry: PatientRegistry | None, *, listen: str = "--adt-listen",
                       timezone_flag: str = "--adt-timezone") -> AdtListener | None:
    """The ADT listener ``args`` ask for (None without an address); ValueError naming the option when bad."""
    if not getattr(args, "adt_listen", None):
        return None
    if registry is None:
        raise ValueError(f"{listen}: needs --patients DB (where the assignments are kept)")
    host, port = hl7.parse_host_port(args.adt_listen, option=listen)
    return AdtListener(registry, host, port, local_tz=local_zone(args.adt_timezone, timezone_flag))


def add_adt_arguments(parser: Any) -> None:
    """Arguments of ``neopain adt``: the registry, where to listen, the feed's time zone, how long."""
    add_listen_arguments(parser, listen="--listen", timezone_flag="--timezone", required=True)
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until killed)")


def run_adt(args: Any) -> int:
    """``neopain adt``: keep the registry current from the hospital's ADT feed until SIGTERM/SIGINT."""
    import signal
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        registry = PatientRegistry(args.patients)
        listener = listener_from_args(args, registry, listen="--listen", timezone_flag="--timezone")
        assert listener is not None  # --listen is required
    except (ValueError, OSError) as exc:
        print(f"neopain adt: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    listener.start()
    print(f"neopain adt: listening on {listener.host}:{listener.port}, registry {registry.path}", flush=True)
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
        registry.close()
    return 0
