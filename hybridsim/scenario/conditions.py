"""Event conditions at run time: condition trees compiled into nodes evaluated per environment.

`compile_condition` turns the conditions of B environments (same structure, own values) into one
node; `update(ctx)` sets its [B] bool `value` from the PhysicsState before each physics step.
Leaves: `contact`, `speed`, `height`, `distance`, `at_rest`, `in_region`, `visible`, `time`;
groups: `all`, `any`. Semantics: see `hybridsim.scenario.events`. `EventEngine` (events.py) owns the
nodes; this module only reads the engine's world, cameras, dt, B and per-step bookkeeping (`Engine`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.parts import LEAVES, Condition


class Engine(Protocol):
    """What the nodes read of the `EventEngine` (events.py) that owns them."""

    world: Any  # physics.World
    cameras: dict
    dt: float
    B: int
    stateful: list  # leaves with counters, saved with the engine
    prev_vel: Any  # [B, K, 3] velocities after the previous step's actions, or None
    origin: Any  # [B] physics step at which each env's episode started

    def slot_mass(self) -> Any: ...


class Context:
    """What conditions see before physics step `step`: the state after the previous step."""

    def __init__(self, engine: Engine, step: int, state):
        self.engine, self.step, self.state = engine, step, state
        self.t = step * engine.dt
        self.t_env = (step - engine.origin) * engine.dt  # [B] each env's own time (reset_envs)

    def state_now(self):
        if self.state is None:
            self.state = self.engine.world.state(contacts=False)
        return self.state

    def momentum_change(self):
        """[B, K] m |dv - g dt| over the last step for slots that are one free body (else 0)."""
        import torch

        eng = self.engine
        if eng.prev_vel is None:
            return None
        g = torch.as_tensor(eng.world.gravity, dtype=torch.float64)[:, None]  # [B, 1, 3]
        dv = (self.state.body_lin_vel.double() - eng.prev_vel) - g * eng.dt
        return eng.slot_mass() * dv.norm(dim=-1)


def compile_condition(conds: list[Condition], engine: Engine) -> "_Node":
    """One node for all environments; conds[b] is env b's condition (same structure, own values)."""
    kinds = [next(k for k in (*LEAVES, "all", "any") if getattr(c, k) not in (None, [])) for c in conds]
    if len(set(kinds)) != 1:
        raise SpecError("episodes", f"environments have different conditions {sorted(set(kinds))}; batch episodes "
                                    "with equal sampling.layout_key only")
    kind = kinds[0]
    if kind in ("all", "any"):
        n = len(getattr(conds[0], kind))
        if any(len(getattr(c, kind)) != n for c in conds):
            raise SpecError("episodes", "environments have different condition trees")
        children = [compile_condition([getattr(c, kind)[j] for c in conds], engine) for j in range(n)]
        return _Group(kind, children)
    leaves = [getattr(c, kind) for c in conds]
    node = {"contact": _Contact, "at_rest": _AtRest, "in_region": _Region, "visible": _Visible}.get(kind, _Scalar)
    out = node(kind, leaves, engine)
    if isinstance(out, _AtRest):
        engine.stateful.append(out)
    return out


class _Node:
    needs_contacts = False
    value: np.ndarray  # [B] bool, set by update()

    def update(self, ctx: Context) -> None:
        raise NotImplementedError

    def describe(self, b: int, rec: dict) -> None:
        """Add what this node saw in env b (entities, contact, measured value) to an event record."""


class _Group(_Node):
    def __init__(self, kind: str, children: list[_Node]):
        self.kind, self.children = kind, children
        self.needs_contacts = any(c.needs_contacts for c in children)

    def update(self, ctx):
        for c in self.children:
            c.update(ctx)
        vals = np.stack([c.value for c in self.children])
        self.value = vals.all(0) if self.kind == "all" else vals.any(0)

    def describe(self, b, rec):
        for c in self.children:
            if c.value[b]:
                c.describe(b, rec)


def _slots(engine: Engine, names: list[str]):
    import torch

    return torch.as_tensor([engine.world.body_slot(n) for n in names])


def _add(rec: dict, *names: str) -> None:
    rec["entities"] += [n for n in names if n not in rec["entities"]]


