"""Round-trips of a hybridsim dataset through the real LeRobot (run by lerobot_roundtrip.py inside a
virtual environment that has lerobot installed; needs only lerobot, PyAV, numpy and pyarrow).

    python lerobot_checks.py DATASET WORKDIR

1. load: LeRobotDataset reads every frame; decoded video frames equal PyAV's, numeric features equal
   the parquet rows, depth maps equal the sidecar's within LeRobot's 12-bit quantisation, quantile
   stats present, delta_timestamps queries work;
2. append: LeRobotDataset.resume + add_frame + save_episode (LeRobot's own writer, with the encoder the
   dataset's info records), then reload: old episodes unchanged, the new one decodes;
3. merge: with a dataset LeRobot wrote (same features, one episode), in both orders; every frame of
   every merged episode equals its source;
4. re-encode: reencode_dataset to LeRobot's default AV1 encoder, reload, frames close to the source;
5. delete_episodes: drop episode 0, reload.
Every Python warning and every log record at WARNING or above, from any library, counts as a failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WARNINGS: list[str] = []


# LeRobot warns on every dataset it opens (its own included) when torchcodec cannot load FFmpeg; that
# says nothing about the dataset, so it is reported apart. Everything else counts.
ENVIRONMENT = ("'torchcodec' is not available in your platform", "'torchcodec' is installed but cannot be loaded")
ENV_WARNINGS: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            msg = f"log {record.name} {record.levelname}: {record.getMessage()[:300]}"
            (ENV_WARNINGS if any(e in msg for e in ENVIRONMENT) else WARNINGS).append(msg)


logging.getLogger().addHandler(_Collect())
warnings.simplefilter("always")
warnings.showwarning = lambda msg, cat, fn, ln, *a: WARNINGS.append(f"{cat.__name__}: {msg} ({fn}:{ln})")

import av  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = "hybridsim/roundtrip"
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def pyav_episode(root: Path, info: dict, ep: dict, key: str) -> np.ndarray:
    """Frames of one episode decoded with PyAV directly: [T, H, W, 3] uint8 or [T, H, W] 12-bit codes."""
    path = root / info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                            file_index=ep[f"videos/{key}/file_index"])
    t0, t1, half = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"], 0.5 / info["fps"]
    depth = info["features"][key]["info"].get("is_depth_map")
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray12le" if depth else "rgb24") for f in c.decode(video=0)
                         if t0 - half <= f.time < t1 - half])


def episodes_table(root: Path) -> list[dict]:
    files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["episode_index"])


def to_uint8(x) -> np.ndarray:  # LeRobot's float [C, H, W] in [0, 1] -> [H, W, C] uint8
    return (x.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def compare_all(ds, root: Path, label: str) -> bool:
    """Every frame of `ds` (a LeRobotDataset on `root`) against PyAV's decode of its own files: RGB bit-equal;
    depth equal up to 1 mm (LeRobot's torch dequantisation rounds where numpy's float32 path may not)."""
    from lerobot.datasets.depth_utils import dequantize_depth

    info = json.loads((root / "meta/info.json").read_text())
    eps, feats = episodes_table(root), info["features"]
    rgb = [k for k, f in feats.items() if f["dtype"] == "video" and not f["info"].get("is_depth_map")]
    depth = [k for k, f in feats.items() if f["dtype"] == "video" and f["info"].get("is_depth_map")]
    worst_rgb, worst_depth, n = 0, 0.0, 0
    for ep in eps:
        ref = {k: pyav_episode(root, info, ep, k) for k in rgb + depth}
        for j, idx in enumerate(range(ep["dataset_from_index"], ep["dataset_to_index"])):
            item = ds[idx]
            for k in rgb:
                worst_rgb = max(worst_rgb, int(np.abs(to_uint8(item[k]).astype(int) - ref[k][j].astype(int)).max()))
            for k in depth:
                q = feats[k]["info"]
                want = dequantize_depth(ref[k][j], q["video.depth_min"], q["video.depth_max"], q["video.shift"],
                                        q["video.use_log"], output_unit="mm", output_tensor=False)
                got = item[k].numpy().reshape(want.shape).astype(np.float64)
                worst_depth = max(worst_depth, float(np.abs(got - want).max()))
            n += 1
    return check(f"{label}: {n} frames x {len(rgb)} RGB + {len(depth)} depth videos decoded by LeRobot vs PyAV",
                 n == len(ds) and worst_rgb == 0 and worst_depth <= 1.0,
                 f"RGB max |diff| {worst_rgb} (must be 0), depth max |diff| {worst_depth:g} mm (<= 1)")


def check_depth_vs_sidecar(ds, root: Path) -> None:
    """LeRobot's depth frames against hybridsim's sidecar depth labels (uint16 mm): within half a 12-bit step."""
    info = json.loads((root / "meta/info.json").read_text())
    keys = [k for k, f in info["features"].items() if f["dtype"] == "video" and f["info"].get("is_depth_map")]
    if not keys:
        return
    worst = 0.0
    for idx in range(0, len(ds), 5):
        item = ds[idx]
        e, t = int(item["episode_index"]), int(item["frame_index"])
        for k in keys:
            cam = k.split(".")[2]
            mm = np.load(root / f"sidecar/episode_{e:06d}/labels/{cam}/{t:06d}.npz")["depth"].astype(np.float64)
            q = info["features"][k]["info"]
            ok = (mm > q["video.depth_min"] * 1000) & (mm < q["video.depth_max"] * 1000)
            step = (mm + q["video.shift"] * 1000) * np.log((q["video.depth_max"] + q["video.shift"]) /
                                                         (q["video.depth_min"] + q["video.shift"])) / 4095
            err = np.abs(item[k].numpy().reshape(mm.shape) - mm) / (step / 2 + 1.0)
            worst = max(worst, float(err[ok].max()) if ok.any() else 0.0)
    check("load: depth-map video equals the sidecar depth within LeRobot's 12-bit quantisation", worst <= 1.0,
          f"worst error / (half a quantisation step + 1 mm) = {worst:.2f}")


def check_load(src: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(REPO, root=src, video_backend="pyav")
    info = json.loads((src / "meta/info.json").read_text())
    check("load: LeRobotDataset opens the dataset", len(ds) == info["total_frames"] and
          ds.num_episodes == info["total_episodes"], f"{ds.num_episodes} episodes, {len(ds)} frames, fps {ds.fps}")
    compare_all(ds, src, "load")
    check_depth_vs_sidecar(ds, src)
    data = [r for f in sorted((src / "data").glob("chunk-*/file-*.parquet")) for r in pq.read_table(f).to_pylist()]
    numeric = [k for k, f in info["features"].items() if f["dtype"] == "float32"]
    bad = [k for k in numeric for i in (0, len(data) // 2, len(data) - 1)
           if not np.array_equal(np.asarray(ds[i][k]).reshape(-1), np.asarray(data[i][k], np.float32).reshape(-1))]
    check(f"load: numeric features equal the parquet rows ({', '.join(numeric[:3])}, ...)", not bad, str(bad[:3]))
    if "action" in info["features"]:
        names = info["features"]["action"]["names"]
        check("load: `action` feature with names", len(names) == info["features"]["action"]["shape"][0],
              f"{len(names)} names, first {names[:3]}")
    stats = ds.meta.stats
    missing = [k for k in info["features"] if k in stats and not {"q01", "q10", "q50", "q90", "q99"} <= set(stats[k])]
    check("load: quantile stats (q01..q99) for every feature", not missing and len(stats) >= len(info["features"]) - 0,
          f"{len(stats)} features with stats")
    vkey = next(k for k, f in info["features"].items() if f["dtype"] == "video" and not f["info"]["is_depth_map"])
    dt = {"observation.state": [-1 / ds.fps, 0.0], "action": [0.0, 1 / ds.fps], vkey: [-1 / ds.fps, 0.0]}
    dsd = LeRobotDataset(REPO, root=src, video_backend="pyav", delta_timestamps={k: v for k, v in dt.items() if k in info["features"]})
    item = dsd[5]
    check("load: delta_timestamps", tuple(item[vkey].shape[:1]) == (2,) and item["observation.state"].shape[0] == 2,
          f"{vkey} {tuple(item[vkey].shape)}")


def lerobot_frames(ds, episode: int) -> list[dict]:
    """One episode of a LeRobotDataset as add_frame() dicts."""
    feats, ep = ds.meta.features, ds.meta.episodes[episode]
    out = []
    for idx in range(ep["dataset_from_index"], ep["dataset_to_index"]):
        item, frame = ds[idx], {"task": ds[idx]["task"]}
        for k, f in feats.items():
            if k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
                continue
            if f["dtype"] == "video" and f["info"].get("is_depth_map"):
                frame[k] = item[k].numpy().reshape(f["shape"]).round().astype(np.uint16)  # millimetres
            elif f["dtype"] == "video":
                frame[k] = to_uint8(item[k])
            else:
                frame[k] = np.asarray(item[k], dtype=np.float32).reshape(f["shape"])
        out.append(frame)
    return out


def encoders(meta) -> dict:
    """The encoders the dataset's info records (what LeRobot needs to append matching videos)."""
    from lerobot.configs.video import encoder_config_from_video_info

    enc = {}
    for k in meta.video_keys:
        e = encoder_config_from_video_info(meta.features[k]["info"])
        enc["depth_encoder" if k in meta.depth_keys else "rgb_encoder"] = e
    return enc


