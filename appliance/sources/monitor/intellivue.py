"""IntelliVue MIB/RS232 client logic, free of I/O so it can be tested byte for byte.

The dialog (Data Export Interface, as VSCaptureMP runs it):

1. client -> association request; monitor -> association result (accept) and an MDS create event;
2. client -> MDS create result (echoing the event's invoke id);
3. client -> extended polls, numerics (class 6) about once a second and the real-time waves (class 9)
   a few times a second; monitor -> poll results (possibly split into linked results).

``IntelliVueClient`` holds that state. The reader feeds it the frames it receives and sends the bytes it
returns; the client turns poll results into ``VitalSample`` and ``WaveChunk`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import intellivue_protocol as proto
from .intellivue_framing import Deframer, encode_frame
from .types import PLAUSIBLE, Rejection, VitalSample, WaveChunk

SOURCE = "intellivue"
NUMERIC_FIELDS = {
    proto.NOM_ECG_CARD_BEAT_RATE: "hr",
    proto.NOM_ECG_CARD_BEAT_RATE_BTB: "hr_btb",
    proto.NOM_PLETH_PULS_RATE: "pulse_rate",
    proto.NOM_PULS_OXIM_SAT_O2: "spo2",
    proto.NOM_PULS_OXIM_PERF_REL: "perfusion_index",
}
FIELD_NAMES = {"hr": "HR", "hr_btb": "HR_BTB", "pulse_rate": "PR", "spo2": "SPO2", "perfusion_index": "PI"}


@dataclass
class Step:
    """What one received frame produced: data for the sink, rejections to count, frames to send."""

    out: list[VitalSample | WaveChunk] = field(default_factory=list)
    rejects: list[Rejection] = field(default_factory=list)
    send: list[bytes] = field(default_factory=list)


def numerics_to_sample(values: list[proto.NumericObs], t_mono_ns: int) -> tuple[VitalSample | None, list[Rejection]]:
    """Map the numerics we use to a VitalSample; unusable values become None with a flag naming the field."""
    fields: dict[str, float | None] = {}
    flags: set[str] = set()
    rejects = []
    for obs in values:
        name = NUMERIC_FIELDS.get(obs.physio_id)
        if name is None:
            continue
        label = FIELD_NAMES[name]
        value = obs.value
        if obs.special is not None:
            flags.add(f"{label}:{obs.special}")
            value = None
        for flag in proto.state_flags(obs.state & (proto.STATE_UNUSABLE | proto.STATE_REPORTED)):
            flags.add(f"{label}:{flag}")
        if obs.state & proto.STATE_UNUSABLE:
            value = None
        if value is not None:
            lo, hi = PLAUSIBLE[name]
            if not lo <= value <= hi:
                rejects.append(Rejection(f"implausible:{label}", f"{label}={value:g} outside [{lo:g}, {hi:g}]"))
                flags.add(f"{label}:implausible")
                value = None
        fields[name] = value
    if not fields:
        return None, rejects
    sample = VitalSample(
        t_mono_ns=t_mono_ns,
        hr=fields.get("hr"),
        spo2=fields.get("spo2"),
        pulse_rate=fields.get("pulse_rate"),
        perfusion_index=fields.get("perfusion_index"),
        flags=frozenset(flags),
        source=SOURCE,
        hr_btb=fields.get("hr_btb"),
    )
    return sample, rejects


class IntelliVueClient:
    """State machine of one association. Create a new one (or call ``start``) after every reconnect."""

    def __init__(self, numeric_period_ns: int = 1_000_000_000, wave_period_ns: int = 250_000_000,
                 waves: bool = True) -> None:
        self.numeric_period_ns = numeric_period_ns
        self.wave_period_ns = wave_period_ns
        self.want_waves = waves
        self.deframer = Deframer()
        self.state = "idle"
        self._invoke = 0
        self._poll_number = 0
        self._next_numeric = 0
        self._next_wave = 0
        self._cache = proto.WaveCache()

    def start(self) -> list[bytes]:
        """Begin (again): forget everything and return the framed association request."""
        self.deframer.reset()
        self._cache = proto.WaveCache()
        self.state = "associating"
        return [encode_frame(proto.encode_association_request())]

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _next_ids(self) -> tuple[int, int]:
        self._invoke = (self._invoke + 1) & 0xFFFF
        self._poll_number = (self._poll_number + 1) & 0xFFFF
        return self._invoke, self._poll_number

    def due_polls(self, now_ns: int) -> list[bytes]:
        """Poll requests whose time has come (none before the association is complete)."""
        if not self.ready:
            return []
        out = []
        if now_ns >= self._next_numeric:
            self._next_numeric = now_ns + self.numeric_period_ns
            out.append(encode_frame(proto.encode_poll_request(*self._next_ids(), proto.NOM_MOC_VMO_METRIC_NU)))
        if self.want_waves and now_ns >= self._next_wave:
            self._next_wave = now_ns + self.wave_period_ns
            out.append(encode_frame(proto.encode_poll_request(*self._next_ids(), proto.NOM_MOC_VMO_METRIC_SA_RT)))
        return out

    def feed(self, chunk: bytes, t_mono_ns: int) -> Step:
        """Bytes from the port, stamped with their arrival time."""
        step = Step()
        for item in self.deframer.feed(chunk):
            if isinstance(item, Rejection):
                step.rejects.append(item)
            else:
                self._message(proto.decode_message(item), t_mono_ns, step)
        return step

    def _message(self, msg: proto.Message | Rejection, t: int, step: Step) -> None:
        if isinstance(msg, Rejection):
            step.rejects.append(msg)
        elif isinstance(msg, proto.AssociationResult):
            if msg.accepted:
                self.state = "waiting_mds" if self.state == "associating" else self.state
            else:
                self.state = "refused"
        elif isinstance(msg, proto.MdsCreateEvent):
            step.send.append(encode_frame(proto.encode_mds_create_result(msg.invoke_id, msg.event_time)))
            self.state = "ready"
            self._next_numeric = self._next_wave = 0
        elif isinstance(msg, (proto.ReleaseRequest, proto.Abort)):
            if isinstance(msg, proto.ReleaseRequest):
                step.send.append(encode_frame(proto.encode_release_response()))
            self.state = "idle"
        elif isinstance(msg, proto.PollReply):
            self._poll_reply(msg, t, step)
        elif isinstance(msg, proto.RemoteError):
            step.rejects.append(Rejection("remote_error", f"invoke {msg.invoke_id} error {msg.error_value}"))
        else:
            step.rejects.append(Rejection("unexpected_message", type(msg).__name__))

    def _poll_reply(self, reply: proto.PollReply, t: int, step: Step) -> None:
        if not self.ready:
            step.rejects.append(Rejection("unexpected_message", "poll result before association"))
            return
        if reply.obj_class == proto.NOM_MOC_VMO_METRIC_NU:
            values = proto.numerics(reply)
            if isinstance(values, Rejection):
                step.rejects.append(values)
                return
            sample, rejects = numerics_to_sample(values, t)
            step.rejects.extend(rejects)
            if sample is not None:
                step.out.append(sample)
        elif reply.obj_class == proto.NOM_MOC_VMO_METRIC_SA_RT:
            waves = self._cache.waves(reply)
            if isinstance(waves, Rejection):
                step.rejects.append(waves)
                return
            for wave in waves:
                if len(wave.samples) == 0:
                    continue  # nothing accrued since the last poll
                if wave.fs_hz is None:
                    step.rejects.append(Rejection("wave_without_period", f"handle {wave.handle}"))
                    continue
                flags = proto.state_flags(wave.state & (proto.STATE_UNUSABLE | proto.STATE_REPORTED))
                step.out.append(WaveChunk(t, wave.label, wave.fs_hz, wave.samples, SOURCE, flags))
        else:
            step.rejects.append(Rejection("unsupported:obj_class", f"poll result for class {reply.obj_class}"))
