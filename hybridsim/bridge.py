"""Conversions between the scenario spec and the stage types (the only place that knows both)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridsim.scenario.spec import Action, Entity, Event, Scenario, expand_templates, template_copies


def entity_quat(e: Entity) -> tuple[float, float, float, float]:
    """wxyz from `quat` or roll/pitch/yaw degrees (extrinsic x, y, z)."""
    if e.quat is not None:
        q = np.asarray(e.quat, dtype=np.float64)
        return tuple(float(v) for v in q / np.linalg.norm(q))
    return euler_quat(e.euler)


def euler_quat(euler) -> tuple[float, float, float, float]:
    if euler is None:
        return (1.0, 0.0, 0.0, 0.0)
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_euler("xyz", euler, degrees=True).as_quat()
    return (float(w), float(x), float(y), float(z))


def world_spec(s: Scenario, reference: bool = True, base_dir=None):
    """Scenario -> physics.WorldSpec (templates expanded, files resolved, textures as images)."""
    from physics import BodySpec, CameraSpec, WorldSpec

    from hybridsim.scenario.files import resolve_file
    from hybridsim.scenario.textures import texture_file

    s = expand_templates(s)
    parked = template_copies(s)
    bodies = []
    for e in s.entities:
        tex = texture_file(e.appearance.texture) if e.appearance.texture else None
        bodies.append(BodySpec(
            name=e.name, kind=e.type, size=e.size, radius=e.radius, height=e.height,
            file=str(resolve_file(e.file, "", base_dir)) if e.file else None, scale=e.scale,
            pos=e.pos, quat=entity_quat(e), fixed=e.fixed, mass=e.mass, density=e.density,
            friction=e.friction, restitution=e.restitution, lin_vel=e.lin_vel, ang_vel=e.ang_vel,
            color=e.appearance.color, texture=tex, joints=dict(e.joints), decompose=e.decompose,
            held=e.held and e.name not in parked, parked=e.name in parked,
        ))
    cams = [CameraSpec(c.name, c.pos, c.lookat, c.up, c.fov, tuple(c.res)) for c in s.cameras]
    t, lt = s.timing, s.lighting
    return WorldSpec(bodies=bodies, cameras=cams, dt=t.dt, substeps=t.substeps, gravity=s.gravity,
                     reference_render=reference, light_dir=lt.direction, light_color=lt.color,
                     light_intensity=lt.intensity, ambient=lt.ambient)


@dataclass
class ScheduledEvent:
    step: int  # physics step before which the event fires
    index: int  # position in scenario.events
    event: Event


def schedule(s: Scenario) -> list[ScheduledEvent]:
    """The timed (`at`) events in firing order."""
    dt = s.timing.dt
    out = [ScheduledEvent(int(round(ev.at / dt)), i, ev) for i, ev in enumerate(s.events) if ev.at is not None]
    return sorted(out, key=lambda x: (x.step, x.index))


def apply_event(world, ev: Event, dt: float) -> None:
    """Fire one v1 timed event on every environment of a physics.World."""
    from hybridsim.scenario.spec import event_actions

    for a in event_actions(ev):
        apply_action(world, [a] * world.n_envs, np.arange(world.n_envs), dt)


# ---------------------------------------------------------------------------- actions


def apply_action(world, actions: list[Action], envs: np.ndarray, dt: float, cameras=None,
                 spawn_next: dict | None = None) -> dict[int, list[str]]:
    """Apply one action in environments `envs`; actions[b] holds env b's (concrete) values.

    Returns env -> the entities it acted on (spawned copies for `spawn`)."""
    kind = actions[envs[0]].kind
    out: dict[int, list[str]] = {}
    if kind == "spawn":
        for b in envs:
            out[int(b)] = _spawn(world, actions[b], int(b), spawn_next)
        return out
    if kind == "move_camera":
        _move_camera(world, actions, envs, cameras)
        return {int(b): [] for b in envs}
    if kind == "set_gravity":
        world.set_gravity(np.array([actions[b].vector for b in envs]), envs)
        return {int(b): [] for b in envs}
    for name in dict.fromkeys(actions[b].entity for b in envs):  # per target entity, in order
        group = np.array([b for b in envs if actions[b].entity == name])
        _apply_to_entity(world, kind, name, [actions[b] for b in group], group, dt)
        out.update({int(b): [name] for b in group})
    return out


def _apply_to_entity(world, kind: str, name: str, acts: list[Action], envs: np.ndarray, dt: float) -> None:
    vec = (lambda key: np.array([getattr(a, key) for a in acts], dtype=np.float64))
    if kind == "impulse":
        world.apply_impulse(name, vec("vector"), envs)
    elif kind in ("force", "torque"):
        for steps in sorted({max(1, int(round(a.duration / dt))) for a in acts}):
            sub = [j for j, a in enumerate(acts) if max(1, int(round(a.duration / dt))) == steps]
            v = vec("vector")[sub]
            world.apply_force(name, v if kind == "force" else None, steps, envs[sub],
                              torque=v if kind == "torque" else None)
    elif kind == "set_velocity":
        k = world.body_slot(name)
        st = world.state(contacts=False)
        lin = np.array([a.lin_vel if a.lin_vel is not None else st.body_lin_vel[b, k].tolist()
                        for a, b in zip(acts, envs)])
        ang = np.array([a.ang_vel if a.ang_vel is not None else st.body_ang_vel[b, k].tolist()
                        for a, b in zip(acts, envs)])
        world.set_velocity(name, lin, ang, envs)
    elif kind == "joint_targets":
        joints = list(acts[0].targets)
        world.set_joint_targets(name, {j: np.array([a.targets[j] for a in acts]) for j in joints}, envs)
    elif kind == "release":
        world.release(name, envs)
    elif kind == "remove":
        world.park(name, envs)
    elif kind == "set_friction":
        world.set_friction(name, vec("value"), envs)
    elif kind == "set_mass":
        world.set_mass(name, vec("value"), envs)
    else:  # validated in the spec
        raise AssertionError(kind)


def _spawn(world, a: Action, b: int, spawn_next: dict) -> list[str]:
    """Place the next `count` parked copies of a template, copy i at pos + i * offset."""
    capacity = sum(1 for bd in world.spec.bodies if bd.parked and bd.name.rsplit("_", 1)[0] == a.template)
    first = int(spawn_next[a.template][b])
    names = [f"{a.template}_{i}" for i in range(first, min(first + a.count, capacity))]
    spawn_next[a.template][b] = first + len(names)
    for j, name in enumerate(names):
        tmpl_quat = world.spec.bodies[world.entity_index(name)].quat
        quat = euler_quat(a.euler) if a.euler is not None else tmpl_quat
        pos = np.asarray(a.pos, dtype=np.float64) + j * np.asarray(a.offset, dtype=np.float64)
        world.place(name, pos[None], np.asarray(quat)[None], None if a.lin_vel is None else np.asarray(a.lin_vel)[None],
                    None if a.ang_vel is None else np.asarray(a.ang_vel)[None], np.array([b]))
    return names


def _move_camera(world, actions: list[Action], envs: np.ndarray, cameras) -> None:
    from physics.camera import look_at

    name = actions[envs[0]].camera
    cur = world.camera_pose(name)  # (pos, lookat, up), each [B, 3]
    rows = []
    for b in envs:
        a = actions[b]
        pos, lookat, up = (np.asarray(v if v is not None else c[b], dtype=np.float64)
                           for v, c in zip((a.pos, a.lookat, a.up), cur))
        cameras[name].viewmat[b] = look_at(pos, lookat, up)
        rows.append((pos, lookat, up))
    pos, lookat, up = (np.array(v) for v in zip(*rows))
    world.set_camera_pose(name, pos, lookat, up, envs)


def camera_matrices(s: Scenario, n_envs: int) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """name -> (viewmat [B,4,4], K [B,3,3], width, height), OpenCV convention."""
    return camera_matrices_per_env([s] * n_envs)


def camera_matrices_per_env(episodes: list[Scenario]) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """As camera_matrices, with env b's camera poses taken from episodes[b]."""
    from physics.camera import intrinsics, look_at

    out = {}
    for j, c in enumerate(episodes[0].cameras):
        views = np.stack([look_at(ep.cameras[j].pos, ep.cameras[j].lookat, ep.cameras[j].up) for ep in episodes])
        K = np.stack([intrinsics(ep.cameras[j].fov, *c.res) for ep in episodes])
        out[c.name] = (views, K, int(c.res[0]), int(c.res[1]))
    return out
