"""The validating reader: clear DatasetErrors naming the file and line/field for each kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.data.layout import DatasetError, read_dataset, read_ratings

REC = Path("S001/R01")


def _edit_line(path: Path, line_no: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line_no - 1].split(",")
    cells[header.index(column)] = value
    lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_undamaged_copy_reads(one_recording: Path) -> None:
    ds = read_dataset(one_recording)
    assert [r.recording_id for r in ds.recordings] == ["R01"]


def test_missing_file_is_named(one_recording: Path) -> None:
    (one_recording / REC / "audio.wav").unlink()
    with pytest.raises(DatasetError, match=r"audio\.wav.*missing"):
        read_dataset(one_recording)


def test_missing_video_is_named(one_recording: Path) -> None:
    (one_recording / REC / "video.mp4").unlink()
    with pytest.raises(DatasetError, match=r"video\.\*.*missing"):
        read_dataset(one_recording)


def test_unreadable_video(one_recording: Path) -> None:
    (one_recording / REC / "video.mp4").write_bytes(b"\x00not a video" * 200)
    with pytest.raises(DatasetError, match=r"video\.mp4.*OpenCV cannot"):
        read_dataset(one_recording)


def test_misaligned_clock_names_the_modality(one_recording: Path) -> None:
    meta_path = one_recording / REC / "recording.json"
    meta = json.loads(meta_path.read_text())
    meta["clock_offsets_s"]["vitals"] += 3600.0  # the monitor clock taken for another hour
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="misaligned clocks") as err:
        read_dataset(one_recording)
    assert err.value.field == "clock_offsets_s.vitals"
    assert err.value.path.name == "recording.json"


def test_declared_duration_must_match_the_file(one_recording: Path) -> None:
    meta_path = one_recording / REC / "recording.json"
    meta = json.loads(meta_path.read_text())
    meta["durations_s"]["audio"] += 30.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="durations_s.audio"):
        read_dataset(one_recording)


@pytest.mark.parametrize("column,value,message", [
    ("facial", "2", "outside NIPS range"),
    ("cry", "-1", "outside NIPS range"),
    ("total", "9", r"total 9 != sum"),
    ("legs", "x", "not an integer"),
])
def test_bad_ratings_row_names_the_line_and_field(one_recording: Path, column: str, value: str, message: str) -> None:
    path = one_recording / REC / "ratings.csv"
    _edit_line(path, 4, column, value)
    with pytest.raises(DatasetError, match=message) as err:
        read_ratings(path)
    assert err.value.line == 4 and err.value.field == column
    assert "ratings.csv, line 4" in str(err.value)


def test_duplicate_rating_by_the_same_rater(one_recording: Path) -> None:
    path = one_recording / REC / "ratings.csv"
    _edit_line(path, 3, "rater_id", "R1")  # lines 2 and 3 rate the same window
    with pytest.raises(DatasetError, match="twice") as err:
        read_ratings(path)
    assert err.value.line == 3


def test_bad_subjects_row(one_recording: Path) -> None:
    _edit_line(one_recording / "subjects.csv", 2, "intubated", "yes")
    with pytest.raises(DatasetError, match=r"subjects\.csv, line 2, field 'intubated'"):
        read_dataset(one_recording)


def test_bad_vitals_value(one_recording: Path) -> None:
    path = one_recording / REC / "vitals.csv"
    lines = path.read_text().splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.split(",")[1] not in ("", "hr_bpm"))
    _edit_line(path, row + 1, "hr_bpm", "900")
    with pytest.raises(DatasetError, match=rf"vitals\.csv, line {row + 1}, field 'hr_bpm'"):
        read_dataset(one_recording)


def test_subject_folder_not_in_subjects_csv(one_recording: Path) -> None:
    (one_recording / "S999" / "R01").mkdir(parents=True)
    with pytest.raises(DatasetError, match="S999"):
        read_dataset(one_recording)
