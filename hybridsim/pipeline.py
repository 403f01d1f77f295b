"""The frame loop: events -> physics step -> splat render (G-buffer) -> (refiner) per frame.

`Simulation` is dm_control-like: build once, then either iterate `frames()` (offline, streaming) or
call `step()` yourself (interactive). Frame 0 is the initial state; frame i is the state after
i * steps_per_frame physics steps.

Episodes: environment b runs `episodes[b]`, a concrete scenario (hybridsim.scenario.sampling); all must
share one `layout_key`. Without `episodes`, env b runs `sample_scenario(cfg.scenario, seeds[b])`
with its derived seed `env_seeds(scenario.seed, cfg.episode, n_envs)[b]`, as v1's pos_jitter did
(a scenario without distributions runs identically in every env). Triggers are checked before
every physics step (hybridsim.scenario.events); `Frame.events` lists what fired during the steps leading to
the frame, so an event at t = 0 is reported on frame 1. An env is `done` at its time limit or
`terminate` condition; `frames()` stops when all are done, `end_frame[b]` is its last frame.

Interactive autoreset: `reset_envs(envs)` starts chosen envs' episodes over (optionally new
sampled episodes) while the others go on; each env then has its own clock (`env_frame`, counted
from its own start; `frame_index` stays the batch's count of frames stepped).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from hybridsim.bridge import apply_action, camera_matrices_per_env, schedule, world_spec
from hybridsim.config import RunConfig
from hybridsim.scenario.seeding import env_seeds
from hybridsim.scenario.spec import Scenario, SpecError, expand_templates


@dataclass
class CameraParams:
    name: str
    width: int
    height: int
    viewmat: np.ndarray  # [B, 4, 4] world->camera, OpenCV
    K: np.ndarray  # [B, 3, 3] pixels


@dataclass
class Frame:
    index: int
    t: float  # seconds
    state: object  # physics.PhysicsState
    cameras: dict[str, CameraParams]
    reference: dict[str, object] = field(default_factory=dict)  # camera -> physics.ReferenceFrame
    gbuffer: dict[str, object] = field(default_factory=dict)  # camera -> render.GBuffer
    fired: list[int] = field(default_factory=list)  # indices of scenario.events fired since last frame (any env)
    events: list[dict] = field(default_factory=list)  # event records fired since last frame (hybridsim.scenario.events)
    refined: dict = field(default_factory=dict)  # camera -> uint8 [B, H, W, 3], filled by the refiner
    lit: dict = field(default_factory=dict)  # camera -> render.lighting.Lit ([B, 1, ...]; render.lit)
    pathtraced: dict = field(default_factory=dict)  # camera -> appearance.PathTracedFrame (reference=pathtraced)
    env_frame: np.ndarray | None = None  # [B] each env's own frame index (differs from `index` after reset_envs)


@dataclass
class SimulationSnapshot:
    world: object  # physics.Snapshot
    engine: dict
    frame_index: int
    viewmats: dict
    done: np.ndarray
    end_frame: np.ndarray
    prev_means: object
    origin: np.ndarray | None = None  # [B] batch frame at which each env's episode started
    episodes: list | None = None  # the per-env episodes (they change with reset_envs(new episodes))


class Simulation:
    """A built world (+ splat scene) for one batch of episodes, one per environment."""

    def __init__(self, cfg: RunConfig, base_dir=None, episodes: list[Scenario] | None = None):
        if cfg.pathtraced_reference:  # bpy must load before Genesis (render.pathtrace.preload)
            from render.pathtrace import preload

            preload()
        from physics import World

        self.cfg, self.base_dir = cfg, base_dir
        self.timings: dict[str, float] = defaultdict(float)
        t0 = time.perf_counter()
        self._set_episodes(episodes)
        specs = [world_spec(ep, reference=cfg.raster_reference, base_dir=base_dir) for ep in self.episodes]
        self.world = World(specs[0], n_envs=cfg.n_envs, env_specs=specs if self._varied else None)
        self.timings["build_physics_s"] = time.perf_counter() - t0
        self.splats, self.planes = None, []
        if cfg.render.enabled:
            t0 = time.perf_counter()
            self.splats, self.planes = build_splat_scene(self.world, self.scenario, cfg.render)
            self.timings["build_splats_s"] = time.perf_counter() - t0
        self.pathtracer = None
        self._load()
        if cfg.pathtraced_reference:
            from hybridsim.appearance import PathTracedReference

            t0 = time.perf_counter()
            p = cfg.pathtrace
            self.pathtracer = PathTracedReference(self.world, self.look, self.cameras, samples=p.samples,
                                                  denoise=p.denoise, seed=p.seed, threads=p.threads)
            self.timings["build_pathtrace_s"] = time.perf_counter() - t0

    @property
    def materials(self):  # -> torch.Tensor [E + 1, 3]
        """Roughness, metallic, transmission per instance id (appearance.material_table) of the
        episodes' shared look (self.look), made once per load of episodes."""
        if self._materials is None:
            from hybridsim.appearance import material_table

            self._materials = material_table(self.look)
        return self._materials

    @property
    def lit_scene(self):  # -> (render.Environment, planes carrying their normals)
        """The lit render's world lighting (appearance.environment of self.look) and the planes with
        their normals (render.lighting.normal_planes), made once per load of episodes like materials."""
        if self._lit_scene is None:
            from render.lighting import normal_planes

            from hybridsim.appearance import environment

            self._lit_scene = (environment(self.look), normal_planes(self.planes))
        return self._lit_scene

    # ------------------------------------------------------------ episodes
    def _set_episodes(self, episodes: list[Scenario] | None) -> None:
        from hybridsim.scenario.sampling import has_distributions, layout_key, sample_scenario

        cfg = self.cfg
        derived = env_seeds(cfg.scenario.seed, cfg.episode, cfg.n_envs)
        if episodes is None:
            template = cfg.scenario
            episodes = [sample_scenario(template, s) for s in derived] if has_distributions(template) \
                else [template] * cfg.n_envs
            self.seeds = derived
        else:
            if len(episodes) != cfg.n_envs:
                raise SpecError("episodes", f"got {len(episodes)} episodes for n_envs={cfg.n_envs}; give one per env")
            if any(has_distributions(ep) for ep in episodes):
                raise SpecError("episodes", "episodes must be concrete; pass them through sampling.sample_scenario")
            template = episodes[0]
            self.seeds = [getattr(ep, "_sample_seed", s) for ep, s in zip(episodes, derived)]
        keys = [layout_key(ep) for ep in episodes]
        if len(set(keys)) > 1:
            b = keys.index(next(k for k in keys if k != keys[0]))
            raise SpecError("scenario", f"env {b}'s episode needs another Genesis build than env 0's (a distribution "
                                        "changes a size, shape, camera or event structure); run such scenarios "
                                        "with n_envs=1 or batch episodes by sampling.layout_key")
        if getattr(self, "key", keys[0]) != keys[0]:
            raise SpecError("episodes", "these episodes need another Genesis build; make a new Simulation")
        self.key, self.episodes = keys[0], list(episodes)
        self._varied = any(ep != episodes[0] for ep in episodes)
        self.scenario = expand_templates(template)
        # the look every env shares (appearance and lighting are in layout_key) from a concrete episode, for
        # the lit render, the refiner and the path tracer: the template's fields may still be distributions
        self.look = expand_templates(episodes[0])

    def _load(self) -> None:
        """Per-episode state on the built world: cameras, events, time limits, the initial snapshot."""
        from hybridsim.scenario.events import EventEngine

        self.cameras = {name: CameraParams(name, w, h, view, K)
                        for name, (view, K, w, h) in camera_matrices_per_env(self.episodes).items()}
        self.engine = EventEngine(self.episodes, self.world, self.cameras, self.steps_per_frame, apply_action)
        self._events = schedule(self.episodes[0])  # v1 view of the timed events
        self._last_frame = np.array([_last_frame(ep) for ep in self.episodes])
        self.frame_index, self._prev_means, self._prev_frame = 0, None, None
        self._lit_scene = None  # the lit render's environment and planes (lit_scene), made on first use
        self._materials = None  # the material table (materials), likewise
        self.done = np.zeros(self.cfg.n_envs, dtype=bool)
        self.end_frame = self._last_frame.copy()
        self.origin = np.zeros(self.cfg.n_envs, dtype=np.int64)
        self._flow_reset: np.ndarray | None = None  # envs whose next frame starts an episode (zero flow)
        self._update_done()
        self._initial = self.world.save()
        self._initial_sim = self.save()

    @property
    def n_frames(self) -> int:
        return int(self._last_frame.max()) + 1

    @property
    def steps_per_frame(self) -> int:
        return self.scenario.timing.steps_per_frame

    @property
    def event_log(self) -> list[dict]:
        """Every event record so far, all envs, in firing order."""
        return list(self.engine.log)

    def events_of(self, env: int) -> list[dict]:
        """Env `env`'s event records within its episode (frames up to end_frame)."""
        return [r for r in self.engine.log if r["env"] == env and r["frame"] <= self.end_frame[env]]

    def require_status(self) -> list[str | None]:
        """Per env: None if every `require` holds, else why not (the batch driver resamples those)."""
        return self.engine.require_status()

    # ------------------------------------------------------------ control
    def reset(self, episodes: list[Scenario] | None = None) -> Frame:
        """Back to frame 0; with `episodes`, load new ones of the same layout (no rebuild)."""
        if episodes is not None:
            self._set_episodes(episodes)
            specs = [world_spec(ep, reference=self.cfg.raster_reference, base_dir=self.base_dir) for ep in self.episodes]
            self.world.reinit(specs)
            self._load()
        self.restore(self._initial_sim)
        return self.observe()

    def save(self) -> SimulationSnapshot:
        """Everything to continue bit-identically: physics, trigger state, cameras, frame index."""
        return SimulationSnapshot(self.world.save(), self.engine.save(), self.frame_index,
                                  {n: c.viewmat.copy() for n, c in self.cameras.items()}, self.done.copy(),
                                  self.end_frame.copy(), self._prev_means, self.origin.copy(), list(self.episodes))

    def restore(self, snap: SimulationSnapshot) -> None:
        if snap.episodes is not None and snap.episodes != self.episodes:  # reset_envs loaded other episodes since
            self._load_episodes(snap.episodes)
        self.world.restore(snap.world)
        self.engine.restore(snap.engine)
        self.origin = np.zeros(self.cfg.n_envs, np.int64) if snap.origin is None else snap.origin.copy()
        self._flow_reset = None
        self.frame_index, self._prev_means = snap.frame_index, snap.prev_means
        self._prev_frame = None  # whichever frame prev_means came from, the next render uses it
        for n, v in snap.viewmats.items():
            self.cameras[n].viewmat[:] = v
        self.done, self.end_frame = snap.done.copy(), snap.end_frame.copy()
        self.engine.active = ~self.done

    @property
    def _next_event(self) -> int:  # v1 compatibility: the number of timed events fired
        return self.engine.timed_fired()

    @_next_event.setter
    def _next_event(self, n: int) -> None:
        self.engine.set_timed_fired(n)

    def frames(self) -> Iterator[Frame]:
        """Frames from the current one until every env is done (at most n_frames - 1)."""
        yield self.observe()
        while self.frame_index < self.n_frames - 1 and not self.done.all():
            yield self.step()

    def step(self, reset=None, episodes: list[Scenario] | None = None) -> Frame:
        """Advance one output frame (steps_per_frame physics steps, events fired on time). `reset`:
        envs that start their episodes over at this frame instead (interactive autoreset, see
        reset_envs; `episodes` as there): the frame shows them at their start."""
        e = None if reset is None or not np.size(reset) else self._env_rows(reset)
        records = []
        t0 = time.perf_counter()
        for _ in range(self.steps_per_frame):
            records += self.engine.before_step()
            self.world.step()
        self.timings["physics_s"] += time.perf_counter() - t0
        self.frame_index += 1
        if e is not None:
            self._reset_rows(e, episodes)
            records = [r for r in records if r["env"] not in set(e.tolist())]
        self._update_done()
        frame = self.observe()
        frame.events = records
        frame.fired = list(dict.fromkeys(r["index"] for r in records))
        return frame

    @property
    def env_frame(self) -> np.ndarray:
        """[B] each env's own frame index (the batch's frame_index minus the env's start)."""
        return self.frame_index - self.origin

    def reset_envs(self, envs, episodes: list[Scenario] | None = None) -> Frame:
        """Envs `envs` start their episodes over while the others go on (interactive autoreset),
        each with its own clock from here; `episodes` (one concrete scenario per env in `envs`,
        same layout) loads new episodes into them. -> the current Frame, those envs at their start.
        Call between step()s: the batch's frame counter does not move (`step(reset=...)` resets
        envs as part of a step instead, drawing the frame once)."""
        self._reset_rows(self._env_rows(envs), episodes)
        self._update_done()
        return self.observe()

    def _env_rows(self, envs) -> np.ndarray:
        e = np.unique(np.asarray(envs, dtype=np.int64).reshape(-1))
        if e.size == 0 or e.min() < 0 or e.max() >= self.cfg.n_envs:
            raise SpecError("reset_envs", f"env indices {np.asarray(envs).tolist()} must be in [0, {self.cfg.n_envs})")
        return e

    def _reset_rows(self, e: np.ndarray, episodes: list[Scenario] | None) -> None:
        old_engine = self.engine
        if episodes is not None:
            if len(episodes) != e.size:
                raise SpecError("episodes", f"got {len(episodes)} episodes for {e.size} envs; give one per env")
            new = list(self.episodes)
            for b, ep in zip(e.tolist(), episodes):
                new[b] = ep
            keep = np.setdiff1d(np.arange(self.cfg.n_envs), e)
            current = self.world.save()
            self._load_episodes(new)  # every env at its episode's start (the world reinitialised) ...
            self.world._step = current.step  # the batch's clock goes on
            if keep.size:
                self.world.restore_envs(current, keep)  # ... then the others back where they were
            self.engine.reset_envs(e, previous=old_engine)
        else:
            self.world.restore_envs(self._initial, e)
            self.engine.reset_envs(e)
        for n, v in self._initial_sim.viewmats.items():  # (the new episodes' cameras, when loaded)
            self.cameras[n].viewmat[e] = v[e]
        self.origin[e] = self.frame_index
        self.done[e] = False
        self.end_frame[e] = self._last_frame[e]
        self._flow_reset = e

    def _load_episodes(self, episodes: list[Scenario]) -> None:
        """Load concrete episodes of this build's layout into every env (world reinitialised, event
        engine and cameras rebuilt); the clock and origins are the caller's to set."""
        kept = (self.frame_index, self.origin, self.done, self.end_frame, self._prev_means, self._prev_frame,
                self.cameras, {n: c.viewmat.copy() for n, c in self.cameras.items()}, self.engine.log)
        self._set_episodes(episodes)
        specs = [world_spec(ep, reference=self.cfg.raster_reference, base_dir=self.base_dir) for ep in self.episodes]
        self.world.reinit(specs)
        self._load()
        (self.frame_index, self.origin, self.done, self.end_frame, self._prev_means, self._prev_frame,
         cameras, views, self.engine.log) = kept
        for n, c in cameras.items():  # the same CameraParams objects (frames and stages hold them), new values
            c.K[:] = self.cameras[n].K
            c.viewmat[:] = views[n]  # as they were: reset_envs sets the reset envs' rows
        self.cameras = self.engine.cameras = cameras

    def _update_done(self) -> None:
        new = ~self.done & (self.engine.rested | (self.env_frame >= self._last_frame))
        self.end_frame[new] = self.env_frame[new]
        self.done |= new
        self.engine.active = ~self.done

    def observe(self) -> Frame:
        """Read state, render reference and splats for the current frame."""
        state = self.world.state()
        frame = Frame(self.frame_index, state.t, state, self.cameras, env_frame=self.env_frame.copy())
        if self.cfg.raster_reference:
            t0 = time.perf_counter()
            frame.reference = {name: self.world.render_reference(name) for name in self.cameras}
            self.timings["reference_s"] += time.perf_counter() - t0
        if self.splats is not None:
            t0 = time.perf_counter()
            frame.gbuffer, frame.lit = self._render_splats(state)
            self.timings["splat_render_s"] += time.perf_counter() - t0
        if self.pathtracer is not None:
            t0 = time.perf_counter()
            frame.pathtraced = self.pathtracer.render(frame)
            self.timings["pathtrace_s"] += time.perf_counter() - t0
        return frame

    def close(self) -> None:
        """Release the Cycles scene (bpy holds one per process); the world stays usable."""
        if self.pathtracer is not None:
            self.pathtracer.close()
            self.pathtracer = None

    def _render_splats(self, state) -> tuple[dict, dict]:
        """-> (camera -> render.GBuffer, camera -> render.lighting.Lit or {} without render.lit)."""
        import torch
        from render import composite_planes, rasterize

        from render.lighting import splat_normals
        from render.project import camera_centers

        from hybridsim.appearance import lit_render

        g = self.splats.posed(state.body_pos, state.body_quat)
        bg = torch.tensor(self.cfg.render.background, dtype=torch.float32)
        # the same frame drawn again (reset() then frames()) has not moved: its flow is exactly zero
        prev = None if self._prev_frame == self.frame_index else self._prev_means
        if prev is not None and self._flow_reset is not None:  # envs just reset: their first frame has no flow
            prev = prev.clone()
            prev[torch.as_tensor(self._flow_reset)] = g.means[torch.as_tensor(self._flow_reset)]
        self._flow_reset = None
        out, lit = {}, {}
        for name, cam in self.cameras.items():
            view = torch.as_tensor(cam.viewmat, dtype=torch.float32)[:, None]  # [B, 1, 4, 4]
            K = torch.as_tensor(cam.K, dtype=torch.float32)[:, None]
            normals, planes = None, self.planes
            if self.cfg.render.lit:  # normals ride along in the same pass (GBuffer.extra) for the lit render
                normals, planes = splat_normals(g, camera_centers(view)[:, 0]), self.lit_scene[1]
            gb = rasterize(g, view, K, cam.width, cam.height, prev_means=prev,
                           background=(0.0, 0.0, 0.0), backend=self.cfg.render.backend, extra=normals)
            gb = composite_planes(gb, planes, view, K, far=self.cfg.render.plane_far)  # splats over planes
            if self.cfg.render.lit:
                t0 = time.perf_counter()
                lit[name] = lit_render(g, gb, self.planes, cam, self.lit_scene[0], self.materials,
                                       self.cfg.render.backend)
                self.timings["lit_render_s"] += time.perf_counter() - t0
            gb.rgb = gb.rgb + (1.0 - gb.alpha)[..., None] * bg
            out[name] = gb
        self._prev_means, self._prev_frame = g.means, self.frame_index
        return out, lit


