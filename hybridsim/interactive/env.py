"""`HybridSimEnv`: one hybridsim environment as a `gymnasium.Env` (hybridsim.make_env).

Observation (a Dict): "images" camera -> uint8 [H, W, 3], the refined frame of the state the
action produced (every step has one: see StreamRefiner.step); "coarse" (uint8 [H, W, 3]),
"depth" (float32 [H, W] metres, 0 where nothing is drawn) and "instance" (int32 [H, W], entity
index + 1, 0 = background) per camera when asked for with `images=`; "state": body poses and
velocities [K, ...] of every body slot (physics.World order) and the robots' joint positions.
Action: a Box [A] laid out by the scenario's `actions:` (controls.py). info: "events" fired
during the step, "frame", "t", "provisional" (the refined image is a preview of an unfinished
refiner block); at reset also "labels" (instance id -> entity name and semantic class).
`env.timings`: the last step's wall times.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hybridsim.interactive.errors import InteractiveError
from hybridsim.interactive.session import Observer, Session, env_slice
from hybridsim.interactive.tasks import StepContext, Task


def interactive_config(scenario, overrides=(), **options):
    """A RunConfig for interactive use: no raster reference unless asked, no progress bar; the
    refine options checked (weights, sizes, memory) before Genesis builds anything."""
    from hybridsim.output.runner import resolve_config
    from hybridsim.refining import check_refine

    given = {o.split("=", 1)[0].lstrip("+") for o in overrides if isinstance(o, str)}
    for key, value in (("reference", "none"), ("progress", False)):  # an override given as "key=value" wins
        if key not in given:
            options.setdefault(key, value)
    cfg, base = resolve_config(scenario, tuple(overrides), **options)
    if cfg.pathtraced_reference:
        raise InteractiveError("reference=pathtraced is too slow for interactive use; use reference=none or raster")
    check_refine(cfg)
    return cfg, base


def observation_space(session: Session, observer: Observer) -> spaces.Dict:
    """The Dict space of one environment's observation (see the module docstring)."""
    sim = session.sim
    cams = sim.cameras
    image = {n: spaces.Box(0, 255, (c.height, c.width, 3), np.uint8) for n, c in cams.items()}
    out = {"images": spaces.Dict(image)}
    n_ids = len(sim.scenario.entities) + 1
    for kind in session.images:
        if kind == "coarse":
            out[kind] = spaces.Dict(dict(image))
        elif kind == "depth":
            out[kind] = spaces.Dict({n: spaces.Box(0.0, np.inf, (c.height, c.width), np.float32) for n, c in cams.items()})
        else:
            out[kind] = spaces.Dict({n: spaces.Box(0, n_ids, (c.height, c.width), np.int32) for n, c in cams.items()})
    k = len(sim.world.bodies)
    state = {"body_pos": spaces.Box(-np.inf, np.inf, (k, 3), np.float32),
             "body_quat": spaces.Box(-np.inf, np.inf, (k, 4), np.float32),
             "body_lin_vel": spaces.Box(-np.inf, np.inf, (k, 3), np.float32),
             "body_ang_vel": spaces.Box(-np.inf, np.inf, (k, 3), np.float32)}
    if observer.joint_names:
        state["joint_pos"] = spaces.Box(-np.inf, np.inf, (len(observer.joint_names),), np.float32)
    out["state"] = spaces.Dict(state)
    return spaces.Dict(out)


