"""The commissioning report: ``report.md``, ``commission.json`` and PNGs, in a folder only its owner can read.

Why 0700/0600: the face snapshot is an image of a patient, taken deliberately because the engineer asked
for it (``neopain commission`` without ``--no-snapshot``); the level and vitals traces are patient data too.
The report stays on the device's disk like the outbox and calibration sessions; copying it off is the
engineer's explicit act. The snapshot is the face region at small size with the detection box drawn -- enough
to judge framing, no more.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from appliance.clock import NS_PER_S
from appliance.sources.face import square_box
from calibration.commission.collect import Collected, Snapshot
from calibration.commission.files import private_dir, private_write
from calibration.commission.metrics import (HR_RANGE, MAX_NOISE_FLOOR_DBFS, MIN_NOISE_FLOOR_DBFS, SPO2_RANGE, Check,
                                            overall)

REPORT_FILE = "report.md"
JSON_FILE = "commission.json"
SNAPSHOT_FILE = "face_snapshot.png"
AUDIO_FILE = "audio_level.png"
VITALS_FILE = "vitals.png"
#: Side of the saved snapshot: enough to judge framing and focus, not a portrait.
SNAPSHOT_SIDE = 256
#: Context around the face box in the snapshot, as a fraction of the box per side.
SNAPSHOT_MARGIN = 0.5


def snapshot_image(snap: Snapshot) -> np.ndarray:
    """The region around the face box with the box drawn (green: confirmed by the face detector on that frame,
    yellow: tracked), or the whole frame when no face was found, scaled to :data:`SNAPSHOT_SIDE`."""
    image = snap.image.copy()
    h, w = image.shape[:2]
    if snap.box is None:
        scale = SNAPSHOT_SIDE / max(h, w)
        out = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        cv2.putText(out, "no face found", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
        return out
    x, y, bw, bh = snap.box
    thickness = max(1, round(max(h, w) / 200))
    cv2.rectangle(image, (x, y), (x + bw - 1, y + bh - 1), (0, 200, 0) if snap.detected else (0, 200, 200), thickness)
    x0, y0, side, _ = square_box(snap.box, SNAPSHOT_MARGIN, w, h)
    region = image[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > SNAPSHOT_SIDE else cv2.INTER_LINEAR
    return cv2.resize(region, (SNAPSHOT_SIDE, SNAPSHOT_SIDE), interpolation=interp)


def _png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode {path.name} as PNG")
    return private_write(path, buf.tobytes())


def _figure_png(path: Path, fig: Any) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return private_write(path, buf.getvalue())


def _audio_plot(path: Path, c: Collected) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    t = np.arange(len(c.levels_dbfs)) * c.level_block_s
    ax.plot(t, c.levels_dbfs, lw=0.8, label=f"RMS level ({1000 * c.level_block_s:.0f} ms blocks)")
    if c.microphone is not None and c.microphone.noise_floor_dbfs is not None:
        ax.axhline(c.microphone.noise_floor_dbfs, color="k", ls="--", lw=0.8, label="noise floor")
    ax.axhspan(MIN_NOISE_FLOOR_DBFS, MAX_NOISE_FLOOR_DBFS, color="g", alpha=0.08, label="accepted noise floor")
    ax.set(xlabel="seconds", ylabel="dBFS", title="microphone level", ylim=(-120, 3))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _figure_png(path, fig)


def _vitals_plot(path: Path, c: Collected) -> Path:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    t = np.array([(v.t_ns - c.started_ns) / NS_PER_S for v in c.vitals])
    hr = np.array([np.nan if v.hr_bpm is None else v.hr_bpm for v in c.vitals], dtype=float)
    spo2 = np.array([np.nan if v.spo2_pct is None else v.spo2_pct for v in c.vitals], dtype=float)
    a1.plot(t, hr, ".-", ms=3, lw=0.8, label="HR (numerics)")
    if c.rr_ms:
        rt = (np.asarray(c.rr_t_ns) - c.started_ns) / NS_PER_S
        a1.plot(rt, 60000.0 / np.asarray(c.rr_ms), ".", ms=2, alpha=0.6, label="HR from RR (ECG)")
    a1.axhspan(*HR_RANGE, color="g", alpha=0.08)
    a1.set(ylabel="/min", title="monitor")
    a1.legend(fontsize=7, loc="upper right")
    a2.plot(t, spo2, ".-", ms=3, lw=0.8, color="tab:red", label="SpO2")
    a2.axhspan(*SPO2_RANGE, color="g", alpha=0.08)
    a2.set(ylabel="%", xlabel="seconds")
    a2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _figure_png(path, fig)


def _table(checks: Sequence[Check]) -> list[str]:
    rows = ["| | check | value | unit | limit | result | if it fails |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        mark = {"pass": "ok", "warn": "!", "fail": "X"}[c.status]
        rows.append(f"| {c.group} | {c.name} | {c.value_text()} | {c.unit} | {c.limit} | {mark} {c.status.upper()} "
                    f"| {c.why if c.status != 'pass' else ''} |")
    return rows


def format_table(checks: Sequence[Check]) -> str:
    """The pass/fail table for the terminal."""
    lines = [f"{'group':<11} {'check':<26} {'value':>9}  {'unit':<28} {'limit':<26} result"]
    for c in checks:
        lines.append(f"{c.group:<11} {c.name:<26} {c.value_text():>9}  {c.unit[:28]:<28} {c.limit[:26]:<26} "
                     f"{c.status.upper()}")
    return "\n".join(lines)


def write_report(out_dir: Path, c: Collected, checks: Sequence[Check], *, snapshot: bool,
                 config_path: Path | None = None) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (0700; files 0600); returns them by name."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = private_dir(Path(out_dir))
    files: dict[str, Path] = {}
    if snapshot and c.snapshot is not None:
        files["snapshot"] = _png(out_dir / SNAPSHOT_FILE, snapshot_image(c.snapshot))
    if c.microphone is not None:
        files["audio"] = _audio_plot(out_dir / AUDIO_FILE, c)
    if c.monitor is not None:
        files["vitals"] = _vitals_plot(out_dir / VITALS_FILE, c)
    verdict = overall(checks)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    d = c.config.device
    summary = {
        "device": {"id": d.id, "site": d.site, "bed": d.bed}, "utc": when, "config": str(config_path or ""),
        "duration_s": round(c.duration_s, 2), "result": verdict, "checks": [k.to_dict() for k in checks],
        "snapshot": "snapshot" in files, "files": {k: p.name for k, p in files.items()},
    }
    private_write(out_dir / JSON_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    files["json"] = out_dir / JSON_FILE
    md = [f"# Commissioning report: {d.site} / {d.bed} ({d.id})", "",
          f"- when: {when}", f"- config: `{config_path or '-'}`", f"- capture: {c.duration_s:.1f} s",
          f"- result: **{verdict.upper()}**" + (" (warnings only)" if verdict == "warn" else ""), "",
          "Privacy: this folder is patient data (mode 0700/0600, on the device only). "
          + ("`face_snapshot.png` is an image of the infant's face, taken because the engineer asked for it "
             "(omit with `--no-snapshot`); delete the folder once commissioning is signed off."
             if "snapshot" in files else "No face snapshot was stored (`--no-snapshot` or no frame)."), "",
          "## Checks", "", *_table(checks), ""]
    if "snapshot" in files:
        md += ["## Camera", "", f"![face snapshot]({SNAPSHOT_FILE})", ""]
    if "audio" in files:
        md += ["## Microphone", "", f"![audio level]({AUDIO_FILE})", ""]
    if "vitals" in files:
        md += ["## Monitor", "", f"![vitals]({VITALS_FILE})", ""]
    private_write(out_dir / REPORT_FILE, "\n".join(md).encode())
    files["report"] = out_dir / REPORT_FILE
    return files
