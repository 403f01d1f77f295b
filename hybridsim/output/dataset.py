"""LeRobot v3.0 dataset output, written without the lerobot package (layout: docs/dataset.md).

Two steps, so that a killed batch loses nothing finished and shards can run anywhere:

1. `EpisodeWriter` stages one episode under `sidecar/episode_<i>/` through a temporary folder and one
   `os.replace`: the folder exists only once the episode is complete. The set of these folders is the
   manifest of finished episodes.
2. `merge(root, n)` builds `meta/`, `data/` and `videos/` from staged episodes 0..n-1: tables are
   concatenated, H.264 streams are remuxed (no re-encoding), stats are computed and aggregated.
   It writes into a temporary folder and swaps the results in, `meta/` last.

Readers (`load_info`, `load_frames`, `decode_episode`, `verify`, ...) are used by the tests and are
handy for checking a dataset without lerobot installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from hybridsim.output.writers import VideoWriter, write_json

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
SIDECAR = "sidecar"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
DEFAULT_FEATURES = {  # LeRobot's bookkeeping columns, present in every data file
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_MB = 1024.0**2


class DatasetError(RuntimeError):
    """A dataset folder that cannot be written, merged or read as asked."""


def episode_dir(root: str | Path, index: int) -> Path:
    return Path(root) / SIDECAR / f"episode_{index:06d}"


def staged_episodes(root: str | Path) -> set[int]:
    """Indices of finished (committed) episodes: the manifest is the set of episode folders."""
    side = Path(root) / SIDECAR
    if not side.is_dir():
        return set()
    out = set()
    for entry in os.scandir(side):
        if entry.name.startswith("episode_") and entry.is_dir():
            out.add(int(entry.name.split("_", 1)[1]))
    return out


def clean_partial(root: str | Path) -> int:
    """Remove temporary folders of episodes (and merges) that a killed process left behind."""
    root, n = Path(root), 0
    for parent in (root / SIDECAR, root):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith((".tmp-", ".merge-", ".old-")) and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
    return n


# --------------------------------------------------------------------------- staging one episode
class _ImageStats:
    """Per-channel min / max / sum / sum of squares over every frame, values in [0, 1]; frames over
    MAX_PIXELS are read on a regular pixel grid (as LeRobot downsizes images for stats)."""

    MAX_PIXELS = 65536

    def __init__(self):
        self.n_frames, self.n_px = 0, 0
        self.lo, self.hi = np.full(3, np.inf), np.full(3, -np.inf)
        self.s, self.ss = np.zeros(3), np.zeros(3)

    def add(self, rgb: np.ndarray) -> None:  # rgb: [H, W, 3] uint8
        step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / self.MAX_PIXELS))))
        x = rgb[::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0
        self.lo, self.hi = np.minimum(self.lo, x.min(0)), np.maximum(self.hi, x.max(0))
        self.s += x.sum(0)
        self.ss += np.square(x).sum(0)
        self.n_frames += 1
        self.n_px += x.shape[0]

    def result(self) -> dict:
        mean = self.s / self.n_px
        std = np.sqrt(np.maximum(self.ss / self.n_px - mean**2, 0.0))
        c = lambda v: np.asarray(v).reshape(3, 1, 1).tolist()  # noqa: E731  LeRobot keeps [C, 1, 1]
        return {"min": c(self.lo), "max": c(self.hi), "mean": c(mean), "std": c(std), "count": [self.n_frames]}


class EpisodeWriter:
    """Stages one episode; nothing is visible under `sidecar/` until `commit()` renames it there.

    Per frame: numeric feature values (1-D float32 arrays), uint8 images per video key, optional
    label arrays per camera (sidecar npz) and fired events (sidecar events.jsonl).
    """

    def __init__(self, root: str | Path, index: int, fps: float, crf: int = 18):
        self.root, self.index, self.fps, self.crf = Path(root), index, fps, crf
        self.final = episode_dir(root, index)
        self.tmp = self.final.parent / f".tmp-{self.final.name}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "staged" / "videos").mkdir(parents=True)
        self.length = 0
        self._rows: dict[str, list] = {}
        self._videos: dict[str, VideoWriter] = {}
        self._img_stats: dict[str, _ImageStats] = {}
        self._events = open(self.tmp / "events.jsonl", "w")

    def add_frame(self, values: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
        if self.length == 0:
            self._rows = {k: [] for k in values}
        elif set(values) != set(self._rows):
            raise DatasetError(f"episode {self.index}: frame {self.length} has features {sorted(values)}, "
                               f"frame 0 had {sorted(self._rows)}")
        for k, v in values.items():
            self._rows[k].append(np.asarray(v, dtype=np.float32).reshape(-1))
        for key, rgb in images.items():
            if key not in self._videos:
                if self.length:
                    raise DatasetError(f"episode {self.index}: video '{key}' starts at frame {self.length}, not 0")
                h, w = rgb.shape[:2]
                self._videos[key] = VideoWriter(self.tmp / "staged" / "videos" / f"{key}.mp4", self.fps, w, h, self.crf)
                self._img_stats[key] = _ImageStats()
            self._videos[key].write(rgb)
            self._img_stats[key].add(rgb)
        self.length += 1

    def add_labels(self, camera: str, frame_index: int, arrays: dict[str, np.ndarray]) -> None:
        d = self.tmp / "labels" / camera
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{frame_index:06d}.npz", **arrays)

    def add_events(self, events: list[dict]) -> None:
        for ev in events:
            self._events.write(json.dumps(ev, default=_json_default) + "\n")

    def add_file(self, name: str, data: dict) -> None:
        write_json(self.tmp / name, data)

    def commit(self, meta: dict) -> Path:
        """Close the files, write episode.json and make the episode visible with one rename."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.length == 0:
            raise DatasetError(f"episode {self.index}: no frames to commit")
        self._close()
        frame_index = np.arange(self.length, dtype=np.int64)
        cols = {k: _fixed_list(np.stack(v)) for k, v in self._rows.items()}
        cols["timestamp"] = pa.array((frame_index / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame_index)
        cols["episode_index"] = pa.array(np.full(self.length, self.index, dtype=np.int64))
        pq.write_table(pa.table(cols), self.tmp / "staged" / "frames.parquet")
        meta = dict(meta, episode_index=self.index, length=self.length, fps=self.fps,
                    videos={k: {"width": v.width, "height": v.height, "frames": v.frames}
                            for k, v in self._videos.items()},
                    image_stats={k: s.result() for k, s in self._img_stats.items()})
        write_json(self.tmp / "episode.json", meta)
        try:
            os.replace(self.tmp, self.final)
        except OSError:  # already staged by another process (a re-run shard): keep the first one
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close(self) -> None:
        for v in self._videos.values():
            v.close()
        if not self._events.closed:
            self._events.close()


def _fixed_list(a: np.ndarray):  # a: [T, D] -> fixed_size_list<float32>[D] column
    import pyarrow as pa

    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- merge
def load_episode_meta(root: str | Path, index: int) -> dict:
    return json.loads((episode_dir(root, index) / "episode.json").read_text())


class _Roller:
    """LeRobot's chunk/file numbering: a new file once the current one is over size_mb."""

    def __init__(self, size_mb: float, chunks_size: int):
        self.size, self.chunks_size = size_mb * _MB, chunks_size
        self.chunk, self.file, self.used = 0, 0, 0.0

    def place(self, nbytes: float) -> tuple[int, int, bool]:
        """(chunk, file, starts_new_file) for an item of nbytes."""
        new = self.used == 0
        if self.used and self.used + nbytes > self.size:
            self.file += 1
            if self.file == self.chunks_size:
                self.chunk, self.file = self.chunk + 1, 0
            self.used, new = 0.0, True
        self.used += nbytes
        return self.chunk, self.file, new


def merge(root: str | Path, n_episodes: int, *, chunks_size: int = 1000, data_files_size_in_mb: float = 100.0,
          video_files_size_in_mb: float = 200.0, robot_type: str | None = None, extra_info: dict | None = None) -> dict:
    """Build meta/, data/ and videos/ from staged episodes 0..n_episodes-1; returns info.json."""
    root = Path(root)
    missing = sorted(set(range(n_episodes)) - staged_episodes(root))
    if missing:
        raise DatasetError(f"{len(missing)} of {n_episodes} episodes are not staged in '{root}' "
                           f"(first: {missing[:5]}); run the batch again to finish them, then merge")
    metas = [load_episode_meta(root, i) for i in range(n_episodes)]
    features = _check_same(metas)
    tasks = list(dict.fromkeys(m["task"] for m in metas))
    tmp = root / f".merge-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = [{"episode_index": i, "tasks": [m["task"]], "length": m["length"]} for i, m in enumerate(metas)]
    _merge_data(root, tmp, metas, tasks, rows, data_files_size_in_mb, chunks_size)
    for key in metas[0]["videos"]:
        _merge_video(root, tmp, key, metas, rows, video_files_size_in_mb, chunks_size)
    for i, m in enumerate(metas):
        for key, st in m["image_stats"].items():
            rows[i].update({f"stats/{key}/{s}": v for s, v in st.items()})
    fps = metas[0]["fps"]
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": n_episodes,
        "total_frames": sum(m["length"] for m in metas), "total_tasks": len(tasks), "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb, "video_files_size_in_mb": video_files_size_in_mb,
        "fps": int(fps) if float(fps).is_integer() else fps, "splits": {"train": f"0:{n_episodes}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH if metas[0]["videos"] else None,
        "features": features, **(extra_info or {}),
    }
    _write_meta(tmp, info, rows, tasks, chunks_size)
    _swap_in(root, tmp, ("data", "videos", "meta"))
    return info


def _check_same(metas: list[dict]) -> dict:
    first = metas[0]
    for m in metas[1:]:
        if m["features"] != first["features"] or m["fps"] != first["fps"]:
            diff = sorted(k for k in set(m["features"]) | set(first["features"])
                          if m["features"].get(k) != first["features"].get(k))
            raise DatasetError(f"episode {m['episode_index']} has other features or fps than episode 0 "
                               f"(differs in {diff or ['fps']}); one dataset needs one set of bodies and cameras")
    return {**first["features"], **DEFAULT_FEATURES}


def _merge_data(root, tmp, metas, tasks, rows, size_mb, chunks_size) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    roller, writer, offset, task_index = _Roller(size_mb, chunks_size), None, 0, {t: i for i, t in enumerate(tasks)}
    for i, m in enumerate(metas):
        t = pq.read_table(episode_dir(root, i) / "staged" / "frames.parquet")
        n = t.num_rows
        t = t.append_column("index", pa.array(np.arange(offset, offset + n, dtype=np.int64)))
        t = t.append_column("task_index", pa.array(np.full(n, task_index[m["task"]], dtype=np.int64)))
        chunk, file, new = roller.place(t.nbytes)
        if new:
            if writer is not None:
                writer.close()
            path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(str(path), t.schema)
        writer.write_table(t)
        rows[i].update({"data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": offset,
                        "dataset_to_index": offset + n})
        rows[i].update({f"stats/{k}/{s}": v for k, st in _table_stats(t).items() for s, v in st.items()})
        offset += n
    writer.close()


def _table_stats(t) -> dict[str, dict]:
    return {name: _array_stats(column_array(t, name)) for name in t.column_names}


def column_array(t, name: str) -> np.ndarray:
    """A column as [rows, D] numpy (D = 1 for scalar columns)."""
    import pyarrow as pa

    col = t.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False).reshape(len(col), 1)


