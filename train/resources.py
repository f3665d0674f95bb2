"""What the Ray Train workers reserve, against what the cluster has, before training.

Why: a worker that reserves a CPU holds it for the whole run, and Ray Data's read,
decode and augmentation tasks need one CPU each. Workers that reserve every CPU leave
none, and the run waits for its first batch forever (on a 2-CPU machine, `--workers 2`
at one CPU each did exactly that). So when the user did not choose `--cpus-per-worker`,
each worker takes a fraction that leaves one CPU free; when the user's own choice cannot
fit, the job stops within seconds naming the flags to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from train.config import ScalingSection

DATA_CPUS = 1.0  # one Ray Data task needs one whole CPU
MIN_WORKER_CPUS = 0.1  # below this a worker's torch step would crawl
CPU_STEP = 0.05  # automatic shares are rounded down to this


class ResourceError(Exception):
    """The workers cannot run on this cluster as configured."""


@dataclass(frozen=True)
class Node:
    """One alive Ray node's total resources (what a placement can ever get there)."""

    cpus: float
    gpus: float = 0.0
    custom: float = 0.0  # units of --worker-resource


def cluster_nodes(worker_resource: str | None) -> list[Node]:
    import ray

    return [
        Node(
            float(n["Resources"].get("CPU", 0.0)),
            float(n["Resources"].get("GPU", 0.0)),
            float(n["Resources"].get(worker_resource, 0.0)) if worker_resource else 0.0,
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def automatic_cpus(scaling: ScalingSection, nodes: list[Node]) -> float:
    """One CPU per worker, or a share that leaves DATA_CPUS free for Ray Data."""
    if scaling.gpu:
        return 1.0  # GPU nodes carry their own CPUs; the data tasks are not the bottleneck
    spare = sum(n.cpus for n in nodes) - DATA_CPUS
    share = math.floor(spare / scaling.workers / CPU_STEP) * CPU_STEP
    return round(min(1.0, max(n.cpus for n in nodes), share), 4)


def place(scaling: ScalingSection, cpus: float, nodes: list[Node]) -> list[float] | None:
    """CPUs left on each node after placing every worker greedily (most free CPUs
    first), or None when some worker finds no node."""
    free = [[n.cpus, n.gpus, n.custom] for n in nodes]
    for _ in range(scaling.workers):
        fits = [
            f
            for f in free
            if f[0] >= cpus
            and (not scaling.gpu or f[1] >= 1)
            and (not scaling.worker_resource or f[2] >= 1)
        ]
        if not fits:
            return None
        target = max(fits, key=lambda f: f[0])
        target[0] -= cpus
        target[1] -= 1 if scaling.gpu else 0
        target[2] -= 1 if scaling.worker_resource else 0
    return [f[0] for f in free]


def describe(nodes: list[Node]) -> str:
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    return f"{len(nodes)} node(s), {cpus:g} CPU(s)" + (f", {gpus:g} GPU(s)" if gpus else "")


def plan_worker_cpus(scaling: ScalingSection, nodes: list[Node]) -> float:
    """The CPUs each worker reserves; raises ResourceError (naming the flags) when the
    workers cannot all be placed with a CPU left over for Ray Data."""
    if not nodes:
        raise ResourceError("the Ray cluster has no alive node")
    chosen = scaling.cpus_per_worker
    cpus = chosen if chosen is not None else automatic_cpus(scaling, nodes)
    setting = f"--workers {scaling.workers} x --cpus-per-worker {cpus:g}"
    if chosen is None:
        setting += " (automatic)"
    if cpus < MIN_WORKER_CPUS and chosen is None:
        raise ResourceError(
            f"{setting}: {describe(nodes)} leave too little for {scaling.workers} workers "
            f"after {DATA_CPUS:g} CPU for Ray Data; lower --workers"
        )
    left = place(scaling, cpus, nodes)
    if left is None:
        extra = ""
        if scaling.gpu:
            extra += " with a GPU each (--gpu)"
        if scaling.worker_resource:
            extra += f" with one '{scaling.worker_resource}' each (--worker-resource)"
        raise ResourceError(
            f"{setting}{extra} do not fit on {describe(nodes)}; lower --workers or "
            "--cpus-per-worker"
        )
    if max(left) < DATA_CPUS:
        raise ResourceError(
            f"{setting} reserve the CPUs of {describe(nodes)} and leave no whole CPU for "
            "Ray Data's decode tasks, so training would wait forever for its first batch; "
            "lower --workers or --cpus-per-worker (e.g. leave it out: a share is chosen)"
        )
    return cpus
