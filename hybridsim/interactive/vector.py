"""`HybridSimVectorEnv`: N environments batched inside one Genesis scene and refined in one refiner
batch, as a `gymnasium.vector.VectorEnv` (hybridsim.make_vec_env).

Observations are the single environment's (env.py) with a leading [N] axis; actions [N, A].
Autoreset is Gymnasium's NEXT_STEP mode, per environment: an environment whose episode ended
(terminated or truncated) on one step starts its next episode on its next step, which returns
its reset observation with reward 0 and no termination while the other environments step on.
Each environment keeps its own clock (timed events, time limits and `info["frame"]`/`["t"]` count
from its own start), its next episode is the one a batch reset would give it (seed derived from
the root seed, the env index and its own episode count; distributions resampled), and the
refiner keeps its frames apart from the old episode's in the shared batch (refine.KVCache tags).
`reset()` resets every environment; a partial `reset_mask` is refused (autoreset does that).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hybridsim.interactive.env import (episode_status, instance_labels, interactive_config, observation_space,
                                       refined_is_provisional)
from hybridsim.interactive.errors import InteractiveError
from hybridsim.interactive.session import Observer, Session
from hybridsim.interactive.tasks import Task


class HybridSimVectorEnv(VectorEnv):
    """`num_envs` environments of one scenario, one Genesis build, one refiner batch."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, scenario="default", *args: str, num_envs: int = 1, overrides=(), images=(), task=None,
                 render_mode: str | None = None, render_camera: str | None = None, **options):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise InteractiveError(f"num_envs={num_envs!r} must be an integer >= 1")
        if "n_envs" in options:
            raise InteractiveError("give the number of environments as num_envs=, not n_envs=")
        if render_mode not in (None, "rgb_array"):
            raise InteractiveError(f"render_mode={render_mode!r}; use None or 'rgb_array'")
        cfg, base = interactive_config(scenario, (*overrides, *args), n_envs=num_envs, **options)
        self.session = Session(cfg, base, tuple(images))
        self.observer = Observer(self.session)
        self.task = Task.of(task)
        self.task.check(self.session)
        self.num_envs, self.render_mode = num_envs, render_mode
        self.render_camera = render_camera or self.session.cameras[0]
        self.metadata = dict(self.metadata, render_fps=int(round(cfg.scenario.timing.fps)))
        layout = self.session.layout
        self.single_action_space = spaces.Box(layout.low, layout.high, (layout.size,), np.float32)
        self.single_observation_space = observation_space(self.session, self.observer)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_names = list(layout.names)
        self._obs: dict | None = None
        self._autoreset = False

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """Reset every environment; `seed` (one int: the batch's root seed, env b's episode is
        derived from it) makes the episodes reproducible."""
        if isinstance(seed, (list, tuple)):
            if len(set(seed)) > 1 or len(seed) != self.num_envs:
                raise InteractiveError("the batch shares one root seed (each env's episode is derived from it); "
                                       "give seed=<int>")
            seed = seed[0]
        if options:
            mask = options.get("reset_mask")
            if set(options) - {"reset_mask"} or (mask is not None and not np.all(mask)):
                raise InteractiveError("reset() resets every environment; environments that ended are reset "
                                       "one by one by autoreset (NEXT_STEP) on their next step, so a partial "
                                       "reset_mask (or other reset options) is not supported")
        super().reset(seed=seed)
        frame = self.session.reset(seed)
        self._autoreset = np.zeros(self.num_envs, bool)
        self._obs = self.observer.batch(frame)
        infos = self._infos(frame)
        infos["labels"] = instance_labels(self.session)  # the same for every env of the batch
        return _copy(self._obs), infos

    def step(self, actions):
        s = self.session
        if s.frame is None:
            raise InteractiveError("step() before reset(); call reset() first")
        a = s.check_action(np.asarray(actions, dtype=np.float32) if not isinstance(actions, dict) else actions)
        reset = self._autoreset.copy()  # NEXT_STEP: envs that ended on the previous step start over now
        frame = s.step(a, reset=reset if reset.any() else None)
        rewards, terminated, truncated = episode_status(s, self.task, frame, a)
        self._obs = self.observer.batch(frame)
        rewards[reset], terminated[reset], truncated[reset] = 0.0, False, False
        s.ended = terminated | truncated
        self._autoreset = s.ended.copy()
        return _copy(self._obs), rewards, terminated, truncated, self._infos(frame, reset)

    def render(self):
        if self.render_mode == "rgb_array" and self._obs is not None:
            return tuple(np.array(img, copy=True) for img in self._obs["images"][self.render_camera])
        return None

    def close_extras(self, **kwargs):
        if getattr(self, "session", None) is not None:
            self.session.sim.close()

    # ------------------------------------------------------------ branching
    def save(self, tag: str | None = None):
        """State of the whole batch (see HybridSimEnv.save)."""
        return (self.session.save(tag), self._obs, self._autoreset.copy())

    def restore(self, state):
        sess_state, obs, autoreset = state
        self.session.restore(sess_state)
        self._obs, self._autoreset = obs, np.array(autoreset, dtype=bool).copy()
        return _copy(obs)

    def record(self, path):
        """Record this session (seed, scenario, actions, saves and restores) to `path`, from the next
        reset on; `hybridsim replay PATH` reproduces it bit-identically."""
        from hybridsim.interactive.recording import record

        return record(self.session, path).path

    def stop_recording(self):
        from hybridsim.interactive.recording import stop_recording

        return stop_recording(self.session)

    def _infos(self, frame, reset: np.ndarray | None = None) -> dict:
        """Per env: its events of this step, its own frame index and time, whether its refined image is
        provisional, its episode index, and whether this step was its autoreset."""
        infos: dict = {}
        s = self.session
        provisional = refined_is_provisional(s)
        own = frame.env_frame if frame.env_frame is not None else np.full(self.num_envs, frame.index)
        frame_dt = s.sim.steps_per_frame * s.sim.scenario.timing.dt
        for b in range(self.num_envs):
            info = {"events": [dict(r) for r in frame.events if r.get("env", 0) == b], "frame": int(own[b]),
                    "t": float(own[b] * frame_dt), "provisional": provisional, "episode": int(s.env_episode[b]),
                    "autoreset": bool(reset is not None and reset[b])}
            infos = self._add_info(infos, info, b)
        return infos


def _copy(obs):
    if isinstance(obs, dict):
        return {k: _copy(v) for k, v in obs.items()}
    return np.array(obs, copy=True)