def check_append(src: Path, work: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dst = work / "appended"
    shutil.copytree(src, dst)
    orig = LeRobotDataset(REPO, root=src, video_backend="pyav")
    frames = lerobot_frames(orig, 0)
    ds = LeRobotDataset.resume(REPO, root=dst, video_backend="pyav", **encoders(orig.meta))
    for f in frames:
        ds.add_frame(f)
    ds.save_episode(parallel_encoding=False)  # no fork() from a threaded process (a Python 3.12 warning)
    ds.finalize()
    again = LeRobotDataset(REPO, root=dst, video_backend="pyav")
    check("append: LeRobot's writer adds an episode, the dataset reloads",
          again.num_episodes == orig.num_episodes + 1 and len(again) == len(orig) + len(frames),
          f"{again.num_episodes} episodes, {len(again)} frames")
    compare_all(again, dst, "append")
    new = again.meta.episodes[orig.num_episodes]
    key = next(k for k in again.meta.video_keys if k not in again.meta.depth_keys)
    err = np.mean([np.abs(to_uint8(again[new["dataset_from_index"] + j][key]).astype(int) - f[key].astype(int)).mean()
                   for j, f in enumerate(frames)])
    check("append: the appended episode decodes to what was added (lossy re-encode)", err < 3.0,
          f"mean |diff| {err:.2f} of 255")


def write_lerobot_dataset(like, root: Path, episode: int):
    """A dataset written by LeRobot itself, with the features and encoders of `like`, holding one episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {}
    for k, f in like.meta.features.items():
        if k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            continue
        feats[k] = {"dtype": f["dtype"], "shape": tuple(f["shape"]), "names": f["names"]}
        if f["dtype"] == "video" and f["info"].get("is_depth_map"):
            feats[k]["info"] = {"is_depth_map": True}
    ds = LeRobotDataset.create("lerobot/written", fps=like.fps, features=feats, root=root,
                               robot_type=like.meta.robot_type, use_videos=True, video_backend="pyav",
                               **encoders(like.meta))
    for f in lerobot_frames(like, episode):
        ds.add_frame(f)
    ds.save_episode(parallel_encoding=False)
    ds.finalize()
    return LeRobotDataset("lerobot/written", root=root, video_backend="pyav")


def check_merge(src: Path, work: Path) -> None:
    from lerobot.datasets.dataset_tools import merge_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ours = LeRobotDataset(REPO, root=src, video_backend="pyav")
    theirs = write_lerobot_dataset(ours, work / "lerobot_written", ours.num_episodes - 1)
    for name, order in (("hybridsim + lerobot", [ours, theirs]), ("lerobot + hybridsim", [theirs, ours])):
        out = work / ("merged_" + name.replace(" + ", "_"))
        merged = merge_datasets(order, output_repo_id="hybridsim/merged", output_dir=out)
        n = sum(d.num_episodes for d in order)
        check(f"merge {name}: merge_datasets, reload", merged.num_episodes == n and
              len(merged) == sum(len(d) for d in order), f"{merged.num_episodes} episodes, {len(merged)} frames")
        compare_all(LeRobotDataset("hybridsim/merged", root=out, video_backend="pyav"), out, f"merge {name}")
        src_frames = [to_uint8(d[i][merged.meta.video_keys[0]]) for d in order for i in range(len(d))]
        k = merged.meta.video_keys[0]
        same = all(np.array_equal(to_uint8(merged[i][k]), src_frames[i]) for i in range(0, len(merged), 3))
        check(f"merge {name}: merged frames equal their sources (every 3rd frame, {k})", same)


def check_reencode(src: Path, work: Path) -> None:
    from lerobot.configs.video import rgb_encoder_defaults
    from lerobot.datasets.dataset_tools import reencode_dataset
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dst = work / "reencoded"
    shutil.copytree(src, dst)
    ds = reencode_dataset(LeRobotDataset(REPO, root=dst, video_backend="pyav"), rgb_encoder=rgb_encoder_defaults())
    again = LeRobotDataset(REPO, root=dst, video_backend="pyav")
    orig = LeRobotDataset(REPO, root=src, video_backend="pyav")
    key = next(k for k in again.meta.video_keys if k not in again.meta.depth_keys)
    codec = again.meta.features[key]["info"]["video.codec"]
    err = np.mean([np.abs(to_uint8(again[i][key]).astype(int) - to_uint8(orig[i][key]).astype(int)).mean()
                   for i in range(0, len(orig), 4)])
    check("re-encode: reencode_dataset to LeRobot's default encoder, reload", ds is not None and codec == "av1"
          and err < 4.0, f"{key}: codec {codec}, mean |diff| vs source {err:.2f} of 255")
    compare_all(again, dst, "re-encode")


def check_delete(src: Path, work: Path) -> None:
    from lerobot.datasets.dataset_tools import delete_episodes
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(REPO, root=src, video_backend="pyav")
    out = delete_episodes(ds, episode_indices=[0], output_dir=work / "deleted", repo_id="hybridsim/deleted")
    check("delete_episodes: drop episode 0, reload", out.num_episodes == ds.num_episodes - 1)


def main() -> int:
    import lerobot

    src, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"lerobot {lerobot.__version__}, PyAV {av.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    t0 = time.perf_counter()
    for step in (check_load, check_append, check_merge, check_reencode, check_delete):
        n = len(WARNINGS)
        try:
            step(src) if step is check_load else step(src, work)
        except Exception as exc:  # a failed round-trip is a result, not a crash of the script
            check(f"{step.__name__}", False, f"{type(exc).__name__}: {str(exc)[:500]}")
        new = WARNINGS[n:]
        check(f"{step.__name__}: no warnings", not new, "; ".join(dict.fromkeys(new))[:1500])
    if ENV_WARNINGS:
        print(f"note: LeRobot warned {len(ENV_WARNINGS)} times about this machine, not the dataset: "
              f"{ENV_WARNINGS[0][:160]}")
    failed = [r for r in RESULTS if not r[1]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
