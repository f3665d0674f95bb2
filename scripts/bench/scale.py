"""The cleaning job's driver-side stages at scale, on synthetic rows (no image decode).

    .venv/bin/python scripts/bench/scale.py --rows 100000
    .venv/bin/python scripts/bench/scale.py --rows 1000000 --work /tmp/scale

Runs the product's `pipeline.job.run_clean` end to end on N synthetic files with two
stages swapped through small hooks, and everything else (planning, de-duplication, split,
finalize, carry-over, report, review page, publish, garbage collection) as shipped:

- listing: the snapshot is generated (in Ray tasks, as Parquet) instead of listed;
  listing itself is measured on the local S3 endpoint (scripts/bench/scale_listing.py);
- normalise: Ray tasks write candidate shards of synthetic per-image results
  (`devkit.synthetic_rows`: hashes, sizes, planted duplicates) instead of decoding.

De-duplication runs on pHash alone (`embedding_weights none`): embeddings (2.5 KB a row)
would not fit 10M rows on this machine; the off-class stage is then idle. Storage is the
local filesystem (file://).

Prints per-stage seconds, then as its LAST line one JSON object: rows, wall_s (the run,
not the data generation), driver_peak_rss_mb (VmHWM of this process, which uses Arrow's
system memory pool as the job's driver does: `pipeline.cli`), worker_peak_rss_mb
(the largest VmHWM of any Ray worker process, sampled), the stage times and each
stage's highest driver RSS (sampled every 20 ms), and counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import pyarrow.parquet as pq
import ray

from common.ray_runtime import ensure_ray
from common.storage import join
from devkit import synthetic_rows as synth
from pipeline import decide, job, planning
from pipeline.config import CleanConfig
from pipeline.driver_memory import return_freed_memory
from pipeline.remote import ROW_TASK_CPUS, in_worker
from pipeline.sink import Shards, ShardWrite, write_parquet
from pipeline.tables import CANDIDATES

# (module, function): each is timed where it is looked up, so on the module that calls it.
_TIMED = (
    ("job", "plan_in_task"),  # listing (here: the synthetic snapshot) and planning: a Ray task
    ("job", "carry_over"),
    ("job", "deduplicate_and_finalize"),
    ("decide", "decide_in_task"),  # the decisions, staged per shard: a Ray task
    ("decide", "finalize_stage"),  # Ray tasks
    ("decide", "write_index"),  # one Ray task
    ("job", "figures_in_task"),  # the report's figures: a Ray task
    ("job", "build_report"),
    ("job", "review_page"),
    ("job", "publish"),
)


def _vmhwm_kb(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"default_worker.py" in cmd or cmd.startswith(b"ray::")


class _Sampler:
    """Calls `sample` every `interval_s` on a thread of its own while in its `with`."""

    interval_s = 0.5

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class WorkerPeak(_Sampler):
    """Largest VmHWM of any Ray worker descended from this driver, sampled twice a second
    (VmHWM is the process's own high-water mark, so a peak between samples still counts
    as long as the worker lives to the next sample)."""

    # The job's tasks that hold a row per file (`pipeline.remote`; the plan's is this
    # script's hook around it): their workers' peaks are reported apart, by what they do
    # (a worker's VmHWM while it runs one of them).
    ROW_TASKS = {
        "make_plan": "plan",
        "_plan_from_snapshot": "plan",
        "stage_decided": "decide",
        "read_version": "report",
    }

    def __init__(self) -> None:
        super().__init__()
        self.peak_kb = 0
        self.by_task: dict[str, int] = {}

    def sample(self) -> None:
        for pid in _descendants(os.getpid()):
            if _is_worker(pid):
                peak = _vmhwm_kb(pid)
                self.peak_kb = max(self.peak_kb, peak)
                task = self.ROW_TASKS.get(_running(pid))
                if task:
                    self.by_task[task] = max(self.by_task.get(task, 0), peak)


def _running(pid: int) -> str:
    """The task a Ray worker runs, from its process title (`ray::<task>`), else ''."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""
    return title.removeprefix("ray::").split()[0] if title.startswith("ray::") else ""


class DriverRss(_Sampler):
    """This process's RSS every 20 ms, so that each timed stage's peak can be read off
    (where the driver's memory goes: docs/cluster.md's table per stage)."""

    interval_s = 0.02

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, float]] = []
        self.calls: list[tuple[str, float, float, float]] = []  # stage, start, end, RSS then

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def sample(self) -> None:
        self.samples.append((time.perf_counter(), self.rss_mb()))

    def record(self, stage: str, started: float) -> None:
        """A stage that ran from `started` to now."""
        self.calls.append((stage, started, time.perf_counter(), self.rss_mb()))

    def peaks(self) -> dict[str, float]:
        """Each stage's highest RSS sampled while it ran (MB)."""
        out: dict[str, float] = {}
        for stage, start, end, last in self.calls:
            seen = [rss for t, rss in self.samples if start <= t <= end]
            out[stage] = max([out.get(stage, 0.0), last, *seen])
        return out