def _array_stats(a: np.ndarray) -> dict:  # a: [T, D]
    a = a.astype(np.float64)
    out = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0), "count": np.array([len(a)])}
    out.update({q: np.quantile(a, p, axis=0) for q, p in QUANTILES.items()})
    return {k: v.tolist() for k, v in out.items()}


def aggregate_stats(per_episode: list[dict]) -> dict:
    """Exact min / max / mean / std / count over episodes; quantiles as count-weighted means (as LeRobot does)."""
    n = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    w = n.reshape(-1, *[1] * np.asarray(per_episode[0]["mean"]).ndim) / n.sum()
    mean = np.stack([np.asarray(s["mean"]) for s in per_episode])
    std = np.stack([np.asarray(s["std"]) for s in per_episode])
    mu = (w * mean).sum(0)
    var = (w * (std**2 + (mean - mu) ** 2)).sum(0)
    out = {"min": np.min([s["min"] for s in per_episode], 0), "max": np.max([s["max"] for s in per_episode], 0),
           "mean": mu, "std": np.sqrt(var), "count": np.array([int(n.sum())])}
    for q in QUANTILES:
        if q in per_episode[0]:
            out[q] = (w * np.stack([np.asarray(s[q]) for s in per_episode])).sum(0)
    return {k: np.asarray(v).tolist() for k, v in out.items()}


