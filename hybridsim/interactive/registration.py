"""`make_env` / `make_vec_env` and the Gymnasium registration of the shipped scenarios."""

from __future__ import annotations

ENV_ENTRY = "hybridsim.interactive.env:HybridSimEnv"
VECTOR_ENTRY = "hybridsim.interactive.vector:HybridSimVectorEnv"


def make_env(scenario="default", *overrides: str, **options):
    """A `gymnasium.Env` over one environment of `scenario` (interactive.env.HybridSimEnv)."""
    from hybridsim.interactive.env import HybridSimEnv

    return HybridSimEnv(scenario, *overrides, **options)


def make_vec_env(scenario="default", *overrides: str, num_envs: int = 1, **options):
    """A `gymnasium.vector.VectorEnv` of `num_envs` Genesis-batched environments sharing one
    refiner batch (interactive.vector.HybridSimVectorEnv)."""
    from hybridsim.interactive.vector import HybridSimVectorEnv

    return HybridSimVectorEnv(scenario, *overrides, num_envs=num_envs, **options)


def register_envs() -> list[str]:
    """Register `hybridsim/<scenario>-v0` for every shipped scenario (idempotent) -> the ids."""
    import gymnasium

    from hybridsim.config import scenario_names

    ids = []
    for name in scenario_names():
        env_id = f"hybridsim/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=ENV_ENTRY, vector_entry_point=VECTOR_ENTRY,
                               kwargs={"scenario": name}, disable_env_checker=True)
        ids.append(env_id)
    return ids
