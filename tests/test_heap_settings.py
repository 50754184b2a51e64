"""The pipeline process's heap settings (``zoo_core.pipeline.memory``), measured by what they are for: page faults.

Each case runs in a fresh interpreter, so the heap's state is only what the case itself did (glibc raises its
trim threshold whenever a large chunk is freed, which an earlier test in this process may have done)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_LOOP = textwrap.dedent("""
    import resource
    import numpy as np
    {setup}
    a = np.ones(150_000, np.float32)  # 600 KB: under the 1 MiB mmap threshold, served from the heap
    del a
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        a = np.ones(150_000, np.float32)
        del a
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
""")


def _faults(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", _LOOP.format(setup=setup)], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_pipeline_keeps_freed_heap_pages_instead_of_faulting_them_in_per_image():
    """Before: the mmap threshold fixed alone left glibc's default 128 KiB trim threshold, and a 600 KB array allocated and freed 200 times faulted
    ~23,000 pages (the freed top of the heap went back to the system each time); a serial Star-Clouds eval ran
    ~15 % slower unless a large chunk had happened to be freed first (reading a WIDER .mat did)."""
    mmap_fixed_only = _faults("import ctypes; ctypes.CDLL('libc.so.6').mallopt(-3, 1 << 20)")  # the old setting
    kept = _faults("from zoo_core.pipeline.memory import return_big_blocks; return_big_blocks()")
    assert mmap_fixed_only > 20 * 150  # the case measures what it should: re-faults on most iterations
    assert kept < 200, (kept, mmap_fixed_only)
