"""Reward and termination of an interactive episode: from the scenario, simple terms, or callables.

From the scenario: `terminate: at_rest` ends an episode (terminated); its time limit
(`timing.duration`, cut by `terminate.time_limit`) truncates it. `Task` adds simple terms:
a reward per firing of named events, a bonus at the end when every `require` holds, a penalty
on the distance between two bodies, events that terminate. A callable `reward(ctx)` /
`terminate(ctx)` (ctx: `StepContext`) returning a number or [B] values replaces or adds to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hybridsim.interactive.errors import InteractiveError


@dataclass
class StepContext:
    """What a reward / termination callable sees after a step (all envs of the batch)."""

    frame: object  # pipeline.Frame: state (physics.PhysicsState, [B, ...]), events (records with "env")
    actions: np.ndarray | None  # [B, A] as applied (None at reset)
    session: object  # session.Session: .sim (world, engine), .layout (action names)

    def events_of(self, b: int) -> list[dict]:
        return [r for r in self.frame.events if r.get("env", 0) == b]


@dataclass
class Task:
    """Simple reward / termination terms (all optional; the default rewards 0 and never terminates
    early)."""

    events: dict[str, float] = field(default_factory=dict)  # event name -> reward per firing
    require: float = 0.0  # at an episode's end: +require if every scenario `require` holds, else -require
    distance: list[tuple[str, str, float]] = field(default_factory=list)  # (a, b, w): -w * |a - b| per step
    terminate_on: list[str] = field(default_factory=list)  # events whose firing terminates the episode
    reward: Callable[[StepContext], float | np.ndarray] | None = None  # added to the terms
    terminate: Callable[[StepContext], bool | np.ndarray] | None = None  # or-ed with the scenario's

    @classmethod
    def of(cls, value) -> "Task":
        """None, a Task, a mapping of Task fields, or a reward callable."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if callable(value):
            return cls(reward=value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise InteractiveError(f"task has unknown keys {unknown}; keys are {sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        raise InteractiveError(f"task={type(value).__name__} must be None, a Task, a mapping or a reward callable")

    def check(self, session) -> None:
        """Names refer to the scenario's events and bodies (an error names the bad one)."""
        names = list(session.sim.engine.names)
        for n in [*self.events, *self.terminate_on]:
            if n not in names:
                raise InteractiveError(f"task names event {n!r}; the scenario's events are {names}")
        for a, b, _ in self.distance:
            _slot(session.sim.world, a), _slot(session.sim.world, b)

    def evaluate(self, ctx: StepContext, ending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (reward [B] float64, terminated [B] bool) beyond the scenario's own termination.
        `ending` [B]: envs whose episode ends with this step (the `require` bonus is paid then)."""
        sess = ctx.session
        n = sess.n_envs
        reward = np.zeros(n)
        term = np.zeros(n, dtype=bool)
        for r in ctx.frame.events:
            b = r.get("env", 0)
            reward[b] += self.events.get(r["event"], 0.0)
            term[b] |= r["event"] in self.terminate_on
        if self.distance:
            pos = ctx.frame.state.body_pos.double().numpy()  # [B, K, 3]
            for a, b, w in self.distance:
                d = pos[:, _slot(sess.sim.world, a)] - pos[:, _slot(sess.sim.world, b)]
                reward -= w * np.linalg.norm(d, axis=-1)
        if self.require and ending.any():
            status = sess.sim.require_status()
            for b in np.nonzero(ending)[0]:
                reward[b] += self.require if status[b] is None else -self.require
        if self.reward is not None:
            reward += _per_env(self.reward(ctx), n, "reward")
        if self.terminate is not None:
            term |= _per_env(self.terminate(ctx), n, "terminate").astype(bool)
        return reward, term


def _per_env(value, n: int, what: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(n, float(v))
    if v.shape != (n,):
        raise InteractiveError(f"the {what} callable returned shape {v.shape}; return a number or [{n}] values")
    return v


def _slot(world, name: str) -> int:
    """Body slot of "entity" (its base link) or "entity/link" (a robot's link, e.g. franka/hand)."""
    entity, _, link = name.partition("/")
    if entity not in world.entity_names:
        raise InteractiveError(f"task names body {name!r}; entities are {world.entity_names}")
    if not link:
        return world.body_slot(entity)
    for k in world.entity_slots(entity):
        if world.bodies[k].link == link:
            return k
    links = [world.bodies[k].link for k in world.entity_slots(entity)]
    raise InteractiveError(f"task names link {link!r} of '{entity}'; its links are {links}")
