"""The job's driver gives back what its stages free (`pipeline.driver_memory`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh process: allocates arrays of a few MiB with small blocks kept between them
# (as a stage's columns and its bookkeeping), frees the arrays, prints how much of
# them stayed resident. glibc's moving mmap threshold (raised by the 16 MiB array
# freed first) puts those arrays on the heap, where the small blocks pin them.
PROBE = """
import sys
import numpy as np
from pipeline.driver_memory import return_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

big = np.ones(16 * 2**20, np.uint8); del big
if sys.argv[1] == "driver":
    assert return_freed_memory()
before = rss_mb()
arrays, pins = [], []
for _ in range(100):
    arrays.append(np.ones(2 * 2**20, np.uint8))
    pins.append(bytearray(4096))
del arrays
print(round(rss_mb() - before))
"""


def _kept_mb(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_arrays_go_back_to_the_system():
    assert _kept_mb("default") > 150  # what the setting is for: 200 MiB stay behind
    assert _kept_mb("driver") < 20
