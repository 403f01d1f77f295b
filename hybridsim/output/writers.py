"""Output writers: H.264 mp4 via PyAV, Parquet tables of per-frame poses and cameras, label files.

Every writer appends as frames arrive and can be closed at any point: a run that stops part way
leaves playable videos and readable tables holding every finished frame. With `fragmented=True`
(run folders) that holds even for a process killed with SIGKILL, which closes nothing: the video
is a fragmented MP4 written through to the OS frame by frame, remuxed into a plain MP4 on close,
and a table's rows go to an Arrow stream beside it (`<name>.partial`, one record batch per frame)
that close() turns into the Parquet file. `read_table` reads either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

# fragmented MP4: an empty moov up front, then one moof+mdat per frame, each handed to the OS at
# once (flush_packets), so a killed writer leaves a file that plays up to its last muxed frame
FRAGMENTED = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"}



def mux(container, stream, frame) -> None:
    """Encode one PyAV frame (None: flush the encoder) and write its packets into the container."""
    for packet in stream.encode(frame):
        container.mux(packet)

class VideoWriter:
    """uint8 RGB frames [H, W, 3] -> H.264 mp4 (yuv420p; odd sizes padded by one pixel).

    fragmented: survive a hard kill (see the module docstring). The encoder then runs with
    x264's zerolatency tune (no lookahead, no B-frames), so each frame is muxed as soon as it is
    written instead of ~13 frames later; a kill loses at most the last written frame."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 18,
                 fragmented: bool = False):
        import av
        from fractions import Fraction

        self.path = Path(path)
        self.width, self.height = width, height
        self.fragmented = fragmented
        self._container = av.open(str(self.path), mode="w", options=dict(FRAGMENTED) if fragmented else {})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast", **({"tune": "zerolatency"} if fragmented else {})}
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:  # rgb: [H, W, 3] uint8
        import av

        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"{self.path.name}: frame shape {rgb.shape} != {(self.height, self.width, 3)}")
        if self.width % 2 or self.height % 2:
            rgb = np.pad(rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        mux(self._container, self._stream, frame)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        mux(self._container, self._stream, None)
        self._container.close()
        self._container = None
        if self.fragmented and self.frames:
            remux_plain(self.path)


def remux_plain(path: Path) -> None:
    """Rewrite a fragmented MP4 as a plain one (sample tables in a moov at the front), packets
    copied unchanged, so finished videos look like any other MP4 to every reader. The fragmented
    file stays if anything goes wrong: it plays as it is."""
    import av

    tmp = path.with_name(f".{path.name}.remux{os.getpid()}.mp4")
    try:
        with av.open(str(path)) as src, av.open(str(tmp), mode="w", options={"movflags": "faststart"}) as dst:
            out = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = out
                dst.mux(packet)
        os.replace(tmp, path)
    except Exception:  # noqa: BLE001 - a failed remux must not lose the (playable) fragmented file
        tmp.unlink(missing_ok=True)


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
    """Rows appended per frame -> one Parquet file.

    While open, every append is one record batch of an Arrow IPC stream in `<path>.partial`,
    written through to the OS at once (memory stays flat however long the run); a killed process
    leaves that stream, readable up to its last whole batch (`read_table`). close() copies it into
    the Parquet file in row groups, then removes it."""

    ROW_GROUP = 65536

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._sink = self._writer = None
        self._schema = None

    def append(self, columns: dict[str, list]) -> None:
        import pyarrow as pa

        if not columns or not next(iter(columns.values())):
            return
        if self._writer is None:
            batch = pa.record_batch(columns)
            self._schema = batch.schema
            self._sink = pa.OSFile(str(self.partial), "wb")  # unbuffered: each batch reaches the OS
            self._writer = pa.ipc.new_stream(self._sink, self._schema)
        else:
            batch = pa.record_batch(columns, schema=self._schema)
        self._writer.write_batch(batch)

    def flush(self) -> None:  # every append is written through already
        pass

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None
        partial_to_parquet(self.partial, self.path, self.ROW_GROUP)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def partial_to_parquet(partial: Path, path: Path, row_group: int = TableWriter.ROW_GROUP) -> int:
    """Copy an Arrow stream's whole batches into a Parquet file (atomically), remove the stream.
    Returns the rows copied; a truncated last batch (a killed writer) is dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    rows, pending, writer = 0, [], None
    try:
        for batch in _batches(partial):
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= row_group:
                writer = _write_group(writer, tmp, pending)
                rows, pending = rows + sum(b.num_rows for b in pending), []
        if pending or writer is None:
            writer = _write_group(writer, tmp, pending)
            rows += sum(b.num_rows for b in pending)
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    partial.unlink()
    return rows


def _write_group(writer, path: Path, batches: list):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not batches:
        return writer or pq.ParquetWriter(str(path), pa.schema([]))
    table = pa.Table.from_batches(batches)
    writer = writer or pq.ParquetWriter(str(path), table.schema)
    writer.write_table(table)
    return writer


def _batches(partial: Path):
    """The whole record batches of an Arrow stream; stops quietly at a truncated tail."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(partial)))
    except (pa.ArrowInvalid, OSError):
        return
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError):  # the batch a killed writer was writing
            return


def read_table(path: str | Path):
    """A table written by TableWriter: the Parquet file, or, for a run that was killed before it
    closed its tables, every whole batch of `<path>.partial`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_file():
        return pq.read_table(path)
    partial = partial_path(path)
    if not partial.is_file():
        raise FileNotFoundError(f"neither {path} nor {partial} exists")
    batches = list(_batches(partial))
    return pa.Table.from_batches(batches) if batches else pa.table({})


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
