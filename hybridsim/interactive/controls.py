"""The action vector of an interactive environment: the scenario's `actions:` section (spec
parts.Control) checked against the built world, and applied to it before each step.

Components are named as the dataset's `action` feature names them (hybridsim.output.actions):
`<robot>.<joint>.target`, `<entity>.impulse.{x,y,z}`, `<entity>.force.{x,y,z}`,
`<entity>.torque.{x,y,z}`, plus `<camera>.move_camera.{x,y,z}`. A scenario without `actions:`
gets `default_controls`: every robot's joint targets and an impulse on every free body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridsim.scenario.parts import Control
from hybridsim.scenario.spec import Scenario, SpecError

DEFAULT_IMPULSE = 0.5  # N*s per component: a firm push on a ~1 kg body (0.5 m/s)


def default_controls(s: Scenario) -> list[Control]:
    """What an agent commands when the scenario declares no `actions:`: each robot's 1-dof joint
    targets (within its limits) and an impulse of up to DEFAULT_IMPULSE N*s on each free body."""
    out = []
    for e in s.entities:
        if e.type in ("urdf", "mjcf"):
            out.append(Control(f"{e.name}_joints", "joint_targets", entity=e.name))
        elif not (e.fixed or e.type == "plane"):
            out.append(Control(f"{e.name}_push", "impulse", entity=e.name, limit=DEFAULT_IMPULSE))
    return out


@dataclass
class ControlLayout:
    """The action vector [A] of one environment: names, bounds, and where each control's part is."""

    controls: list[Control]
    names: list[str]  # [A]
    low: np.ndarray  # [A] float32
    high: np.ndarray  # [A] float32
    parts: list[slice] = field(default_factory=list)  # per control: its components
    joints: list[list[str]] = field(default_factory=list)  # per control: joint names (joint_targets)

    @property
    def size(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SpecError("action", f"unknown action component {name!r}; components are {self.names}") from None

    def neutral(self, world, n_envs: int) -> np.ndarray:  # -> [B, A] float32
        """The action that changes nothing: joint targets as they are, zero pushes and camera moves."""
        out = np.zeros((n_envs, self.size), dtype=np.float32)
        for c, part, joints in zip(self.controls, self.parts, self.joints):
            if c.kind == "joint_targets":
                now = world.joint_targets(c.entity)
                out[:, part] = np.stack([now[j] for j in joints], 1)
        return np.clip(out, self.low, self.high)

    def from_mapping(self, values: dict, base: np.ndarray) -> np.ndarray:  # base [B, A] -> [B, A]
        """An action from {component name or control name: value(s)}, the rest taken from `base`."""
        out = np.array(base, dtype=np.float32, copy=True)
        by_control = {c.name: part for c, part in zip(self.controls, self.parts)}
        for key, v in values.items():
            col = by_control.get(key, None)
            col = col if col is not None else self.index(key)
            out[:, col] = np.asarray(v, dtype=np.float32)
        return out


def control_layout(controls: list[Control], world, path: str = "scenario.actions") -> ControlLayout:
    """Check the controls against the built world (joint names, limits) and lay out the vector."""
    names, low, high, parts, joints = [], [], [], [], []
    for c in controls:
        start = len(names)
        js: list[str] = []
        if c.kind == "joint_targets":
            js, lo, hi = _joint_bounds(c, world, f"{path}.{c.name}")
            names += [f"{c.entity}.{j}.target" for j in js]
            low += lo
            high += hi
        else:
            owner = c.camera if c.kind == "move_camera" else c.entity
            names += [f"{owner}.{c.kind}.{ax}" for ax in "xyz"]
            low += [-c.limit] * 3
            high += [c.limit] * 3
        parts.append(slice(start, len(names)))
        joints.append(js)
    return ControlLayout(list(controls), names, np.array(low, dtype=np.float32), np.array(high, dtype=np.float32),
                         parts, joints)


def _joint_bounds(c: Control, world, p: str) -> tuple[list[str], list[float], list[float]]:
    limits = world.joint_limits(c.entity)  # joint -> (low, high) from the URDF/MJCF
    js = list(c.joints) or list(limits)
    for i, j in enumerate(js):
        if j not in limits:
            raise SpecError(f"{p}.joints[{i}]", f"robot '{c.entity}' has no 1-dof joint {j!r}; its joints are "
                                                f"{list(limits)}")
    lo = [max(limits[j][0], c.low[i]) if c.low is not None else limits[j][0] for i, j in enumerate(js)]
    hi = [min(limits[j][1], c.high[i]) if c.high is not None else limits[j][1] for i, j in enumerate(js)]
    for i, j in enumerate(js):
        if not lo[i] < hi[i]:
            raise SpecError(f"{p}.low", f"joint '{j}': [{lo[i]:g}, {hi[i]:g}] leaves nothing inside the robot's "
                                        f"limits {limits[j]}; widen low/high")
        if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
            raise SpecError(f"{p}.joints[{i}]", f"joint '{j}' of '{c.entity}' has no limits in its file; give "
                                                "low and high for it")
    return js, lo, hi


def apply_controls(layout: ControlLayout, world, cameras: dict, actions: np.ndarray, steps: int, dt: float) -> None:
    """Carry out actions [B, A] (already within bounds) on every env before the next `steps` physics
    steps. Zero pushes and camera moves are not applied at all, so a neutral action leaves the
    physics exactly as a run without actions."""
    envs_all = np.arange(actions.shape[0])
    for c, part, joints in zip(layout.controls, layout.parts, layout.joints):
        a = actions[:, part].astype(np.float64)  # [B, n]
        if c.kind == "joint_targets":
            world.set_joint_targets(c.entity, {j: a[:, i] for i, j in enumerate(joints)})
            continue
        envs = envs_all[np.any(a != 0.0, axis=1)]
        if not len(envs):
            continue
        if c.kind == "impulse":
            world.apply_impulse(c.entity, a[envs], envs)
        elif c.kind in ("force", "torque"):
            world.apply_force(c.entity, a[envs] if c.kind == "force" else None, steps, envs,
                              torque=a[envs] if c.kind == "torque" else None)
        else:
            _move_camera(world, cameras, c.camera, a, envs, dt)


def _move_camera(world, cameras: dict, name: str, delta: np.ndarray, envs: np.ndarray, dt: float) -> None:
    from hybridsim.bridge import apply_action
    from hybridsim.scenario.parts import Action

    pos = world.camera_pose(name)[0]  # [B, 3]
    acts = [Action("move_camera", camera=name, pos=tuple(float(v) for v in pos[b] + delta[b]))
            for b in range(delta.shape[0])]
    apply_action(world, acts, envs, dt, cameras)
