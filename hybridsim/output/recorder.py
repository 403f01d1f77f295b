"""Frames of a batched Simulation -> staged dataset episodes (one EpisodeWriter per env slot).

Frame t is written once frame t + 1 has arrived (or the stream ended), because two of its values
look ahead: `action[t]` (what was commanded from t to t + 1, hybridsim.output.actions) and the forward
flow (where its pixels go at t + 1). Per frame and env: feature values, videos (coarse, refined,
reference, optional depth), label arrays per camera and rows of the per-episode objects table
(hybridsim.output.annotate), fired events.

`tap` must see every frame as the Simulation makes it, before a refiner delays it: it reads what a
later frame would overwrite (robot joint targets, camera matrices that events move in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridsim.output.actions import ActionRecorder, action_layout
from hybridsim.output.dataset import DEFAULT_FEATURES


@dataclass
class RecordOptions:
    labels: bool = True  # label arrays and the objects table in the sidecar
    depth_video: bool = False  # LeRobot depth-map video per camera (observation.images.<cam>.depth)


@dataclass
class _Converted:
    index: int
    frame: object
    values: dict[str, np.ndarray]  # name -> [B, D]
    images: dict[str, np.ndarray]  # video key -> [B, H, W, 3] uint8
    depths: dict[str, np.ndarray] = field(default_factory=dict)  # video key -> [B, H, W] uint16 mm
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # camera -> name -> [B, ...]
    gaussians: object = None  # render.Gaussians of this frame (labels only)
    objects: dict = field(default_factory=dict)  # camera -> (box2d, visible, alone, uv, z), per env and instance
    boxes3d: tuple | None = None  # (centre [B, I, 3], size [B, I, 3], quat [B, I, 4])


class Recorder:
    """Frame (all env slots) -> per-slot feature values, images, depth maps, labels and events."""

    def __init__(self, sim, options: RecordOptions | None = None):
        self.sim, self.scenario, self.opts = sim, sim.scenario, options or RecordOptions()
        self.features: dict | None = None
        self.layout = action_layout(sim.scenario, sim.world)
        self.actions = ActionRecorder(self.layout, list(sim.episodes), sim.scenario.timing.dt,
                                      sim.steps_per_frame) if self.layout else None
        self._cams: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self.shapes = None
        if self.opts.labels and sim.splats is not None:
            from hybridsim.output.annotate import instance_shapes

            self.shapes = instance_shapes(sim.world, sim.scenario)

    # ------------------------------------------------------------ as frames are made
    def tap(self, frame):
        self._cams[frame.index] = {n: (np.array(c.viewmat, dtype=np.float32), np.array(c.K, dtype=np.float32))
                                   for n, c in frame.cameras.items()}
        if self.actions is not None:
            self.actions.read(self.sim.world, frame.index)
        return frame

    # ------------------------------------------------------------ as frames are written
    def convert(self, frame) -> _Converted:
        import torch

        from hybridsim.output.labels import encode_depth_mm
        from hybridsim.output.writers import linear_to_srgb, to_uint8

        s, cams = frame.state, self._cams.get(frame.index) or {
            n: (np.asarray(c.viewmat, np.float32), np.asarray(c.K, np.float32)) for n, c in frame.cameras.items()}
        B = s.body_pos.shape[0]
        values = {"observation.state": torch.cat([s.body_pos, s.body_quat], -1).reshape(B, -1).numpy()}
        for name, (view, K) in cams.items():
            values[f"observation.cameras.{name}.intrinsics"] = K.reshape(B, 9)
            values[f"observation.cameras.{name}.extrinsics"] = view.reshape(B, 16)
        out = _Converted(frame.index, frame, values, {})
        for name, gb in frame.gbuffer.items():  # splat colours are linear; videos are sRGB like the reference
            out.images[f"observation.images.{name}.coarse"] = to_uint8(linear_to_srgb(gb.rgb[:, 0]))
            depth_mm = encode_depth_mm(gb.depth[:, 0].numpy())
            if self.opts.depth_video:
                out.depths[f"observation.images.{name}.depth"] = depth_mm
            if self.opts.labels:
                out.labels[name] = {"depth": depth_mm, "instance": gb.instance_id[:, 0].numpy().astype(np.uint16),
                                    "alpha": (np.clip(gb.alpha[:, 0].numpy(), 0, 1) * 255 + 0.5).astype(np.uint8),
                                    "backward_flow": (-gb.flow[:, 0]).numpy().astype(np.float16)}
        for name, ref in frame.reference.items():
            out.images[f"observation.images.{name}.reference"] = np.asarray(ref.rgb)
        for name, img in (getattr(frame, "refined", None) or {}).items():
            out.images[f"observation.images.{name}.refined"] = to_uint8(img)
        if self.shapes is not None:
            out.gaussians = self.sim.splats.posed(s.body_pos, s.body_quat)
        if self.actions is not None:
            self.actions.add_events(frame.index, getattr(frame, "events", []) or [])
        if self.features is None:
            self.features = self._features(values)
        return out

    def finish(self, cur: _Converted, nxt: _Converted | None) -> None:
        """Fill what frame `cur` needs from the next frame: forward flow, normals, objects (labels)."""
        if self.shapes is None or not cur.labels:
            return
        import torch

        from hybridsim.output import annotate

        rcfg, g = self.sim.cfg.render, cur.gaussians
        ids = [s.instance_id for s in self.shapes]
        centre, size, quat = annotate.boxes_3d(self.shapes, cur.frame.state.body_pos, cur.frame.state.body_quat)
        for name, (view, K) in self._cams[cur.index].items():
            cam = self.sim.cameras[name]
            v, k = torch.as_tensor(view)[:, None], torch.as_tensor(K)[:, None]  # [B, 1, 4, 4], [B, 1, 3, 3]
            nxt_means = nxt.gaussians.means if nxt is not None else None
            normals, fflow = annotate.normals_and_forward_flow(g, nxt_means, self.sim.planes, v, k, cam.width,
                                                               cam.height, backend=rcfg.backend,
                                                               plane_far=rcfg.plane_far)
            lab = cur.labels[name]
            lab["forward_flow"] = fflow[:, 0].numpy().astype(np.float16)
            lab["normals"] = normals[:, 0].numpy().astype(np.float16)
            box2d, visible = annotate.boxes_2d(torch.as_tensor(lab["instance"].astype(np.int64)), ids)  # [B, I, 4]
            alone = annotate.alone_pixels(g, self.sim.planes, ids, v, k, cam.width, cam.height, backend=rcfg.backend,
                                          plane_far=rcfg.plane_far)[:, 0]
            uv, z = annotate.project(centre, torch.as_tensor(view), torch.as_tensor(K))
            cur.objects[name] = (box2d, visible, alone, uv, z)
        cur.boxes3d = (centre, size, quat)

    def slot(self, cur: _Converted, b: int, last: bool, first: bool) -> tuple[dict, dict, dict, dict, list]:
        """Env b's share of a finished frame: (values, images, depths, labels per camera, object rows)."""
        values = {k: v[b] for k, v in cur.values.items()}
        if self.actions is not None:
            values["action"] = self.actions.action(cur.index, b, last)
        labels = {cam: {k: a[b] for k, a in arrays.items()} for cam, arrays in cur.labels.items()}
        for cam, arrays in labels.items():
            if first:  # an episode's first frame has no previous frame: no motion
                arrays["backward_flow"] = np.zeros_like(arrays["backward_flow"])
            if last and "forward_flow" in arrays:
                arrays["forward_flow"] = np.zeros_like(arrays["forward_flow"])
        return (values, {k: v[b] for k, v in cur.images.items()}, {k: v[b] for k, v in cur.depths.items()}, labels,
                self._object_rows(cur, b))

    def _object_rows(self, cur: _Converted, b: int) -> list[dict]:
        if not cur.objects:
            return []
        centre, size, quat = (t[b].tolist() for t in cur.boxes3d)
        rows = []
        for cam, (box2d, visible, alone, uv, z) in cur.objects.items():
            for i, s in enumerate(self.shapes):
                vis, al = int(visible[b, i]), int(alone[b, i])
                rows.append({"frame_index": cur.index, "camera": cam, "instance_id": s.instance_id,
                             "entity": s.entity, "semantic_class": s.semantic_class, "visible_pixels": vis,
                             "alone_pixels": al, "visible_fraction": min(1.0, vis / al) if al else 0.0,
                             **dict(zip(("x_min", "y_min", "x_max", "y_max"), box2d[b, i].tolist())),
                             "center_u": float(uv[b, i, 0]), "center_v": float(uv[b, i, 1]),
                             "center_depth": float(z[b, i]),
                             **dict(zip(("cx", "cy", "cz"), centre[i])), **dict(zip(("sx", "sy", "sz"), size[i])),
                             **dict(zip(("qw", "qx", "qy", "qz"), quat[i]))})
        return rows

    def done(self, index: int) -> None:
        self._cams.pop(index - 1, None)
        if self.actions is not None:
            self.actions.done(index)

    def _features(self, values: dict) -> dict:
        names = {"observation.state": [f"{b.entity}.{b.link}.{c}" for b in self.sim.world.bodies
                                       for c in ("px", "py", "pz", "qw", "qx", "qy", "qz")]}
        for name in self.sim.cameras:
            names[f"observation.cameras.{name}.intrinsics"] = [f"k{r}{c}" for r in range(3) for c in range(3)]
            names[f"observation.cameras.{name}.extrinsics"] = [f"m{r}{c}" for r in range(4) for c in range(4)]
        feats = {"observation.state": None}
        if self.layout is not None:
            feats["action"] = {"dtype": "float32", "shape": [len(self.layout.names)], "names": self.layout.names}
        feats.update({k: {"dtype": "float32", "shape": [v.shape[1]], "names": names.get(k)} for k, v in values.items()})
        feats.update(DEFAULT_FEATURES)
        return feats

    @staticmethod
    def events(frame, b: int, sc) -> list[dict]:
        evs = getattr(frame, "events", None)
        if evs is not None:  # fired events with the env slot they fired in; the slot is not episode content
            return [{k: v for k, v in e.items() if k != "env"} for e in evs if e.get("env", b) == b]
        return [{"event": f"event{i}", "index": i, "action": sc.events[i].kind, "t": frame.t, "frame": frame.index,
                 "entities": [sc.events[i].entity]} for i in frame.fired]  # the core keys of hybridsim.scenario.events

    @staticmethod
    def instances(sc) -> dict:
        return {"0": {"entity": None, "semantic_class": "background"},
                **{str(i + 1): {"entity": e.name, "semantic_class": e.semantic_class}
                   for i, e in enumerate(sc.entities)}}