class _Scalar(_Node):
    """speed / height / distance / time against `above` or `below`."""

    def __init__(self, kind: str, leaves: list, engine: Engine):
        self.kind, self.engine = kind, engine
        self.above = leaves[0].above is not None
        self.threshold = np.array([x.above if self.above else x.below for x in leaves], dtype=np.float64)
        if kind == "distance":
            self.names = [(x.a, x.b) for x in leaves]
            self.sa, self.sb = _slots(engine, [x.a for x in leaves]), _slots(engine, [x.b for x in leaves])
        elif kind != "time":
            self.names = [(x.entity,) for x in leaves]
            self.sa = _slots(engine, [x.entity for x in leaves])

    def update(self, ctx):
        import torch

        B = self.engine.B
        if self.kind == "time":
            v = np.asarray(ctx.t_env, dtype=np.float64).reshape(B)
        else:
            st, ar = ctx.state, torch.arange(B)
            if self.kind == "speed":
                v = st.body_lin_vel[ar, self.sa].norm(dim=-1)
            elif self.kind == "height":
                v = st.body_pos[ar, self.sa, 2]
            else:
                v = (st.body_pos[ar, self.sa] - st.body_pos[ar, self.sb]).norm(dim=-1)
            v = v.double().numpy()
        self.measured = v
        self.value = v > self.threshold if self.above else v < self.threshold

    def describe(self, b, rec):
        if self.kind != "time":
            _add(rec, *self.names[b])
        rec.setdefault("values", {})[self.kind] = float(self.measured[b])


class _AtRest(_Node):
    def __init__(self, kind: str, leaves: list, engine: Engine):
        self.engine, self.names = engine, [x.entity for x in leaves]
        self.slot = _slots(engine, self.names)
        self.steps = np.array([max(1, int(round(x.for_ / engine.dt))) for x in leaves])
        self.speed = np.array([x.speed for x in leaves], dtype=np.float64)
        self.counter = np.zeros(engine.B, np.int64)

    def update(self, ctx):
        import torch

        ar = torch.arange(self.engine.B)
        v = ctx.state.body_lin_vel[ar, self.slot].norm(dim=-1).double().numpy()
        w = ctx.state.body_ang_vel[ar, self.slot].norm(dim=-1).double().numpy()
        rest = (v < self.speed) & (w < 10 * self.speed)
        self.counter = np.where(rest, self.counter + 1, 0)
        self.value = self.counter >= self.steps

    def describe(self, b, rec):
        _add(rec, self.names[b])

    def save(self):
        return self.counter.copy()

    def restore(self, counter):
        self.counter = counter.copy()


class _Region(_Node):
    def __init__(self, kind: str, leaves: list, engine: Engine):
        self.engine, self.names = engine, [x.entity for x in leaves]
        self.slot = _slots(engine, self.names)
        self.lo = np.array([x.min for x in leaves], dtype=np.float64)
        self.hi = np.array([x.max for x in leaves], dtype=np.float64)

    def update(self, ctx):
        import torch

        p = ctx.state.body_pos[torch.arange(self.engine.B), self.slot].double().numpy()
        self.value = ((p >= self.lo) & (p <= self.hi)).all(axis=1)

    def describe(self, b, rec):
        _add(rec, self.names[b])


class _Visible(_Node):
    def __init__(self, kind: str, leaves: list, engine: Engine):
        self.engine, self.names = engine, [x.entity for x in leaves]
        self.slot = _slots(engine, self.names)
        self.camera = [x.camera for x in leaves]

    def update(self, ctx):
        import torch

        p = ctx.state.body_pos[torch.arange(self.engine.B), self.slot].double().numpy()
        cams = self.engine.cameras
        self.value = np.array([project_visible(p[b:b + 1], cams[c].viewmat[b], cams[c].K[b], cams[c].width,
                                               cams[c].height)[0] for b, c in enumerate(self.camera)])

    def describe(self, b, rec):
        _add(rec, self.names[b])


