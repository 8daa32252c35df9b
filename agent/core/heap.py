"""glibc's heap settings (mallopt(3)), set once by the process that needs them.

glibc reads the same settings from MALLOC_* variables at start: one the
environment gives is left to it. A libc without mallopt (not glibc) is left alone.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# mallopt(3) parameters (malloc.h), by the variable that sets each at start.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
_VARIABLES = {
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
    M_ARENA_MAX: "MALLOC_ARENA_MAX",
}


def set_heap(settings: Mapping[int, int], environ: Mapping[str, str] = os.environ) -> list[str]:
    """Apply each setting the environment does not give; answers the variables' names applied."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = []
    for param, value in settings.items():
        name = _VARIABLES[param]
        if name not in environ and mallopt(param, value) == 1:
            applied.append(name)
    return applied
