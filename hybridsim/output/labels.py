"""Per-frame labels from the splat G-buffer, in a documented layout (README "Outputs"):

labels/<camera>/env<b>/<frame:06d>.npz with
  depth     uint16 [H, W]   millimetres along the camera's +z; 0 = no surface
  instance  uint16 [H, W]   instance id (1 + entity index in the scenario; 0 = background)
  alpha     uint8  [H, W]   splat coverage * 255
  flow      float16 [H, W, 2]  pixels (dx, dy): position now minus position in the previous frame
labels/instances.json maps instance ids to entity names and semantic classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridsim.output.writers import write_json


def encode_depth_mm(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)


class LabelWriter:
    def __init__(self, root: Path, sim):
        self.root, self.sim = root, sim
        root.mkdir(parents=True, exist_ok=True)
        sc = sim.scenario
        write_json(root / "instances.json", {
            "0": {"entity": None, "semantic_class": "background"},
            **{str(i + 1): {"entity": e.name, "semantic_class": e.semantic_class} for i, e in enumerate(sc.entities)},
        })
        self.files = ["labels/instances.json"]

    def write(self, frame) -> None:
        for name, gb in frame.gbuffer.items():
            depth, inst = gb.depth[:, 0].numpy(), gb.instance_id[:, 0].numpy()
            alpha, flow = gb.alpha[:, 0].numpy(), gb.flow[:, 0].numpy()
            for b in range(depth.shape[0]):
                d = self.root / name / f"env{b}"
                d.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(
                    d / f"{frame.index:06d}.npz",
                    depth=encode_depth_mm(depth[b]),
                    instance=inst[b].astype(np.uint16),
                    alpha=(np.clip(alpha[b], 0, 1) * 255 + 0.5).astype(np.uint8),
                    flow=flow[b].astype(np.float16),
                )

    def close(self) -> None:
        for cam in self.sim.cameras:
            if (self.root / cam).exists():
                self.files.append(f"labels/{cam}/")