def _merge_video(root, tmp, key, metas, rows, size_mb, chunks_size) -> None:
    roller, out, t_file = _Roller(size_mb, chunks_size), None, 0.0
    for i, m in enumerate(metas):
        src = episode_dir(root, i) / "staged" / "videos" / f"{key}.mp4"
        chunk, file, new = roller.place(src.stat().st_size)
        if new:
            if out is not None:
                out.close()
            out, t_file = _VideoConcat(tmp / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)), 0.0
        n = out.append(src)
        if n != m["length"]:
            raise DatasetError(f"episode {i}: video '{key}' has {n} frames, the episode {m['length']}")
        dur = n / m["fps"]
        rows[i].update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": t_file, f"videos/{key}/to_timestamp": t_file + dur})
        t_file += dur
    out.close()


class _VideoConcat:
    """Appends mp4 files of one encoding to one mp4 by remuxing packets with shifted timestamps."""

    def __init__(self, path: Path):
        self.path, self._out, self._stream, self._extradata = path, None, None, None
        self._offset = 0  # in the source stream's time base
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, src: Path) -> int:
        import av

        with av.open(str(src)) as c:
            s = c.streams.video[0]
            if self._out is None:
                self._out = av.open(str(self.path), mode="w")
                self._stream = self._out.add_stream_from_template(s)
                self._extradata, self._tb, self._rate = s.codec_context.extradata, s.time_base, s.average_rate
            elif s.codec_context.extradata != self._extradata or s.time_base != self._tb:
                raise DatasetError(f"{src}: encoded with other settings than the first episode; cannot concatenate")
            frames = 0
            for pkt in c.demux(s):
                if pkt.dts is None:  # flush packet
                    continue
                pkt.pts += self._offset
                pkt.dts += self._offset
                pkt.stream = self._stream
                self._out.mux(pkt)
                frames += 1
        self._offset += int(round(frames / (self._rate * self._tb)))
        return frames

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _write_meta(tmp: Path, info: dict, rows: list[dict], tasks: list[str], chunks_size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, r in enumerate(rows):  # one episodes file per chunks_size episodes
        r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = divmod(i // chunks_size, chunks_size)
    stat_keys = sorted({k.split("/")[1] for k in rows[0] if k.startswith("stats/")})
    stats = {f: aggregate_stats([{s: r[f"stats/{f}/{s}"] for s in _stats_names(rows[0], f)} for r in rows])
             for f in stat_keys}
    for (chunk, file), group in _group(rows, ("meta/episodes/chunk_index", "meta/episodes/file_index")).items():
        path = tmp / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(group), path)
    tasks_table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                            "task": pa.array(tasks, pa.string())})
    pq.write_table(tasks_table.replace_schema_metadata({b"pandas": _pandas_index_meta("task", "task_index")}),
                   tmp / "meta" / "tasks.parquet")
    (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))


