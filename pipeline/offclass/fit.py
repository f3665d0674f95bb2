"""Fitting the off-class probe on Ray without the driver holding its statistics.

Why: the probe's sufficient statistics are folds x d x d floats (65 MB at d = 1280) per
block of references, summed over the blocks, and every fold's probe is solved from a
d x d matrix; whatever the driver reads from or writes to the object store stays in
its memory (the store's pages remain mapped). So blocks are added up by a chain of
tasks (in block order: the same sum to the bit), and the probes are solved by an actor
whose BLAS runs the driver's thread count (OpenBLAS's LU solve differs in its last bits
with it); the driver receives each probe's weights, a few KiB.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import ray

from pipeline.offclass.probe import FoldStats, References, discriminants, fold_stats, summed_stats

# Blocks of the probe's statistics computed ahead of the one being added up: enough to
# keep a few CPUs busy, few enough that the object store holds a bounded number of them
# (each is folds x d x d floats, 65 MB at d = 1280; 20 of them at 20,000 files).
STATS_IN_FLIGHT = 4
BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@ray.remote(num_cpus=1)
def _stats_task(
    refs: References, start: int, stop: int, folds: np.ndarray, n_folds: int, n_classes: int
) -> FoldStats:
    return fold_stats(
        refs.vectors[start:stop], refs.labels[start:stop], folds[start:stop], n_folds, n_classes
    )


@ray.remote(num_cpus=1)
def _add_task(total: FoldStats | None, part: FoldStats) -> FoldStats:
    """The running sum of the blocks' statistics with one more block added."""
    if total is None:
        return summed_stats(iter([part]))
    return FoldStats(
        total.sums + part.sums, total.counts + part.counts, total.scatter + part.scatter
    )


def summed_stats_ref(blocks: list[tuple]) -> ray.ObjectRef:
    """`_stats_task` over `blocks`, added up in block order by a chain of `_add_task`s
    (the same sum to the bit as `summed_stats`), with at most STATS_IN_FLIGHT blocks
    computed ahead. The sum stays in the object store: the driver never holds it, and
    no task waits on another (a waiting task keeps a worker process to itself)."""
    total, pending = None, deque()
    for args in blocks:
        pending.append(_stats_task.remote(*args))
        if len(pending) >= STATS_IN_FLIGHT:
            total = _add_task.remote(total, pending.popleft())
            ray.wait([total])
    while pending:
        total = _add_task.remote(total, pending.popleft())
    return total


@ray.remote(num_cpus=0)
class _Prober:
    """Solves the probes of one off-class run, in a process whose BLAS runs the
    driver's thread count (`blas_like_this_process`); an actor, so that process is
    started once, not again for every fold split."""

    def fit(self, stats: FoldStats, fold: int, shrinkage: float) -> tuple[np.ndarray, ...]:
        return discriminants(stats, fold, shrinkage)


@dataclass
class Shared:
    """What one off-class run's tasks share: the references in the object store (put
    once: pages the driver writes stay in its memory) and the prober."""

    refs: ray.ObjectRef
    prober: ray.actor.ActorHandle


def share(refs: References) -> Shared:
    """The references put once and a prober started, for one off-class run."""
    return Shared(ray.put(refs), _Prober.options(runtime_env=blas_like_this_process()).remote())


def blas_like_this_process() -> dict:
    """A runtime_env whose BLAS runs as many threads as this process's: OpenBLAS's LU
    solve differs in its last bits with the thread count, and a probe fitted elsewhere
    must be the one the driver would have fitted (the same decisions, to the bit)."""
    from threadpoolctl import threadpool_info

    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    threads = str(max(blas, default=1))
    return {"env_vars": {name: threads for name in BLAS_THREADS_ENV}}


def fold_probes(
    stats: ray.ObjectRef, folds: np.ndarray, shrinkage: float, prober: ray.actor.ActorHandle
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each of `folds`' probe (weights, offsets), fitted by `prober` from the summed
    statistics: the driver receives a few KiB per fold, never the d x d sums (13 MB a
    fold; object-store pages the driver reads stay in its memory)."""
    keys = folds.tolist()
    fits = ray.get([prober.fit.remote(stats, f, shrinkage) for f in keys])
    return dict(zip(keys, fits, strict=True))
