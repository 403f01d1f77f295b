"""`hybridsim view scenario=NAME [port=8080]`: a live viewer in the browser (viser).

The page shows the 3D scene (each body's visual meshes at its simulated pose, the ground as a grid,
the cameras as frustums showing their refined frame), the refined and coarse streams per camera
(and Genesis' raster reference with reference=raster), and controls: push a chosen body (an
impulse through the scenario's push controls), move the robot's joints (one slider per joint
target), pause, step, reset with a seed, and record the session (recording.py; replay it with
`hybridsim replay FILE`). Live steps/s and action -> refined-frame latency are shown on top.

The server listens on 127.0.0.1 by default: reach it from another machine through SSH port
forwarding (`ssh -L 8080:localhost:8080 host`, then open http://localhost:8080), as nerfstudio
does. Every frame is stepped on this process's main thread; the page's controls only queue
requests, so the session is never touched from two threads.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np

DEFAULTS = {"scenario": "default", "port": 8080, "host": "127.0.0.1", "seed": 0, "steps": 0, "paused": False,
            "record": "", "fps": 0.0}
PUSH_KINDS = ("impulse", "force")


class Viewer:
    """A viser page over one HybridSimEnv; `run()` steps it until stopped (or `steps` are done)."""

    def __init__(self, env, server, paused: bool = False, fps: float = 0.0):
        self.env, self.server = env, server
        self.session = env.session
        self.requests: queue.Queue = queue.Queue()
        self.paused, self.fps_cap = paused, fps
        self.steps_done, self.rate, self.stop = 0, 0.0, threading.Event()
        self.layout = self.session.layout
        self._build_scene()
        self._build_gui()

    # ------------------------------------------------------------ page
    def _build_scene(self) -> None:
        sim, scene = self.session.sim, self.server.scene
        planes = {e.name for e in sim.scenario.entities if e.type == "plane"}
        self.meshes = []  # (slot, handle)
        for i, vis in enumerate(sim.world.link_visuals()):
            info = sim.world.bodies[vis.body]
            if info.entity in planes:
                continue
            color = tuple(int(c * 255) for c in _base_color(vis))
            h = scene.add_mesh_simple(f"/world/{info.entity}/{info.link}_{i}", vis.vertices, vis.faces.astype(np.uint32),
                                      color=color)
            self.meshes.append((vis.body, h))
        for e in sim.scenario.entities:
            if e.type == "plane":
                scene.add_grid(f"/world/{e.name}", width=4.0, height=4.0, position=tuple(e.pos))
        self.frustums = {}
        for name, cam in sim.cameras.items():
            fov = 2 * np.arctan(cam.height / (2 * cam.K[0, 1, 1]))
            self.frustums[name] = scene.add_camera_frustum(f"/cameras/{name}", float(fov), cam.width / cam.height,
                                                           scale=0.15, image=np.zeros((cam.height, cam.width, 3), np.uint8))
        first = sim.scenario.cameras[0]  # the page opens near the first camera, turned 35 deg so it shows
        d = np.asarray(first.pos, dtype=float) - np.asarray(first.lookat, dtype=float)
        c, s_ = np.cos(np.radians(35)), np.sin(np.radians(35))
        d = np.array([c * d[0] - s_ * d[1], s_ * d[0] + c * d[1], d[2]])  # about +z
        self.server.initial_camera.position = tuple(np.asarray(first.lookat) + 1.2 * d)
        self.server.initial_camera.look_at = first.lookat
        self.server.initial_camera.up = first.up

    def _build_gui(self) -> None:
        gui = self.server.gui
        self.stats = gui.add_markdown("starting...")
        self.images = {}
        with gui.add_folder("Streams"):
            for name in self.session.cameras:
                self.images[(name, "refined")] = gui.add_image(np.zeros((8, 8, 3), np.uint8), label=f"{name}: refined")
                self.images[(name, "coarse")] = gui.add_image(np.zeros((8, 8, 3), np.uint8), label=f"{name}: coarse")
                if self.session.cfg.raster_reference:
                    self.images[(name, "reference")] = gui.add_image(np.zeros((8, 8, 3), np.uint8),
                                                                     label=f"{name}: reference (Genesis raster)")
        with gui.add_folder("Session"):
            self.pause_box = gui.add_checkbox("pause", self.paused)
            self.step_button = gui.add_button("step")
            self.seed_box = gui.add_number("seed", int(self.session.root_seed), min=0, step=1)
            self.reset_button = gui.add_button("reset")
            self.record_path = gui.add_text("record to", str(Path("sessions") / f"{self.session.template.name}.jsonl"))
            self.record_box = gui.add_checkbox("record", False)
        self.pause_box.on_update(lambda _: self.requests.put(("pause", self.pause_box.value)))
        self.step_button.on_click(lambda _: self.requests.put(("step", None)))
        self.reset_button.on_click(lambda _: self.requests.put(("reset", int(self.seed_box.value))))
        self.record_box.on_update(lambda _: self.requests.put(("record", self.record_box.value)))
        self.pushable = [c for c in self.layout.controls if c.kind in PUSH_KINDS]
        if self.pushable:
            with gui.add_folder("Push a body"):
                self.push_body = gui.add_dropdown("body", [c.entity for c in self.pushable])
                lim = max(c.limit for c in self.pushable)
                self.push_vec = gui.add_vector3("vector", (0.0, 0.0, lim), min=(-lim,) * 3, max=(lim,) * 3,
                                                step=lim / 100)
                self.push_button = gui.add_button("push")
            self.push_button.on_click(lambda _: self.requests.put(("push", (self.push_body.value,
                                                                            tuple(self.push_vec.value)))))
        self.sliders = {}  # action column -> slider
        joint_cols = [i for i, n in enumerate(self.layout.names) if n.endswith(".target")]
        if joint_cols:
            with gui.add_folder("Robot joints"):
                for i in joint_cols:
                    lo, hi = float(self.layout.low[i]), float(self.layout.high[i])
                    self.sliders[i] = gui.add_slider(self.layout.names[i][: -len(".target")], lo, hi, (hi - lo) / 200,
                                                     lo)

    # ------------------------------------------------------------ loop
    def run(self, steps: int = 0) -> None:
        """Step (unless paused) until `stop` is set or `steps` steps are done (0: forever)."""
        self.env.reset(seed=int(self.seed_box.value))
        self._sync_sliders()
        self._show()
        last = time.perf_counter()
        while not self.stop.is_set() and (steps <= 0 or self.steps_done < steps):
            one = self._handle_requests()
            if self.paused and not one:
                time.sleep(0.02)
                continue
            self._step()
            now = time.perf_counter()
            if self.fps_cap > 0:
                time.sleep(max(0.0, 1.0 / self.fps_cap - (now - last)))
                now = time.perf_counter()
            self.rate = 0.8 * self.rate + 0.2 / max(now - last, 1e-6) if self.rate else 1.0 / max(now - last, 1e-6)
            last = now

    def _handle_requests(self) -> bool:
        """Apply queued page requests; True when one asked for a single step."""
        step = False
        self.push = None
        while True:
            try:
                kind, value = self.requests.get_nowait()
            except queue.Empty:
                return step
            if kind == "pause":
                self.paused = bool(value)
            elif kind == "step":
                step = True
            elif kind == "push":
                self.push = value
                step = step or self.paused
            elif kind == "reset":
                self.env.reset(seed=value)
                self._sync_sliders()
                self._show()
            elif kind == "record":
                self._record(bool(value))

    def _record(self, on: bool) -> None:
        if on:  # a recording starts with a reset, so it replays from a known state
            self.env.record(self.record_path.value)
            self.env.reset(seed=int(self.seed_box.value))
            self._sync_sliders()
            self._show()
        else:
            self.env.stop_recording()

    def _step(self) -> None:
        if self.session.ended.all():
            self.env.reset()  # the next episode: the viewer keeps running
            self._sync_sliders()
        self.env.step(self.action())
        self.steps_done += 1
        self._show()

    def action(self) -> np.ndarray:  # -> [A] float32
        """The action of the next step: joint targets from the sliders, the queued push (once)."""
        a = self.layout.neutral(self.session.sim.world, self.session.n_envs)[0]
        for i, s in self.sliders.items():
            a[i] = s.value
        push = getattr(self, "push", None)
        if push is not None:
            body, vec = push
            for c, part in zip(self.layout.controls, self.layout.parts):
                if c.kind in PUSH_KINDS and c.entity == body:
                    a[part] = np.clip(vec, -c.limit, c.limit)
                    break
            self.push = None
        return a

    def _sync_sliders(self) -> None:
        a = self.layout.neutral(self.session.sim.world, self.session.n_envs)[0]
        for i, s in self.sliders.items():
            s.value = float(a[i])

    def _show(self) -> None:
        s, frame = self.session, self.session.frame
        pos, quat = frame.state.body_pos[0].numpy(), frame.state.body_quat[0].numpy()
        coarse = self.env.observer.batch(frame)  # the same arrays the env observes
        with self.server.atomic():
            for slot, h in self.meshes:
                h.position, h.wxyz = tuple(map(float, pos[slot])), tuple(map(float, quat[slot]))
            for name, cam in s.sim.cameras.items():
                view = cam.viewmat[0]
                rot = view[:3, :3].T  # camera -> world
                self.frustums[name].position = tuple(map(float, -rot @ view[:3, 3]))
                self.frustums[name].wxyz = _wxyz(rot)
                self.frustums[name].image = s.refined[name][0]
                self.images[(name, "refined")].image = s.refined[name][0]
                self.images[(name, "coarse")].image = _coarse(frame, name, coarse)
                if (name, "reference") in self.images and frame.reference:
                    self.images[(name, "reference")].image = frame.reference[name].rgb[0]
        t = s.last
        self.stats.content = (f"**{self.rate:.1f} steps/s** · action → refined frame **{t.total_s * 1e3:.0f} ms** "
                              f"(physics {t.physics_s * 1e3:.0f}, render {t.render_s * 1e3:.0f}, refine "
                              f"{t.refine_s * 1e3:.0f}) · frame {frame.index} · t = {frame.t:.2f} s · seed "
                              f"{s.root_seed} ep {s.episode}{' · recording' if s.recorder is not None else ''}"
                              f"{' · paused' if self.paused else ''}")


def _coarse(frame, name: str, obs: dict) -> np.ndarray:
    if "coarse" in obs:
        return obs["coarse"][name][0]
    from hybridsim.interactive.session import _srgb8
    from render import linear_to_srgb

    return _srgb8(linear_to_srgb(frame.gbuffer[name].rgb[:, 0]))[0]


def _base_color(vis) -> tuple:
    if vis.texture is not None:
        return tuple(np.asarray(vis.texture, dtype=np.float64).reshape(-1, 3).mean(0) / 255.0)
    return vis.color


def _wxyz(rot: np.ndarray) -> tuple:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rot).as_quat()
    return (float(w), float(x), float(y), float(z))


def serve(scenario="default", overrides=(), port: int = 8080, host: str = "127.0.0.1", **env_options):
    """-> (Viewer, viser server) for `scenario`, not yet running (call viewer.run())."""
    import viser

    from hybridsim.interactive.env import HybridSimEnv

    env = HybridSimEnv(scenario, overrides=tuple(overrides), images=("coarse",), **env_options)
    server = viser.ViserServer(host=host, port=port, label=f"hybridsim: {env.session.template.name}", verbose=False)
    return server, env


def main(overrides: list[str]) -> int:
    """CLI: hybridsim view scenario=NAME [port=8080] [host=127.0.0.1] [seed=0] [paused=true] [record=FILE]
    [steps=N (stop after N steps)] [fps=F (cap)] and run overrides (reference=raster,
    scenario.timing.duration=60, refine.enabled=false, ...)."""
    from hybridsim.scenario.spec import SpecError

    opts, run_overrides = dict(DEFAULTS), []
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq:
            raise SpecError("view", f"{o!r} is not key=value; e.g. hybridsim view scenario=franka_push port=8080")
        if key not in DEFAULTS:
            run_overrides.append(o)
            continue
        try:
            opts[key] = (value.lower() in ("1", "true", "yes")) if isinstance(DEFAULTS[key], bool) else \
                type(DEFAULTS[key])(value)
        except ValueError:
            raise SpecError(key, f"{value!r} is not a {type(DEFAULTS[key]).__name__}") from None
    if not 0 < opts["port"] < 65536:
        raise SpecError("port", f"{opts['port']} is not a TCP port; use e.g. 8080")
    server, env = serve(opts["scenario"], run_overrides, opts["port"], opts["host"])
    viewer = Viewer(env, server, paused=opts["paused"], fps=opts["fps"])
    viewer.seed_box.value = opts["seed"]
    if opts["record"]:
        viewer.record_path.value = opts["record"]
        env.record(opts["record"])
    print(f"hybridsim view: http://{opts['host']}:{server.get_port()} (from another machine: ssh -L "
          f"{server.get_port()}:localhost:{server.get_port()} <this host>, then open http://localhost:{server.get_port()})")
    try:
        viewer.run(opts["steps"])
    except KeyboardInterrupt:
        pass
    finally:
        env.stop_recording()
        server.stop()
        env.close()
    return 0
