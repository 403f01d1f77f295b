"""Path-traced reference frames: Blender's Cycles (the `bpy` module), headless on CPU.

The scene is built once from meshes in their body frames; each frame only moves objects
(`render.use_persistent_data`), so Cycles keeps its BVH and textures between frames. Cameras take
the pipeline's OpenCV matrices unchanged (viewmat world->camera, K in pixels) and are converted
here, in one place, to Blender's camera (x right, y up, looking down -z; lens/sensor/shift).
Lighting is `render.environment.Environment`: an HDRI (rotated about +z, scaled) or a uniform
colour, plus a sun. Materials are Principled BSDFs (colour or UV texture, roughness, metallic,
transmission and IOR).

Each frame is written by Cycles as a multi-layer EXR (combined linear RGB, Z depth, object index)
into a private temporary folder and read back with the OpenImageIO that ships inside `bpy`.
`bpy` holds one global scene per process: building a new PathTracer closes the previous one.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from render.environment import Environment, hdri_path, read_exr
from render.errors import RenderError


@dataclass
class PTMaterial:
    color: tuple[float, float, float] = (0.7, 0.7, 0.7)  # sRGB-encoded base colour in [0, 1]
    texture: np.ndarray | None = field(default=None, repr=False)  # [h, w, 3] uint8 sRGB, row 0 = top
    roughness: float = 0.5
    metallic: float = 0.0
    transmission: float = 0.0  # 1 = glass
    ior: float = 1.45


@dataclass
class PTMesh:
    """One visual mesh in its body's frame."""

    body: int  # body slot k into body_pos [K, 3] / body_quat [K, 4]; -1 = fixed in the world frame
    instance_id: int  # written to the object-index pass (0 = background)
    vertices: np.ndarray  # [V, 3] metres, body frame
    faces: np.ndarray  # [F, 3] int
    uvs: np.ndarray | None = None  # [V, 2] (v up, OBJ convention)
    material: PTMaterial = field(default_factory=PTMaterial)
    smooth_angle: float = 35.0  # degrees: corners whose faces meet flatter than this share a normal


@dataclass
class PTCamera:
    viewmat: np.ndarray  # [4, 4] world -> camera, OpenCV
    K: np.ndarray  # [3, 3] pixels
    width: int
    height: int


@dataclass
class PTSettings:
    samples: int = 16
    denoise: bool = True  # OpenImageDenoise
    seed: int = 0
    threads: int = 1
    max_bounces: int = 6

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and 1 <= self.samples <= 65536):
            raise RenderError(f"samples={self.samples!r} must be an int in 1..65536 (16 with denoise is a good start)")
        if not (isinstance(self.threads, int) and self.threads >= 0):
            raise RenderError(f"threads={self.threads!r} must be an int >= 0 (0 = all cores)")


@dataclass
class PathTraced:
    rgb: np.ndarray  # [H, W, 3] float32 linear radiance (scene-referred; > 1 where bright)
    depth: np.ndarray  # [H, W] float32 metres along camera +z; 0 where nothing is hit
    instance: np.ndarray  # [H, W] int32 object index of the first hit (0 = background)
    seconds: float  # wall time of the Cycles render


_ACTIVE: list = []  # the PathTracer that owns bpy's scene now


def preload() -> None:
    """Import bpy now. Call it before Genesis is imported: Genesis' dependencies load an older Embree
    whose symbols shadow Blender's, and `import bpy` then fails (undefined rtcGetSceneTraversable)."""
    try:
        import bpy  # noqa: F401
    except ImportError as e:
        if "rtcGetSceneTraversable" in str(e):
            raise RenderError("bpy must be imported before Genesis in this process (an older Embree is already "
                              "loaded); call render.pathtrace.preload() first") from e
        raise RenderError("the path-traced reference needs Blender as a module: pip install bpy") from e


