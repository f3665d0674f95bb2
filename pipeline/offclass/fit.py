"""Fitting the off-class probe on Ray without the driver holding its statistics.

Why: the probe's sufficient statistics are a d x d matrix per fold (13 MB at d = 1280),
summed over blocks of references, and whatever a process reads from or writes to the
object store stays in its memory while it lives (the store's pages remain mapped). So
each fold's statistics are summed by a task of its own over every block in block order
(`probe.one_fold_stats`: the same sums to the bit as the blocks' `fold_stats` added up),
and the probes are solved by a task whose BLAS runs the driver's thread count for the
solves (OpenBLAS's LU solve differs in its last bits with it; `threadpoolctl` sets it in
a worker that already runs, where a process of its own would cost a start and imports);
the driver receives each probe's weights, a few KiB. For a few thousand references the
solving task sums the folds itself (`ONE_TASK_ROWS`), in the same order: the same sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray

from pipeline.offclass.probe import FoldStats, References, discriminants, one_fold_stats

# Up to this many references, one task sums every fold's statistics and solves: the
# task holds the folds' statistics anyway (k x d x d float64, 66 MB at d = 1280), the
# references add n x d float16 (21 MB at the limit); a task per fold costs a task and a
# 13 MB result through the object store each, more than its sums at a few thousand
# rows (2,000 crops: the probe's 25 fold tasks and 5 solves took ~4.7 CPU-s).
ONE_TASK_ROWS = 8192


def in_one_task(references: int) -> bool:
    """Whether one task sums the folds and solves (`fold_probes`)."""
    return references <= ONE_TASK_ROWS


@ray.remote(num_cpus=1)
def _fold_task(
    refs: References, folds: np.ndarray, fold: int, n_classes: int, step: int
) -> FoldStats:
    return one_fold_stats(refs.vectors, refs.labels, folds, fold, n_classes, step)


@ray.remote(num_cpus=1)
def _solve_task(
    wanted: list[int], shrinkage: float, threads: int, *folds: FoldStats
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The probes without each fold in `wanted`, solved at `threads` BLAS threads."""
    return _solved(wanted, shrinkage, threads, folds)


@ray.remote(num_cpus=1)
def _fit_task(
    refs: References, folds: np.ndarray, n_folds: int, n_classes: int, step: int,
    wanted: list[int], shrinkage: float, threads: int,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """`_fold_task` for every fold, then `_solve_task`, in one task (few references)."""
    stats = [
        one_fold_stats(refs.vectors, refs.labels, folds, fold, n_classes, step)
        for fold in range(n_folds)
    ]
    return _solved(wanted, shrinkage, threads, stats)


def _solved(
    wanted: list[int], shrinkage: float, threads: int, folds: Sequence[FoldStats]
) -> list[tuple[np.ndarray, np.ndarray]]:
    from threadpoolctl import threadpool_limits

    names = ("sums", "counts", "scatter")
    stats = FoldStats(*(np.stack([getattr(f, name) for f in folds]) for name in names))
    with threadpool_limits(limits=threads, user_api="blas"):
        return [discriminants(stats, fold, shrinkage) for fold in wanted]


@dataclass
class Shared:
    """What one off-class run's tasks share: the references in the object store (put
    once: pages the driver writes stay in its memory) and the driver's BLAS threads."""

    refs: ray.ObjectRef
    threads: int


def share(refs: References | ray.ObjectRef) -> Shared:
    """The references put once (or already in the object store, where a task left
    them), and this process's BLAS thread count, for one run."""
    return Shared(refs if isinstance(refs, ray.ObjectRef) else ray.put(refs), blas_threads())


def blas_threads() -> int:
    """How many threads this process's BLAS runs: a probe solved elsewhere at this count
    is the one the driver would have solved (the same decisions, to the bit)."""
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def fold_probes(
    shared: Shared, ref_folds: np.ndarray, n_folds: int, n_classes: int, step: int,
    wanted: np.ndarray, shrinkage: float,
) -> ray.ObjectRef:  # fmt: skip
    """The probe (weights, offsets) fitted without each fold in `wanted`, from every
    fold's statistics over blocks of `step` references (`ref_folds`: each one's fold),
    as the reference to a list in `wanted`'s order (`ray.get` it: the fold splits of
    one run are fitted at once)."""
    folds = ray.put(ref_folds)
    keys = wanted.tolist()
    if in_one_task(len(ref_folds)):
        return _fit_task.remote(
            shared.refs, folds, n_folds, n_classes, step, keys, shrinkage, shared.threads
        )
    stats = [_fold_task.remote(shared.refs, folds, f, n_classes, step) for f in range(n_folds)]
    return _solve_task.remote(keys, shrinkage, shared.threads, *stats)
