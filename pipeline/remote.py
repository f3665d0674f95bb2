"""The job's own Ray tasks that hold a row per file (the plan, the decisions): where
they run and how their failures reach the driver.

Why: those tasks' memory grows with the lake (at 10M files 1-4 GB), so they must run on
a worker node, not on the head, which runs the drivers and no task (`cluster.yaml`
advertises no CPU there). A task that reserves no CPU (they mostly wait on their own
sub-tasks, which need the CPUs) may still be placed on the head by Ray's default
policy, which prefers the caller's node: `on_a_worker` names a node that has CPUs.
"""

from __future__ import annotations

import functools
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


def on_a_worker() -> dict[str, Any]:
    """Task options that place it on the live node with CPUs and the most memory (soft:
    elsewhere if that node goes); no option where no node advertises CPUs."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        return {}
    best = max(nodes, key=lambda n: n["Resources"].get("memory", 0))
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(best["NodeID"], soft=True)}


class RowTask:
    """`fn` run in a Ray task `on_a_worker` when called (`run_on_a_worker`): the job's
    steps that hold a row per file. It reserves no CPU, as the driver did not (its own
    tasks need the CPUs while it waits on them); it runs once more if its node is lost
    (it writes the same files again); its process returns what it frees to the system
    (`pipeline.driver_memory`), so its peak is what it holds at once."""

    def __init__(self, fn: Callable[..., Any], what: str) -> None:
        self.what = what
        self.remote = ray.remote(num_cpus=0, max_retries=1)(_freeing(fn))

    def __call__(self, *args: Any) -> Any:
        return run_on_a_worker(self.remote, self.what, *args)


def _freeing(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # Ray names the task (and its process) after `fn`
    def run(*args: Any) -> Any:
        return_freed_memory()
        return fn(*args)

    return run


def run_on_a_worker(remote: Any, what: str, *args: Any) -> Any:
    """`remote(*args)` (a Ray remote function) placed `on_a_worker`, its result or its
    error as raised there (`task_result`); a worker that died on each try (the OOM
    killer, a lost node) stops the job with `StageFailed`, in one line."""
    try:
        return task_result(remote.options(**on_a_worker()).remote(*args))
    except WORKER_DEATHS as exc:
        raise StageFailed(
            f"{what}: its worker died ({type(exc).__name__}); it holds a few hundred bytes "
            "a file, so a large lake may need a node with more memory: see the Ray worker logs"
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
