"""The frame loop: events -> physics step -> splat render (G-buffer) -> (refiner) per frame.

`Simulation` is dm_control-like: build once, then either iterate `frames()` (offline, streaming) or
call `step()` yourself (interactive). Frame 0 is the initial state; frame i is the state after
i * steps_per_frame physics steps.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from hybridsim.bridge import apply_event, camera_matrices, initial_offsets, schedule, world_spec
from hybridsim.config import RunConfig
from hybridsim.seeding import env_seeds


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
    fired: list[int] = field(default_factory=list)  # indices of scenario.events fired since last frame


class Simulation:
    """A built world (+ splat scene) for one episode of a scenario, batched over n_envs."""

    def __init__(self, cfg: RunConfig, base_dir=None):
        from physics import World

        self.cfg, self.scenario = cfg, cfg.scenario
        self.timings: dict[str, float] = defaultdict(float)
        t0 = time.perf_counter()
        self.seeds = env_seeds(self.scenario.seed, cfg.episode, cfg.n_envs)
        spec = world_spec(self.scenario, reference=cfg.reference, base_dir=base_dir)
        self.world = World(spec, n_envs=cfg.n_envs, pos_offsets=initial_offsets(self.scenario, self.seeds))
        self.timings["build_physics_s"] = time.perf_counter() - t0
        self.cameras = {
            name: CameraParams(name, w, h, view, K)
            for name, (view, K, w, h) in camera_matrices(self.scenario, cfg.n_envs).items()
        }
        self.splats = None
        if cfg.render.enabled:
            t0 = time.perf_counter()
            self.splats = build_splat_scene(self.world, self.scenario, cfg.render)
            self.timings["build_splats_s"] = time.perf_counter() - t0
        self._events = schedule(self.scenario)
        self._next_event = 0
        self._prev_means = None
        self.frame_index = 0
        self._initial = self.world.save()

    @property
    def n_frames(self) -> int:
        return self.scenario.timing.n_frames

    @property
    def steps_per_frame(self) -> int:
        return self.scenario.timing.steps_per_frame

    def reset(self) -> Frame:
        self.world.restore(self._initial)
        self._next_event, self._prev_means, self.frame_index = 0, None, 0
        return self.observe()

    def frames(self) -> Iterator[Frame]:
        """Frame 0 .. n_frames-1 of the episode, from the current state."""
        yield self.observe()
        while self.frame_index < self.n_frames - 1:
            yield self.step()

    def step(self) -> Frame:
        """Advance one output frame (steps_per_frame physics steps, events fired on time)."""
        fired = []
        t0 = time.perf_counter()
        for _ in range(self.steps_per_frame):
            fired += self._fire_due_events()
            self.world.step()
        self.timings["physics_s"] += time.perf_counter() - t0
        self.frame_index += 1
        frame = self.observe()
        frame.fired = fired
        return frame

    def _fire_due_events(self) -> list[int]:
        fired = []
        while self._next_event < len(self._events) and self._events[self._next_event].step <= self.world.step_count:
            ev = self._events[self._next_event]
            apply_event(self.world, ev.event, self.scenario.timing.dt)
            fired.append(ev.index)
            self._next_event += 1
        return fired

    def observe(self) -> Frame:
        """Read state, render reference and splats for the current frame."""
        state = self.world.state()
        frame = Frame(self.frame_index, state.t, state, self.cameras)
        if self.cfg.reference:
            t0 = time.perf_counter()
            frame.reference = {name: self.world.render_reference(name) for name in self.cameras}
            self.timings["reference_s"] += time.perf_counter() - t0
        if self.splats is not None:
            t0 = time.perf_counter()
            frame.gbuffer = self._render_splats(state)
            self.timings["splat_render_s"] += time.perf_counter() - t0
        return frame

    def _render_splats(self, state) -> dict:
        import torch
        from render import rasterize

        g = self.splats.posed(state.body_pos, state.body_quat)
        out = {}
        for name, cam in self.cameras.items():
            out[name] = rasterize(
                g,
                torch.as_tensor(cam.viewmat, dtype=torch.float32)[:, None],
                torch.as_tensor(cam.K, dtype=torch.float32)[:, None],
                cam.width,
                cam.height,
                prev_means=self._prev_means,
                background=tuple(self.cfg.render.background),
                backend=self.cfg.render.backend,
            )
        self._prev_means = g.means
        return out


def build_splat_scene(world, scenario, rcfg):
    """One splat asset per visual geom of every body slot; planes get a finite low-density patch."""
    from render import SplatScene, mesh_to_splats, primitive_splats

    from hybridsim.textures import load_texture

    index = {e.name: i for i, e in enumerate(scenario.entities)}
    assets, bodies, ids = [], [], []
    for vis in world.link_visuals():
        info = world.bodies[vis.body]
        ent = scenario.entities[index[info.entity]]
        seed = len(assets)
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
    return SplatScene(assets, bodies, ids)
