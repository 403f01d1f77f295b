"""Readers of a hybridsim LeRobot v3.0 dataset (no lerobot needed): tables, stats, decoded frames, and
`verify`, which checks a dataset against itself and against the keys LeRobot 0.6 expects.
Also the layout's constants, shared with the writer (hybridsim.output.dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
PROVENANCE = "meta/hybridsim.json"  # hybridsim's own record; LeRobot ignores it
SIDECAR = "sidecar"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)  # LeRobot's order
DEFAULT_FEATURES = {  # LeRobot's bookkeeping columns, present in every data file
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class DatasetError(RuntimeError):
    """A dataset folder that cannot be written, merged or read as asked."""




def column_array(t, name: str) -> np.ndarray:
    """A column as [rows, D] numpy (D = 1 for scalar columns)."""
    import pyarrow as pa

    col = t.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False).reshape(len(col), 1)



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


def load_provenance(root: str | Path) -> dict:
    """meta/hybridsim.json: scenario, config fingerprint, sidecar layout, action and state conventions."""
    path = Path(root) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else {}


def decode_episode(root: str | Path, key: str, episode: int) -> np.ndarray:
    """Decoded frames of one episode from its (shared) video file: [T, H, W, 3] uint8, or [T, H, W]
    float32 millimetres for a depth-map feature (LeRobot's dequantisation)."""
    from hybridsim.output.video import DepthQuantization, decode_frames

    info, ep = load_info(root), load_episodes(root).to_pylist()[episode]
    path = Path(root) / info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                                  file_index=ep[f"videos/{key}/file_index"])
    vinfo = info["features"][key].get("info", {})
    depth = None
    if vinfo.get("is_depth_map"):
        depth = DepthQuantization(*(vinfo[f"video.{k}"] for k in ("depth_min", "depth_max", "shift", "use_log")))
    return decode_frames(path, ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"], info["fps"],
                         depth)


def video_frame_count(path: str | Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def verify(root: str | Path, decode_videos: bool = True) -> None:
    """Check info.json, the episode index, data, videos and stats against each other and against what
    LeRobot 0.6 reads (known info keys only, integer fps, quantile stats); DatasetError lists problems."""
    root, problems = Path(root), []
    info, eps = load_info(root), load_episodes(root).to_pylist()
    data = load_frames(root)
    feats = info["features"]
    check = lambda ok, msg: ok or problems.append(msg)  # noqa: E731
    check(info["codebase_version"] == CODEBASE_VERSION, f"codebase_version {info['codebase_version']}")
    check(set(info) <= INFO_KEYS, f"info.json keys LeRobot does not know: {sorted(set(info) - INFO_KEYS)}")
    check(isinstance(info["fps"], int), f"fps {info['fps']!r} is not an integer")
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
        missing = [f"{f}/{s}" for f in feats for s in STAT_NAMES if f"stats/{f}/{s}" not in e]
        check(not missing, f"episode {i}: episodes table lacks stats {missing[:4]}")
    _verify_stats(load_stats(root), data, feats, check)
    for key in (k for k, f in feats.items() if f["dtype"] == "video"):
        _verify_video(root, info, key, eps, decode_videos, check)
    if problems:
        raise DatasetError(f"'{root}' is inconsistent: " + "; ".join(problems))


# the fields of lerobot.datasets.utils.DatasetInfo (0.6); any other key makes LeRobot warn on every load
INFO_KEYS = {"codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path", "robot_type", "splits",
             "tools"}


def _verify_video(root: Path, info: dict, key: str, eps: list[dict], decode_videos: bool, check) -> None:
    vinfo = info["features"][key].get("info", {})
    check("is_depth_map" in vinfo and "video.is_depth_map" not in vinfo,
          f"{key}: info needs 'is_depth_map' (LeRobot 0.6), not 'video.is_depth_map'")
    check(vinfo.get("video.fps") == info["fps"], f"{key}: video.fps {vinfo.get('video.fps')} != fps")
    for (c, f), group in _group(eps, (f"videos/{key}/chunk_index", f"videos/{key}/file_index")).items():
        path = root / info["video_path"].format(video_key=key, chunk_index=c, file_index=f)
        check(path.is_file(), f"missing {path}")
        end = max(e[f"videos/{key}/to_timestamp"] for e in group)
        frames = sum(e["length"] for e in group)
        check(abs(end * info["fps"] - frames) < 1e-6, f"{key} file {c}/{f}: timestamps end at {end}")
        if decode_videos and path.is_file():
            n = video_frame_count(path)
            check(n == frames, f"{path.name} of {key}: {n} decoded frames, episodes say {frames}")


def _group(rows: list[dict], keys: tuple[str, str]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _verify_stats(stats: dict, data, feats: dict, check) -> None:
    for name in data.column_names:
        a = column_array(data, name).astype(np.float64)
        s = stats.get(name)
        if not check(s is not None, f"stats.json lacks '{name}'"):
            continue
        check(set(STAT_NAMES) <= set(s), f"stats of '{name}' lack {sorted(set(STAT_NAMES) - set(s))}")
        check(np.allclose(s["min"], a.min(0)) and np.allclose(s["max"], a.max(0)), f"stats of '{name}': min/max")
        check(np.allclose(s["mean"], a.mean(0), atol=1e-6) and np.allclose(s["std"], a.std(0), atol=1e-5),
              f"stats of '{name}': mean/std")
        check(s["count"] == [len(a)], f"stats of '{name}': count")
    for key in (k for k, f in feats.items() if f["dtype"] == "video"):
        s, c = stats.get(key, {}), feats[key]["shape"][2]
        check(all(np.asarray(s.get(n, [])).shape == (c, 1, 1) for n in STAT_NAMES if n != "count"),
              f"stats of video '{key}' must be [{c}, 1, 1] with {STAT_NAMES}")
