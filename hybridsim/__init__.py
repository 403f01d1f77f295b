"""hybridsim: Genesis physics, Gaussian-splat renders and a causal video-diffusion refiner.

Quick to import: the heavy stages load on first use.

    import hybridsim
    result = hybridsim.run("default", n_envs=2)          # writes runs/default/
    ds = hybridsim.generate("default", episodes=100, n_envs=4)  # LeRobot v3.0 dataset in datasets/default/
    sim = hybridsim.Simulation(hybridsim.compose(["scenario=stack_topple"]))
    for frame in sim.frames(): ...
    env = hybridsim.make_env("franka_push")             # gymnasium.Env, a refined frame every step
    envs = hybridsim.make_vec_env("default", num_envs=4)  # gymnasium.vector.VectorEnv
"""

__version__ = "0.1.0"

_LAZY = {
    "run": "hybridsim.output.runner",
    "RunResult": "hybridsim.output.runner",
    "generate": "hybridsim.output.batch",
    "BatchResult": "hybridsim.output.batch",
    "Simulation": "hybridsim.pipeline",
    "Frame": "hybridsim.pipeline",
    "compose": "hybridsim.config",
    "load_scenario": "hybridsim.config",
    "scenario_names": "hybridsim.config",
    "RunConfig": "hybridsim.config",
    "Scenario": "hybridsim.scenario.spec",
    "Entity": "hybridsim.scenario.spec",
    "Camera": "hybridsim.scenario.spec",
    "Event": "hybridsim.scenario.spec",
    "Timing": "hybridsim.scenario.spec",
    "Appearance": "hybridsim.scenario.spec",
    "SpecError": "hybridsim.scenario.spec",
    "Lighting": "hybridsim.scenario.spec",
    "sample_scenario": "hybridsim.scenario.sampling",
    "layout_key": "hybridsim.scenario.sampling",
    "make_env": "hybridsim.interactive.registration",
    "make_vec_env": "hybridsim.interactive.registration",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybridsim' has no attribute {name!r}")


def frames(scenario="default", overrides=(), **kwargs):
    """Generator of `Frame`s for one episode (no files written); with refine.enabled each frame
    carries `frame.refined` (camera -> uint8 [B, H, W, 3]), delayed by at most one refiner block."""
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import frame_stream
    from hybridsim.output.runner import resolve_config

    cfg, base = resolve_config(scenario, overrides, **kwargs)
    yield from frame_stream(cfg, Simulation(cfg, base_dir=base))[0]
