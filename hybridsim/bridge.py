"""Conversions between the scenario spec and the stage types (the only place that knows both)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridsim.seeding import derive_seed
from hybridsim.spec import Entity, Event, Scenario


def entity_quat(e: Entity) -> tuple[float, float, float, float]:
    """wxyz from `quat` or roll/pitch/yaw degrees (extrinsic x, y, z)."""
    if e.quat is not None:
        q = np.asarray(e.quat, dtype=np.float64)
        return tuple(float(v) for v in q / np.linalg.norm(q))
    if e.euler is None:
        return (1.0, 0.0, 0.0, 0.0)
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_euler("xyz", e.euler, degrees=True).as_quat()
    return (float(w), float(x), float(y), float(z))


def world_spec(s: Scenario, reference: bool = True, base_dir=None):
    """Scenario -> physics.WorldSpec (files resolved, textures made available as images)."""
    from physics import BodySpec, CameraSpec, WorldSpec

    from hybridsim.spec import resolve_file
    from hybridsim.textures import texture_file

    bodies = []
    for e in s.entities:
        tex = texture_file(e.appearance.texture) if e.appearance.texture else None
        bodies.append(BodySpec(
            name=e.name, kind=e.type, size=e.size, radius=e.radius, height=e.height,
            file=str(resolve_file(e.file, "", base_dir)) if e.file else None, scale=e.scale,
            pos=e.pos, quat=entity_quat(e), fixed=e.fixed, mass=e.mass, density=e.density,
            friction=e.friction, restitution=e.restitution, lin_vel=e.lin_vel, ang_vel=e.ang_vel,
            color=e.appearance.color, texture=tex, joints=dict(e.joints), decompose=e.decompose,
        ))
    cams = [CameraSpec(c.name, c.pos, c.lookat, c.up, c.fov, tuple(c.res)) for c in s.cameras]
    t = s.timing
    lt = s.lighting
    return WorldSpec(bodies=bodies, cameras=cams, dt=t.dt, substeps=t.substeps, gravity=s.gravity,
                     reference_render=reference, light_dir=lt.direction, light_color=lt.color,
                     light_intensity=lt.intensity, ambient=lt.ambient)


def initial_offsets(s: Scenario, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-environment x/y position offsets [B, 3] for entities with pos_jitter > 0."""
    out = {}
    for e in s.entities:
        if e.pos_jitter > 0:
            rows = []
            for seed in seeds:
                r = np.random.default_rng(derive_seed(seed, "pos_jitter", e.name))
                dx, dy = r.uniform(-e.pos_jitter, e.pos_jitter, size=2)
                rows.append((dx, dy, 0.0))
            out[e.name] = np.asarray(rows, dtype=np.float64)
    return out


@dataclass
class ScheduledEvent:
    step: int  # physics step before which the event fires
    index: int  # position in scenario.events
    event: Event


def schedule(s: Scenario) -> list[ScheduledEvent]:
    dt = s.timing.dt
    out = [ScheduledEvent(int(round(ev.at / dt)), i, ev) for i, ev in enumerate(s.events)]
    return sorted(out, key=lambda x: (x.step, x.index))


def apply_event(world, ev: Event, dt: float) -> None:
    """Fire one timed event on every environment of a physics.World."""
    B = world.n_envs
    if ev.kind == "impulse":
        world.apply_impulse(ev.entity, np.tile(ev.vector, (B, 1)))
    elif ev.kind == "force":
        world.apply_force(ev.entity, np.tile(ev.vector, (B, 1)), steps=max(1, int(round(ev.duration / dt))))
    elif ev.kind == "set_velocity":
        st = world.state(contacts=False)
        k = world.body_slot(ev.entity)
        lin = np.tile(ev.lin_vel, (B, 1)) if ev.lin_vel is not None else st.body_lin_vel[:, k].numpy()
        ang = np.tile(ev.ang_vel, (B, 1)) if ev.ang_vel is not None else st.body_ang_vel[:, k].numpy()
        world.set_velocity(ev.entity, lin, ang)
    elif ev.kind == "joint_targets":
        world.set_joint_targets(ev.entity, ev.targets)
    else:  # validated in the spec
        raise AssertionError(ev.kind)


def camera_matrices(s: Scenario, n_envs: int) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """name -> (viewmat [B,4,4], K [B,3,3], width, height), OpenCV convention."""
    from physics.camera import intrinsics, look_at

    out = {}
    for c in s.cameras:
        view, K = look_at(c.pos, c.lookat, c.up), intrinsics(c.fov, *c.res)
        out[c.name] = (np.tile(view, (n_envs, 1, 1)), np.tile(K, (n_envs, 1, 1)), int(c.res[0]), int(c.res[1]))
    return out
