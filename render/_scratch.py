"""Thread-local scratch buffers reused across frames.

Fresh multi-megabyte tensors page-fault on first touch, which costs ~0.4 ms per MB here (a
firecracker VM): more than the arithmetic done on them. The CPU rasteriser therefore keeps its
large intermediates in named flat buffers that persist between calls. A buffer never leaves the
call that asked for it (outputs are always fresh tensors), and each thread has its own set.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

_LOCAL = threading.local()


def scratch(name: str, shape: tuple[int, ...], *, dtype=torch.float32, device=None, zero: bool = False) -> Tensor:
    """An uninitialised (or zeroed) tensor of `shape`, backed by the thread's buffer `name`."""
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = {}
    n = math.prod(shape)
    key = (name, dtype, torch.device(device) if device is not None else torch.device("cpu"))
    buf = pool.get(key)
    if buf is None or buf.numel() < n:
        buf = pool[key] = torch.empty(max(n, 1), dtype=dtype, device=key[2])
    out = buf[:n].view(shape)
    return out.zero_() if zero else out


def clear() -> None:
    """Release this thread's scratch buffers (e.g. after rendering at a much larger size)."""
    _LOCAL.pool = {}


def tune_cpu_allocator(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Opt-in and process-wide: keep freed heap memory instead of returning it to the OS.

    glibc hands large freed blocks back to the kernel, so the next frame's temporaries fault their
    pages in again; on the 2-core VM this cost the CPU rasteriser ~5 ms of its ~40 ms at 256x256
    (render/NOTES.md). This is an application's decision (it raises resident memory), so render
    never calls it itself. Returns False where glibc's mallopt is unavailable.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))
