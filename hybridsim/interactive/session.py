"""An interactive session: a built Simulation, its StreamRefiner and the scenario's controls,
stepped one output frame at a time with an action, every frame refined (StreamRefiner.step).

The Gymnasium environments (env.py, vector.py), the viewer and `hybridsim replay` all drive one.
Its whole state (physics, event engine, cameras, the refiner's KV caches and noise streams, the
unfinished block, seeds) can be saved and restored: a restored session continues bit-identically
to the session it was saved from, so a rollout can branch at any step. A recorder, when attached,
logs every reset / step / save / restore (recording.py) so the session can be replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hybridsim.interactive.controls import apply_controls, control_layout, default_controls
from hybridsim.interactive.errors import InteractiveError

IMAGE_KINDS = ("coarse", "depth", "instance")  # extra image observations, beside the refined frame


@dataclass
class SessionState:
    """Session.save(): everything the next step depends on (treat as opaque)."""

    sim: object  # pipeline.SimulationSnapshot
    refiner: object  # refining.StreamState or None
    root_seed: int
    episode: int
    frame: object  # the current pipeline.Frame
    refined: dict  # camera -> uint8 [B, H, W, 3]: the refined images as they were observed
    ended: np.ndarray  # [B] bool
    steps: int
    tag: str | None = None  # its name in a recording
    env_episode: np.ndarray | None = None  # [B] each env's episode index (autoreset moves them apart)


@dataclass
class StepTimings:
    """Wall time of the last step, seconds: action -> physics -> render -> refined frame."""

    physics_s: float = 0.0
    render_s: float = 0.0
    refine_s: float = 0.0
    total_s: float = 0.0


class Session:
    """One batch of B environments (Genesis' batched envs), refined in one refiner batch."""

    def __init__(self, cfg, base_dir=None, images: tuple[str, ...] = ()):
        from hybridsim.pipeline import Simulation
        from hybridsim.refining import make_refiner

        bad = [k for k in images if k not in IMAGE_KINDS]
        if bad:
            raise InteractiveError(f"images={list(images)}: {bad[0]!r} is not one of {list(IMAGE_KINDS)}")
        if not cfg.render.enabled:
            raise InteractiveError("an interactive session observes the splat render; set render.enabled=true")
        self.cfg, self.base_dir, self.images = cfg, base_dir, tuple(images)
        self.template = cfg.scenario
        self.sim = Simulation(cfg, base_dir=base_dir)
        self.refiner = make_refiner(cfg, self.sim)
        self.layout = control_layout(self.template.actions or default_controls(self.template), self.sim.world)
        self.root_seed, self.episode = int(self.template.seed), int(cfg.episode)
        self.recorder = None
        self.frame = None
        self.refined: dict = {}  # camera -> uint8 [B, H, W, 3] of the current frame, as stepped
        self.ended = np.zeros(self.n_envs, dtype=bool)
        self.env_episode = np.full(self.n_envs, self.episode, dtype=np.int64)  # per env (reset_envs)
        self.steps = 0
        self.last = StepTimings()

    @property
    def n_envs(self) -> int:
        return self.cfg.n_envs

    @property
    def cameras(self) -> list[str]:
        return list(self.sim.cameras)

    # ------------------------------------------------------------ control
    def reset(self, seed: int | None = None):
        """A new episode in every env -> its first Frame (refined). With `seed` the root seed is
        set and the episode index starts at 0; without, the next episode of the current root."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise InteractiveError(f"seed={seed!r} must be an integer >= 0 (or None for the next episode)")
            return self.reset_episode(int(seed), 0)
        return self.reset_episode(self.root_seed, self.episode + (self.frame is not None))

    def reset_episode(self, root_seed: int, episode: int):
        """Start episode `episode` of root seed `root_seed` in every env -> its first Frame. Env b
        runs the scenario sampled with seeding.env_seeds(root_seed, episode, B)[b]."""
        from hybridsim.scenario.sampling import has_distributions, sample_scenario
        from hybridsim.scenario.seeding import env_seeds

        self.root_seed, self.episode = int(root_seed), int(episode)
        if self.recorder is not None:
            self.recorder.log_reset(self.root_seed, self.episode)
        seeds = env_seeds(self.root_seed, self.episode, self.n_envs)
        if has_distributions(self.template):
            self.sim.reset([sample_scenario(self.template, s) for s in seeds])
        else:  # the same episode in every env and every reset: no reload of the world
            self.sim.reset()
        self.sim.seeds = seeds  # the refiner's noise streams derive from them
        t0 = time.perf_counter()
        frame = self.sim.observe()
        if self.refiner is not None:
            self.refiner.seeds = list(seeds)
            self.refiner.reset()
            self.refiner.step(frame)
        self.refined = _frozen(frame)
        self.ended[:] = False
        self.env_episode[:] = self.episode
        self.frame, self.steps = frame, 0
        self.last = StepTimings(total_s=time.perf_counter() - t0)
        if self.recorder is not None:
            self.recorder.after()
        return frame

    def check_action(self, actions) -> np.ndarray:
        """actions [A] or [B, A] (or a mapping of names, see ControlLayout.from_mapping) -> [B, A]
        float32 clipped to the bounds."""
        if isinstance(actions, dict):
            base = self.layout.neutral(self.sim.world, self.n_envs)
            actions = self.layout.from_mapping(actions, base)
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim == 1:
            a = np.broadcast_to(a, (self.n_envs, a.shape[0]))
        if a.shape != (self.n_envs, self.layout.size):
            raise InteractiveError(f"action of shape {np.shape(actions)} does not fit: give [{self.layout.size}] or "
                                   f"[{self.n_envs}, {self.layout.size}] values ({', '.join(self.layout.names[:6])}"
                                   f"{', ...' if self.layout.size > 6 else ''})")
        if not np.isfinite(a).all():
            raise InteractiveError("action has NaN or infinite values; give finite numbers within the action space")
        return np.clip(a, self.layout.low, self.layout.high)

    def episode_seed(self, env: int, episode: int) -> int:
        """The seed of env `env`'s episode `episode` under the current root seed (the same whether
        the env got there by a batch reset or by its own autoreset)."""
        from hybridsim.scenario.seeding import env_seeds

        return env_seeds(self.root_seed, int(episode), self.n_envs)[env]

    def step(self, actions, reset=None):
        """Apply actions [B, A] before the next output frame, advance one frame -> its Frame with
        `refined` set (the refined image of the state the action produced). `reset`: envs ([k]
        indices or a [B] bool mask) that start their next episode at this frame instead (Gymnasium
        autoreset): their actions are ignored and the frame shows their new episode's start; the
        other envs step on."""
        if self.frame is None:
            raise InteractiveError("step() before reset(); call reset() first")
        a = self.check_action(actions)
        rows = _rows(reset, self.n_envs)
        if self.recorder is not None:
            self.recorder.log_step(a, rows)
        sim = self.sim
        t0 = time.perf_counter()
        _cold_start(sim.world)
        apply_controls(self.layout, sim.world, sim.cameras, a, sim.steps_per_frame, sim.scenario.timing.dt)
        before = dict(sim.timings)
        episodes = None
        if rows:
            from hybridsim.scenario.sampling import has_distributions, sample_scenario

            self.env_episode[rows] += 1
            seeds = [self.episode_seed(b, self.env_episode[b]) for b in rows]
            if has_distributions(self.template):
                episodes = [sample_scenario(self.template, sd) for sd in seeds]
            for b, sd in zip(rows, seeds):
                sim.seeds[b] = sd
            if self.refiner is not None:
                self.refiner.reset_rows(rows, seeds)
            self.ended[rows] = False
        frame = sim.step(reset=rows or None, episodes=episodes)
        t1 = time.perf_counter()
        if self.refiner is not None:
            self.refiner.step(frame)
        self.refined = _frozen(frame)  # a block completed later rewrites frame.refined of its earlier frames
        t2 = time.perf_counter()
        physics = sim.timings["physics_s"] - before.get("physics_s", 0.0)
        self.last = StepTimings(physics, t1 - t0 - physics, t2 - t1, t2 - t0)
        self.frame = frame
        self.steps += 1
        if self.recorder is not None:
            self.recorder.after()
        return frame

    # ------------------------------------------------------------ state
    def save(self, tag: str | None = None) -> SessionState:
        """The session's state (see the module docstring); `tag` names it in a recording."""
        if self.frame is None:
            raise InteractiveError("save() before reset(); call reset() first")
        if self.recorder is not None:
            tag = self.recorder.log_save(tag)
        return SessionState(self.sim.save(), None if self.refiner is None else self.refiner.save(), self.root_seed,
                            self.episode, self.frame, self.refined, self.ended.copy(), self.steps, tag,
                            self.env_episode.copy())

    def restore(self, state: SessionState) -> None:
        if not isinstance(state, SessionState):
            raise InteractiveError(f"restore() takes a state from save(), got {type(state).__name__}")
        if self.recorder is not None:
            self.recorder.log_restore(state.tag)
        self.sim.restore(state.sim)
        if self.refiner is not None:
            self.refiner.restore(state.refiner)
        self.root_seed, self.episode, self.frame = state.root_seed, state.episode, state.frame
        self.refined = state.refined
        self.ended, self.steps = state.ended.copy(), state.steps
        self.env_episode = np.full(self.n_envs, state.episode, np.int64) if state.env_episode is None \
            else state.env_episode.copy()

    # ------------------------------------------------------------ episode status
    def time_up(self) -> np.ndarray:  # [B] bool
        """The episode's last frame is reached (timing.duration, cut by terminate.time_limit)."""
        return self.sim.env_frame >= self.sim._last_frame

    def at_rest(self) -> np.ndarray:  # [B] bool
        """The scenario's `terminate: at_rest` holds."""
        return np.asarray(self.sim.engine.rested, dtype=bool).copy()


