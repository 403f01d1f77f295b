"""LeRobot v3.0 dataset output, written without the lerobot package (layout: docs/dataset.md).

The files are the ones LeRobot 0.6 writes itself (checked by scripts/lerobot_roundtrip.py against the
real client): info.json with only DatasetInfo's fields, feature and video-info keys as 0.6 writes
them, quantile stats (q01 q10 q50 q90 q99) in stats.json and in the episodes table, integer fps,
videos encoded with the settings their info records (hybridsim.output.video). hybridsim's own
provenance goes to meta/hybridsim.json.

Two steps, so that a killed batch loses nothing finished and shards can run anywhere:

1. `EpisodeWriter` stages one episode under `sidecar/episode_<i>/` through a temporary folder and one
   `os.replace`: the folder exists only once the episode is complete. The set of these folders is the
   manifest of finished episodes.
2. `merge(root, n)` builds `meta/`, `data/` and `videos/` from staged episodes 0..n-1: tables are
   concatenated, video streams are remuxed (no re-encoding), stats are computed and aggregated.
   It writes into a temporary folder and swaps the results in, `meta/` last.

Readers (`load_info`, `load_frames`, `decode_episode`, `verify`, ...) live in dataset_read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from hybridsim.output.video import StreamWriter, VideoSettings, depth_settings
from hybridsim.output.writers import write_json

from hybridsim.output.dataset_read import (CHUNK_FILE, CODEBASE_VERSION, DATA_PATH, DEFAULT_FEATURES,  # noqa: F401
                                           EPISODES_PATH, PROVENANCE, QUANTILES, SIDECAR, STAT_NAMES, VIDEO_PATH,
                                           DatasetError, column_array, decode_episode, load_episodes, load_frames,
                                           load_info, load_provenance, load_stats, load_tasks, verify,
                                           video_frame_count)

_MB = 1024.0**2


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


def lerobot_fps(fps: float) -> int:
    """LeRobot stores fps as an integer; a fractional fps cannot make a LeRobot dataset."""
    if float(fps) != int(fps) or fps <= 0:
        raise DatasetError(f"fps {fps} is not a positive integer; LeRobot datasets need an integer fps: "
                           "set scenario.timing.fps to one (e.g. scenario.timing.fps=20)")
    return int(fps)


def video_feature(info: dict) -> dict:
    """A video feature as LeRobot 0.6 declares it, from its stream info (VideoSettings.info)."""
    return {"dtype": "video", "shape": [info["video.height"], info["video.width"], info["video.channels"]],
            "names": ["height", "width", "channels"], "info": info}


# --------------------------------------------------------------------------- staging one episode
class _HistStats:
    """Per-channel stats of integer images from exact value histograms: min / max / mean / std and the
    quantiles. RGB values are scaled to [0, 1] (as LeRobot's stats are); depth stays in millimetres.
    Frames over MAX_PIXELS are read on a regular pixel grid (LeRobot also downsizes for stats)."""

    MAX_PIXELS = 65536

    def __init__(self, channels: int, levels: int, scale: float):
        self.hist = np.zeros((channels, levels), dtype=np.int64)
        self.scale, self.n_frames = scale, 0

    def add(self, img: np.ndarray) -> None:  # img: [H, W, C] uint8 or [H, W] uint16
        h, w = img.shape[:2]
        step = max(1, int(np.ceil(np.sqrt(h * w / self.MAX_PIXELS))))
        x = img[::step, ::step].reshape(-1, self.hist.shape[0])
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(x[:, c], minlength=self.hist.shape[1])
        self.n_frames += 1

    def result(self) -> dict:
        v = np.arange(self.hist.shape[1], dtype=np.float64) * self.scale
        n = self.hist.sum(1)
        mean = (self.hist * v).sum(1) / n
        std = np.sqrt(np.maximum((self.hist * v**2).sum(1) / n - mean**2, 0.0))
        cum = np.cumsum(self.hist, 1)
        lo = np.array([v[np.argmax(c > 0)] for c in self.hist])
        hi = np.array([v[len(c) - 1 - np.argmax(c[::-1] > 0)] for c in self.hist])
        out = {"min": lo, "max": hi, "mean": mean, "std": std}
        for q, p in QUANTILES.items():
            out[q] = np.array([v[np.searchsorted(cum[c], p * n[c])] for c in range(len(n))])
        c = lambda a: np.asarray(a).reshape(-1, 1, 1).tolist()  # noqa: E731  LeRobot keeps [C, 1, 1]
        return {k: ([self.n_frames] if k == "count" else c(out[k])) for k in STAT_NAMES}


class EpisodeWriter:
    """Stages one episode; nothing is visible under `sidecar/` until `commit()` renames it there.

    Per frame: numeric feature values (1-D float32 arrays), uint8 RGB images per video key, optional
    depth maps (uint16 millimetres) per depth video key, label arrays per camera (sidecar npz), tables
    (sidecar parquet) and fired events (sidecar events.jsonl). Video features (with their info) are
    added to the episode's features at commit.
    """

    def __init__(self, root: str | Path, index: int, fps: float, video: VideoSettings | None = None):
        self.root, self.index, self.fps = Path(root), index, lerobot_fps(fps)
        self.video = video or VideoSettings()
        self.final = episode_dir(root, index)
        self.tmp = self.final.parent / f".tmp-{self.final.name}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "staged" / "videos").mkdir(parents=True)
        self.length = 0
        self._rows: dict[str, list] = {}
        self._videos: dict[str, StreamWriter] = {}
        self._img_stats: dict[str, _HistStats] = {}
        self._tables: dict[str, list[dict]] = {}
        self._events = open(self.tmp / "events.jsonl", "w")

    def add_frame(self, values: dict[str, np.ndarray], images: dict[str, np.ndarray],
                  depths: dict[str, np.ndarray] | None = None) -> None:
        if self.length == 0:
            self._rows = {k: [] for k in values}
        elif set(values) != set(self._rows):
            raise DatasetError(f"episode {self.index}: frame {self.length} has features {sorted(values)}, "
                               f"frame 0 had {sorted(self._rows)}")
        for k, v in values.items():
            self._rows[k].append(np.asarray(v, dtype=np.float32).reshape(-1))
        for key, img in [*images.items(), *(depths or {}).items()]:
            if key not in self._videos:
                self._open_video(key, img, depth=key in (depths or {}))
            self._videos[key].write(img)
            self._img_stats[key].add(img)
        self.length += 1

    def _open_video(self, key: str, img: np.ndarray, depth: bool) -> None:
        if self.length:
            raise DatasetError(f"episode {self.index}: video '{key}' starts at frame {self.length}, not 0")
        h, w = img.shape[:2]
        settings = depth_settings(self.video.gop) if depth else self.video
        self._videos[key] = StreamWriter(self.tmp / "staged" / "videos" / f"{key}.mp4", self.fps, w, h, settings)
        self._img_stats[key] = _HistStats(1, 65536, 1.0) if depth else _HistStats(3, 256, 1 / 255.0)

    def add_labels(self, camera: str, frame_index: int, arrays: dict[str, np.ndarray]) -> None:
        d = self.tmp / "labels" / camera
        d.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(d / f"{frame_index:06d}.npz", **arrays)

    def add_rows(self, table: str, rows: list[dict]) -> None:
        """Rows of a sidecar table `labels/<table>.parquet`, written at commit."""
        self._tables.setdefault(table, []).extend(rows)

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
        for name, rows in self._tables.items():
            (self.tmp / "labels").mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), self.tmp / "labels" / f"{name}.parquet")
        videos = {k: {"width": v.enc_width, "height": v.enc_height, "frames": v.frames,
                      "info": v.settings.info(v.enc_width, v.enc_height, self.fps)} for k, v in self._videos.items()}
        features = {**meta.get("features", {}), **{k: video_feature(v["info"]) for k, v in videos.items()}}
        meta = dict(meta, episode_index=self.index, length=self.length, fps=self.fps, features=features,
                    videos=videos, image_stats={k: s.result() for k, s in self._img_stats.items()})
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


def merge(root: str | Path, n_episodes: int, *, chunks_size: int = 1000, data_files_size_in_mb: int = 100,
          video_files_size_in_mb: int = 200, robot_type: str | None = None, provenance: dict | None = None) -> dict:
    """Build meta/, data/ and videos/ from staged episodes 0..n_episodes-1; returns info.json.
    `provenance` (scenario, config fingerprint, ...) goes to meta/hybridsim.json."""
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
    stats = [{} for _ in metas]  # per episode: feature -> stats
    _merge_data(root, tmp, metas, tasks, rows, stats, data_files_size_in_mb, chunks_size)
    videos = [k for k, f in features.items() if f["dtype"] == "video"]
    for key in videos:
        _merge_video(root, tmp, key, metas, rows, video_files_size_in_mb, chunks_size)
    for i, m in enumerate(metas):
        stats[i].update(m["image_stats"])
    for i, r in enumerate(rows):  # LeRobot's column order: stats in feature order, then the meta file index
        r.update({f"stats/{f}/{s}": stats[i][f][s] for f in features if f in stats[i] for s in STAT_NAMES})
        r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = divmod(i // chunks_size, chunks_size)
    info = {
        "codebase_version": CODEBASE_VERSION, "fps": metas[0]["fps"], "features": features,
        "total_episodes": n_episodes, "total_frames": sum(m["length"] for m in metas), "total_tasks": len(tasks),
        "chunks_size": chunks_size, "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": video_files_size_in_mb, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None, "robot_type": robot_type, "splits": {"train": f"0:{n_episodes}"},
    }
    total = {f: aggregate_stats([s[f] for s in stats]) for f in features if f in stats[0]}
    _write_meta(tmp, info, rows, tasks, total, provenance)
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
    return {**{k: v for k, v in first["features"].items() if k not in DEFAULT_FEATURES}, **DEFAULT_FEATURES}


def _merge_data(root, tmp, metas, tasks, rows, stats, size_mb, chunks_size) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    roller, writer, offset, task_index = _Roller(size_mb, chunks_size), None, 0, {t: i for i, t in enumerate(tasks)}
    for i, m in enumerate(metas):
        t = pq.read_table(episode_dir(root, i) / "staged" / "frames.parquet")
        n = t.num_rows
        t = t.append_column("index", pa.array(np.arange(offset, offset + n, dtype=np.int64)))
        t = t.append_column("task_index", pa.array(np.full(n, task_index[m["task"]], dtype=np.int64)))
        t = t.replace_schema_metadata({b"huggingface": _hf_features(m["features"], t.column_names)})
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
        stats[i].update({name: _array_stats(column_array(t, name)) for name in t.column_names})
        offset += n
    writer.close()


def _hf_features(features: dict, columns: list[str]) -> bytes:
    """The `huggingface` schema metadata LeRobot's data files carry (datasets.Features of the columns)."""
    out = {}
    for name in columns:
        f = {**DEFAULT_FEATURES, **features}[name]
        value = {"dtype": f["dtype"], "_type": "Value"}
        out[name] = value if list(f["shape"]) == [1] else {"feature": value, "length": f["shape"][0], "_type": "List"}
    return json.dumps({"info": {"features": out}}).encode()


def _array_stats(a: np.ndarray) -> dict:  # a: [T, D]
    a = a.astype(np.float64)
    out = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0), "count": np.array([len(a)])}
    out.update({q: np.quantile(a, p, axis=0) for q, p in QUANTILES.items()})
    return {k: out[k].tolist() for k in STAT_NAMES}


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


def _write_meta(tmp: Path, info: dict, rows: list[dict], tasks: list[str], stats: dict,
                provenance: dict | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for (chunk, file), group in _group(rows, ("meta/episodes/chunk_index", "meta/episodes/file_index")).items():
        path = tmp / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(group), path)
    tasks_table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                            "task": pa.array(tasks, pa.string())})
    pq.write_table(tasks_table.replace_schema_metadata({b"pandas": _pandas_index_meta("task", "task_index")}),
                   tmp / "meta" / "tasks.parquet")
    (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    if provenance is not None:
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=_json_default))


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
