"""``python -m appliance.devtools.camera_bench``: what the camera thread's face work costs, per second of video.

Why: ``neopain bench`` times one scored window; the camera thread's own work (face detection every 5th frame,
tracking, cutting and resizing the face) happens on every frame, between the scores, on the same cores. This
measures it through the device's own objects: :class:`appliance.sources.face.FaceTracker` with the configured
detector, and the frame sink :class:`appliance.scoring.clip_frames.ClipFrames` that ``wiring.buffer_sinks``
gives the daemon. Three ways of handling each frame, interleaved, on the same frames:

* ``tracking only``: the tracker and the frames buffer, no face resized: the floor;
* ``every face resized``: the tracker, then every face resized on arrival, as before session 6;
* ``clip slots only``: the tracker, then ``ClipFrames``, which resizes only the faces a clip slot takes.

Frames are 1280x720 BGR (the camera default) with the synthetic infant's face rendered so that its square crop
fills the frame height (the worst case; ``--face`` sets another side), drifting a few pixels a frame, stamped at
30 fps. CPU time is the process's (``time.process_time``), over the repeats' median, with the load average
stated. Writes ``camera_thread.md``, ``.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.scoring.buffers import FaceSample, RingBuffer
from appliance.scoring.clip_frames import ClipFrames, ClipGrid
from appliance.scoring.windows import WindowConfig
from appliance.sources.camera import Frame
from appliance.sources.face import FaceConfig, FaceTracker

CAMERA = (1280, 720)
FPS = 30.0
MODES = ("tracking only", "every face resized", "clip slots only")


def face_roi(face_px: int, camera: tuple[int, int] = CAMERA) -> tuple[int, int, int, int]:
    """The centred ``face_px`` square: the fixed region of interest (``[camera] face_roi``) the bench crops."""
    width, height = camera
    side = min(face_px, width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def synthetic_frames(n: int, face_px: int, camera: tuple[int, int] = CAMERA, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 BGR camera frames with the synthetic infant's head in the :func:`face_roi` square (3/4 of
    its side), drifting by up to 2 px a frame (so that no two neighbouring frames are alike)."""
    from models.data.synth_video import SKIN_TONES, Expression, FaceLook, draw_background, draw_face

    width, height = camera
    x, y, roi, _ = face_roi(face_px, camera)
    side = int(roi * 0.75)  # the head inside the region, with the margin the tracker would add around it
    x, y = x + (roi - side) // 2, y + (roi - side) // 2
    skin = SKIN_TONES["III-IV"]
    face, mask = draw_face(side, skin, Expression(), look=FaceLook(skin, seed=seed))
    background = np.clip(cv2.resize(draw_background(256, np.random.default_rng(seed)), (width, height)), 0, 255)
    alpha = mask.astype(np.float32)[..., None] / 255
    frames = []
    for i in range(n):
        image = background.copy()
        shift = x + (2 * i) % 5 - 2 if x >= 2 else x
        region = image[y:y + side, shift:shift + side]
        image[y:y + side, shift:shift + side] = region * (1 - alpha) + face * alpha
        frames.append(image.astype(np.uint8))
    return frames


class CameraThread:
    """One way of handling the camera's frames (``mode``, one of :data:`MODES`), with a fresh tracker."""

    def __init__(self, mode: str, config: FaceConfig, window: WindowConfig) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.tracker = FaceTracker(config)
        self.buffer = RingBuffer("frames", max_span_s=10.0, max_count=600)
        self.sink = ClipFrames(self.buffer, ClipGrid(window.frame_fps))
        self.eager = 0

    def __call__(self, frame: Frame) -> None:
        observation = self.tracker.process(frame)
        if self.mode == "clip slots only":
            self.sink(frame, observation)
            return
        if self.mode == "every face resized" and observation.crop is not None:  # resized on arrival, as before
            self.eager += 1
        self.buffer.append(FaceSample.of(frame, observation))  # every mode keeps its samples, as the daemon does

    def resized(self) -> int:
        """Faces this run resized."""
        return self.sink.resized if self.mode == "clip slots only" else self.eager