@dataclass
class Observer:
    """Turns a session's Frames into observation arrays (batched [B, ...])."""

    session: Session
    joint_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        sim = self.session.sim
        self.robots = [(e.name, list(sim.world.joint_targets(e.name))) for e in sim.scenario.entities
                       if e.type in ("urdf", "mjcf")]
        self.joint_names = [f"{r}.{j}" for r, js in self.robots for j in js]
        self._dofs = [[self._dof(r, j) for j in js] for r, js in self.robots]

    def batch(self, frame) -> dict:
        """-> {"images": {camera: uint8 [B, H, W, 3]}, "coarse"/"depth"/"instance": {camera: ...},
        "state": {"body_pos" [B, K, 3], "body_quat" [B, K, 4], "body_lin_vel", "body_ang_vel",
        "joint_pos" [B, J] (robots only)}}"""
        from render import linear_to_srgb

        s = self.session
        out: dict = {"images": {}}
        for cam in s.cameras:
            if s.refined:
                out["images"][cam] = s.refined[cam]
            else:  # refine off: the coarse render stands in, so the space stays the same
                out["images"][cam] = _srgb8(linear_to_srgb(frame.gbuffer[cam].rgb[:, 0]))
        for kind in s.images:
            out[kind] = {}
            for cam in s.cameras:
                gb = frame.gbuffer[cam]
                if kind == "coarse":
                    out[kind][cam] = _srgb8(linear_to_srgb(gb.rgb[:, 0]))
                elif kind == "depth":
                    out[kind][cam] = np.ascontiguousarray(gb.depth[:, 0].numpy(), dtype=np.float32)
                else:
                    out[kind][cam] = np.ascontiguousarray(gb.instance_id[:, 0].numpy(), dtype=np.int32)
        st = frame.state
        state = {k: np.ascontiguousarray(getattr(st, k).numpy(), dtype=np.float32)
                 for k in ("body_pos", "body_quat", "body_lin_vel", "body_ang_vel")}
        if self.robots:
            state["joint_pos"] = np.concatenate([st.joint_pos[r].numpy()[:, dofs]
                                                 for (r, _), dofs in zip(self.robots, self._dofs)], 1).astype(np.float32)
        out["state"] = state
        return out

    def _dof(self, robot: str, joint: str) -> int:
        world = self.session.sim.world
        ent = world.entities[world.entity_index(robot)]
        return int(np.atleast_1d(ent.get_joint(joint).dofs_idx_local)[0])


