"""How the cleaning job's driver allocates, so that what a stage frees goes back to the
system and its peak is what the stages hold at once (`scripts/bench/scale.py`).

Two allocators keep freed memory by default:
- Arrow's default pool (mimalloc) keeps what its threads freed in per-thread heaps,
  ~100 MiB more at 2,000 files (docs/cleaning.md): the system pool instead.
- glibc raises its mmap threshold after each large block it frees (up to 32 MiB), so
  the next arrays of a few MiB (an Arrow column of one shard, a numpy array) come from
  the heap, where freed pages stay behind later allocations: at 1M synthetic rows the
  driver's peak was 959 MB with the moving threshold and 882 MB with a fixed one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, held fixed


def return_freed_memory() -> bool:
    """Set this process up as the job's driver; False where glibc is not the allocator
    (then only Arrow's pool changes)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
