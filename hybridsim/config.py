"""Config composition: Hydra YAML shipped in the package -> typed `RunConfig`.

`compose(overrides)` is the one entry point (CLI and Python alike). Stage constructors never see a
DictConfig: everything is converted to dataclasses here and validated before heavy work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridsim.scenario.convert import _build, _plain
from hybridsim.scenario.spec import Scenario, SpecError


MAX_ENVS = 4096  # parallel environments of one run; the memory estimate (runner.preflight) may allow fewer


@dataclass
class RenderConfig:
    enabled: bool = True  # coarse splat render + labels
    backend: str = "auto"  # auto | torch | gsplat
    density: float = 48000.0  # Gaussians per m^2 on object surfaces (spacing ~0.5 cm)
    plane_density: float = 555.0  # Gaussians per m^2 on ground planes (the cap over 6 m)
    plane_size: float = 6.0  # metres: splatted extent of an infinite plane (analytic_planes=false)
    analytic_planes: bool = True  # draw planes exactly behind the splats, up to plane_far
    plane_far: float = 20.0  # metres along the view axis: the reference camera's far clip (Genesis' default)
    max_gaussians: int = 20000  # per body
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lit: bool = True  # lit splat render (environment + sun + shadow map): lit_<camera>.mp4, the refiner's input


@dataclass
class PathtraceSettings:
    samples: int = 16  # Cycles samples per pixel
    denoise: bool = True  # OpenImageDenoise
    threads: int = 1  # Cycles render threads (0 = all cores)
    seed: int = 0  # Cycles' sampling seed (fixed: the same state renders the same image)


@dataclass
class RefineSettings:
    enabled: bool = True  # refined_<camera>.mp4 when a refiner is available
    weights: str | None = None  # folder with a saved refiner; None = the default shipped model
    steps: int | None = None  # denoising steps per block; None = the model's default
    sigmas: list[float] | None = None  # explicit noise levels per block (overrides steps); None = default
    noise: str | None = None  # "zero", "static" or "fresh" sampler noise; None = the model's saved choice
    device: str = "auto"
    overlap: bool = True  # refine on a worker thread while the next block is simulated and rendered


@dataclass
class RunConfig:
    scenario: Scenario
    n_envs: int = 1
    episode: int = 0
    out_dir: str | None = None  # default: runs/<scenario.name>
    reference: str | bool = "raster"  # raster (Genesis) | pathtraced (Cycles) | both | none; true = raster
    progress: bool = True
    overwrite: bool = False
    render: RenderConfig = field(default_factory=RenderConfig)
    refine: RefineSettings = field(default_factory=RefineSettings)
    pathtrace: PathtraceSettings = field(default_factory=PathtraceSettings)

    def __post_init__(self) -> None:
        self.reference = reference_mode(self.reference)

    @property
    def raster_reference(self) -> bool:
        return self.reference in ("raster", "both")

    @property
    def pathtraced_reference(self) -> bool:
        return self.reference in ("pathtraced", "both")

    @classmethod
    def from_dict(cls, data: dict, base_dir=None) -> "RunConfig":
        data = dict(data)
        if "scenario" not in data:
            raise SpecError("scenario", "missing; pass scenario=NAME")
        scenario = Scenario.from_dict(data.pop("scenario"), "scenario", base_dir)
        rest = _build(_RunRest, data, "")
        cfg = cls(scenario=scenario, **{f.name: getattr(rest, f.name) for f in dataclasses.fields(_RunRest)})
        if cfg.n_envs < 1:
            raise SpecError("n_envs", f"must be >= 1, got {cfg.n_envs}")
        if cfg.n_envs > MAX_ENVS:
            raise SpecError("n_envs", f"must be <= {MAX_ENVS}, got {cfg.n_envs}; for more episodes use "
                                      "hybridsim batch (episodes=N), which runs them n_envs at a time")
        if cfg.episode < 0:
            raise SpecError("episode", f"must be >= 0, got {cfg.episode}")
        if cfg.render.backend not in ("auto", "torch", "gsplat"):
            raise SpecError("render.backend", f"'{cfg.render.backend}' is not one of auto, torch, gsplat")
        p = cfg.pathtrace
        if not 1 <= p.samples <= 65536 or p.threads < 0:
            raise SpecError("pathtrace", f"samples={p.samples} must be in 1..65536 and threads={p.threads} >= 0")
        if not cfg.render.plane_far > 0:
            raise SpecError("render.plane_far", f"must be > 0 metres, got {cfg.render.plane_far}; use e.g. 20.0 "
                            "(the reference camera's far clip)")
        return cfg

    def to_dict(self) -> dict:
        out = {"scenario": self.scenario.to_dict()}
        out.update({k: v for k, v in _plain(self).items() if k != "scenario"})
        return out

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.scenario.name


@dataclass
class _RunRest:  # RunConfig without the scenario, for the generic validating builder
    n_envs: int = 1
    episode: int = 0
    out_dir: str | None = None
    reference: Any = "raster"  # checked by reference_mode
    progress: bool = True
    overwrite: bool = False
    render: RenderConfig = field(default_factory=RenderConfig)
    refine: RefineSettings = field(default_factory=RefineSettings)
    pathtrace: PathtraceSettings = field(default_factory=PathtraceSettings)


REFERENCE_MODES = ("raster", "pathtraced", "both", "none")


def reference_mode(value) -> str:
    """`reference=` as one of REFERENCE_MODES (true = raster, false = none)."""
    if value is True:
        return "raster"
    if value is False or value is None:
        return "none"
    if value not in REFERENCE_MODES:
        raise SpecError("reference", f"{value!r} is not one of {', '.join(REFERENCE_MODES)} (or true / false)")
    return value


def config_dir() -> Path:
    """The YAML tree shipped inside the package (`configs/` in the source tree)."""
    from importlib.resources import files

    return Path(str(files("hybridsim.configs")))


def scenario_names() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "scenario").glob("*.yaml"))


def compose_dict(overrides: list[str] | tuple[str, ...] = (), config_name: str = "run") -> tuple[dict, Path | None]:
    """Compose the named config with Hydra overrides; returns (plain data, base dir for files).

    `scenario=` takes a shipped scenario name or a path to a YAML file of the same layout.
    """
    from omegaconf import OmegaConf

    overrides = list(overrides)
    for o in overrides:
        if "=" not in o:
            raise SpecError(f"override '{o}'", "expected key=value (e.g. scenario=default n_envs=2)")
    scen_file = _scenario_file(overrides)
    hydra_overrides = [o for o in overrides if not (scen_file and _is_scenario_override(o))]
    cfg = _hydra_compose(config_name, hydra_overrides)
    base_dir = None
    if scen_file is not None:
        from omegaconf.errors import OmegaConfBaseException

        from hybridsim.scenario.loading import read_scenario_file

        try:  # the file is plain data already (read_scenario_file bounds it); OmegaConf may still refuse a value
            loaded = OmegaConf.create(read_scenario_file(scen_file))
        except OmegaConfBaseException as exc:
            raise SpecError("scenario", f"'{scen_file}' has a value OmegaConf cannot hold "
                                        f"({type(exc).__name__}); check its keys and values") from None
        scen_over = [o.split(".", 1)[1] for o in overrides if o.startswith("scenario.")]
        try:
            loaded = OmegaConf.merge(loaded, OmegaConf.from_dotlist(scen_over))
        except Exception as exc:
            raise SpecError(f"override {scen_over}", str(exc).splitlines()[0][:300]) from None
        OmegaConf.set_struct(cfg, False)
        cfg.scenario = loaded
        base_dir = scen_file.parent
    return OmegaConf.to_container(cfg, resolve=True), base_dir


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "run") -> RunConfig:
    data, base_dir = compose_dict(overrides, config_name)
    return RunConfig.from_dict(data, base_dir)


def load_scenario(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """A validated Scenario from a shipped name or a YAML path, with `key=value` overrides
    relative to the scenario (e.g. `seed=3`, `entities.box.mass=2`)."""
    cfg = compose([f"scenario={name_or_path}", *(f"scenario.{o}" for o in overrides)])
    return cfg.scenario


def save_yaml(data: dict, path: str | Path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(data)))


def _is_scenario_override(o: str) -> bool:
    return o.startswith("scenario=") or o.startswith("scenario.")


def _scenario_file(overrides: list[str]) -> Path | None:
    for o in overrides:
        if o.startswith("scenario="):
            value = o.split("=", 1)[1]
            if value.endswith((".yaml", ".yml")) or "/" in value:
                p = Path(value).expanduser()
                if not p.is_file():
                    raise SpecError("scenario", f"file not found: '{value}'; give a YAML path or one of {scenario_names()}")
                return p.resolve()
            if value not in scenario_names():
                raise SpecError("scenario", f"unknown scenario '{value}'; choose from {scenario_names()} or a YAML path")
    return None


def _hydra_compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SpecError("override", _hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_message(exc: Exception) -> str:
    msg = " ".join(str(exc).split())
    cause = exc.__cause__
    if cause is not None and "not in struct" in str(cause):
        key = getattr(cause, "full_key", None) or str(cause).split("'")[1]
        return f"unknown key '{key}' ({msg.split('.')[0]}); check the spelling or prefix with + to add a key"
    return msg