def _stats_names(row: dict, feature: str) -> list[str]:
    prefix = f"stats/{feature}/"
    return [k[len(prefix):] for k in row if k.startswith(prefix)]


def _group(rows: list[dict], keys: tuple[str, str]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _pandas_index_meta(index: str, column: str) -> bytes:
    """pandas metadata that makes `pd.read_parquet(tasks.parquet)` index rows by task, as LeRobot writes it."""
    col = lambda name, pt, nt: {"name": name, "field_name": name, "pandas_type": pt, "numpy_type": nt,  # noqa: E731
                                "metadata": None}
    return json.dumps({
        "index_columns": [index],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [col(column, "int64", "int64"), col(index, "unicode", "object")],
        "creator": {"library": "pyarrow", "version": "hybridsim"}, "pandas_version": "2.2.0",
    }).encode()


def _swap_in(root: Path, tmp: Path, names: tuple[str, ...]) -> None:
    """Replace root/<name> by tmp/<name> for each name, with renames only (meta/ last)."""
    for name in names:
        new, cur = tmp / name, root / name
        old = root / f".old-{tmp.name}-{name}"
        if cur.exists():
            os.replace(cur, old)
        if new.exists():
            os.replace(new, cur)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- readers
def load_info(root: str | Path) -> dict:
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"'{root}' has no meta/info.json; merge it first: hybridsim batch merge out_dir={root}")
    return json.loads(path.read_text())


def load_stats(root: str | Path) -> dict:
    return json.loads((Path(root) / "meta" / "stats.json").read_text())


def load_tasks(root: str | Path) -> list[str]:
    import pyarrow.parquet as pq

    t = pq.read_table(Path(root) / "meta" / "tasks.parquet").to_pydict()
    return [task for _, task in sorted(zip(t["task_index"], t["task"]))]


