"""The rare-event language at run time: triggers, actions, event records, require and terminate.

Semantics (docs/scenarios.md has the user-facing version):
- Triggers are evaluated per environment before every physics step k, on the state after step
  k-1 (time t = k * dt, contacts of step k-1), in declaration order except that an event always
  comes after the event its `after` names. Actions of an event firing at step k act before
  physics step k, so the event is reported on frame `k // steps_per_frame + 1` (events at t = 0
  on frame 1).
- `at: t` fires once, at step round(t / dt). `after: {event, delay}` fires `delay` after each
  firing of `event` (one pending firing at a time; delay 0 = the same step). `when: <condition>`
  fires on each rising edge of the condition (false -> true; true already at t = 0 counts), so an
  event fires exactly at the first step its condition holds.
- `once: true` (default) = at most one firing; `max_count: n` = at most n (wins over once).
- Conditions read PhysicsState tensors, vectorised over environments: `contact` (the impulse of a
  pair over one step = |sum of contact forces| * dt; contact point = force-weighted mean),
  `speed` / `height` / `distance` (body origins), `at_rest` (|v| < speed and |w| < 10 speed for
  `for` seconds), `in_region`, `time`, `visible` (origin projects inside the image, in front).
- An environment stops firing events once it is done (terminated); it keeps stepping with the
  batch, but its frames after `end_frame` are not part of its episode.
- Each environment has its own clock: `reset_envs` restarts chosen environments' episodes (their
  triggers, counters and time) at the batch's current step while the others go on; step, t and
  frame in records, `at` times and `time` conditions are all counted from the env's own start.
Records (one dict per firing, JSON-ready) are the ground-truth event labels (`events.jsonl`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from hybridsim.scenario.conditions import Context, compile_condition, project_visible
from hybridsim.scenario.parts import Action, event_actions, event_name
from hybridsim.scenario.spec import Scenario


def order_events(s: Scenario) -> list[int]:
    """Declaration order, except that an event comes after the one its `after` names."""
    names = {event_name(ev, i): i for i, ev in enumerate(s.events)}
    done: list[int] = []

    def visit(i: int) -> None:
        if i in done:
            return
        ev = s.events[i]
        if ev.after is not None:
            visit(names[ev.after.event])
        done.append(i)

    for i in range(len(s.events)):
        visit(i)
    return done


def write_events_jsonl(path: str | Path, records: list[dict]) -> None:
    """One JSON object per line, in firing order."""
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# ============================================================================ run time
class EventEngine:
    """Triggers, actions and bookkeeping for B environments, env b running episodes[b].

    `episodes` are concrete scenarios with the same event structure (sampling.layout_key).
    `apply_action(world, actions, envs, dt, cameras, spawn_next)` carries an action out on the world
    (the frame loop hands in `hybridsim.bridge.apply_action`, which knows the physics stage)."""

    def __init__(self, episodes: list[Scenario], world, cameras: dict, steps_per_frame: int, apply_action):
        self.world, self.cameras, self.spf = world, cameras, steps_per_frame
        self.apply_action = apply_action
        self.B, base = len(episodes), episodes[0]
        self.dt = base.timing.dt
        self.names = [event_name(ev, i) for i, ev in enumerate(base.events)]
        self.order = order_events(base)
        self.stateful: list = []  # condition leaves with counters (saved with the engine)
        self.events = [self._compile(i, [ep.events[i] for ep in episodes]) for i in range(len(base.events))]
        self.requires = [[ep.require[j] for ep in episodes] for j in range(len(base.require))]
        self._visible_needed = self._visibility_requests()
        self._compile_terminate(episodes)
        self.spawn_next = {t.name: np.zeros(self.B, dtype=np.int64) for t in base.templates}
        self.active = np.ones(self.B, dtype=bool)  # envs still in their episode (set by the Simulation)
        self.log: list[dict] = []
        self.first: dict[tuple[int, int], dict] = {}  # (event, env) -> record of its first firing
        self.need_contacts = any(e.cond is not None and e.cond.needs_contacts for e in self.events)
        self.need_state = any(e.cond is not None for e in self.events) or self.rest_steps is not None
        self.prev_vel = None  # [B, K, 3] velocities after the previous step's actions (contact impulses)
        self.origin = np.zeros(self.B, np.int64)  # physics step at which each env's episode started
        self._single = [(i, world.body_slot(b.name)) for i, b in enumerate(world.spec.bodies)
                        if len(world.entity_slots(b.name)) == 1 and not (b.fixed or b.kind in ("plane", "urdf", "mjcf"))]
        self._initial = self.save()  # what reset_envs restores rows from

    def slot_mass(self):
        """[B, K] kg of the slots that are one free body, 0 elsewhere."""
        import torch

        m = torch.zeros(self.B, len(self.world.bodies), dtype=torch.float64)
        for i, k in self._single:
            m[:, k] = torch.as_tensor(self.world.mass(self.world.spec.bodies[i].name))
        return m

    # ------------------------------------------------------------ compile
    def _compile(self, i: int, evs: list) -> "_Event":
        ev = evs[0]
        e = _Event(i, self.names[i], "at" if ev.at is not None else "after" if ev.after is not None else "when")
        B = self.B
        e.limit = np.array([x.max_count if x.max_count is not None else (1 if x.once else 1 << 62) for x in evs])
        e.count, e.prev, e.due = np.zeros(B, np.int64), np.zeros(B, bool), np.full(B, -1, np.int64)
        if e.trigger == "at":
            e.at_step = np.array([int(round(x.at / self.dt)) for x in evs])
        elif e.trigger == "after":
            e.source = self.names.index(ev.after.event)
            e.delay = np.array([int(round(x.after.delay / self.dt)) for x in evs])
        else:
            e.cond = compile_condition([x.when for x in evs], self)
        per_env = [event_actions(x) for x in evs]
        e.actions = [[acts[j] for acts in per_env] for j in range(len(per_env[0]))]
        return e

    def _visibility_requests(self) -> dict[int, set]:
        out: dict[int, set] = {}
        for reqs in self.requires:
            i = self.names.index(reqs[0].event)
            out.setdefault(i, set()).update(n for r in reqs for n in r.visible)
        return out

    def _compile_terminate(self, episodes: list[Scenario]) -> None:
        ts = [ep.terminate for ep in episodes]
        t0 = ts[0]
        self.rest_steps = self.rest_speed = self.rest_after = None
        if t0 is not None and t0.at_rest is not None:
            self.rest_steps = np.array([max(1, int(round(t.at_rest / self.dt))) for t in ts])
            self.rest_speed = np.array([t.rest_speed for t in ts])
            self.rest_after = self.names.index(t0.after) if t0.after is not None else None
        self.rest_count = np.zeros(self.B, np.int64)
        self.rested = np.zeros(self.B, bool)  # at-rest termination reached (sticky until restore)

    # ------------------------------------------------------------ stepping
    def before_step(self) -> list[dict]:
        """Evaluate triggers on the current state and fire; call before every physics step."""
        k = self.world.step_count
        ctx = Context(self, k, self.world.state(contacts=self.need_contacts) if self.need_state else None)
        for e in self.events:
            if e.cond is not None:
                e.cond.update(ctx)  # every step, so at_rest counters stay current
        records: list[dict] = []
        for i in self.order:
            e = self.events[i]
            if e.trigger == "at":
                fire = (e.count == 0) & (k - self.origin >= e.at_step)
            elif e.trigger == "after":
                fire = (e.due >= 0) & (k >= e.due)
            else:
                holds = e.cond.value
                fire, e.prev = holds & ~e.prev, holds
            fire &= self.active & (e.count < e.limit)
            if e.trigger == "after":
                e.due[fire] = -1
            if fire.any():
                records += self._fire(e, np.nonzero(fire)[0], ctx)
        self._update_rest(ctx)
        if self.need_contacts:  # velocities the next step starts from, actions included
            st = self.world.state(contacts=False) if records else ctx.state
            self.prev_vel = st.body_lin_vel.double().clone()
        return records

    def _fire(self, e: "_Event", envs: np.ndarray, ctx) -> list[dict]:
        e.count[envs] += 1
        for d in self.events:  # schedule the events that follow this one
            if d.trigger == "after" and d.source == e.index:
                new = envs[(d.due[envs] < 0) & (d.count[envs] < d.limit[envs])]
                d.due[new] = ctx.step + d.delay[new]
        records = {int(b): self._record(e, int(b), ctx) for b in envs}
        for acts in e.actions:
            touched = self.apply_action(self.world, acts, envs, self.dt, self.cameras, self.spawn_next)
            for b, names in touched.items():
                rec = records[b]
                rec["entities"] += [n for n in names if n not in rec["entities"]]
                if acts[b].kind == "spawn":
                    rec.setdefault("spawned", []).extend(names)
        for b, rec in records.items():
            rec["visible"] = self._visible(rec["entities"] + sorted(self._visible_needed.get(e.index, ())), b, ctx)
            self.log.append(rec)
            self.first.setdefault((e.index, b), rec)
        return list(records.values())

    def _record(self, e: "_Event", b: int, ctx) -> dict:
        kinds = [acts[b].kind for acts in e.actions]
        step = ctx.step - int(self.origin[b])  # the env's own clock
        rec = {"env": b, "event": e.name, "index": e.index, "trigger": e.trigger, "action": kinds[0] if kinds else None,
               "actions": kinds, "t": round(step * self.dt, 9), "step": step, "frame": step // self.spf + 1,
               "count": int(e.count[b]), "entities": [], "contact_point": None, "impulse": None}
        if e.cond is not None:
            e.cond.describe(b, rec)
        return rec

    def _visible(self, names: list[str], b: int, ctx) -> dict[str, list[str]]:
        names = list(dict.fromkeys(n for n in names if n in self.world.entity_names))
        if not names:
            return {c: [] for c in self.cameras}
        pos = ctx.state_now().body_pos[b, [self.world.body_slot(n) for n in names]].double().numpy()  # [n, 3]
        out = {}
        for cname, cam in self.cameras.items():
            ok = project_visible(pos, cam.viewmat[b], cam.K[b], cam.width, cam.height)
            out[cname] = [n for n, v in zip(names, ok) if v]
        return out

    def _update_rest(self, ctx) -> None:
        if self.rest_steps is None:
            return
        st = ctx.state
        free = np.array([not info.fixed for info in self.world.bodies])
        held = np.zeros((self.B, len(free)), bool)
        for i, b in enumerate(self.world.spec.bodies):
            held[:, self.world.entity_slots(b.name)] = (self.world.held(b.name) | self.world.parked(b.name))[:, None]
        v = st.body_lin_vel.norm(dim=-1).double().numpy()
        w = st.body_ang_vel.norm(dim=-1).double().numpy()
        slow = (v < self.rest_speed[:, None]) & (w < 10 * self.rest_speed[:, None])
        rest = (slow | ~free[None] | held).all(axis=1)
        if self.rest_after is not None:
            rest &= self.events[self.rest_after].count > 0
        self.rest_count = np.where(rest & self.active, self.rest_count + 1, 0)
        self.rested |= self.rest_count >= self.rest_steps

    # ------------------------------------------------------------ outcome
    def require_status(self) -> list[str | None]:
        out: list[str | None] = [None] * self.B
        for reqs in self.requires:
            i = self.names.index(reqs[0].event)
            for b in range(self.B):
                if out[b] is None:
                    out[b] = self._require_one(reqs[b], i, b)
        return out

    def _require_one(self, r, i: int, b: int) -> str | None:
        n = int(self.events[i].count[b])
        if n < r.min_count:
            return f"event '{r.event}' never fired" if n == 0 else \
                f"event '{r.event}' fired {n} times, fewer than {r.min_count}"
        seen = self.first[(i, b)]["visible"]
        cams = [r.camera] if r.camera is not None else list(seen)
        for name in r.visible:
            if not any(name in seen.get(c, []) for c in cams):
                where = f"camera '{r.camera}'" if r.camera is not None else "any camera"
                return f"'{name}' not visible in {where} when '{r.event}' fired"
        return None

    # ------------------------------------------------------------ state
    def save(self) -> dict:
        return copy.deepcopy({
            "events": [(e.count, e.prev, e.due) for e in self.events],
            "leaves": [leaf.save() for leaf in self.stateful],
            "spawn_next": self.spawn_next, "active": self.active, "rest": (self.rest_count, self.rested),
            "prev_vel": self.prev_vel, "origin": self.origin,
            "log": len(self.log), "first": dict(self.first),
        })

    def restore(self, snap: dict) -> None:
        snap = copy.deepcopy(snap)
        for e, (count, prev, due) in zip(self.events, snap["events"]):
            e.count, e.prev, e.due = count, prev, due
        for leaf, s in zip(self.stateful, snap["leaves"]):
            leaf.restore(s)
        self.spawn_next, self.active = snap["spawn_next"], snap["active"]
        self.rest_count, self.rested = snap["rest"]
        self.prev_vel = snap["prev_vel"]
        self.origin = snap.get("origin", np.zeros(self.B, np.int64))
        del self.log[snap["log"]:]
        self.first = snap["first"]

    def reset_envs(self, envs, previous: "EventEngine | None" = None) -> None:
        """Envs `envs` start their episodes over at the world's current step: their triggers,
        counters, rest state and spawn numbering go back to the start and their clocks restart;
        the others go on. `previous`: the engine whose state and log the others carry on (when the
        Simulation built this one for the new episodes' parameters); default self."""
        import torch

        prev = previous if previous is not None else self
        e = np.asarray(envs, dtype=np.int64).reshape(-1)
        cur = prev.save()
        snap = _take_rows(cur, self._initial, e, self.B)
        snap["log"] = len(prev.log)
        snap["first"] = {k: v for k, v in cur["first"].items() if k[1] not in set(e.tolist())}
        snap["origin"] = cur["origin"].copy()
        snap["origin"][e] = self.world.step_count
        if cur["prev_vel"] is not None:  # the new episode's first step measures impulses from its own start
            pv = cur["prev_vel"].clone()
            pv[torch.as_tensor(e)] = self.world.state(contacts=False).body_lin_vel.double()[torch.as_tensor(e)]
            snap["prev_vel"] = pv
        self.log = prev.log
        self.restore(snap)

    def timed_fired(self) -> int:
        """How many timed (`at`) events have fired in env 0 (the v1 `_next_event` counter)."""
        return sum(int(e.count[0] > 0) for e in self.events if e.trigger == "at")

    def set_timed_fired(self, n: int) -> None:
        """Mark the first n timed events (in firing order) fired and the others not, in every env."""
        timed = sorted((e for e in self.events if e.trigger == "at"), key=lambda e: (int(e.at_step[0]), e.index))
        for j, e in enumerate(timed):
            e.count[:] = 1 if j < n else 0


def _take_rows(cur, init, rows: np.ndarray, B: int):
    """`cur` with rows `rows` of every [B, ...] array taken from `init` (same structure)."""
    import torch

    if isinstance(cur, dict):
        return {k: _take_rows(v, init[k], rows, B) for k, v in cur.items()}
    if isinstance(cur, (list, tuple)):
        return type(cur)(_take_rows(a, b, rows, B) for a, b in zip(cur, init))
    if isinstance(cur, np.ndarray) and cur.ndim and cur.shape[0] == B:
        out = cur.copy()
        out[rows] = init[rows]
        return out
    if isinstance(cur, torch.Tensor) and cur.ndim and cur.shape[0] == B and isinstance(init, torch.Tensor):
        out = cur.clone()
        out[torch.as_tensor(rows)] = init[torch.as_tensor(rows)]
        return out
    return cur


class _Event:
    def __init__(self, index: int, name: str, trigger: str):
        self.index, self.name, self.trigger = index, name, trigger
        self.cond = None
        self.source = -1
        self.actions: list[list[Action]] = []