class _Contact(_Node):
    needs_contacts = True

    def __init__(self, kind: str, leaves: list, engine: Engine):
        import torch

        world, B = engine.world, engine.B
        K = len(world.bodies)
        self.engine, self.K = engine, K
        self.mask_a = torch.zeros(B, K + 1, dtype=torch.bool)  # column K: padding (no body)
        self.mask_b = torch.zeros(B, K + 1, dtype=torch.bool)
        for b, x in enumerate(leaves):
            self.mask_a[b, self._slots(x.a)] = True
            if x.b is None:
                self.mask_b[b, :K] = ~self.mask_a[b, :K]
            else:
                self.mask_b[b, self._slots(x.b)] = True
        self.min_impulse = np.array([x.min_impulse for x in leaves], dtype=np.float64)
        self.names_a = [x.a for x in leaves]

    def _slots(self, name: str) -> list[int]:
        """All links of an entity, or of every copy of a template."""
        world = self.engine.world
        copies = [b.name for b in world.spec.bodies if b.parked and b.name.rsplit("_", 1)[0] == name]
        return [k for n in copies or [name] for k in world.entity_slots(n)]

    def update(self, ctx):
        import torch

        c, B, K = ctx.state.contacts, self.engine.B, self.K
        if c is None or c.body_a.shape[1] == 0:
            self.value = np.zeros(B, bool)
            return
        ba = torch.where(c.valid, c.body_a, K)
        bb = torch.where(c.valid, c.body_b, K)
        fwd = self.mask_a.gather(1, ba) & self.mask_b.gather(1, bb)  # [B, M]: the contact's body a is in `a`
        rev = self.mask_b.gather(1, ba) & self.mask_a.gather(1, bb) & ~fwd
        pair = fwd | rev
        force = c.force.double()  # [B, M, 3] on the contact's body a
        f = force.norm(dim=-1) * c.valid  # [B, M]
        impulse = self._impulse(ctx, ba, bb, fwd, pair, force, f)
        w = f * pair
        n = pair.sum(1).clamp(min=1)
        weights = torch.where(w.sum(1, keepdim=True) > 0, w / w.sum(1, keepdim=True).clamp(min=1e-30),
                              pair.double() / n[:, None])
        point = (c.position.double() * weights[..., None]).sum(1)
        ar = torch.arange(B)
        strongest = torch.where(pair, w + 1e-30, torch.zeros_like(w)).argmax(1)
        other = torch.where(fwd[ar, strongest], bb[ar, strongest], ba[ar, strongest])
        self.impulse, self.point, self.other = impulse, point.numpy(), other.numpy()
        self.value = pair.any(1).numpy() & (self.impulse >= self.min_impulse)

    def _impulse(self, ctx, ba, bb, fwd, pair, force, f) -> np.ndarray:
        """[B] N*s the pair exchanged over the last step.

        Genesis reports the contact force of the last substep only, so |F| dt misjudges impacts.
        Where a side of the pair is one free body, the momentum change its contacts explain is used
        instead: m |dv - g dt|, shared among its contacts by force. Otherwise |sum F| dt."""
        import torch

        B, K, dt = self.engine.B, self.K, self.engine.dt
        sign = fwd.double() - (pair & ~fwd).double()
        fallback = (force * sign[..., None]).sum(1).norm(dim=-1) * dt
        dp = ctx.momentum_change()  # [B, K] or None; 0 where a slot is not one free body
        if dp is None:
            return fallback.numpy()
        zeros = torch.zeros(B, K + 1, dtype=torch.float64)
        total = zeros.scatter_add(1, ba, f).scatter_add(1, bb, f)[:, :K]
        side_a = torch.where(fwd, ba, bb)
        side_b = torch.where(fwd, bb, ba)
        out = fallback.clone()
        for side in (side_b, side_a):  # side a wins where both sides are free bodies
            share = zeros.scatter_add(1, side, f * pair)[:, :K]
            free = (dp > 0) & (share > 0)
            est = (dp * share / total.clamp(min=1e-30) * free).sum(1)
            out = torch.where(free.any(1), est, out)
        return out.numpy()

    def describe(self, b, rec):
        world = self.engine.world
        other = world.bodies[int(self.other[b])].entity if int(self.other[b]) < self.K else None
        a = self.names_a[b]
        if a not in world.entity_names:  # a template: name the copy that touched
            a = next((world.bodies[k].entity for k in range(self.K) if bool(self.mask_a[b, k]) and
                      world.bodies[k].entity != other), a)
        _add(rec, a, *([other] if other else []))
        if rec["contact_point"] is None:
            rec["contact_point"] = [float(v) for v in self.point[b]]
            rec["impulse"] = float(self.impulse[b])


def project_visible(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """points [n, 3] world -> [n] bool: in front of the camera (z > 1 cm) and inside the image."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = cam @ np.asarray(K).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uv[:, 0] / z, uv[:, 1] / z
    return (z > 0.01) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
