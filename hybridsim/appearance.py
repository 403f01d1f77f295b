"""The scenario's materials and lighting as the render stage's types: the Cycles scene of a built
world (render.pathtrace), its Environment (render.environment) and the lit splat render of a frame
(render.lighting). The frame loop calls these; nothing here steps physics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANE_EXTENT = 500.0  # metres: half-size of the quad that stands in for an infinite plane in Cycles


def environment(scenario):
    """render.Environment of a scenario: lighting.environment's HDRI (or the uniform ambient) plus
    the scenario's directional light as the sun (its intensity is the sun's irradiance, W/m^2).
    A procedural map name (sky:<seed>, ...) becomes its cached file, made on first use."""
    from render.environment import Environment

    from hybridsim.scenario.environments import is_procedural, procedural_file

    lt = scenario.lighting
    env = getattr(lt, "environment", None)
    hdri = None if env is None else env.hdri
    if is_procedural(hdri):
        hdri = str(procedural_file(hdri))
    return Environment(hdri=hdri,
                       rotation=0.0 if env is None else float(env.rotation),
                       strength=1.0 if env is None else float(env.strength),
                       ambient=tuple(float(a) for a in lt.ambient), sun_direction=tuple(lt.direction),
                       sun_color=tuple(float(c) for c in lt.color), sun_strength=float(lt.intensity))


def material(ent, vis):
    """render.pathtrace.PTMaterial of an entity (appearance) drawn with visual `vis` (physics.LinkVisual)."""
    from render.pathtrace import PTMaterial

    from hybridsim.scenario.textures import load_texture

    app = ent.appearance
    texture = None
    if vis is not None and vis.uvs is not None:
        texture = load_texture(app.texture) if app.texture else vis.texture
    color = app.color if app.color is not None else (vis.color if vis is not None else (0.7, 0.7, 0.7))
    return PTMaterial(color=tuple(float(c) for c in color), texture=texture,
                      roughness=float(getattr(app, "roughness", 0.5)), metallic=float(getattr(app, "metallic", 0.0)),
                      transmission=float(getattr(app, "transmission", 0.0)), ior=float(getattr(app, "ior", 1.45)))


def pathtrace_meshes(world, scenario) -> list:
    """One PTMesh per visual geom of every body slot; planes become large quads in their body frame."""
    from render.pathtrace import PTMesh

    index = {e.name: i for i, e in enumerate(scenario.entities)}
    out = []
    for vis in world.link_visuals():
        info = world.bodies[vis.body]
        ent = scenario.entities[index[info.entity]]
        if ent.type == "plane":
            e = PLANE_EXTENT
            verts = np.array([[-e, -e, 0.0], [e, -e, 0.0], [e, e, 0.0], [-e, e, 0.0]], dtype=np.float32)
            out.append(PTMesh(vis.body, index[info.entity] + 1, verts, np.array([[0, 1, 2], [0, 2, 3]]),
                              material=material(ent, None if ent.appearance.color else vis)))
            continue
        out.append(PTMesh(vis.body, index[info.entity] + 1, vis.vertices, vis.faces, uvs=vis.uvs,
                          material=material(ent, vis)))
    return out


@dataclass
class PathTracedFrame:
    rgb: np.ndarray  # [B, H, W, 3] uint8 sRGB
    linear: np.ndarray  # [B, H, W, 3] float32 linear radiance
    depth: np.ndarray  # [B, H, W] float32 metres along +z
    instance: np.ndarray  # [B, H, W] int32 (0 = background, i = entity i - 1)
    seconds: float  # Cycles wall time for the B images


class PathTracedReference:
    """A Cycles scene of a built Simulation; `render(frame)` -> camera -> PathTracedFrame."""

    def __init__(self, world, scenario, cameras: dict, *, samples: int = 16, denoise: bool = True,
                 seed: int = 0, threads: int = 1):
        from render.pathtrace import PathTracer, PTCamera, PTSettings

        cams = {name: PTCamera(np.asarray(c.viewmat[0]), np.asarray(c.K[0]), c.width, c.height)
                for name, c in cameras.items()}
        self.cameras = cameras
        self.tracer = PathTracer(pathtrace_meshes(world, scenario), cams, environment(scenario),
                                 PTSettings(samples=samples, denoise=denoise, seed=seed, threads=threads))

    def render(self, frame) -> dict[str, PathTracedFrame]:
        from render import linear_to_srgb
        import torch

        pos, quat = np.asarray(frame.state.body_pos), np.asarray(frame.state.body_quat)
        out = {}
        for name, cam in self.cameras.items():
            shots = [self.tracer.render(name, pos[b], quat[b], viewmat=cam.viewmat[b]) for b in range(len(pos))]
            lin = np.stack([s.rgb for s in shots])
            rgb = (linear_to_srgb(torch.from_numpy(lin)).numpy() * 255.0 + 0.5).astype(np.uint8)
            out[name] = PathTracedFrame(rgb=rgb, linear=lin, depth=np.stack([s.depth for s in shots]),
                                        instance=np.stack([s.instance for s in shots]),
                                        seconds=sum(s.seconds for s in shots))
        return out

    def close(self) -> None:
        self.tracer.close()


def lit_render(gaussians, gbuffer, planes, camera, env, materials, backend: str = "auto"):
    """The lit splat render (render.lighting.shade) of one camera's G-buffer (planes composited,
    black background); camera is a pipeline.CameraParams; env and materials are an episode's
    environment and material_table. -> render.lighting.Lit ([B, 1, ...])."""
    import torch
    from render.lighting import shade

    view = torch.as_tensor(camera.viewmat, dtype=torch.float32)[:, None]
    K = torch.as_tensor(camera.K, dtype=torch.float32)[:, None]
    return shade(gaussians, gbuffer, planes, view, K, env, backend=backend, materials=materials)


def material_table(scenario):  # -> Tensor [E + 1, 3]
    """Roughness, metallic, transmission per instance id (row 0 = background), for the refiner, of a
    concrete scenario (an episode: sampling.sample_scenario draws any distributions first)."""
    import torch

    rows = [(0.0, 0.0, 0.0)]
    for e in scenario.entities:
        a = e.appearance
        rows.append((float(getattr(a, "roughness", 0.5)), float(getattr(a, "metallic", 0.0)),
                     float(getattr(a, "transmission", 0.0))))
    return torch.tensor(rows, dtype=torch.float32)


def lit_condition(gbuffer, lit, camera, materials):  # -> Tensor [B, 1, LIT_CHANNELS, H, W]
    """The refiner's lit-layout condition (refine.conditioning.encode_lit_condition) of one
    camera: gbuffer (render.GBuffer, black background), lit (render.lighting.Lit), camera
    (pipeline.CameraParams), materials (material_table of the episode)."""
    import torch
    from refine.conditioning import encode_lit_condition
    from render import linear_to_srgb
    from render.lighting import pixel_materials

    R = torch.as_tensor(np.asarray(camera.viewmat, dtype=np.float32))[:, None, :3, :3]  # [B, 1, 3, 3]
    n_cam = torch.einsum("bcij,bchwj->bchwi", R, lit.normals)
    return encode_lit_condition(linear_to_srgb(lit.rgb), gbuffer.depth, gbuffer.alpha, gbuffer.flow,
                                linear_to_srgb(gbuffer.rgb), n_cam, lit.sun_visibility, lit.sun_cos,
                                pixel_materials(materials, gbuffer.instance_id), linear_to_srgb(lit.reflection))
