"""COCO-format export of a dataset's instance masks and boxes (`hybridsim export coco ...`).

One image per (episode, frame, camera) of the sidecar labels; one annotation per instance with visible
pixels: `segmentation` as uncompressed RLE of its visible mask (column-major, as pycocotools counts),
`bbox` [x, y, w, h] of that mask in pixels, `area` its pixel count, `iscrowd` 0, `category_id` its
semantic class. Images point at the video frame they show (`file_name` = the coarse video of that
camera, `frame_index`); with `images=true` the frames are also decoded to PNG files next to the json.
Extra keys per annotation: `instance_id`, `entity`, `visible_fraction` (from labels/objects.parquet).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hybridsim.output.dataset_read import SIDECAR, DatasetError, load_info


def rle(mask: np.ndarray) -> dict:  # [H, W] bool -> uncompressed RLE (pycocotools' layout)
    """Run lengths of the column-major mask, starting with a run of zeros (possibly empty)."""
    flat = mask.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def export_coco(root: str | Path, out: str | Path | None = None, camera: str | None = None,
                episodes: list[int] | None = None, images: bool = False, include_planes: bool = True) -> Path:
    """Write `out` (default <root>/coco/instances.json) from the sidecar labels; returns its path."""
    import pyarrow.parquet as pq

    root = Path(root)
    info = load_info(root)
    side = root / SIDECAR
    eps = sorted(int(p.name.split("_")[1]) for p in side.glob("episode_*") if (p / "labels").is_dir())
    if episodes is not None:
        eps = [e for e in eps if e in set(episodes)]
    if not eps:
        raise DatasetError(f"'{root}' has no label sidecar (episodes made with labels=false?); "
                           "generate with labels=true to export COCO")
    out = Path(out) if out else root / "coco" / "instances.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    categories: dict[str, int] = {}
    doc = {"info": {"description": f"hybridsim dataset {root.name}", "version": info["codebase_version"]},
           "images": [], "annotations": [], "categories": [], "licenses": []}
    for e in eps:
        objects = pq.read_table(side / f"episode_{e:06d}" / "labels" / "objects.parquet").to_pylist()
        index = {(o["frame_index"], o["camera"], o["instance_id"]): o for o in objects}
        planes = {o["instance_id"] for o in objects if o["cx"] != o["cx"]}  # NaN box: a plane
        for cam_dir in sorted((side / f"episode_{e:06d}" / "labels").iterdir()):
            if not cam_dir.is_dir() or (camera is not None and cam_dir.name != camera):
                continue
            for f in sorted(cam_dir.glob("*.npz")):
                _add_image(doc, categories, index, planes, e, cam_dir.name, int(f.stem), np.load(f)["instance"],
                           info, include_planes)
    doc["categories"] = [{"id": i, "name": n, "supercategory": "object"} for n, i in categories.items()]
    out.write_text(json.dumps(doc))
    if images:
        _write_pngs(root, out.parent, doc)
    return out


def _add_image(doc, categories, index, planes, episode, cam, frame, inst, info, include_planes) -> None:
    img_id = len(doc["images"]) + 1
    key = f"observation.images.{cam}.coarse"
    doc["images"].append({"id": img_id, "width": int(inst.shape[1]), "height": int(inst.shape[0]),
                          "file_name": f"episode_{episode:06d}/{cam}/{frame:06d}.png", "episode_index": episode,
                          "frame_index": frame, "camera": cam, "video_key": key if key in info["features"] else None})
    for iid in np.unique(inst):
        if iid == 0 or (iid in planes and not include_planes):
            continue
        mask = inst == iid
        ys, xs = np.nonzero(mask)
        o = index.get((frame, cam, int(iid)), {})
        name = o.get("semantic_class") or o.get("entity") or f"instance_{iid}"
        cat = categories.setdefault(name, len(categories) + 1)
        doc["annotations"].append({
            "id": len(doc["annotations"]) + 1, "image_id": img_id, "category_id": cat, "iscrowd": 0,
            "segmentation": rle(mask), "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "instance_id": int(iid), "entity": o.get("entity"), "visible_fraction": o.get("visible_fraction")})


def _write_pngs(root: Path, folder: Path, doc: dict) -> None:
    """Decode the frames the images point at (coarse videos) to PNG files."""
    from PIL import Image

    from hybridsim.output.dataset_read import decode_episode

    cache: dict = {}
    for im in doc["images"]:
        if im["video_key"] is None:
            continue
        k = (im["video_key"], im["episode_index"])
        if k not in cache:
            cache.clear()
            cache[k] = decode_episode(root, *k)
        path = folder / im["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cache[k][im["frame_index"]]).save(path)


def main(overrides: list[str]) -> int:
    """`hybridsim export coco dataset=DIR [out=FILE] [camera=NAME] [images=true] [planes=false]`."""
    import yaml

    from hybridsim.scenario.spec import SpecError

    if not overrides or overrides[0] != "coco":
        raise SpecError("export", "usage: hybridsim export coco dataset=DIR [out=FILE] [camera=NAME] "
                                  "[images=true] [planes=false]")
    args = {k: v for k, _, v in (o.partition("=") for o in overrides[1:])}
    unknown = set(args) - {"dataset", "out", "camera", "images", "planes"}
    if "dataset" not in args or unknown:
        raise SpecError("export coco", f"needs dataset=DIR (a hybridsim dataset); unknown options {sorted(unknown)}")
    if not (Path(args["dataset"]) / "meta" / "info.json").is_file():
        raise SpecError("dataset", f"'{args['dataset']}' is not a merged dataset (no meta/info.json); "
                                   "run hybridsim batch (or batch merge) first")
    path = export_coco(args["dataset"], args.get("out"), args.get("camera"),
                       images=bool(yaml.safe_load(args.get("images", "false"))),
                       include_planes=bool(yaml.safe_load(args.get("planes", "true"))))
    doc = json.loads(path.read_text())
    print(f"wrote {len(doc['images'])} images, {len(doc['annotations'])} annotations, "
          f"{len(doc['categories'])} categories to {path}")
    return 0
