"""`check_vector_env`: Gymnasium's `check_env` checks, carried over to a VectorEnv (Gymnasium has a
checker for single environments only)."""

from __future__ import annotations

import numpy as np
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space


def check_vector_env(envs: VectorEnv, seed: int = 123, steps: int = 3) -> None:
    """Spaces batch the single spaces; reset/step return the documented types, observations lie in
    the observation space and are fresh arrays; a seeded reset and the same actions repeat exactly;
    the autoreset mode is declared. AssertionError on the first failure."""
    assert isinstance(envs, VectorEnv), f"{type(envs).__name__} is not a gymnasium.vector.VectorEnv"
    n = envs.num_envs
    assert envs.observation_space == batch_space(envs.single_observation_space, n), "observation_space != batched"
    assert envs.action_space == batch_space(envs.single_action_space, n), "action_space != batched"
    assert isinstance(envs.metadata.get("autoreset_mode"), AutoresetMode), "metadata['autoreset_mode'] missing"
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(steps)]
    first = _rollout(envs, seed, actions)
    second = _rollout(envs, seed, actions)
    assert data_equivalence(first, second, exact=True), "a seeded reset and the same actions did not repeat exactly"


def _rollout(envs: VectorEnv, seed: int, actions: list) -> list:
    n = envs.num_envs
    obs, info = envs.reset(seed=seed)
    _check_obs(envs, obs, "reset")
    assert isinstance(info, dict), f"reset info is a {type(info).__name__}, not a dict"
    out, prev = [obs], obs
    for a in actions:
        obs, reward, terminated, truncated, info = envs.step(a)
        _check_obs(envs, obs, "step")
        assert not any(np.shares_memory(x, y) for x, y in zip(_leaves(obs), _leaves(prev))), \
            "step returned arrays that share memory with the previous observation"
        for name, v, dtype in (("reward", reward, np.floating), ("terminated", terminated, np.bool_),
                               ("truncated", truncated, np.bool_)):
            assert isinstance(v, np.ndarray) and v.shape == (n,) and np.issubdtype(v.dtype, dtype), \
                f"{name} must be a [{n}] {dtype.__name__} array, got {type(v).__name__} {getattr(v, 'dtype', '')}"
        assert isinstance(info, dict), "step info must be a dict"
        out.append((obs, reward, terminated, truncated))
        prev = obs
    return out


def _check_obs(envs: VectorEnv, obs, where: str) -> None:
    assert envs.observation_space.contains(obs), f"{where} observation is not in the observation space"


def _leaves(obs) -> list:
    if isinstance(obs, dict):
        return [leaf for v in obs.values() for leaf in _leaves(v)]
    return [obs]
