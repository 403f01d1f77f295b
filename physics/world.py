"""A batched Genesis rigid-body world built from a `WorldSpec`.

One `World` = one Genesis scene with `n_envs` parallel environments (B >= 1 always, so tensor ranks
never depend on batching). Bodies are addressed two ways: by entity name (actions, events) and by
body slot k, one per Genesis link across all entities in spec order (state read-out, rendering).

Per-environment values: every action takes `envs` (indices; None = all) and values for those
environments. Initial conditions may differ per environment (`env_specs`: one WorldSpec per env,
the same bodies as `spec`): poses (free and fixed bodies), velocities, mass, friction, gravity,
joints, held. Mass per environment needs Genesis' `batch_links_info` (`WorldSpec.per_env_inertia`).
Friction goes through Genesis' per-environment friction ratio, gravity through `set_gravity`.

Held bodies (`BodySpec.held`, `hold`) are kinematic: after every physics step their pose is set
back and their velocity zeroed, until `release` (setting a pose clears Genesis' contacts and solver
warm start in that environment, so the step's contacts are kept aside first). Parked bodies
(`BodySpec.parked`, `park`) rest out of the way, 200 m off on the ground plane (`park_position`;
held in the air when there is no plane): Genesis cannot add bodies after the build, so spawnable
copies are preallocated parked and `place`d when needed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from physics.actions import WorldActions, _is_free, _quat_rotate_inv  # noqa: F401 (re-exported)
from physics.spec import BodySpec, CameraSpec, PhysicsError, WorldSpec

_GS_READY = False
DEFAULT_COLOR = (0.7, 0.7, 0.7)


def init_genesis(logging_level: str = "warning") -> None:
    """Initialise Genesis once per process (CPU backend unless CUDA is present)."""
    global _GS_READY
    if _GS_READY:
        return
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # headless raster camera via Mesa EGL
    import genesis as gs

    if not getattr(gs, "_initialized", False):
        backend = gs.gpu if torch.cuda.is_available() else gs.cpu
        gs.init(backend=backend, logging_level=logging_level, precision="32", performance_mode=False)
    _GS_READY = True


@dataclass
class BodyInfo:
    """One body slot k: a Genesis link."""

    entity: str
    link: str
    entity_index: int  # index into WorldSpec.bodies
    fixed: bool


@dataclass
class LinkVisual:
    """Visual geometry of one body slot, in that body's (link's) frame."""

    body: int  # slot k
    vertices: np.ndarray  # [V, 3] metres, link frame
    faces: np.ndarray  # [F, 3] int
    color: tuple[float, float, float]
    uvs: np.ndarray | None = None  # [V, 2]
    texture: np.ndarray | None = None  # [h, w, 3] uint8
    vertex_colors: np.ndarray | None = None  # [V, 3] float in [0,1]


@dataclass
class Contacts:
    """Contacts of the last step, padded over environments (M = max count)."""

    body_a: torch.Tensor  # [B, M] body slot
    body_b: torch.Tensor  # [B, M] body slot
    position: torch.Tensor  # [B, M, 3] world
    force: torch.Tensor  # [B, M, 3] on body a, newtons
    valid: torch.Tensor  # [B, M] bool


@dataclass
class PhysicsState:
    t: float  # seconds since the start
    step: int  # physics steps taken
    body_pos: torch.Tensor  # [B, K, 3] metres, world frame
    body_quat: torch.Tensor  # [B, K, 4] wxyz
    body_lin_vel: torch.Tensor  # [B, K, 3] m/s
    body_ang_vel: torch.Tensor  # [B, K, 3] rad/s
    joint_pos: dict[str, torch.Tensor] = field(default_factory=dict)  # entity -> [B, J]
    contacts: Contacts | None = None


@dataclass
class Snapshot:
    """Everything needed to continue a rollout bit-identically from a step."""

    step: int
    sim_state: object  # genesis SimState (poses, velocities, friction ratios)
    forces: list
    targets: dict
    held: dict = field(default_factory=dict)  # entity index -> (mask [B], qpos [B, 7])
    mass: dict = field(default_factory=dict)  # entity index -> [B] kg (not part of Genesis' state)
    gravity: np.ndarray | None = None  # [B, 3]
    camera_poses: dict = field(default_factory=dict)  # camera -> (pos, lookat, up), each [B, 3]
    parked: dict = field(default_factory=dict)  # entity index -> mask [B]
    contacts: tuple | None = None  # (step, Contacts) of a step whose contacts pinning cleared


@dataclass
class ReferenceFrame:
    """Genesis raster render of one camera, all environments."""

    rgb: np.ndarray  # [B, H, W, 3] uint8
    depth: np.ndarray  # [B, H, W] metres along +z
    body: np.ndarray  # [B, H, W] int32 body slot, -1 = nothing


def restitution_to_dampratio(e: float) -> float:
    """Damping ratio of a linear spring-damper contact whose bounce has restitution e.

    Genesis' rigid solver (like MuJoCo) has no restitution coefficient; a soft contact with damping
    ratio z < 1 rebounds with e = exp(-pi z / sqrt(1 - z^2)). Inverted here.
    """
    if e <= 0.0:
        return 1.0
    e = min(e, 0.99)
    le = math.log(e)
    return -le / math.sqrt(math.pi**2 + le**2)


class World(WorldActions):
    """Genesis scene + bookkeeping. Construct, then `step()`; read `state()`."""

    def __init__(self, spec: WorldSpec, n_envs: int = 1, pos_offsets: dict[str, np.ndarray] | None = None,
                 env_specs: list[WorldSpec] | None = None):
        """pos_offsets: entity name -> [B, 3] added to that free body's initial position per env.
        env_specs: per-environment initial values (see the module docstring); None = `spec` everywhere."""
        if n_envs < 1:
            raise PhysicsError(f"n_envs must be >= 1, got {n_envs}")
        if env_specs is not None:
            _check_env_specs(spec, env_specs, n_envs)
        init_genesis()
        import genesis as gs

        self.spec, self.n_envs = spec, n_envs
        self._gs = gs
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=spec.dt, substeps=spec.substeps, gravity=spec.gravity),
            rigid_options=gs.options.RigidOptions(enable_self_collision=False,
                                                  batch_links_info=spec.per_env_inertia),
            vis_options=gs.options.VisOptions(
                shadow=spec.shadows, split_envs=True, segmentation_level="link", background_color=(0.0, 0.0, 0.0),
                ambient_light=spec.ambient,
                lights=[{"type": "directional", "dir": spec.light_dir, "color": spec.light_color,
                         "intensity": spec.light_intensity}],
            ),
            show_viewer=False,
        )
        self.entities = [self.scene.add_entity(**self._morph(b)) for b in spec.bodies]
        self.cameras = {}
        if spec.reference_render:
            for c in spec.cameras:
                self.cameras[c.name] = self.scene.add_camera(
                    res=tuple(c.res), pos=c.pos, lookat=c.lookat, up=c.up, fov=c.fov, GUI=False
                )
        self.scene.build(n_envs=n_envs)
        self._index_bodies()
        self._forces: list[tuple[int, np.ndarray, int]] = []  # (entity index, force [B,3], last step)
        self._targets: dict[int, tuple[list[int], np.ndarray]] = {}
        self._held: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # entity -> (mask [B], qpos [B, 7])
        self._parked: dict[int, np.ndarray] = {}  # entity -> mask [B]
        self._contact_cache: tuple[int, Contacts] | None = None
        self._state_cache: PhysicsState | None = None  # invalidated by every write (see state())
        self._step = 0
        self._gravity = np.tile(np.asarray(spec.gravity, dtype=np.float64), (n_envs, 1))
        self._camera_poses = {c.name: tuple(np.tile(np.asarray(v, dtype=np.float64), (n_envs, 1))
                                            for v in (c.pos, c.lookat, c.up)) for c in spec.cameras}
        self._mass = self._read_masses()
        self._built = self.save()  # as built, before any initial condition: see reinit()
        self._apply_initial_conditions(pos_offsets or {}, env_specs)

    def reinit(self, env_specs: list[WorldSpec] | None = None, pos_offsets: dict[str, np.ndarray] | None = None) -> None:
        """Start over with other per-environment initial values (same bodies), without a rebuild."""
        if env_specs is not None:
            _check_env_specs(self.spec, env_specs, self.n_envs)
        self.restore(self._built)
        self._apply_initial_conditions(pos_offsets or {}, env_specs)

    def _read_masses(self) -> dict[int, np.ndarray]:
        return {i: self.entities[i].get_mass().reshape(-1).expand(self.n_envs).double().numpy().copy()
                for i, b in enumerate(self.spec.bodies) if _is_free(b)}

    # ------------------------------------------------------------------ build
    def _morph(self, b: BodySpec) -> dict:
        gs = self._gs
        common = dict(pos=tuple(b.pos), quat=tuple(b.quat))
        if b.kind == "plane":
            morph = gs.morphs.Plane(pos=tuple(b.pos))
        elif b.kind == "box":
            morph = gs.morphs.Box(size=tuple(b.size), fixed=b.fixed, **common)
        elif b.kind == "sphere":
            morph = gs.morphs.Sphere(radius=b.radius, fixed=b.fixed, **common)
        elif b.kind == "cylinder":
            morph = gs.morphs.Cylinder(radius=b.radius, height=b.height, fixed=b.fixed, **common)
        elif b.kind == "mesh":
            threshold = 0.15 if b.decompose else float("inf")  # inf: a single convex hull
            morph = gs.morphs.Mesh(file=b.file, scale=b.scale, fixed=b.fixed,
                                   decompose_object_error_threshold=threshold, **common)
        elif b.kind == "urdf":
            morph = gs.morphs.URDF(file=b.file, scale=b.scale, fixed=b.fixed, **common)
        elif b.kind == "mjcf":
            morph = gs.morphs.MJCF(file=b.file, scale=b.scale, **common)
        else:  # validated upstream; an unknown kind here is a programming error
            raise PhysicsError(f"body '{b.name}': unknown kind {b.kind!r}")
        material = gs.materials.Rigid(rho=b.density if b.density is not None else None, friction=b.friction)
        out = dict(morph=morph, material=material)
        if b.texture or b.color is not None or b.kind not in ("urdf", "mjcf", "mesh"):
            out["surface"] = self._surface(b)
        return out

    def _surface(self, b: BodySpec):
        gs = self._gs
        if b.texture:
            tex = gs.textures.ImageTexture(image_path=b.texture)
            return gs.surfaces.Rough(diffuse_texture=tex)
        return gs.surfaces.Rough(color=tuple(b.color) if b.color is not None else DEFAULT_COLOR)

    def _index_bodies(self) -> None:
        self.bodies: list[BodyInfo] = []
        self._slot_of_link: dict[int, int] = {}
        self._entity_slots: list[slice] = []
        for ei, (b, ent) in enumerate(zip(self.spec.bodies, self.entities)):
            start = len(self.bodies)
            for link in ent.links:
                self._slot_of_link[link.idx] = len(self.bodies)
                self.bodies.append(BodyInfo(b.name, link.name, ei, b.fixed or b.kind == "plane"))
            self._entity_slots.append(slice(start, len(self.bodies)))
        self._entity_index = {b.name: i for i, b in enumerate(self.spec.bodies)}
        lut = np.full(max(self._slot_of_link) + 2, -1, dtype=np.int32)
        for link_idx, slot in self._slot_of_link.items():
            lut[link_idx] = slot
        self._link_lut = lut

    def _apply_initial_conditions(self, offsets: dict[str, np.ndarray], env_specs: list[WorldSpec] | None = None) -> None:
        for name, off in offsets.items():
            b = self.spec.bodies[self.entity_index(name)]
            pos = np.asarray(b.pos, dtype=np.float64)[None] + np.asarray(off, dtype=np.float64).reshape(self.n_envs, 3)
            self.set_pose(name, pos, np.tile(b.quat, (self.n_envs, 1)))
        rows = _env_rows(self.spec, env_specs, self.n_envs)  # i -> the per-env BodySpecs of body i
        if env_specs is not None:
            self._apply_env_poses(rows)
        for i, (b, ent) in enumerate(zip(self.spec.bodies, self.entities)):
            if b.kind in ("urdf", "mjcf"):
                self._setup_robot(i, b, ent, rows[i])
            elif not b.fixed and b.kind != "plane":
                masses = [r.mass for r in rows[i]]
                if b.mass is not None and all(m == b.mass for m in masses):
                    ent.set_mass(b.mass)
                elif any(m is not None for m in masses):
                    self._require_per_env_inertia(b.name)
                    built = float(ent.get_mass().reshape(-1)[0])
                    ent.set_mass(torch.tensor([m if m is not None else built for m in masses], dtype=torch.float32))
                lin, ang = (np.array([getattr(r, k) for r in rows[i]], dtype=np.float64) for k in ("lin_vel", "ang_vel"))
                if lin.any() or ang.any():
                    self.set_velocity(b.name, lin, ang)
            if b.restitution > 0 and b.kind != "plane":
                sol = np.array(self._gs.utils.geom.default_solver_params(), dtype=np.float64)
                sol[1] = restitution_to_dampratio(b.restitution)
                for geom in ent.geoms:
                    geom.set_sol_params(sol)
            frictions = [r.friction for r in rows[i]]
            if any(f != b.friction for f in frictions):
                self.set_friction(b.name, np.array([f if f is not None else 1.0 for f in frictions]))
        if env_specs is not None:
            g = np.array([e.gravity for e in env_specs], dtype=np.float64)
            if (g != self._gravity).any():
                self.set_gravity(g)
            self._apply_env_cameras(env_specs)
        self._mass = self._read_masses()
        for i, b in enumerate(self.spec.bodies):
            if b.parked:
                self.park(b.name)
            held = np.array([r.held for r in rows[i]])
            if held.any():
                self.hold(b.name, np.nonzero(held)[0])

    def _apply_env_poses(self, rows: list[list[BodySpec]]) -> None:
        for i, b in enumerate(self.spec.bodies):
            if b.kind == "plane" or b.parked:
                continue
            pos = np.array([r.pos for r in rows[i]], dtype=np.float64)
            quat = np.array([r.quat for r in rows[i]], dtype=np.float64)
            if (pos != np.asarray(b.pos)).any() or (quat != np.asarray(b.quat)).any():
                self.set_pose(b.name, pos, quat)

    def _apply_env_cameras(self, env_specs: list[WorldSpec]) -> None:
        for j, c in enumerate(self.spec.cameras):
            pos, lookat, up = (np.array([getattr(e.cameras[j], k) for e in env_specs], dtype=np.float64)
                               for k in ("pos", "lookat", "up"))
            if any((v != np.asarray(getattr(c, k))).any() for v, k in ((pos, "pos"), (lookat, "lookat"), (up, "up"))):
                self.set_camera_pose(c.name, pos, lookat, up)

    def _require_per_env_inertia(self, name: str) -> None:
        if not self.spec.per_env_inertia:
            raise PhysicsError(f"entity '{name}': mass differs between environments; build with "
                               "WorldSpec.per_env_inertia=True")

    def _setup_robot(self, i: int, b: BodySpec, ent, rows: list[BodySpec] | None = None) -> None:
        dofs = [d for j in ent.joints if j.n_dofs == 1 for d in np.atleast_1d(j.dofs_idx_local)]
        if not dofs:
            return
        ent.set_dofs_kp(np.full(len(dofs), 4000.0), dofs)
        ent.set_dofs_kv(np.full(len(dofs), 400.0), dofs)
        if b.joints:
            idx, _ = self._joint_dofs(i, b.joints)
            pos = np.array([[r.joints[j] for j in b.joints] for r in rows or [b] * self.n_envs], dtype=np.float64)
            self._state_cache = None
            ent.set_dofs_position(pos, idx)
            self._targets[i] = (idx, pos)

    def _joint_dofs(self, i: int, values: dict[str, float]) -> tuple[list[int], np.ndarray]:
        ent, name = self.entities[i], self.spec.bodies[i].name
        idx = []
        for jn in values:
            try:
                joint = ent.get_joint(jn)
            except Exception as exc:  # genesis raises its own exception type
                names = [j.name for j in ent.joints]
                raise PhysicsError(f"entity '{name}' has no joint '{jn}'; joints are {names}") from exc
            idx.append(int(np.atleast_1d(joint.dofs_idx_local)[0]))
        return idx, np.asarray(list(values.values()), dtype=np.float64)

    # ---------------------------------------------------------------- actions
    def entity_index(self, name: str) -> int:
        try:
            return self._entity_index[name]
        except KeyError:
            raise PhysicsError(f"unknown entity '{name}'; entities are {list(self._entity_index)}") from None

    @property
    def entity_names(self) -> list[str]:
        return list(self._entity_index)

    def body_slot(self, name: str) -> int:
        """Slot k of an entity's base link in PhysicsState tensors."""
        return self._entity_slots[self.entity_index(name)].start

    def entity_slots(self, name: str) -> range:
        """Slots of all links of an entity."""
        s = self._entity_slots[self.entity_index(name)]
        return range(s.start, s.stop)

    def joint_targets(self, name: str) -> dict[str, np.ndarray]:
        """Read-only: the position targets robot `name`'s PD controller tracks now, joint -> [B]
        (radians or metres), for every 1-dof joint; a joint never commanded reads its current position."""
        i = self.entity_index(name)
        if self.spec.bodies[i].kind not in ("urdf", "mjcf"):
            raise PhysicsError(f"entity '{name}' is not a robot; joint targets need a urdf or mjcf entity")
        ent = self.entities[i]
        idx, pos = self._targets.get(i, ([], np.zeros((self.n_envs, 0))))
        now = ent.get_dofs_position().reshape(self.n_envs, -1).double().numpy()
        out = {}
        for j in ent.joints:
            if j.n_dofs == 1:
                d = int(np.atleast_1d(j.dofs_idx_local)[0])
                out[j.name] = pos[:, idx.index(d)].copy() if d in idx else now[:, d].copy()
        return out

    def joint_limits(self, name: str) -> dict[str, tuple[float, float]]:
        """Read-only: robot `name`'s position limits from its URDF/MJCF, joint -> (low, high) (radians or
        metres; +-inf for an unlimited joint), for every 1-dof joint, as Genesis built them (env 0)."""
        i = self.entity_index(name)
        if self.spec.bodies[i].kind not in ("urdf", "mjcf"):
            raise PhysicsError(f"entity '{name}' is not a robot; joint limits need a urdf or mjcf entity")
        ent = self.entities[i]
        lo, hi = (np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.float64).reshape(-1, ent.n_dofs)[0]
                  for v in ent.get_dofs_limit())
        return {j.name: (float(lo[d]), float(hi[d])) for j in ent.joints if j.n_dofs == 1
                for d in [int(np.atleast_1d(j.dofs_idx_local)[0])]}

    # ------------------------------------------------------------------ step
    def step(self) -> None:
        for i, (idx, pos) in self._targets.items():
            self.entities[i].control_dofs_position(torch.as_tensor(pos, dtype=torch.float32), idx)
        self._forces = [f for f in self._forces if f[2] > self._step]
        for i, force, _, envs, torque in self._forces:
            n = self.n_envs if envs is None else len(envs)
            kw = {} if envs is None else {"envs_idx": torch.as_tensor(envs)}
            as_t = (lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float32).reshape(n, 1, 3))
            self.entities[i].apply_links_external_wrench(
                force=as_t(force), torque=as_t(torque), links_idx_local=[0], ref=self._gs.link_ref_frame.link_COM, **kw)
        self._state_cache = None
        self.scene.step(update_visualizer=False)
        self._step += 1
        self._contact_cache = None
        if any(m.any() for m, _ in self._held.values()):  # pinning clears Genesis' contacts: keep this step's
            self._contact_cache = (self._step, self._contacts())
            self._pin(list(self._held))
        self._check_blowup()

    def _pin(self, entities: list[int]) -> None:
        """Set held bodies back to their pose with zero velocity (one Genesis call per env mask)."""
        groups: dict[bytes, list[int]] = {}
        for i in entities:
            mask = self._held[i][0]
            if mask.any():
                groups.setdefault(mask.tobytes(), []).append(i)
        solver = self.scene.rigid_solver
        self._state_cache = None
        for key, ids in groups.items():
            mask = self._held[ids[0]][0]
            e, kw = self._envs(None if mask.all() else np.nonzero(mask)[0])
            qs = [q for i in ids for q in range(self.entities[i].q_start, self.entities[i].q_end)]
            dofs = [d for i in ids for d in range(self.entities[i].dof_start, self.entities[i].dof_end)]
            qpos = np.concatenate([self._held[i][1][e] for i in ids], axis=1)
            solver.set_qpos(torch.as_tensor(qpos, dtype=torch.float32), qs, **kw)
            solver.set_dofs_velocity(torch.zeros((len(e), len(dofs))), dofs, **kw)

    def _check_blowup(self) -> None:
        s = self.state(contacts=False)
        speed = s.body_lin_vel.norm(dim=-1)  # [B, K]
        bad = ~torch.isfinite(s.body_pos).all(-1) | ~torch.isfinite(speed) | (speed > self.spec.max_speed)
        if bad.any():
            env, k = (int(v) for v in bad.nonzero()[0])
            raise PhysicsError(
                f"physics blew up at step {self._step} (t={s.t:.4f} s), env {env}: entity "
                f"'{self.bodies[k].entity}' link '{self.bodies[k].link}' speed {float(speed[env, k]):.3g} m/s "
                f"(max_speed {self.spec.max_speed}); lower timing.dt, raise timing.substeps or soften the event"
            )

    # ---------------------------------------------------------------- read-out
    @property
    def t(self) -> float:
        return self._step * self.spec.dt

    @property
    def step_count(self) -> int:
        return self._step

    def state(self, contacts: bool = True) -> PhysicsState:
        """The current state. Read once per step and shared (the blow-up check reads it already):
        treat its tensors as read-only."""
        s = self._state_cache
        if s is None or s.step != self._step:
            s = self._state_cache = self._read_state()
        return dataclasses.replace(s, contacts=self._step_contacts()) if contacts else s

    def _read_state(self) -> PhysicsState:
        solver = self.scene.rigid_solver
        B = self.n_envs
        pos = solver.get_links_pos().reshape(B, -1, 3)
        quat = solver.get_links_quat().reshape(B, -1, 4)
        vel = solver.get_links_vel().reshape(B, -1, 3)
        ang = solver.get_links_ang().reshape(B, -1, 3)
        order = torch.as_tensor(sorted(self._slot_of_link, key=self._slot_of_link.get))
        joints = {}
        for b, ent in zip(self.spec.bodies, self.entities):
            if b.kind in ("urdf", "mjcf"):
                joints[b.name] = ent.get_dofs_position().reshape(B, -1).clone()
        return PhysicsState(
            t=self.t,
            step=self._step,
            body_pos=pos[:, order].clone(),
            body_quat=quat[:, order].clone(),
            body_lin_vel=vel[:, order].clone(),
            body_ang_vel=ang[:, order].clone(),
            joint_pos=joints,
        )

    def _step_contacts(self) -> Contacts:
        if self._contact_cache is not None and self._contact_cache[0] == self._step:
            return self._contact_cache[1]
        return self._contacts()

    def _contacts(self) -> Contacts:
        data = self.scene.rigid_solver.collider.get_contacts(as_tensor=True, to_torch=True, is_padded=True)
        lut = torch.as_tensor(self._link_lut, dtype=torch.int64)
        la = data["link_a"].long().reshape(self.n_envs, -1)
        lb = data["link_b"].long().reshape(self.n_envs, -1)
        n = data["n_contacts"].reshape(self.n_envs, 1)
        valid = torch.arange(la.shape[1])[None, :] < n
        return Contacts(
            body_a=torch.where(valid, lut[la.clamp(min=0)], -1),
            body_b=torch.where(valid, lut[lb.clamp(min=0)], -1),
            position=data["position"].float().reshape(self.n_envs, -1, 3),
            force=-data["force"].float().reshape(self.n_envs, -1, 3),  # Genesis' `force` acts on b
            valid=valid,
        )

    def link_visuals(self) -> list[LinkVisual]:
        """Visual meshes of every body slot, in link frames, for building splat assets."""
        out = []
        for b, ent in zip(self.spec.bodies, self.entities):
            for link in ent.links:
                slot = self._slot_of_link[link.idx]
                for vg in link.vgeoms:
                    out.append(_link_visual(slot, vg, b))
        return out

    # ------------------------------------------------------------ save/restore
    def save(self) -> Snapshot:
        return Snapshot(self._step, self.scene.get_state(), list(self._forces), dict(self._targets),
                        held={i: (m.copy(), q.copy()) for i, (m, q) in self._held.items()},
                        mass={i: m.copy() for i, m in self._mass.items()}, gravity=self._gravity.copy(),
                        camera_poses={c: tuple(v.copy() for v in p) for c, p in self._camera_poses.items()},
                        parked={i: m.copy() for i, m in self._parked.items()}, contacts=self._contact_cache)

    def restore(self, snap: Snapshot) -> None:
        self._state_cache = None
        self.scene.reset(snap.sim_state)
        self._step = snap.step
        self._forces = list(snap.forces)
        self._targets = dict(snap.targets)
        self._held = {i: (m.copy(), q.copy()) for i, (m, q) in snap.held.items()}
        self._parked = {i: m.copy() for i, m in snap.parked.items()}
        self._contact_cache = snap.contacts
        for i, m in snap.mass.items():  # Genesis keeps inertial values across reset(); write back changed ones
            if (m != self._mass[i]).any():
                same = (m == m[0]).all()
                self.entities[i].set_mass(float(m[0]) if same else torch.as_tensor(m, dtype=torch.float32))
                self._mass[i] = m.copy()
        if snap.gravity is not None and (snap.gravity != self._gravity).any():
            self.set_gravity(snap.gravity)
        for cam, pose in snap.camera_poses.items():
            if any((a != b).any() for a, b in zip(pose, self._camera_poses[cam])):
                self.set_camera_pose(cam, *pose)

    def restore_envs(self, snap: Snapshot, envs) -> None:
        """Restore environments `envs` only from `snap` (e.g. the initial snapshot: those envs start
        a new episode) while the others keep their state. The step counter is the batch's and
        stays; forces, joint targets, held / parked bodies, masses, gravity and reference cameras
        of those envs are taken from `snap` (forces keep their remaining duration)."""
        e = np.unique(np.asarray(envs, dtype=np.int64).reshape(-1))
        if e.size == 0:
            return
        if e.min() < 0 or e.max() >= self.n_envs:
            raise PhysicsError(f"restore_envs: env indices {e.tolist()} out of range [0, {self.n_envs})")
        if e.size == self.n_envs:  # every env: the plain restore, with the batch's clock kept
            step = self._step
            self.restore(snap)
            self._forces = [(i, f, last - snap.step + step, en, t) for i, f, last, en, t in self._forces]
            self._step = step
            return
        keep = np.setdiff1d(np.arange(self.n_envs), e)
        self._state_cache = None
        self._contact_cache = None
        self.scene.reset(snap.sim_state, envs_idx=torch.as_tensor(e))
        forces = []
        for i, f, last, en, t in self._forces:  # the other envs keep theirs
            rows = np.arange(self.n_envs) if en is None else np.asarray(en)
            sel = np.isin(rows, keep)
            if sel.any():
                forces.append((i, None if f is None else f[sel], last, rows[sel], None if t is None else t[sel]))
        for i, f, last, en, t in snap.forces:  # and e's come from the snapshot
            rows = np.arange(self.n_envs) if en is None else np.asarray(en)
            sel = np.isin(rows, e)
            if sel.any():
                forces.append((i, None if f is None else f[sel], last - snap.step + self._step, rows[sel],
                               None if t is None else t[sel]))
        self._forces = forces
        for i, (idx, pos) in snap.targets.items():
            cur = self._targets.get(i, (idx, pos))[1].copy()
            cur[e] = pos[e]
            self._targets[i] = (idx, cur)
        for i in set(self._held) | set(snap.held):
            mask, q = self._held.get(i, (np.zeros(self.n_envs, bool), None))
            smask, sq = snap.held.get(i, (np.zeros(self.n_envs, bool), None))
            mask = mask.copy()
            mask[e] = smask[e]
            q = (sq if q is None else q).copy() if (q is not None or sq is not None) else None
            if sq is not None and q is not None:
                q[e] = sq[e]
            self._held[i] = (mask, q)
        for i in set(self._parked) | set(snap.parked):
            mask = self._parked.get(i, np.zeros(self.n_envs, bool)).copy()
            mask[e] = snap.parked.get(i, np.zeros(self.n_envs, bool))[e]
            self._parked[i] = mask
        for i, m in snap.mass.items():
            if (m[e] != self._mass[i][e]).any():
                self.entities[i].set_mass(torch.as_tensor(m[e], dtype=torch.float32), envs_idx=torch.as_tensor(e))
                self._mass[i][e] = m[e]
        if snap.gravity is not None and (snap.gravity[e] != self._gravity[e]).any():
            self.set_gravity(snap.gravity[e], e)
        for cam, pose in snap.camera_poses.items():
            if any((a[e] != b[e]).any() for a, b in zip(pose, self._camera_poses[cam])):
                self.set_camera_pose(cam, *(v[e] for v in pose), envs=e)

    # ---------------------------------------------------------------- cameras
    def render_reference(self, camera: str) -> ReferenceFrame:
        if camera not in self.cameras:
            raise PhysicsError(f"no reference camera '{camera}'; cameras are {list(self.cameras)}")
        rgb, depth, seg, _ = self.cameras[camera].render(rgb=True, depth=True, segmentation=True)
        B = self.n_envs
        rgb = np.asarray(rgb).reshape(B, *np.shape(rgb)[-3:])
        depth = np.asarray(depth, dtype=np.float32).reshape(B, *np.shape(depth)[-2:])
        seg = np.asarray(seg).reshape(B, *np.shape(seg)[-2:]).astype(np.int64)
        body = self._seg_lut()[np.clip(seg, 0, None)]
        return ReferenceFrame(rgb=rgb.astype(np.uint8), depth=depth, body=body.astype(np.int32))

    def _seg_lut(self) -> np.ndarray:
        """Segmentation colour index -> body slot. Genesis numbers (entity, link) keys in the order
        it first draws them, so the table is read from its visualiser each time."""
        idxc_map = self.scene.visualizer.context.seg_idxc_map
        lut = np.full(max(idxc_map) + 1, -1, dtype=np.int32)
        for idxc, key in idxc_map.items():
            if isinstance(key, tuple):
                lut[idxc] = self._slot_of_link.get(int(key[1]), -1)
        return lut

    def camera_matrices(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """(viewmat [4,4] world->camera OpenCV, K [3,3]) as Genesis reports them."""
        cam = self.cameras[camera]
        return np.asarray(cam.extrinsics, dtype=np.float64), np.asarray(cam.intrinsics, dtype=np.float64)


def _env_rows(spec: WorldSpec, env_specs: list[WorldSpec] | None, n_envs: int) -> list[list[BodySpec]]:
    """Body i -> its BodySpec in every environment."""
    envs = env_specs if env_specs is not None else [spec] * n_envs
    return [[e.bodies[i] for e in envs] for i in range(len(spec.bodies))]


def _check_env_specs(spec: WorldSpec, env_specs: list[WorldSpec], n_envs: int) -> None:
    if len(env_specs) != n_envs:
        raise PhysicsError(f"env_specs has {len(env_specs)} entries for n_envs={n_envs}; give one per environment")
    shape = [(b.name, b.kind) for b in spec.bodies]
    for k, e in enumerate(env_specs):
        if [(b.name, b.kind) for b in e.bodies] != shape or len(e.cameras) != len(spec.cameras):
            raise PhysicsError(f"env_specs[{k}] has other bodies or cameras than the built spec; per-environment "
                               "specs may differ in values only")


def _link_visual(slot: int, vg, b: BodySpec) -> LinkVisual:
    from scipy.spatial.transform import Rotation

    verts = np.asarray(vg.vmesh.verts, dtype=np.float64)
    q = np.asarray(vg.init_quat, dtype=np.float64)  # wxyz, geom in link frame
    rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
    verts = verts @ rot.T + np.asarray(vg.init_pos, dtype=np.float64)
    color, texture = tuple(b.color) if b.color is not None else DEFAULT_COLOR, None
    tex = getattr(vg.vmesh.surface, "diffuse_texture", None)
    if tex is not None and getattr(tex, "image_array", None) is not None:
        texture = np.asarray(tex.image_array)[..., :3]
        if texture.dtype != np.uint8:
            texture = (np.clip(texture, 0, 1) * 255).astype(np.uint8) if texture.max() <= 1.0 else texture.astype(np.uint8)
    elif tex is not None and getattr(tex, "color", None) is not None:
        color = tuple(float(c) for c in np.asarray(tex.color).reshape(-1)[:3])
    uvs = vg.vmesh.uvs
    return LinkVisual(
        body=slot,
        vertices=verts.astype(np.float32),
        faces=np.asarray(vg.vmesh.faces, dtype=np.int64),
        color=color,
        uvs=None if uvs is None else np.asarray(uvs, dtype=np.float32),
        texture=texture,
    )
