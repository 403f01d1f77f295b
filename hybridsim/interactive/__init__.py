"""Interactive use (docs/interactive.md): Gymnasium environments over a scenario, branching and
replay of sessions, a live viewer.

    import hybridsim
    env = hybridsim.make_env("franka_push")            # gymnasium.Env
    envs = hybridsim.make_vec_env("default", num_envs=4)  # gymnasium.vector.VectorEnv

Importing this package registers every shipped scenario with Gymnasium as
`hybridsim/<scenario>-v0` (gymnasium.make("hybridsim/default-v0")). The environment classes
import gymnasium; this module imports only what registration needs.
"""

from __future__ import annotations

from hybridsim.interactive.errors import InteractiveError
from hybridsim.interactive.registration import make_env, make_vec_env, register_envs

__all__ = ["InteractiveError", "make_env", "make_vec_env", "register_envs"]

register_envs()