@ray.remote(num_cpus=1)
def _snapshot_part(root: str, start: int, stop: int, seed: int, path: str) -> int:
    pq.write_table(synth.snapshot_rows(root, start, stop, seed), path, compression="zstd")
    return stop - start


@ray.remote(num_cpus=1)
def _candidate_part(
    root: str, start: int, stop: int, seed: int, dup_rate: float, uri: str, storage
) -> ShardWrite:  # noqa: ANN001
    table = synth.candidate_rows(root, start, stop, seed, dup_rate)
    return ShardWrite(CANDIDATES, uri, table.num_rows, write_parquet(table, uri, storage))


@ray.remote(num_cpus=ROW_TASK_CPUS, max_retries=0)
def _plan_from_snapshot(snapshot_dir: str, *plan_args: object) -> tuple:
    def list_lake(input_uri: str, storage) -> object:  # noqa: ANN001
        return pq.read_table(snapshot_dir)

    planning.list_lake = list_lake
    return in_worker(planning.make_plan)(*plan_args)  # as `pipeline.remote.RowTask` runs it


def _ranges(rows: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


def install_hooks(
    args: argparse.Namespace, snapshot_dir: Path, timings: dict, driver: DriverRss
) -> None:
    """Swap listing and normalise for synthetic ones; time the product's stages."""

    def done(stage: str, started: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
        driver.record(stage, started)

    class SyntheticPlan:
        """`pipeline.planning`'s task, with the synthetic snapshot read instead of a
        listing (in the task's process: the hook travels with the call)."""

        @classmethod
        def options(cls, **_: object) -> type:
            return cls

        @staticmethod
        def remote(*plan_args: object) -> ray.ObjectRef:
            return _plan_from_snapshot.remote(str(snapshot_dir), *plan_args)

    def normalise_stage(plan, cfg: CleanConfig, stage: str, features=None) -> Shards:  # noqa: ANN001
        started = time.perf_counter()
        refs = [
            _candidate_part.remote(
                cfg.input_uri,
                a,
                b,
                args.seed,
                args.dup_rate,
                join(stage, CANDIDATES, f"part-{a:010d}.parquet"),
                cfg.storage,
            )
            for a, b in _ranges(plan.todo, args.rows_per_shard)
        ]
        shards = Shards(ray.get(refs))
        done("normalise (synthetic, Ray tasks)", started)
        return shards

    planning.plan_in_task.remote = SyntheticPlan
    job.normalise_stage = normalise_stage
    modules = {"job": job, "decide": decide}
    for module_name, attr in _TIMED:
        module = modules[module_name]
        name = attr
        original = getattr(module, attr)

        def timed(*a, _f=original, _n=name, **k):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                done(_n, started)

        setattr(module, attr, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dup-rate", type=float, default=0.1)
    parser.add_argument("--rows-per-shard", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    if args.rows < 1:
        print("--rows must be at least 1", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="lakeclean-scale-"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "snapshot").mkdir(parents=True)
    cfg = CleanConfig(input_uri=f"file://{work}/lake", output_uri=f"file://{work}/out")
    cfg.dedup.embedding_weights = "none"
    cfg.report.preview_side = 0
    cfg.execution.progress = False
    cfg.execution.num_cpus = args.num_cpus
    timings: dict[str, float] = {}
    return_freed_memory()  # as the job's driver runs (`pipeline.cli.clean`)
    try:
        ensure_ray(None, args.num_cpus)
        started = time.perf_counter()
        ray.get(
            [
                _snapshot_part.remote(
                    cfg.input_uri, a, b, args.seed, str(work / "snapshot" / f"{a:010d}.parquet")
                )
                for a, b in _ranges(args.rows, args.rows_per_shard)
            ]
        )
        generate_s = time.perf_counter() - started
        driver = DriverRss()
        install_hooks(args, work / "snapshot", timings, driver)
        with WorkerPeak() as workers, driver:
            started = time.perf_counter()
            result = job.run_clean(cfg)
            wall = time.perf_counter() - started
        totals = result.report["totals"]
        figures = {
            "rows": args.rows,
            "wall_s": round(wall, 2),
            "driver_peak_rss_mb": round(_vmhwm_kb("self") / 1024, 1),
            "worker_peak_rss_mb": round(workers.peak_kb / 1024, 1),
            # The plan, decide and report tasks' workers (they hold a row per file).
            "row_task_peak_rss_mb": {k: round(v / 1024, 1) for k, v in workers.by_task.items()},
            "generate_s": round(generate_s, 2),
            "kept": totals["kept"],
            "rejected": totals["rejected"],
            "planted_copies": synth.expected_copies(args.rows, args.seed, args.dup_rate),
            "stages_s": {k: round(v, 2) for k, v in timings.items()},
            # Each stage's highest driver RSS while it ran (nested stages inside theirs).
            "stages_peak_rss_mb": {k: round(v, 1) for k, v in driver.peaks().items()},
        }
    finally:
        ray.shutdown()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    peaks = figures["stages_peak_rss_mb"]
    for stage, seconds in figures["stages_s"].items():
        print(f"{stage:<36} {seconds:>9.2f} s  driver peak {peaks.get(stage, 0):>8.0f} MB")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
