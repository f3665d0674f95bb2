"""The job's own Ray tasks that hold a row per file (planning, the decisions, the
report's figures): where they run, and how their failures and warnings reach the driver.

Why: those tasks' memory grows with the lake (at 10M files 1-4 GB), so they must run on
a worker node, not on the head, which runs the drivers and no task (`cluster.yaml`
advertises no CPU there). They ask for a hundredth of a CPU, so that a node without
CPUs can never take them (on a cold cluster the autoscaler starts a worker for them),
while they take nothing from their own sub-tasks: Ray gives a task's CPU back while it
waits in `ray.get`/`ray.wait`. `on_a_worker` prefers the CPU node with the most memory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.driver_memory import return_freed_memory
from pipeline.sink import StageFailed

# How a task's worker dies (a native crash, the OOM killer, its node lost): the stages
# that stop on them raise `StageFailed` rather than retry forever.
WORKER_DEATHS = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.NodeDiedError,
)


# What a row task reserves: not 0, which a node without CPUs (the head) could take.
ROW_TASK_CPUS = 0.01


def on_a_worker() -> dict[str, Any]:
    """Task options that place it on the live node with CPUs and the most memory, GPU
    nodes last (soft: elsewhere if that node goes); none where no node has CPUs yet."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        return {}

    def rank(node: dict[str, Any]) -> tuple[float, float]:
        return -node["Resources"].get("GPU", 0), node["Resources"].get("memory", 0)

    best = max(nodes, key=rank)
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(best["NodeID"], soft=True)}


class RowTask:
    """`fn` run in a Ray task `on_a_worker` when called (`run_on_a_worker`): the job's
    steps that hold a row per file. It runs once more if its node is lost (it writes
    the same files again); what it logs at WARNING or above is logged again on the
    driver, whose log shows the job (Ray's worker logs do not reach it)."""

    def __init__(self, fn: Callable[..., Any], what: str) -> None:
        self.what = what
        self.remote = ray.remote(num_cpus=ROW_TASK_CPUS, max_retries=1)(in_worker(fn))

    def __call__(self, *args: Any) -> Any:
        result, records = run_on_a_worker(self.remote, self.what, *args)
        for name, level, message in records:
            logging.getLogger(name).log(level, message)
        return result


def in_worker(fn: Callable[..., Any]) -> Callable[..., tuple[Any, list[tuple[str, int, str]]]]:
    """`fn` as a row task runs it: its process returns what it frees to the system
    (`pipeline.driver_memory`), so its peak is what it holds at once; returns (`fn`'s
    result, its warnings as (logger, level, message))."""

    @functools.wraps(fn)  # Ray names the task (and its process) after `fn`
    def run(*args: Any) -> tuple[Any, list[tuple[str, int, str]]]:
        return_freed_memory()
        caught = _Warnings()
        logging.getLogger().addHandler(caught)
        try:
            return fn(*args), caught.records
        finally:
            logging.getLogger().removeHandler(caught)

    return run


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def run_on_a_worker(remote: Any, what: str, *args: Any) -> Any:
    """`remote(*args)` (a Ray remote function) placed `on_a_worker`, its result or its
    error as raised there (`task_result`); a worker that died on each try (the OOM
    killer, a lost node) stops the job with `StageFailed`, in one line."""
    try:
        return task_result(remote.options(**on_a_worker()).remote(*args))
    except WORKER_DEATHS as exc:
        raise StageFailed(
            f"{what}: a worker died, its own or one of its tasks' ({type(exc).__name__}); it "
            "holds a few hundred bytes a file, so a large lake may need a node with more "
            "memory: see the Ray worker logs"
        ) from exc


def task_result(ref: ray.ObjectRef) -> Any:
    """`ray.get`, with a task's exception raised as itself (a `LakeError`, a
    `ValueError`: what the CLI reports in one line), not wrapped in Ray's error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if exc.cause is None:
            raise
        raise exc.cause from exc
