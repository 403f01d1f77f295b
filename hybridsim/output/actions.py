"""The dataset's `action` feature: what was commanded between frame t and frame t + 1.

Layout (names in info.json, conventions in docs/dataset.md "Actions"), fixed by the scenario:
- per robot entity (urdf / mjcf), per 1-dof joint: `<entity>.<joint>.target`, the position target its
  PD controller tracks (radians or metres), as physics.World.joint_targets reads it;
- per entity that an event pushes (declared `impulse`, `force` or `torque` actions), per kind:
  `<entity>.impulse.{x,y,z}` N*s summed over the interval's physics steps, `<entity>.force.{x,y,z}` N
  and `<entity>.torque.{x,y,z}` N*m averaged over them (world frame; 0 where nothing acts).

action[t] is what acts on the steps from frame t to frame t + 1: the joint targets in force at the last
of those steps (read when frame t + 1 is made, so a command fired anywhere in the interval belongs to
action[t]) and the pushes applied during them. The last frame of an episode has no next interval: its
targets are the ones in force at that frame, its pushes are 0. A scenario that declares neither
robots nor pushes has no `action` feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PUSH_KINDS = ("impulse", "force", "torque")


@dataclass
class ActionLayout:
    robots: list[tuple[str, list[str]]]  # (entity, joint names)
    pushes: list[tuple[str, str]]  # (entity, kind)
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.names = [f"{e}.{j}.target" for e, joints in self.robots for j in joints] + \
                     [f"{e}.{k}.{ax}" for e, k in self.pushes for ax in "xyz"]

    @property
    def n_targets(self) -> int:
        return sum(len(j) for _, j in self.robots)


def action_layout(scenario, world) -> ActionLayout | None:
    """The action layout of a built world running `scenario` (None when nothing is commanded)."""
    from hybridsim.scenario.parts import event_actions

    robots = [(e.name, list(world.joint_targets(e.name))) for e in scenario.entities if e.type in ("urdf", "mjcf")]
    pushes = []
    for ev in scenario.events:
        for a in event_actions(ev):
            if a.kind in PUSH_KINDS and a.entity and (a.entity, a.kind) not in pushes:
                pushes.append((a.entity, a.kind))
    layout = ActionLayout([r for r in robots if r[1]], pushes)
    return layout if layout.names else None


class ActionRecorder:
    """Per env: joint targets read as frames are made, pushes from the fired event records."""

    def __init__(self, layout: ActionLayout, episodes: list, dt: float, steps_per_frame: int):
        self.layout, self.episodes, self.dt, self.spf = layout, episodes, dt, steps_per_frame
        self._targets: dict[int, np.ndarray] = {}  # frame index -> [B, R], read when the frame was made
        self._active: list[list[tuple]] = [[] for _ in episodes]  # per env: (first step, steps, column, vector)

    def read(self, world, frame_index: int) -> None:
        """Call as frame `frame_index` is made (before any refiner delays it)."""
        if self.layout.robots:
            cols = [np.stack([t[j] for j in joints], 1) for e, joints in self.layout.robots
                    for t in [world.joint_targets(e)]]
            self._targets[frame_index] = np.concatenate(cols, 1).astype(np.float32)

    def add_events(self, frame_index: int, records: list[dict]) -> None:
        """The records fired during the steps leading to frame `frame_index` (Frame.events)."""
        from hybridsim.scenario.parts import event_actions

        for r in records:
            b = r.get("env", 0)
            if b >= len(self.episodes):
                continue
            for a in event_actions(self.episodes[b].events[r["index"]]):
                if (a.entity, a.kind) not in self.layout.pushes or a.vector is None:
                    continue
                col = self.layout.n_targets + 3 * self.layout.pushes.index((a.entity, a.kind))
                steps = 1 if a.kind == "impulse" else max(1, int(round(a.duration / self.dt)))
                self._active[b].append((int(r["step"]), steps, col, np.asarray(a.vector, dtype=np.float64), a.kind))

    def action(self, frame_index: int, b: int, last: bool) -> np.ndarray:
        """action[frame_index] of env b ([A] float32); `last`: the episode's last frame."""
        out = np.zeros(len(self.layout.names), dtype=np.float32)
        if self.layout.robots:
            src = self._targets[frame_index if last else frame_index + 1]
            out[: self.layout.n_targets] = src[b]
        if last:
            return out
        t0, t1 = frame_index * self.spf, (frame_index + 1) * self.spf
        for start, steps, col, vec, kind in self._active[b]:
            overlap = max(0, min(t1, start + steps) - max(t0, start))
            if overlap:
                out[col:col + 3] += vec * (overlap if kind == "impulse" else overlap / self.spf)
        return out

    def done(self, frame_index: int) -> None:
        """Forget what frames up to `frame_index` needed."""
        for k in [k for k in self._targets if k < frame_index]:
            del self._targets[k]
        t0 = frame_index * self.spf
        self._active = [[f for f in fs if f[0] + f[1] > t0] for fs in self._active]