class HybridSimEnv(gym.Env):
    """A scenario as a Gymnasium environment: Genesis physics -> splats -> refined frame, per step.

    scenario: a shipped name, a YAML path, a Scenario or a RunConfig; overrides (positional, or
    `overrides=[...]`): "key=value" strings as `hybridsim run` takes them (e.g. "refine.enabled=false", "scenario.timing.duration=2");
    images: extra image kinds ("coarse", "depth", "instance"); task: reward / termination terms
    (tasks.Task, a mapping of its fields, or a reward callable); render_mode "rgb_array" renders
    the refined frame of `render_camera` (default: the first camera). Other keyword options are
    run options (reference=..., episode=...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, scenario="default", *args: str, overrides=(), images=(), task=None,
                 render_mode: str | None = None, render_camera: str | None = None, **options):
        overrides = (*overrides, *args)  # gymnasium.make passes keywords only
        if options.get("n_envs", 1) != 1:
            raise InteractiveError("HybridSimEnv is one environment; use hybridsim.make_vec_env(num_envs=N) for more")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise InteractiveError(f"render_mode={render_mode!r}; use None or 'rgb_array'")
        cfg, base = interactive_config(scenario, overrides, **options)
        self.session = Session(cfg, base, tuple(images))
        self.observer = Observer(self.session)
        self.task = Task.of(task)
        self.task.check(self.session)
        self.render_mode = render_mode
        self.render_camera = render_camera or self.session.cameras[0]
        if self.render_camera not in self.session.cameras:
            raise InteractiveError(f"render_camera={render_camera!r}; cameras are {self.session.cameras}")
        self.metadata = dict(self.metadata, render_fps=int(round(cfg.scenario.timing.fps)))
        layout = self.session.layout
        self.action_space = spaces.Box(layout.low, layout.high, (layout.size,), np.float32)
        self.observation_space = observation_space(self.session, self.observer)
        self.action_names = list(layout.names)

    # ------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options:
            raise InteractiveError(f"reset options {sorted(options)} are not supported; give seed= only")
        frame = self.session.reset(seed)
        return self._obs(), dict(self._info(frame, []), labels=instance_labels(self.session))

    def step(self, action):
        s = self.session
        if s.frame is None:
            raise InteractiveError("step() before reset(); call reset() first")
        if s.ended[0]:
            raise InteractiveError("the episode has ended (terminated or truncated); call reset()")
        a = s.check_action(np.asarray(action, dtype=np.float32).reshape(1, -1) if not isinstance(action, dict)
                           else action)
        frame = s.step(a)
        rewards, terminated, truncated = episode_status(s, self.task, frame, a)
        s.ended |= terminated | truncated
        return (self._obs(), float(rewards[0]), bool(terminated[0]), bool(truncated[0]),
                self._info(frame, frame.events))

    def render(self):
        if self.render_mode == "rgb_array" and self.session.refined:
            return np.array(self.session.refined[self.render_camera][0], copy=True)
        return None

    def close(self):
        if getattr(self, "session", None) is not None:
            self.session.sim.close()

    # ------------------------------------------------------------ branching
    def save(self, tag: str | None = None):
        """The whole state (physics, events, cameras, refiner KV cache and noise, seeds): `restore`
        continues bit-identically, so a rollout can branch here."""
        return self.session.save(tag)

    def restore(self, state):
        """Back to a `save()`d state -> (obs, info) of that step."""
        self.session.restore(state)
        return self._obs(), self._info(self.session.frame, [])

    def record(self, path):
        """Record this session (seed, scenario, actions, saves and restores) to `path`, from the next
        reset on; `hybridsim replay PATH` reproduces it bit-identically."""
        from hybridsim.interactive.recording import record

        return record(self.session, path).path

    def stop_recording(self):
        from hybridsim.interactive.recording import stop_recording

        return stop_recording(self.session)

    # ------------------------------------------------------------ helpers
    def _obs(self) -> dict:
        return env_slice(self.observer.batch(self.session.frame), 0)

    def _info(self, frame, events: list) -> dict:
        s = self.session
        return {"events": [dict(r) for r in events], "frame": int(frame.index), "t": float(frame.t),
                "provisional": refined_is_provisional(s)}

    @property
    def timings(self):
        """session.StepTimings of the last step (kept out of `info`: wall times differ between runs)."""
        return self.session.last


def instance_labels(s: Session) -> dict:
    """The labels of the "instance" images: id -> entity name and semantic class (0: background)."""
    return {"instance": {i + 1: e.name for i, e in enumerate(s.sim.scenario.entities)},
            "semantic_class": {i + 1: e.semantic_class for i, e in enumerate(s.sim.scenario.entities)}}


def refined_is_provisional(s: Session) -> bool:
    """The current refined image previews an unfinished refiner block (final once it completes)."""
    return s.refiner is not None and bool(s.refiner._pending)


def episode_status(s: Session, task: Task, frame, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (reward [B], terminated [B], truncated [B]) of the step that made `frame`. Terminated: the
    scenario's `terminate: at_rest`, or the task's events / callable; truncated: the time limit."""
    ending = s.time_up() | s.at_rest()
    reward, term = task.evaluate(StepContext(frame, actions, s), ending)
    terminated = s.at_rest() | term
    truncated = s.time_up() & ~terminated
    if task.require and (terminated & ~ending).any():  # ended by the task: pay the require term too
        extra = Task(require=task.require).evaluate(StepContext(frame, actions, s), terminated & ~ending)[0]
        reward += extra
    return reward, terminated, truncated