def measure(frames: list[np.ndarray], config: FaceConfig, *, repeats: int = 3, window: WindowConfig | None = None,
            fps: float = FPS) -> dict[str, Any]:
    """CPU ms per second of video for each mode (median of ``repeats``, interleaved), and faces resized."""
    window = window or WindowConfig()
    stamps = [10**12 + int(i * 1e9 / fps) for i in range(len(frames))]
    seconds = len(frames) / fps
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    resized: dict[str, int] = {}
    for _ in range(repeats):
        for mode in MODES:
            thread = CameraThread(mode, config, window)
            wrapped = [Frame(t, image, i) for i, (t, image) in enumerate(zip(stamps, frames))]
            c0 = time.process_time()
            for frame in wrapped:
                thread(frame)
            cpu[mode].append((time.process_time() - c0) * 1e3 / seconds)
            resized[mode] = thread.resized()
    return {
        "frames": len(frames), "video_s": seconds, "fps": fps, "camera": list(frames[0].shape[1::-1]),
        "detector": config.detector, "detect_every": config.detect_every, "crop_size": config.crop_size,
        "clip_frame_fps": window.frame_fps, "repeats": repeats,
        "cpu_ms_per_video_s": {mode: float(np.median(v)) for mode, v in cpu.items()},
        "cpu_ms_per_video_s_runs": cpu,
        "faces_resized_per_s": {mode: n / seconds for mode, n in resized.items()},
        "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
    }


def markdown(result: dict[str, Any], face_px: int) -> str:
    cpu, runs, per_s = result["cpu_ms_per_video_s"], result["cpu_ms_per_video_s_runs"], result["faces_resized_per_s"]
    floor = cpu["tracking only"]
    rows = "\n".join(f"| {mode} | {cpu[mode]:.1f} ms ({min(runs[mode]):.1f}-{max(runs[mode]):.1f}) | "
                     f"{cpu[mode] - floor:+.1f} ms | {per_s[mode]:.1f} |" for mode in MODES)
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    saved = cpu["every face resized"] - cpu["clip slots only"]
    return f"""# The camera thread's face work, per second of video

Written by `python -m appliance.devtools.camera_bench` (`appliance/devtools/camera_bench.py` says how).

Setup:
- {result['frames']} synthetic {result['camera'][0]}x{result['camera'][1]} frames at {result['fps']:g} fps.
- The infant's face is cropped at {face_px} px through a fixed region of interest.
- The detector is {result['detector']}, run inside that region on every {result['detect_every']}th frame.
- The crop is {result['crop_size']} px, and the clip slots run at {result['clip_frame_fps']:g} fps.
- Each figure is the median CPU time (all threads) of {result['repeats']} interleaved runs; the range is in
  brackets.
- The machine has {result['cpu_count']} CPUs; the load average afterwards was {load}.

| camera thread | CPU per second of video (range) | beyond tracking only | faces resized per second |
|---|---:|---:|---:|
{rows}

Resizing only the faces a clip slot takes saves {saved:.0f} ms of CPU per second of video here, that is
{2 * saved:.0f} ms per score at the default 2-s cadence. Face detection ("tracking only") remains the larger
cost of the camera thread. For comparison, `neopain bench` gives the engines' CPU per score (`int8_cpu.md`).
"""


def figure(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = result["cpu_ms_per_video_s"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bars = ax.barh(list(MODES), [cpu[m] for m in MODES], color=["#999999", "#d62728", "#2ca02c"])
    for bar, mode in zip(bars, MODES):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {cpu[mode]:.0f} ms ({result['faces_resized_per_s'][mode]:.0f} resizes/s)", va="center", fontsize=8)
    ax.set_xlabel("camera thread CPU, ms per second of video")
    ax.set_xlim(0, max(cpu.values()) * 1.45)
    ax.set_title(f"{result['camera'][0]}x{result['camera'][1]} at {result['fps']:g} fps, {result['detector']} "
                 f"every {result['detect_every']}th frame", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out: Path, *, seconds: float = 10.0, face_px: int = CAMERA[1], repeats: int = 3,
        camera: tuple[int, int] = CAMERA) -> Path:
    from tqdm import tqdm

    with tqdm(total=2, desc="camera bench", unit="step") as bar:
        frames = synthetic_frames(int(seconds * FPS), face_px, camera)
        bar.update()
        result = measure(frames, FaceConfig(roi=face_roi(face_px, camera)), repeats=repeats)
        bar.update()
    out.mkdir(parents=True, exist_ok=True)
    (out / "camera_thread.json").write_text(json.dumps({**result, "face_px": face_px}, indent=1) + "\n",
                                            encoding="utf-8")
    figure(result, out / "camera_thread.png")
    md = out / "camera_thread.md"
    md.write_text(markdown(result, face_px), encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.devtools.camera_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for the .md, .json, .png")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of 30-fps video (default 10)")
    parser.add_argument("--face", type=int, default=CAMERA[1], help="side of the face crop in camera pixels (default 720)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each mode (default 3)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.face < 16 or args.repeats < 1:
        parser.error("--seconds must be > 0, --face >= 16 and --repeats >= 1")
    md = run(args.out, seconds=args.seconds, face_px=args.face, repeats=args.repeats)
    print(f"wrote {md}, {md.with_suffix('.json')} and {md.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
