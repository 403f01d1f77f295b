"""LeRobot v3.0 writer on synthetic episodes (no Genesis): staging, merge, read-back, rolling, errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hybridsim.output.dataset import (DatasetError, EpisodeWriter, aggregate_stats, column_array, decode_episode,
                                      load_episodes, load_frames, load_info, load_stats, load_tasks, merge,
                                      staged_episodes, verify)

FPS = 10.0
KEY = "observation.images.cam.coarse"
FEATURES = {"observation.state": {"dtype": "float32", "shape": [4], "names": None},
            KEY: {"dtype": "video", "shape": [32, 48, 3], "names": ["height", "width", "channels"]}}


def _images(index: int, length: int) -> np.ndarray:  # smooth frames so H.264 keeps them close
    y, x = np.mgrid[0:32, 0:48]
    f = np.full((length, 32, 48, 3), 128, np.uint8)
    f[..., 0] = [x * 4 + t * 6 + index * 10 for t in range(length)]
    f[..., 1] = y * 7
    return f


def _stage(root, index: int, length: int, task: str = "drop a box", commit: bool = True) -> EpisodeWriter:
    w = EpisodeWriter(root, index, FPS)
    imgs = _images(index, length)
    for t in range(length):
        w.add_frame({"observation.state": np.arange(4) + 10 * index + t}, {KEY: imgs[t]})
        w.add_labels("cam", t, {"depth": np.full((32, 48), t, np.uint16)})
    w.add_events([{"frame": 1, "kind": "impulse"}])
    if commit:
        w.commit({"task": task, "features": FEATURES})
    return w


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    lengths = [5, 3, 7, 4]
    for i, n in enumerate(lengths):
        _stage(root, i, n, task="drop a box" if i != 2 else "push a ball")
    info = merge(root, len(lengths))
    return root, lengths, info


def test_merged_layout_reads_back_with_pyarrow_and_pyav(dataset):
    root, lengths, info = dataset
    verify(root)  # info, episode index, data, stats and decoded video frame counts agree
    assert info == load_info(root) and info["codebase_version"] == "v3.0"
    assert info["total_frames"] == sum(lengths) and info["total_episodes"] == 4 and info["splits"] == {"train": "0:4"}
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    assert (root / f"videos/{KEY}/chunk-000/file-000.mp4").is_file()
    assert load_tasks(root) == ["drop a box", "push a ball"]
    data = load_frames(root)
    assert column_array(data, "task_index")[:, 0].tolist() == [0] * 8 + [1] * 7 + [0] * 4
    eps = load_episodes(root).to_pylist()
    assert [e["length"] for e in eps] == lengths
    assert [e["dataset_from_index"] for e in eps] == [0, 5, 8, 15]
    assert eps[2][f"videos/{KEY}/from_timestamp"] == pytest.approx(0.8)
    assert eps[2][f"videos/{KEY}/to_timestamp"] == pytest.approx(1.5)
    ep2 = load_frames(root, 2)
    np.testing.assert_array_equal(column_array(ep2, "observation.state")[:, 0], 20 + np.arange(7))
    for i, n in enumerate(lengths):
        frames = decode_episode(root, KEY, i)
        assert frames.shape == (n, 32, 48, 3)
        err = np.abs(frames[:, None].astype(int) - _images(i, n)[None]).mean((2, 3, 4))  # [decoded, source]
        assert err.diagonal().max() < 3.0 and (err.argmin(1) == np.arange(n)).all()  # lossy, same frames in order


def test_stats_match_data(dataset):
    root, lengths, _ = dataset
    stats, data = load_stats(root), load_frames(root)
    state = column_array(data, "observation.state")
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [sum(lengths)]
    assert stats["index"]["max"] == [sum(lengths) - 1]
    imgs = np.concatenate([_images(i, n) for i, n in enumerate(lengths)]).astype(np.float64) / 255
    np.testing.assert_allclose(np.asarray(stats[KEY]["mean"])[:, 0, 0], imgs.reshape(-1, 3).mean(0), atol=1e-9)
    np.testing.assert_allclose(np.asarray(stats[KEY]["std"])[:, 0, 0], imgs.reshape(-1, 3).std(0), atol=1e-9)
    eps = load_episodes(root).to_pylist()
    assert eps[1]["stats/observation.state/min"] == [10.0, 11.0, 12.0, 13.0]


def test_aggregate_stats_is_exact_for_moments():
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, 1 + i, size=(n, 2)) for i, n in enumerate([3, 10, 6])]
    per = [{"min": p.min(0), "max": p.max(0), "mean": p.mean(0), "std": p.std(0), "count": [len(p)]} for p in parts]
    agg, allv = aggregate_stats(per), np.concatenate(parts)
    np.testing.assert_allclose(agg["mean"], allv.mean(0))
    np.testing.assert_allclose(agg["std"], allv.std(0))
    assert agg["count"] == [19] and np.allclose(agg["min"], allv.min(0))


def test_sidecar_per_episode(dataset):
    root, _, _ = dataset
    ep = root / "sidecar" / "episode_000002"
    assert json.loads((ep / "episode.json").read_text())["length"] == 7
    assert sorted(p.name for p in (ep / "labels" / "cam").iterdir())[-1] == "000006.npz"
    assert np.load(ep / "labels/cam/000003.npz")["depth"][0, 0] == 3
    assert json.loads((ep / "events.jsonl").read_text().splitlines()[0])["kind"] == "impulse"


def test_files_roll_over_by_size(tmp_path):
    for i in range(4):
        _stage(tmp_path, i, 4)
    merge(tmp_path, 4, data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-4, chunks_size=3)
    verify(tmp_path)
    eps = load_episodes(tmp_path).to_pylist()
    # one episode per file; file index wraps after chunks_size files into the next chunk
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in eps] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert (tmp_path / "data/chunk-001/file-000.parquet").is_file()
    assert all(e[f"videos/{KEY}/from_timestamp"] == 0.0 for e in eps)
    assert pq.read_metadata(tmp_path / "data/chunk-000/file-001.parquet").num_rows == 4
    for i in range(4):
        assert decode_episode(tmp_path, KEY, i).shape[0] == 4


def test_uncommitted_episode_is_invisible_and_merge_names_missing(tmp_path):
    _stage(tmp_path, 0, 3)
    w = _stage(tmp_path, 1, 3, commit=False)  # a process killed here leaves only a .tmp- folder
    assert staged_episodes(tmp_path) == {0} and w.tmp.is_dir()
    with pytest.raises(DatasetError, match=r"1 of 2 episodes are not staged .*\[1\]"):
        merge(tmp_path, 2)
    w.abort()
    assert not w.tmp.exists()
    assert not (tmp_path / "meta").exists()


def test_merge_refuses_mixed_features(tmp_path):
    _stage(tmp_path, 0, 2)
    w = EpisodeWriter(tmp_path, 1, FPS)
    w.add_frame({"observation.state": np.zeros(4)}, {KEY: _images(0, 1)[0]})
    w.commit({"task": "t", "features": {**FEATURES, "observation.state": {"dtype": "float32", "shape": [5]}}})
    with pytest.raises(DatasetError, match="other features"):
        merge(tmp_path, 2)


def test_lerobot_06_video_info_and_quantile_stats(dataset):
    root, lengths, info = dataset
    f = info["features"][KEY]
    assert f["info"]["is_depth_map"] is False and "video.is_depth_map" not in f["info"]
    assert {"video.g", "video.crf", "video.preset", "video.fast_decode", "video.video_backend",
            "video.extra_options"} <= set(f["info"]) and f["info"]["video.fps"] == 10 and isinstance(info["fps"], int)
    imgs = _images(2, lengths[2]).reshape(-1, 3)
    eps = load_episodes(root).to_pylist()
    for q, p in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):  # exact value-histogram quantiles of the frames
        want = np.quantile(imgs, p, axis=0, method="inverted_cdf") / 255.0
        np.testing.assert_allclose(np.asarray(eps[2][f"stats/{KEY}/{q}"])[:, 0, 0], want, atol=1e-9)
    assert set(load_stats(root)[KEY]) >= {"q01", "q10", "q50", "q90", "q99"}
    assert np.asarray(eps[0][f"stats/{KEY}/q90"]).shape == (3, 1, 1)
    cols = list(eps[0])
    assert cols[:3] == ["episode_index", "tasks", "length"] and cols[-2:] == ["meta/episodes/chunk_index",
                                                                            "meta/episodes/file_index"]


def test_depth_video_round_trips_in_millimetres(tmp_path):
    from hybridsim.output.video import DepthQuantization, dequantize_depth, quantize_depth

    w = EpisodeWriter(tmp_path, 0, FPS)
    depth = (np.linspace(300, 4000, 32 * 48).reshape(32, 48)).astype(np.uint16)
    for t in range(4):
        w.add_frame({"observation.state": np.zeros(4)}, {KEY: _images(0, 4)[t]},
                    {"observation.images.cam.depth": depth + 10 * t})
    w.commit({"task": "t", "features": {"observation.state": FEATURES["observation.state"]}})
    info = merge(tmp_path, 1)
    verify(tmp_path)
    f = info["features"]["observation.images.cam.depth"]
    assert f["shape"] == [32, 48, 1] and f["info"]["is_depth_map"] and f["info"]["depth_unit"] == "mm"
    assert (f["info"]["video.codec"], f["info"]["video.pix_fmt"]) == ("hevc", "gray12le")
    got = decode_episode(tmp_path, "observation.images.cam.depth", 0)
    q = DepthQuantization()
    np.testing.assert_allclose(got[2], dequantize_depth(quantize_depth(depth + 20, q), q), atol=1e-3)  # lossless codes
    step = (depth + 3500.0) * np.log(13.5 / 3.51) / 4095
    assert (np.abs(got[2] - (depth + 20)) <= step / 2 + 0.05).all()  # within half a 12-bit step (float32 math)
    assert load_stats(tmp_path)["observation.images.cam.depth"]["max"] == [[[float(depth.max() + 30)]]]


def test_gop_and_provenance_and_integer_fps(tmp_path):
    import av

    from hybridsim.output.dataset import lerobot_fps
    from hybridsim.output.video import VideoError, VideoSettings

    w = EpisodeWriter(tmp_path, 0, FPS, VideoSettings(gop=3))
    for img in _images(0, 9):
        w.add_frame({"observation.state": np.zeros(4)}, {KEY: img})
    w.commit({"task": "t", "features": {"observation.state": FEATURES["observation.state"]}})
    info = merge(tmp_path, 1, provenance={"scenario": "x"})
    assert info["features"][KEY]["info"]["video.g"] == 3 and "hybridsim" not in info
    assert json.loads((tmp_path / "meta/hybridsim.json").read_text()) == {"scenario": "x"}
    with av.open(str(tmp_path / f"videos/{KEY}/chunk-000/file-000.mp4")) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.dts is not None]
    assert sum(keys) == 3  # frames 0, 3, 6
    with pytest.raises(VideoError, match="gop=0"):
        VideoSettings(gop=0)
    with pytest.raises(DatasetError, match="integer fps"):
        lerobot_fps(12.5)
