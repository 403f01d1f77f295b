"""The actions on a `World`: poses, velocities, impulses, forces and torques, joint targets,
hold/release, park/place (remove/spawn), friction, mass, gravity and camera poses.

`WorldActions` is a mixin of `physics.world.World`; it relies on World's bookkeeping (entities,
body slots, held/parked masks, forces, the state cache). See `physics.world` for the semantics of
per-environment values, held and parked bodies.
"""

from __future__ import annotations

import numpy as np
import torch

from physics.spec import BodySpec, PhysicsError


class WorldActions:
    """Action methods of `World` (a mixin; not usable on its own)."""

    def _free(self, name: str):
        i = self.entity_index(name)
        if not _is_free(self.spec.bodies[i]):
            b = self.spec.bodies[i]
            raise PhysicsError(f"entity '{name}' is not a free rigid body (kind {b.kind}, fixed={b.fixed})")
        return i, self.entities[i]

    def _envs(self, envs) -> tuple[np.ndarray, dict]:
        """(env indices, Genesis keyword) for `envs` (None = all, passed to Genesis as None)."""
        if envs is None:
            return np.arange(self.n_envs), {}
        e = np.asarray(envs, dtype=np.int64).reshape(-1)
        return e, {"envs_idx": torch.as_tensor(e)}

    def set_pose(self, name: str, pos: np.ndarray, quat: np.ndarray, envs=None) -> None:
        """pos [n, 3], quat [n, 4] wxyz for `envs` (n = all when None); zeroes the velocity like a teleport.
        Free and fixed bodies; a held body stays held at the new pose."""
        i = self.entity_index(name)
        if self.spec.bodies[i].kind == "plane":
            raise PhysicsError(f"entity '{name}' is a plane; planes cannot be moved")
        ent, (e, kw) = self.entities[i], self._envs(envs)
        self._state_cache = None
        ent.set_pos(torch.as_tensor(np.asarray(pos).reshape(len(e), 3), dtype=torch.float32), **kw)
        ent.set_quat(torch.as_tensor(np.asarray(quat).reshape(len(e), 4), dtype=torch.float32), **kw)
        if i in self._held:
            self._held[i][1][e] = ent.get_qpos().reshape(self.n_envs, -1)[e].double().numpy()

    def set_velocity(self, name: str, lin_vel: np.ndarray, ang_vel: np.ndarray, envs=None) -> None:
        """lin_vel [n, 3] m/s and ang_vel [n, 3] rad/s, both world frame."""
        _, ent = self._free(name)
        e, kw = self._envs(envs)
        quat = ent.get_quat().reshape(self.n_envs, 4).cpu().numpy()[e]
        # Genesis' free joint, like MuJoCo's, keeps angular velocity in the body frame.
        ang_local = _quat_rotate_inv(quat, np.asarray(ang_vel, dtype=np.float64).reshape(len(e), 3))
        vel = np.concatenate([np.asarray(lin_vel, dtype=np.float64).reshape(len(e), 3), ang_local], axis=1)
        self._state_cache = None
        ent.set_dofs_velocity(torch.as_tensor(vel, dtype=torch.float32), **kw)

    def apply_impulse(self, name: str, impulse: np.ndarray, envs=None) -> None:
        """impulse [n, 3] N*s through the centre of mass: an instant velocity change J / m."""
        i, _ = self._free(name)
        e, _ = self._envs(envs)
        state = self.state(contacts=False)
        k = self._entity_slots[i].start
        lin = state.body_lin_vel[e, k].cpu().numpy() + np.asarray(impulse).reshape(len(e), 3) / self._mass[i][e, None]
        self.set_velocity(name, lin, state.body_ang_vel[e, k].cpu().numpy(), envs)

    def apply_force(self, name: str, force: np.ndarray | None, steps: int, envs=None,
                    torque: np.ndarray | None = None) -> None:
        """force [n, 3] newtons at the centre of mass (and/or torque [n, 3] N*m, world frame) for the
        next `steps` physics steps."""
        i, _ = self._free(name)
        e, _ = self._envs(envs)
        as3 = (lambda v: None if v is None else np.asarray(v, dtype=np.float64).reshape(len(e), 3))
        self._forces.append((i, as3(force), self._step + steps, None if envs is None else e, as3(torque)))

    def set_joint_targets(self, name: str, targets: dict[str, float | np.ndarray], envs=None) -> None:
        """Position targets per joint: a number, or [n] values for `envs`."""
        i = self.entity_index(name)
        if self.spec.bodies[i].kind not in ("urdf", "mjcf"):
            raise PhysicsError(f"entity '{name}' is not a robot; joint targets need a urdf or mjcf entity")
        e, _ = self._envs(envs)
        idx, _ = self._joint_dofs(i, {j: 0.0 for j in targets})
        old_idx, old = self._targets.get(i, ([], np.zeros((self.n_envs, 0))))
        merged = list(dict.fromkeys(old_idx + idx))
        pos = np.zeros((self.n_envs, len(merged)))
        for c, d in enumerate(old_idx):
            pos[:, merged.index(d)] = old[:, c]
        for d, v in zip(idx, targets.values()):
            col = merged.index(d)
            if d not in old_idx:
                pos[:, col] = self.entities[i].get_dofs_position([d]).reshape(self.n_envs).numpy()
            pos[e, col] = np.broadcast_to(np.asarray(v, dtype=np.float64), (len(e),))
        self._targets[i] = (merged, pos)

    def hold(self, name: str, envs=None) -> None:
        """Pin a free body (kinematic) at its current pose in `envs` until `release`."""
        i, ent = self._free(name)
        e, _ = self._envs(envs)
        mask, qpos = self._held.get(i, (np.zeros(self.n_envs, bool), None))
        if qpos is None:
            qpos = ent.get_qpos().reshape(self.n_envs, -1).double().numpy().copy()
        else:
            qpos[e] = ent.get_qpos().reshape(self.n_envs, -1)[e].double().numpy()
        mask = mask.copy()
        mask[e] = True
        self._held[i] = (mask, qpos)
        self._pin([i])

    def release(self, name: str, envs=None) -> None:
        i, _ = self._free(name)
        if i in self._held:
            e, _ = self._envs(envs)
            self._held[i][0][e] = False

    def held(self, name: str) -> np.ndarray:
        """[B] bool: held (or parked) per environment."""
        i = self.entity_index(name)
        return self._held[i][0].copy() if i in self._held else np.zeros(self.n_envs, bool)

    def park_position(self, name: str) -> tuple[float, float, float]:
        """Far from everything and apart from every other body (a parked body rests there on the
        ground plane, or is held in the air when there is no plane)."""
        return (200.0 + 4.0 * self.entity_index(name), 200.0, 5.0)  # Genesis' plane spans +-500 m

    def park(self, name: str, envs=None) -> None:
        """Move a free body out of the way (a `remove`; spawnable copies start parked).

        On a ground plane it rests there untouched, which costs nothing per step; pinning it would
        reset Genesis' solver warm start in that environment at every step."""
        i, ent = self._free(name)
        e, _ = self._envs(envs)
        self.release(name, envs)
        pos = np.tile(self.park_position(name), (len(e), 1))
        ident = np.tile([1.0, 0.0, 0.0, 0.0], (len(e), 1))
        self.set_pose(name, pos, ident, envs)
        ground = [b.pos[2] for b in self.spec.bodies if b.kind == "plane"]
        if ground:
            bottom = ent.get_AABB().reshape(self.n_envs, 2, 3)[e, 0, 2].double().numpy()
            pos[:, 2] -= bottom - max(ground) - 1e-4
            self.set_pose(name, pos, ident, envs)
        else:
            self.hold(name, envs)
        self._parked.setdefault(i, np.zeros(self.n_envs, bool))[e] = True

    def parked(self, name: str) -> np.ndarray:
        """[B] bool: parked (removed, or a copy not spawned yet) per environment."""
        i = self.entity_index(name)
        return self._parked[i].copy() if i in self._parked else np.zeros(self.n_envs, bool)

    def place(self, name: str, pos: np.ndarray, quat: np.ndarray, lin_vel=None, ang_vel=None, envs=None) -> None:
        """Release a (parked) free body at pos [n, 3], quat [n, 4], with velocities [n, 3] (a spawn)."""
        i, _ = self._free(name)
        e, _ = self._envs(envs)
        self.release(name, envs)
        if i in self._parked:
            self._parked[i][e] = False
        self.set_pose(name, pos, quat, envs)
        zero = np.zeros((len(e), 3))
        lin = zero if lin_vel is None else lin_vel
        ang = zero if ang_vel is None else ang_vel
        if np.any(lin) or np.any(ang):
            self.set_velocity(name, lin, ang, envs)

    def set_friction(self, name: str, friction: np.ndarray, envs=None) -> None:
        """Friction coefficient [n] of all the entity's geoms, per environment. Genesis combines the
        two bodies of a contact with max(), so lower both to make something slip."""
        i = self.entity_index(name)
        e, kw = self._envs(envs)
        geoms = self.entities[i].geoms
        built = np.array([float(g.get_friction()) for g in geoms])
        ratio = np.asarray(friction, dtype=np.float64).reshape(len(e), 1) / built[None]
        self.scene.rigid_solver.set_geoms_friction_ratio(torch.as_tensor(ratio, dtype=torch.float32),
                                                         [g.idx for g in geoms], **kw)

    def set_mass(self, name: str, mass: np.ndarray, envs=None) -> None:
        """Total mass [n] kg of a free body per environment (inertia scales along)."""
        i, ent = self._free(name)
        self._require_per_env_inertia(name)
        e, kw = self._envs(envs)
        m = np.asarray(mass, dtype=np.float64).reshape(len(e))
        ent.set_mass(torch.as_tensor(m, dtype=torch.float32), **kw)
        self._mass[i][e] = m

    def mass(self, name: str) -> np.ndarray:
        """[B] kg of a free body."""
        i, _ = self._free(name)
        return self._mass[i].copy()

    def set_gravity(self, gravity: np.ndarray, envs=None) -> None:
        """gravity [n, 3] m/s^2 per environment."""
        e, kw = self._envs(envs)
        g = np.asarray(gravity, dtype=np.float64).reshape(len(e), 3)
        self.scene.sim.set_gravity(torch.as_tensor(g, dtype=torch.float32), **kw)
        self._gravity[e] = g

    @property
    def gravity(self) -> np.ndarray:
        return self._gravity.copy()

    def set_camera_pose(self, camera: str, pos, lookat, up, envs=None) -> None:
        """Move a reference camera: pos, lookat, up [n, 3] per environment."""
        if camera not in self._camera_poses:
            raise PhysicsError(f"no camera '{camera}'; cameras are {list(self._camera_poses)}")
        e, kw = self._envs(envs)
        vals = [np.asarray(v, dtype=np.float64).reshape(len(e), 3) for v in (pos, lookat, up)]
        for store, v in zip(self._camera_poses[camera], vals):
            store[e] = v
        if camera in self.cameras:
            self.cameras[camera].set_pose(pos=vals[0], lookat=vals[1], up=vals[2], **kw)

    def camera_pose(self, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pos, lookat, up), each [B, 3], of a camera of the spec (attached or not)."""
        return tuple(v.copy() for v in self._camera_poses[camera])


def _is_free(b: BodySpec) -> bool:
    return not (b.fixed or b.kind in ("plane", "urdf", "mjcf"))


def _quat_rotate_inv(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate v [B,3] by the inverse of q [B,4] wxyz."""
    w, xyz = q[:, :1], -q[:, 1:]
    t = 2.0 * np.cross(xyz, v)
    return v + w * t + np.cross(xyz, t)