def _last_frame(s: Scenario) -> int:
    """Index of the last frame of an episode: timing.duration, cut by terminate.time_limit."""
    t = s.timing
    duration = t.duration
    if s.terminate is not None and s.terminate.time_limit is not None:
        duration = min(duration, s.terminate.time_limit)
    return max(0, int(np.floor(duration * t.fps + 1e-9)) - 1)


def build_splat_scene(world, scenario, rcfg):
    """-> (SplatScene, planes): one splat asset per visual geom of every body slot. Planes are
    drawn analytically to the horizon (render.Plane) when rcfg.analytic_planes, else as a finite
    low-density patch of Gaussians."""
    import torch
    from render import Plane, SplatScene, mesh_to_splats, primitive_splats, srgb_to_linear

    from hybridsim.bridge import entity_quat
    from hybridsim.scenario.textures import load_texture

    index = {e.name: i for i, e in enumerate(scenario.entities)}
    assets, bodies, ids, planes = [], [], [], []
    for vis in world.link_visuals():
        info = world.bodies[vis.body]
        ent = scenario.entities[index[info.entity]]
        seed = len(assets)
        if ent.type == "plane" and rcfg.analytic_planes:
            w, x, y, z = entity_quat(ent)
            normal = (2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y))  # R @ e_z
            color = srgb_to_linear(torch.tensor(ent.appearance.color or vis.color, dtype=torch.float32))
            planes.append(Plane(tuple(float(v) for v in ent.pos), normal, tuple(color.tolist()), index[info.entity] + 1))
            continue
        if ent.type == "plane":
            asset = primitive_splats("plane", size=(rcfg.plane_size,) * 3, density=rcfg.plane_density,
                                     base_color=ent.appearance.color or vis.color, seed=seed,
                                     max_gaussians=rcfg.max_gaussians)
        else:
            texture = load_texture(ent.appearance.texture) if ent.appearance.texture else vis.texture
            asset = mesh_to_splats(vis.vertices, vis.faces, density=rcfg.density, base_color=vis.color,
                                   uv=vis.uvs, texture=texture if vis.uvs is not None else None,
                                   seed=seed, max_gaussians=rcfg.max_gaussians)
        assets.append(asset)
        bodies.append(vis.body)
        ids.append(index[info.entity] + 1)
    return SplatScene(assets, bodies, ids), planes