def load_episodes(root: str | Path):
    """meta/episodes as one pyarrow Table, sorted by episode_index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(root) / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    t = pa.concat_tables([pq.read_table(f) for f in files])
    return t.sort_by("episode_index")


def load_frames(root: str | Path, episode: int | None = None):
    """The data table (every file, in order), or one episode's rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pa.concat_tables([pq.read_table(f) for f in sorted((Path(root) / "data").glob("chunk-*/file-*.parquet"))])
    return t if episode is None else t.filter(pc.equal(t["episode_index"], episode))


def decode_episode(root: str | Path, key: str, episode: int) -> np.ndarray:
    """Decoded frames [T, H, W, 3] uint8 of one episode from its (shared) video file."""
    import av

    info, ep = load_info(root), load_episodes(root).to_pylist()[episode]
    path = Path(root) / info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                                  file_index=ep[f"videos/{key}/file_index"])
    t0, t1, half = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"], 0.5 / info["fps"]
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0) if t0 - half <= f.time < t1 - half]
    return np.stack(frames)


def video_frame_count(path: str | Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def verify(root: str | Path, decode_videos: bool = True) -> None:
    """Check info.json, the episode index, data, videos and stats against each other; DatasetError lists problems."""
    root, problems = Path(root), []
    info, eps = load_info(root), load_episodes(root).to_pylist()
    data = load_frames(root)
    feats = info["features"]
    check = lambda ok, msg: ok or problems.append(msg)  # noqa: E731
    check(info["codebase_version"] == CODEBASE_VERSION, f"codebase_version {info['codebase_version']}")
    check(info["total_episodes"] == len(eps), f"total_episodes {info['total_episodes']} != {len(eps)} episode rows")
    check(info["total_frames"] == data.num_rows, f"total_frames {info['total_frames']} != {data.num_rows} rows")
    check(set(data.column_names) == {k for k, f in feats.items() if f["dtype"] != "video"},
          f"data columns {sorted(data.column_names)} != non-video features")
    check(column_array(data, "index")[:, 0].tolist() == list(range(data.num_rows)), "index is not 0..N-1")
    check(info["total_tasks"] == len(load_tasks(root)), "total_tasks != rows of tasks.parquet")
    ep_col, fr_col = column_array(data, "episode_index")[:, 0], column_array(data, "frame_index")[:, 0]
    for e in eps:
        i, a, b = e["episode_index"], e["dataset_from_index"], e["dataset_to_index"]
        check(b - a == e["length"], f"episode {i}: to - from != length")
        check((ep_col[a:b] == i).all() and (fr_col[a:b] == np.arange(b - a)).all(), f"episode {i}: rows {a}:{b}")
    _verify_stats(load_stats(root), data, feats, check)
    for key in (k for k, f in feats.items() if f["dtype"] == "video"):
        for (c, f), group in _group(eps, (f"videos/{key}/chunk_index", f"videos/{key}/file_index")).items():
            path = root / info["video_path"].format(video_key=key, chunk_index=c, file_index=f)
            check(path.is_file(), f"missing {path}")
            end = max(e[f"videos/{key}/to_timestamp"] for e in group)
            frames = sum(e["length"] for e in group)
            check(abs(end * info["fps"] - frames) < 1e-6, f"{key} file {c}/{f}: timestamps end at {end}")
            if decode_videos and path.is_file():
                n = video_frame_count(path)
                check(n == frames, f"{path.name} of {key}: {n} decoded frames, episodes say {frames}")
    if problems:
        raise DatasetError(f"'{root}' is inconsistent: " + "; ".join(problems))


def _verify_stats(stats: dict, data, feats: dict, check) -> None:
    for name in data.column_names:
        a = column_array(data, name).astype(np.float64)
        s = stats.get(name)
        if not check(s is not None, f"stats.json lacks '{name}'"):
            continue
        check(np.allclose(s["min"], a.min(0)) and np.allclose(s["max"], a.max(0)), f"stats of '{name}': min/max")
        check(np.allclose(s["mean"], a.mean(0), atol=1e-6) and np.allclose(s["std"], a.std(0), atol=1e-5),
              f"stats of '{name}': mean/std")
        check(s["count"] == [len(a)], f"stats of '{name}': count")
    for key in (k for k, f in feats.items() if f["dtype"] == "video"):
        check(np.asarray(stats.get(key, {}).get("mean", [])).shape == (3, 1, 1), f"stats of video '{key}'")
