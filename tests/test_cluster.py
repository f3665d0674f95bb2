"""Both jobs on a real multi-node Ray cluster on this machine: a head (no CPUs, the
drivers attach there) and two worker raylets, each its own `ray start` process, against
the local S3 endpoint.

The jobs run the way `ray job submit` runs an entry point: a child process on the head
with RAY_ADDRESS set, the command line unchanged. Where tasks ran comes from the GCS's
task events, read by a separate driver before the cluster goes away. The last test kills
one worker node during a cleaning run; the cluster does not come back from that, so it
stays last in this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from common.storage import StorageConfig
from devkit.local_cluster import LocalCluster
from devkit.local_s3 import upload_files
from devkit.sample_lake import demo_lake
from devkit.weights import embedding_args
from pipeline.cli import main as clean_main
from pipeline.output import read_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

REPO = Path(__file__).resolve().parent.parent
WORKER_NODES = 2
# Two CPUs per worker node: a training worker (0.5 CPU) plus a Ray Data task fit beside
# it; the head advertises none, so every task runs on a worker node.
WORKER = {"num_cpus": 2, "resources": {"trainer": 1}}
FILES_PER_TASK = "2"  # many small tasks: both nodes get some, a kill lands mid-stage
NORMALISE_TASK = "normalise_block"
JOB_TIMEOUT_S = 400
LAKE_PER_CLASS = 8  # real crops per class, plus 33 messy files

TASK_EVENTS = """
import json, ray
from ray._private.state import state
ray.init(log_to_driver=False)
rows = []
for event in state._get_all_task_events():  # the GCS's store; no dashboard needed
    node = event.state_updates.node_id
    rows.append({"job": event.job_id.hex(), "name": event.task_info.name,
                 "attempt": event.attempt_number, "nodes": [node.hex()] if node else []})
print("EVENTS" + json.dumps(rows))
"""


def dashboard_missing() -> str | None:
    """Why `ray job submit` cannot run here (its HTTP API needs ray[default])."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return f"ray job submit needs ray[default]: {error}" if error else None


@pytest.fixture(scope="module")
def cluster(s3):
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {"PYTHONPATH": path, **s3.env()}
    with LocalCluster(head_cpus=0, env=env, dashboard=dashboard_missing() is None) as c:
        c.start([WORKER] * WORKER_NODES)
        yield c


@pytest.fixture(scope="module")
def lake(s3) -> str:
    """Real crops in 4 classes plus every messy case (corrupt, SVG, ...): 65 files."""
    bucket = "cluster-lake"
    s3.create_bucket(bucket)
    upload_files(s3.filesystem(), f"{bucket}/raw", demo_lake(per_class=LAKE_PER_CLASS, mess=0))
    return f"s3://{bucket}"