class PathTracer:
    """Cycles scene of fixed meshes and cameras; `render` poses the bodies and draws one camera."""

    def __init__(self, meshes: list[PTMesh], cameras: dict[str, PTCamera], env: Environment,
                 settings: PTSettings | None = None):
        if not cameras:
            raise RenderError("PathTracer needs at least one camera")
        self.settings = settings or PTSettings()
        self.env, self.cameras = env, dict(cameras)
        preload()
        import bpy

        for old in _ACTIVE:
            old._closed = True
        _ACTIVE[:] = [self]
        self._bpy, self._closed = bpy, False
        self._dir = tempfile.mkdtemp(prefix="hybridsim_cycles_")
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self._scene = bpy.context.scene
        self._setup_render()
        self._setup_world()
        self._objects = [(m.body, self._add_mesh(i, m)) for i, m in enumerate(meshes)]
        cam = bpy.data.cameras.new("camera")
        self._cam = bpy.data.objects.new("camera", cam)
        self._scene.collection.objects.link(self._cam)
        self._scene.camera = self._cam

    # ------------------------------------------------------------------ setup
    def _setup_render(self) -> None:
        sc, s = self._scene, self.settings
        sc.render.engine = "CYCLES"
        sc.cycles.device = "CPU"
        sc.cycles.samples = s.samples
        sc.cycles.use_adaptive_sampling = False  # fixed cost per frame, reproducible
        sc.cycles.use_denoising = s.denoise
        sc.cycles.denoiser = "OPENIMAGEDENOISE"
        sc.cycles.seed = s.seed
        sc.cycles.max_bounces = s.max_bounces
        sc.cycles.caustics_reflective = sc.cycles.caustics_refractive = False
        sc.render.threads_mode = "FIXED" if s.threads else "AUTO"
        if s.threads:
            sc.render.threads = s.threads
        sc.render.resolution_percentage = 100
        sc.render.use_persistent_data = True
        sc.render.film_transparent = False
        sc.view_settings.view_transform = "Standard"
        vl = sc.view_layers[0]
        vl.use_pass_z = True
        vl.use_pass_object_index = True
        sc.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
        sc.render.image_settings.exr_codec = "NONE"
        sc.render.filepath = os.path.join(self._dir, "frame.exr")

    def _setup_world(self) -> None:
        bpy, env = self._bpy, self.env
        world = bpy.data.worlds.new("world")
        self._scene.world = world
        nt = world.node_tree
        bg = nt.nodes["Background"]
        if env.hdri is None:
            bg.inputs["Color"].default_value = (*env.ambient, 1.0)
            bg.inputs["Strength"].default_value = 1.0
        else:
            tex = nt.nodes.new("ShaderNodeTexEnvironment")
            tex.image = bpy.data.images.load(str(hdri_path(env.hdri)))
            coord = nt.nodes.new("ShaderNodeTexCoord")
            mapping = nt.nodes.new("ShaderNodeMapping")
            mapping.inputs["Rotation"].default_value = (0.0, 0.0, math.radians(env.rotation))
            nt.links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
            nt.links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
            nt.links.new(tex.outputs["Color"], bg.inputs["Color"])
            bg.inputs["Strength"].default_value = env.strength
        if env.sun_strength > 0:
            from mathutils import Vector

            sun = bpy.data.lights.new("sun", "SUN")
            sun.energy = env.sun_strength
            sun.color = env.sun_color
            sun.angle = math.radians(env.sun_angle)
            obj = bpy.data.objects.new("sun", sun)
            obj.rotation_mode = "QUATERNION"
            obj.rotation_quaternion = Vector(env.sun_unit.tolist()).to_track_quat("-Z", "Y")
            self._scene.collection.objects.link(obj)

    def _material(self, i: int, m: PTMaterial):
        bpy = self._bpy
        mat = bpy.data.materials.new(f"mat{i}")
        nodes = mat.node_tree.nodes
        bsdf = nodes["Principled BSDF"]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in m.color]
        bsdf.inputs["Base Color"].default_value = (*lin, 1.0)
        bsdf.inputs["Roughness"].default_value = float(m.roughness)
        bsdf.inputs["Metallic"].default_value = float(m.metallic)
        bsdf.inputs["Transmission Weight"].default_value = float(m.transmission)
        bsdf.inputs["IOR"].default_value = float(m.ior)
        if m.texture is not None:
            tex = np.asarray(m.texture)
            h, w = tex.shape[:2]
            img = bpy.data.images.new(f"tex{i}", w, h, alpha=False)
            rgba = np.concatenate([tex[::-1, :, :3].astype(np.float32) / 255.0, np.ones((h, w, 1), np.float32)], -1)
            img.pixels.foreach_set(rgba.ravel())
            img.pack()
            node = nodes.new("ShaderNodeTexImage")
            node.image = img
            mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
        return mat

    def _add_mesh(self, i: int, m: PTMesh):
        bpy = self._bpy
        v = np.asarray(m.vertices, dtype=np.float32)
        f = np.asarray(m.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise RenderError(f"mesh {i}: vertices must be [V, 3] and faces [F, 3] (F > 0), got {v.shape}, {f.shape}")
        me = bpy.data.meshes.new(f"mesh{i}")
        me.vertices.add(len(v))
        me.vertices.foreach_set("co", v.ravel())
        me.loops.add(3 * len(f))
        me.loops.foreach_set("vertex_index", f.ravel().astype(np.int32))
        me.polygons.add(len(f))
        me.polygons.foreach_set("loop_start", np.arange(0, 3 * len(f), 3, dtype=np.int32))
        if m.uvs is not None:
            uv = np.asarray(m.uvs, dtype=np.float32)[f.ravel()]
            me.uv_layers.new(name="uv").data.foreach_set("uv", uv.ravel())
        me.update()
        me.validate()
        if len(me.polygons) == len(f):  # validate() keeps a clean mesh as is: corners still match f
            me.shade_smooth()
            me.normals_split_custom_set(corner_normals(v, f, m.smooth_angle).tolist())
        me.materials.append(self._material(i, m.material))
        obj = bpy.data.objects.new(f"obj{i}", me)
        obj.pass_index = int(m.instance_id)
        obj.rotation_mode = "QUATERNION"
        self._scene.collection.objects.link(obj)
        return obj

    # ------------------------------------------------------------------ frames
    def render(self, camera: str, body_pos: np.ndarray, body_quat: np.ndarray,
               viewmat: np.ndarray | None = None) -> PathTraced:
        """Draw `camera` with bodies at body_pos [K, 3] and body_quat [K, 4] (wxyz, world frame).
        viewmat [4, 4] overrides the camera's pose (a moved camera)."""
        if self._closed:
            raise RenderError("this PathTracer was closed (bpy holds one scene per process and a newer "
                              "PathTracer took it); build it again")
        if camera not in self.cameras:
            raise RenderError(f"unknown camera {camera!r}; cameras are {sorted(self.cameras)}")
        pos = np.asarray(body_pos, dtype=np.float64)
        quat = np.asarray(body_quat, dtype=np.float64)
        for body, obj in self._objects:
            if body >= 0:
                obj.location = pos[body].tolist()
                obj.rotation_quaternion = quat[body].tolist()
        cam = self.cameras[camera]
        self._set_camera(cam, cam.viewmat if viewmat is None else np.asarray(viewmat, dtype=np.float64))
        t0 = time.perf_counter()
        self._bpy.ops.render.render(write_still=True)
        seconds = time.perf_counter() - t0
        ch = read_exr(self._scene.render.filepath)
        rgb = np.stack([ch[f"ViewLayer.Combined.{c}"] for c in "RGB"], -1)
        z = ch["ViewLayer.Depth.Z"]
        depth = np.where(z < 1e9, z, 0.0).astype(np.float32)
        inst = np.rint(ch["ViewLayer.Object Index.X"]).astype(np.int32)
        return PathTraced(rgb=rgb.astype(np.float32), depth=depth, instance=inst, seconds=seconds)

    def _set_camera(self, cam: PTCamera, viewmat: np.ndarray) -> None:
        from mathutils import Matrix

        sc, data = self._scene, self._cam.data
        sc.render.resolution_x, sc.render.resolution_y = int(cam.width), int(cam.height)
        K = np.asarray(cam.K, dtype=np.float64)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        data.sensor_fit = "HORIZONTAL"
        data.sensor_width = 36.0
        data.lens = fx * 36.0 / cam.width
        sc.render.pixel_aspect_x, sc.render.pixel_aspect_y = 1.0, float(fx / fy)  # fy != fx: non-square pixels
        big = max(cam.width, cam.height)
        data.shift_x = -(cx - cam.width / 2) / big
        data.shift_y = (cy - cam.height / 2) / big
        data.clip_start, data.clip_end = 0.01, 1000.0
        rot, t = viewmat[:3, :3], viewmat[:3, 3]
        c2w = np.eye(4)
        c2w[:3, :3] = rot.T @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes -> Blender's
        c2w[:3, 3] = -rot.T @ t
        self._cam.matrix_world = Matrix(c2w.tolist())

    def close(self) -> None:
        self._closed = True
        shutil.rmtree(self._dir, ignore_errors=True)
        if _ACTIVE and _ACTIVE[0] is self:
            self._bpy.ops.wm.read_factory_settings(use_empty=True)
            _ACTIVE.clear()

    def __enter__(self) -> PathTracer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def corner_normals(v: np.ndarray, f: np.ndarray, angle: float) -> np.ndarray:
    """[F*3, 3] per-corner normals: the area-weighted normals of the faces around the corner's
    vertex that meet the corner's face at less than `angle` degrees (hard edges stay hard)."""
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    fn = np.cross(e1, e2).astype(np.float64)  # length = 2 * area
    unit = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-20)
    corner_v = f.ravel()
    corner_f = np.repeat(np.arange(len(f)), 3)
    order = np.argsort(corner_v, kind="stable")
    sv = corner_v[order]
    starts = np.searchsorted(sv, np.arange(len(v)))
    counts = np.bincount(corner_v, minlength=len(v))
    # pairs (corner c, face g around c's vertex): all combinations per vertex
    deg = counts[corner_v]
    c_idx = np.repeat(np.arange(len(corner_v)), deg)
    offs = np.arange(len(c_idx)) - np.repeat(np.cumsum(deg) - deg, deg)
    g = corner_f[order[starts[corner_v[c_idx]] + offs]]
    keep = (unit[corner_f[c_idx]] * unit[g]).sum(1) >= math.cos(math.radians(angle))
    out = np.zeros((len(corner_v), 3))
    np.add.at(out, c_idx[keep], fn[g[keep]])
    n = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(n > 0, out / np.maximum(n, 1e-20), unit[corner_f])
    return out.astype(np.float32)