def ended(sim, b: int, frame_index: int) -> bool:
    """Env b's episode ended before this frame (Simulation.done / end_frame, where it reports them).
    The frame stream may lag the simulation (refiner blocks), so compare with end_frame, not done."""
    done, end = getattr(sim, "done", None), getattr(sim, "end_frame", None)
    return done is not None and end is not None and bool(done[b]) and frame_index > int(end[b])


def record_batch(sim, frames, writers: list, rec: Recorder, scenarios: list) -> None:
    """Write the batch's frames into one EpisodeWriter per env slot, each frame once the next arrived."""
    pending = None
    for frame in frames:
        cur = rec.convert(frame)
        if pending is not None:
            _write(sim, pending, cur, writers, rec, scenarios)
        pending = cur
    if pending is not None:
        _write(sim, pending, None, writers, rec, scenarios)


def _write(sim, cur: _Converted, nxt: _Converted | None, writers, rec: Recorder, scenarios) -> None:
    rec.finish(cur, nxt)
    for b, w in enumerate(writers):
        if ended(sim, b, cur.index):
            continue
        last = nxt is None or ended(sim, b, nxt.index)
        values, images, depths, labels, rows = rec.slot(cur, b, last, first=w.length == 0)
        w.add_frame(values, images, depths)
        for cam, arrays in labels.items():
            w.add_labels(cam, cur.index, arrays)
        if rows:
            w.add_rows("objects", rows)
        w.add_events(rec.events(cur.frame, b, scenarios[b]))
    rec.done(cur.index)