def _rows(reset, n: int) -> list[int]:
    """`reset` (None, indices, or a [n] bool mask) -> sorted env indices."""
    if reset is None:
        return []
    r = np.asarray(reset)
    if r.dtype == bool:
        if r.shape != (n,):
            raise InteractiveError(f"reset mask of shape {r.shape} must be [{n}] (one bool per env)")
        return np.nonzero(r)[0].tolist()
    rows = sorted(set(int(i) for i in r.reshape(-1)))
    if rows and (rows[0] < 0 or rows[-1] >= n):
        raise InteractiveError(f"reset envs {rows} must be in [0, {n})")
    return rows


def _cold_start(world) -> None:
    """Start the frame's physics without the solver's warm start. Restoring a Genesis state clears
    the contact solver's warm start (collider and constraint caches are not part of the state),
    so a restored branch would differ from the run it branched off in the last bits; clearing it
    at every frame boundary makes every run (fresh, continued, or restored) take the same path."""
    world.restore(world.save())


def _frozen(frame) -> dict:
    return {cam: np.array(v, copy=True) for cam, v in frame.refined.items()}


def _srgb8(rgb) -> np.ndarray:  # [B, H, W, 3] float sRGB in [0, 1] -> uint8
    return np.ascontiguousarray((rgb.clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8).numpy())


def env_slice(batch: dict, b: int) -> dict:
    """Env b's observation out of a batched one (copies, so later steps do not change it)."""
    if isinstance(batch, dict):
        return {k: env_slice(v, b) for k, v in batch.items()}
    return np.array(batch[b], copy=True)
