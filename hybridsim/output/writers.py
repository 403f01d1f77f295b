"""Output writers: H.264 mp4 via PyAV, Parquet tables of per-frame poses and cameras, label files.

Every writer appends as frames arrive and can be closed at any point: a run that stops part way
leaves playable videos and readable tables holding every finished frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class VideoWriter:
    """uint8 RGB frames [H, W, 3] -> H.264 mp4 (yuv420p; odd sizes padded by one pixel)."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 18):
        import av
        from fractions import Fraction

        self.path = Path(path)
        self.width, self.height = width, height
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:  # rgb: [H, W, 3] uint8
        import av

        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"{self.path.name}: frame shape {rgb.shape} != {(self.height, self.width, 3)}")
        if self.width % 2 or self.height % 2:
            rgb = np.pad(rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None


def to_uint8(img) -> np.ndarray:
    """float [0,1] (numpy or torch) -> uint8."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def linear_to_srgb(img):
    from render import linear_to_srgb as f

    return f(img)


class TableWriter:
    """Rows appended per frame, flushed to one Parquet file in row groups."""

    def __init__(self, path: str | Path, flush_every: int = 256):
        self.path = Path(path)
        self._rows: dict[str, list] = {}
        self._writer = None
        self._flush_every = flush_every
        self._pending = 0

    def append(self, columns: dict[str, list]) -> None:
        for k, v in columns.items():
            self._rows.setdefault(k, []).extend(v)
        self._pending += 1
        if self._pending >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows or not next(iter(self._rows.values())):
            return
        table = pa.table(self._rows)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.path), table.schema)
        self._writer.write_table(table)
        self._rows = {k: [] for k in self._rows}
        self._pending = 0

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_json(path: str | Path, data: dict) -> None:
    """Atomic JSON write (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_video(path) -> list[np.ndarray]:
    """Decode every frame of a video written by VideoWriter -> [H, W, 3] uint8 frames, in order."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
