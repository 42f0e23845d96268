"""One frame's face crop, resized to the network's size only when a clip needs it.

Why lazy: the camera delivers 30 frames a second, but a clip takes 8 a second (16 slots over 2 s,
``appliance.scoring.windows``), and resizing a face that fills a 720-pixel frame height to the crop costs about
1.5 ms (the exact single-step ``INTER_AREA`` the networks are trained with, ``models.features.video``). Resizing
every frame spent about 50 ms of a core each second, most of it on crops no clip ever used
(``docs/benchmarks/camera_thread.md``). So the face tracker hands over the face *region* (a view of the camera
frame, no copy), and the frame sink (:class:`appliance.scoring.clip_frames.ClipFrames`) resizes the frames a clip
slot will take, as soon as that is known, and drops the others.

A crop is in one of three states:

* **pending**: it holds the face region; :meth:`FaceCrop.pixels` resizes it (once, under a lock) and releases
  the region;
* **ready**: it holds the resized crop;
* **dropped**: no clip slot can take it (a newer face arrived before the next slot time); the region is
  released and :attr:`FaceCrop.successor` is the crop that superseded it. :meth:`FaceCrop.resolve` follows
  successors to the crop that stands in for it, which is what a window built from an older snapshot of the
  buffer must use (the frame it picked was superseded while it was reading).
"""
from __future__ import annotations

import threading

import numpy as np

from models.features.video import resize_face


class FaceCrop:
    """The face of the frame stamped ``t_ns``, as a ``size`` x ``size`` crop (uint8, the frame's channels)."""

    __slots__ = ("t_ns", "_shape", "_size", "_region", "_pixels", "_successor", "_lock")

    def __init__(self, t_ns: int, size: int, region: np.ndarray | None = None, *,
                 pixels: np.ndarray | None = None) -> None:
        """Pending: ``region`` (H, W[, C]) uint8, typically a view of the camera frame, resized on first use.
        Ready: ``pixels``, already at the network's size (see :meth:`ready`)."""
        if (region is None) == (pixels is None):
            raise ValueError("a FaceCrop takes either a region to resize or the resized pixels")
        if region is not None:
            if size < 1:
                raise ValueError(f"FaceCrop size must be >= 1, got {size}")
            if not isinstance(region, np.ndarray) or region.dtype != np.uint8 or region.ndim not in (2, 3) \
                    or region.size == 0:
                raise ValueError(f"FaceCrop region must be a non-empty (H, W[, C]) uint8 array, got "
                                 f"{getattr(region, 'dtype', type(region).__name__)} {getattr(region, 'shape', '')}")
        self.t_ns = int(t_ns)
        self._size = int(size)
        self._shape: tuple[int, ...] = (tuple(pixels.shape) if pixels is not None
                                        else (self._size, self._size) + tuple(region.shape[2:]))
        self._region: np.ndarray | None = region
        self._pixels: np.ndarray | None = pixels
        self._successor: FaceCrop | None = None
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, t_ns: int, pixels: np.ndarray) -> "FaceCrop":
        """A crop whose pixels are already at the network's size (tests, tools that fill buffers themselves)."""
        if not isinstance(pixels, np.ndarray):
            raise ValueError(f"a face crop must be a numpy array, got {type(pixels).__name__}")
        return cls(t_ns, int(pixels.shape[0]) if pixels.ndim else 0, pixels=pixels)

    @property
    def shape(self) -> tuple[int, ...]:
        """The crop's shape, known without resizing."""
        return self._shape

    @property
    def state(self) -> str:
        """"pending", "ready" or "dropped" (module doc)."""
        with self._lock:
            if self._pixels is not None:
                return "ready"
            return "pending" if self._region is not None else "dropped"

    @property
    def successor(self) -> "FaceCrop | None":
        """The newer crop that superseded this one when it was dropped (None otherwise)."""
        return self._successor

    def pixels(self) -> np.ndarray | None:
        """The resized crop (resized now if pending); None once dropped (see :meth:`resolve`)."""
        with self._lock:
            if self._pixels is None and self._region is not None:
                self._pixels = resize_face(self._region, self._size)
                self._region = None  # the camera frame can go
            return self._pixels

    def drop(self, successor: "FaceCrop") -> bool:
        """Release a pending crop that no clip slot can take, naming the newer crop that replaced it.

        Returns False (and changes nothing) when the crop is already resized: someone needed it."""
        if successor is self:
            raise ValueError("a face crop cannot supersede itself")
        with self._lock:
            if self._pixels is not None:
                return False
            self._region = None
            self._successor = successor
            return True

    def resolve(self) -> "FaceCrop":
        """This crop, or for a dropped one the newest crop that superseded it (following the chain)."""
        crop = self
        while crop.state == "dropped":
            if crop._successor is None:  # only a crop built without region or pixels could get here
                raise RuntimeError(f"face crop of the frame at {crop.t_ns} ns was dropped without a successor")
            crop = crop._successor
        return crop

    def __repr__(self) -> str:
        return f"FaceCrop(t_ns={self.t_ns}, shape={self._shape}, {self.state})"


def as_face_crop(t_ns: int, crop: "FaceCrop | np.ndarray | None") -> FaceCrop | None:
    """``crop`` as a :class:`FaceCrop`: a ready one for a plain array, unchanged for a crop, None for None."""
    if crop is None or isinstance(crop, FaceCrop):
        return crop
    return FaceCrop.ready(t_ns, crop)


def face_of(record: object) -> FaceCrop | None:
    """The face crop of a frame's record: its ``face`` (a tracker observation, a buffer sample), or, for any
    other record with a ``crop`` array and ``t_ns`` (tools that make their own), that array as a ready crop."""
    if hasattr(record, "face"):
        return record.face  # type: ignore[attr-defined]
    return as_face_crop(record.t_ns, getattr(record, "crop", None))  # type: ignore[attr-defined]


class WithFace:
    """What a frame's record (the tracker's observation, the buffer's sample) says about its face, from its
    ``face`` (:class:`FaceCrop` or None): ``crop``, the pixels (resized now if they are not yet; None without a
    face or once dropped), and ``has_face``, without resizing anything."""

    __slots__ = ()
    face: FaceCrop | None

    @property
    def crop(self) -> np.ndarray | None:
        return None if self.face is None else self.face.pixels()

    @property
    def has_face(self) -> bool:
        return self.face is not None
