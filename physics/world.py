"""A batched Genesis rigid-body world built from a `WorldSpec`.

One `World` = one Genesis scene with `n_envs` parallel environments (B >= 1 always, so tensor ranks
never depend on batching). Bodies are addressed two ways: by entity name (actions, events) and by
body slot k, one per Genesis link across all entities in spec order (state read-out, rendering).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

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
    sim_state: object  # genesis SimState
    forces: list
    targets: dict


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


class World:
    """Genesis scene + bookkeeping. Construct, then `step()`; read `state()`."""

    def __init__(self, spec: WorldSpec, n_envs: int = 1, pos_offsets: dict[str, np.ndarray] | None = None):
        """pos_offsets: entity name -> [B, 3] added to that free body's initial position per env."""
        if n_envs < 1:
            raise PhysicsError(f"n_envs must be >= 1, got {n_envs}")
        init_genesis()
        import genesis as gs

        self.spec, self.n_envs = spec, n_envs
        self._gs = gs
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=spec.dt, substeps=spec.substeps, gravity=spec.gravity),
            rigid_options=gs.options.RigidOptions(enable_self_collision=False),
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
        self._step = 0
        self._apply_initial_conditions(pos_offsets or {})

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

    def _apply_initial_conditions(self, offsets: dict[str, np.ndarray]) -> None:
        for name, off in offsets.items():
            b = self.spec.bodies[self.entity_index(name)]
            pos = np.asarray(b.pos, dtype=np.float64)[None] + np.asarray(off, dtype=np.float64).reshape(self.n_envs, 3)
            self.set_pose(name, pos, np.tile(b.quat, (self.n_envs, 1)))
        for i, (b, ent) in enumerate(zip(self.spec.bodies, self.entities)):
            if b.kind in ("urdf", "mjcf"):
                self._setup_robot(i, b, ent)
            elif not b.fixed and b.kind != "plane":
                if b.mass is not None:
                    ent.set_mass(b.mass)
                if any(b.lin_vel) or any(b.ang_vel):
                    B = self.n_envs
                    self.set_velocity(b.name, np.tile(b.lin_vel, (B, 1)), np.tile(b.ang_vel, (B, 1)))
            if b.restitution > 0 and b.kind != "plane":
                sol = np.array(self._gs.utils.geom.default_solver_params(), dtype=np.float64)
                sol[1] = restitution_to_dampratio(b.restitution)
                for geom in ent.geoms:
                    geom.set_sol_params(sol)

    def _setup_robot(self, i: int, b: BodySpec, ent) -> None:
        dofs = [d for j in ent.joints if j.n_dofs == 1 for d in np.atleast_1d(j.dofs_idx_local)]
        if not dofs:
            return
        ent.set_dofs_kp(np.full(len(dofs), 4000.0), dofs)
        ent.set_dofs_kv(np.full(len(dofs), 400.0), dofs)
        if b.joints:
            idx, val = self._joint_dofs(i, b.joints)
            pos = np.tile(val, (self.n_envs, 1))
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

    def body_slot(self, name: str) -> int:
        """Slot k of an entity's base link in PhysicsState tensors."""
        return self._entity_slots[self.entity_index(name)].start

    def _free(self, name: str):
        i = self.entity_index(name)
        b = self.spec.bodies[i]
        if b.fixed or b.kind in ("plane", "urdf", "mjcf"):
            raise PhysicsError(f"entity '{name}' is not a free rigid body (kind {b.kind}, fixed={b.fixed})")
        return i, self.entities[i]

    def set_pose(self, name: str, pos: np.ndarray, quat: np.ndarray) -> None:
        """pos [B, 3], quat [B, 4] wxyz; zeroes the velocity like a teleport."""
        _, ent = self._free(name)
        ent.set_pos(torch.as_tensor(pos, dtype=torch.float32))
        ent.set_quat(torch.as_tensor(quat, dtype=torch.float32))

    def set_velocity(self, name: str, lin_vel: np.ndarray, ang_vel: np.ndarray) -> None:
        """lin_vel [B, 3] m/s and ang_vel [B, 3] rad/s, both world frame."""
        _, ent = self._free(name)
        quat = ent.get_quat().reshape(self.n_envs, 4).cpu().numpy()
        # Genesis' free joint, like MuJoCo's, keeps angular velocity in the body frame.
        ang_local = _quat_rotate_inv(quat, np.asarray(ang_vel, dtype=np.float64))
        vel = np.concatenate([np.asarray(lin_vel, dtype=np.float64), ang_local], axis=1)
        ent.set_dofs_velocity(torch.as_tensor(vel, dtype=torch.float32))

    def apply_impulse(self, name: str, impulse: np.ndarray) -> None:
        """impulse [B, 3] N*s through the centre of mass: an instant velocity change J / m."""
        i, ent = self._free(name)
        mass = float(ent.get_mass())
        state = self.state(contacts=False)
        k = self._entity_slots[i].start
        lin = state.body_lin_vel[:, k].cpu().numpy() + np.asarray(impulse) / mass
        self.set_velocity(name, lin, state.body_ang_vel[:, k].cpu().numpy())

    def apply_force(self, name: str, force: np.ndarray, steps: int) -> None:
        """force [B, 3] newtons at the centre of mass, for the next `steps` physics steps."""
        i, _ = self._free(name)
        self._forces.append((i, np.asarray(force, dtype=np.float64), self._step + steps))

    def set_joint_targets(self, name: str, targets: dict[str, float]) -> None:
        i = self.entity_index(name)
        if self.spec.bodies[i].kind not in ("urdf", "mjcf"):
            raise PhysicsError(f"entity '{name}' is not a robot; joint targets need a urdf or mjcf entity")
        idx, val = self._joint_dofs(i, targets)
        self._targets[i] = (idx, np.tile(val, (self.n_envs, 1)))

    # ------------------------------------------------------------------ step
    def step(self) -> None:
        for i, (idx, pos) in self._targets.items():
            self.entities[i].control_dofs_position(torch.as_tensor(pos, dtype=torch.float32), idx)
        self._forces = [f for f in self._forces if f[2] > self._step]
        for i, force, _ in self._forces:
            links = [0]
            self.entities[i].apply_links_external_wrench(
                force=torch.as_tensor(force, dtype=torch.float32).reshape(self.n_envs, 1, 3),
                links_idx_local=links,
                ref=self._gs.link_ref_frame.link_COM,
            )
        self.scene.step(update_visualizer=False)
        self._step += 1
        self._check_blowup()

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
            contacts=self._contacts() if contacts else None,
        )

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
        return Snapshot(self._step, self.scene.get_state(), list(self._forces), dict(self._targets))

    def restore(self, snap: Snapshot) -> None:
        self.scene.reset(snap.sim_state)
        self._step = snap.step
        self._forces = list(snap.forces)
        self._targets = dict(snap.targets)

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


def _quat_rotate_inv(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate v [B,3] by the inverse of q [B,4] wxyz."""
    w, xyz = q[:, :1], -q[:, 1:]
    t = 2.0 * np.cross(xyz, v)
    return v + w * t + np.cross(xyz, t)


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
