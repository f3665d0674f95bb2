"""Fitting the off-class probe on Ray without the driver holding its statistics.

Why: the probe's sufficient statistics are a d x d matrix per fold (13 MB at d = 1280),
summed over blocks of references, and whatever a process reads from or writes to the
object store stays in its memory while it lives (the store's pages remain mapped). So
each fold's statistics are summed by a task of its own over every block in block order
(`probe.one_fold_stats`: the same sums to the bit as the blocks' `fold_stats` added up),
and the probes are solved by an actor whose BLAS runs the driver's thread count
(OpenBLAS's LU solve differs in its last bits with it); the driver receives each probe's
weights, a few KiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from pipeline.offclass.probe import FoldStats, References, discriminants, one_fold_stats

BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@ray.remote(num_cpus=1)
def _fold_task(
    refs: References, folds: np.ndarray, fold: int, n_classes: int, step: int
) -> FoldStats:
    return one_fold_stats(refs.vectors, refs.labels, folds, fold, n_classes, step)


@ray.remote(num_cpus=0)
class _Prober:
    """Solves the probes of one off-class run in a process whose BLAS runs the driver's
    thread count (`blas_like_this_process`); an actor, so that process starts once, not
    again for every fold split."""

    def fit(self, wanted: list[int], shrinkage: float, *folds: FoldStats) -> list[tuple]:
        names = ("sums", "counts", "scatter")
        stats = FoldStats(*(np.stack([getattr(f, name) for f in folds]) for name in names))
        return [discriminants(stats, fold, shrinkage) for fold in wanted]


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
    shared: Shared, ref_folds: np.ndarray, n_folds: int, n_classes: int, step: int,
    wanted: np.ndarray, shrinkage: float,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The probe (weights, offsets) fitted without each fold in `wanted`, from every
    fold's statistics over blocks of `step` references (`ref_folds`: each one's fold)."""
    folds = ray.put(ref_folds)
    stats = [_fold_task.remote(shared.refs, folds, f, n_classes, step) for f in range(n_folds)]
    keys = wanted.tolist()
    fits = ray.get(shared.prober.fit.remote(keys, shrinkage, *stats))
    return dict(zip(keys, fits, strict=True))
