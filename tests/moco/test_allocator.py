"""moco/allocator.py: freed memory stays with the process (glibc), and the opt-out leaves malloc as it was."""

import os
import subprocess
import sys
import textwrap

import pytest

from moco.allocator import OPT_OUT_ENV

# Allocates and frees a 64 MiB block in 16 MiB pieces (each below glibc's largest mmap threshold), and prints the
# resident-size change after the free and whether the thresholds were set.
_PROBE = textwrap.dedent("""
    import ctypes, sys
    from moco.allocator import retain_freed_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    applied = retain_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    before = rss()
    blocks = [libc.malloc(16 << 20) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, 16 << 20)  # touch every page
    peak = rss()
    for b in reversed(blocks):
        libc.free(b)
    print(applied, (peak - before) >> 20, (rss() - before) >> 20)
""")


def _probe(env_extra: dict[str, str]) -> tuple[bool, int, int]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"),
                    reason="glibc and /proc only")
def test_freed_blocks_stay_resident_and_the_opt_out_gives_them_back():
    applied, grown, kept = _probe({OPT_OUT_ENV: "1"})
    if not applied:
        pytest.skip("not glibc")
    assert grown >= 60 and kept >= 60  # reused by the next step instead of faulted in again
    applied, grown, kept = _probe({OPT_OUT_ENV: "0"})
    assert not applied and grown >= 60 and kept < 8  # glibc's defaults: mmapped blocks go back to the kernel
