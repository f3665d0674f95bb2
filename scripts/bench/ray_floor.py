"""What a Ray Data job costs before it does any work: the floor under the cleaning job's
CPU per file on a small lake.

This process joins Ray as the cleaning job does (`common.ray_runtime.ensure_ray`: a
local Ray with num_cpus=2 and the job's settings), runs two one-row blocks through a
`map_batches` that returns them as they are, and leaves; a second variant imports
torch in the two tasks, as the normalise workers do. While it runs, the sampler of
`clean_end_to_end.py` reads the CPU time of this process and every descendant (Ray's
own processes, its workers, Ray Data's actors) every 0.2 s. Printed: each variant's
wall time and CPU seconds by role, in a fresh process each (a Ray per process).

    .venv/bin/python scripts/bench/ray_floor.py

The whole job's fixed costs (this floor plus its own tasks) come from
`clean_end_to_end.py --files 20 --scales 1`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import ray

import psutil  # isort: skip - Ray's bundled copy, on sys.path once ray is imported

from _common import REPO, print_table
from clean_end_to_end import MemoryPeaks, sample_until

from common.ray_runtime import ensure_ray

VARIANTS = ("nothing", "torch")
SETTLE_S = 1.0  # after the run: the last samples of the actors' and workers' CPU


def _identity(batch, import_torch: bool):  # noqa: ANN001, ANN202 - a pyarrow.Table
    if import_torch:
        import torch  # noqa: F401 - what a normalise worker imports first

    return batch


def run_variant(variant: str) -> None:
    """In this process: the job's Ray, one do-nothing Ray Data run, the CPU by role."""
    import pyarrow as pa

    peaks, stop = MemoryPeaks(), threading.Event()
    sampler = threading.Thread(target=sample_until, args=(psutil.Process(), peaks, stop))
    sampler.start()
    started = time.perf_counter()
    ensure_ray(None, 2)
    blocks = [pa.table({"x": [1]}), pa.table({"x": [2]})]
    ray.data.from_arrow(blocks).map_batches(
        _identity,
        fn_kwargs={"import_torch": variant == "torch"},
        batch_format="pyarrow",
        batch_size=None,
    ).materialize()
    wall = time.perf_counter() - started
    time.sleep(SETTLE_S)
    stop.set()
    sampler.join()
    by_role = sorted(peaks.cpu_by_role().items(), key=lambda kv: -kv[1])
    print(f"{variant}: wall {wall:.1f} s, CPU {sum(peaks.cpu_seconds.values()):.1f} s")
    print_table(["role", "CPU s"], [[r, f"{s:.2f}"] for r, s in by_role], indent="  ")


def main() -> int:
    if len(sys.argv) > 1:
        run_variant(sys.argv[1])
        return 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray
    for variant in VARIANTS:
        subprocess.run([sys.executable, __file__, variant], cwd=REPO, env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
