"""Seeds derived by hashing, so any episode or environment can be regenerated on its own."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(root: int, *keys: int | str) -> int:
    """A 63-bit seed from the root seed and a path of keys, e.g. ("episode", 3, "env", 1)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(root)).encode())
    for k in keys:
        h.update(b"/" + str(k).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def env_seeds(root: int, episode: int, n_envs: int) -> list[int]:
    """Seed of environment b of an episode: independent of n_envs, so env b of a batch of 4 equals
    a single-environment run with env_offset=b."""
    return [derive_seed(root, "episode", episode, "env", b) for b in range(n_envs)]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
