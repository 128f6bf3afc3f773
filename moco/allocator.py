"""Keep freed memory in the process, so that each training step reuses its large tensors' pages.

A CPU training step allocates and frees tensors of several MB each (activations, the [B, K] logits of the
contrastive loss). With glibc's defaults, malloc gives blocks above its mmap threshold back to the kernel on ``free``
and trims the top of its heap above the trim threshold, so the next step faults the same pages in again, each zeroed
by the kernel. That slowed training in a process's main thread (the benchmarks, runs without Ray) and not visibly in
a second thread (where Ray Train runs the training function); ``python -m bench.step --parts allocator`` measures
both with and without.

:func:`retain_freed_memory` sets glibc's trim threshold to 1 GiB and its mmap threshold to 32 MiB (glibc's largest),
which also stops glibc from adapting them. Freed memory then stays with the process up to that much: its resident
size stays near its peak, which is what the step needs again a moment later. Where the C library is not glibc
(macOS, Windows, musl) it does nothing. ``MOCO_RETAIN_FREED_MEMORY=0`` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["retain_freed_memory", "OPT_OUT_ENV", "TRIM_THRESHOLD", "MMAP_THRESHOLD"]

OPT_OUT_ENV = "MOCO_RETAIN_FREED_MEMORY"
TRIM_THRESHOLD = 1 << 30  #: bytes of free heap top glibc keeps before giving memory back
MMAP_THRESHOLD = 32 << 20  #: blocks at least this large are mmapped (and given back on free): glibc's maximum
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


@functools.cache
def retain_freed_memory() -> bool:
    """Set glibc's malloc thresholds (module docstring) once per process; True where they were set."""
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt is a stub
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