def submit(cluster: LocalCluster, *args: str) -> subprocess.Popen:
    """What `ray job submit -- python -m ...` does: run the entry point on the head with
    RAY_ADDRESS pointing at the cluster."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**cluster.node_env(), "RAY_ADDRESS": cluster.address},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = JOB_TIMEOUT_S) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def clean_args(lake: str, output: str) -> list[str]:
    return [
        f"{lake}/raw", f"{lake}/{output}", "--files-per-task", FILES_PER_TASK, "--no-progress",
        *embedding_args(),
    ]  # fmt: skip


def task_events(cluster: LocalCluster) -> list[dict]:
    out = finish(submit(cluster, "-c", TASK_EVENTS), timeout=120)
    return json.loads(out.split("EVENTS", 1)[1].splitlines()[0])


def nodes_by_job(events: list[dict], name_part: str) -> dict[str, set[str]]:
    found = defaultdict(set)
    for event in events:
        if name_part in event["name"]:
            found[event["job"]].update(event["nodes"])
    return found


def outcome(uri: str) -> tuple[dict, dict]:
    """{source_uri: (sha256, split)} of kept files, {source_uri: reason} of the rest."""
    storage = StorageConfig()
    images = read_table(uri, "images", storage, ["source_uri", "sha256", "split"]).to_pylist()
    rejected = read_table(uri, "rejected", storage, ["source_uri", "reason"]).to_pylist()
    kept = {r["source_uri"]: (r["sha256"], r["split"]) for r in images}
    assert len(kept) == len(images)  # every file once
    dropped = {r["source_uri"]: r["reason"] for r in rejected}
    assert len(dropped) == len(rejected) and not kept.keys() & dropped.keys()
    return kept, dropped


@pytest.fixture(scope="module")
def single_node(lake) -> tuple[dict, dict]:
    """The reference: the same job on one local Ray (this process's, 2 CPUs)."""
    assert clean_main(["clean", *clean_args(lake, "clean-single")]) == 0
    return outcome(f"{lake}/clean-single")


@pytest.fixture(scope="module")
def cluster_clean(cluster, lake) -> str:
    finish(submit(cluster, "-m", "pipeline", "clean", *clean_args(lake, "clean-cluster")))
    return f"{lake}/clean-cluster"


def test_cluster_is_three_nodes_and_only_workers_have_cpus(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 1 + WORKER_NODES
    cpus = sorted(n["resources"].get("CPU", 0) for n in nodes)
    assert cpus == [0] + [WORKER["num_cpus"]] * WORKER_NODES


def test_clean_spreads_over_nodes_and_equals_a_single_node_run(
    cluster, s3, lake, cluster_clean, single_node
):
    kept, dropped = outcome(cluster_clean)
    assert (kept, dropped) == single_node  # same kept files, same content, same split
    listed = {f"{lake}/raw/{name}" for name in demo_lake(per_class=LAKE_PER_CLASS, mess=0)}
    assert kept.keys() | dropped.keys() == listed
    assert {split for _, split in kept.values()} == {"train", "test"}

    ran_on = nodes_by_job(task_events(cluster), NORMALISE_TASK)
    workers = {n.node_id for n in cluster.nodes if n.name != "head"}
    assert len(ran_on) == 1, ran_on  # one cleaning job so far
    (nodes,) = ran_on.values()
    assert nodes == workers, (nodes, workers)
    # The tasks holding a row per file (planning, the decisions, the report's figures)
    # ran on a worker: the head, which advertises no CPU, keeps only the driver.
    for task in ("make_plan", "stage_decided", "read_version"):
        (ran,) = nodes_by_job(task_events(cluster), task).values()
        assert len(ran) == 1 and ran <= workers, (task, ran, workers)


def test_ray_job_submit_runs_the_clean_job_unchanged(cluster, lake, single_node):
    if reason := dashboard_missing():
        pytest.skip(reason)
    command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address",
               cluster.dashboard_url, "--", sys.executable, "-m", "pipeline", "clean",
               *clean_args(lake, "clean-submitted")]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=cluster.node_env(), capture_output=True, text=True,
        timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    assert outcome(f"{lake}/clean-submitted") == single_node


def test_training_runs_one_worker_per_node(cluster, s3, cluster_clean):
    run = f"{cluster_clean.rsplit('/', 1)[0]}/runs/cluster"
    finish(
        submit(
            cluster, "-m", "train", "fit", cluster_clean, run,
            "--workers", "2", "--cpus-per-worker", "0.5", "--worker-resource", "trainer",
            "--input-size", "64", "--batch-size", "8", "--weights", "none", "--epochs", "1",
        )
    )  # fmt: skip
    fs = s3.filesystem()
    root = run.removeprefix("s3://")
    metrics = json.loads(fs.cat_file(f"{root}/metrics.json"))
    assert metrics["epochs"] == 1 and 0.0 <= metrics["accuracy"] <= 1.0
    assert fs.find(f"{root}/ray")  # checkpoints on shared storage: any node can resume

    ran_on = nodes_by_job(task_events(cluster), "RayTrainWorker")
    (nodes,) = [n for n in ran_on.values() if n]
    workers = {n.node_id for n in cluster.nodes if n.name != "head"}
    assert nodes == workers, (nodes, workers)


def wait_until_running(cluster: LocalCluster, node: str, task: str, job: subprocess.Popen) -> None:
    """Until one of `node`'s worker processes executes `task` (its title: ray::<task>)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline and job.poll() is None:
        if any(title.startswith("ray::") and task in title for title in cluster.running(node)):
            return
        time.sleep(0.02)
    raise AssertionError(f"{node} never ran {task} (job exit: {job.poll()})")


def test_clean_finishes_when_a_node_dies_mid_run(cluster, s3, lake, single_node):
    output = f"{lake}/clean-node-lost"
    job = submit(cluster, "-m", "pipeline", "clean", *clean_args(lake, "clean-node-lost"))
    try:
        wait_until_running(cluster, "worker2", NORMALISE_TASK, job)
        cluster.kill_node("worker2")  # raylet, object store and workers, without warning
        published = s3.filesystem().exists(f"{output.removeprefix('s3://')}/_manifest.json")
        assert not published and job.poll() is None  # the kill landed while the job ran
        cluster.wait_node_dead("worker2")
        finish(job)
    finally:
        if job.poll() is None:
            job.kill()
    # Every input file exactly once, with the outcome of the single-node run.
    assert outcome(output) == single_node

    # The task the dead node was running ran again elsewhere.
    events = task_events(cluster)
    job_id = max((e["job"] for e in events if NORMALISE_TASK in e["name"]), key=job_number)
    attempts = [e["attempt"] for e in events if e["job"] == job_id and NORMALISE_TASK in e["name"]]
    assert max(attempts) >= 1, attempts


def job_number(job_id: str) -> int:
    return int.from_bytes(bytes.fromhex(job_id), "little")  # JobID hex is little-endian
