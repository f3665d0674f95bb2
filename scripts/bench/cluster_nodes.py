"""The cleaning job on one Ray node against three local raylets, over the same lake.

Both layouts offer the job the same two task slots on this machine:

    1 node:     a head raylet with 2 CPUs (the driver attaches to it, tasks run there)
    3 raylets:  a head with 0 CPUs (driver only) + 2 worker raylets with 1 CPU each

Each layout is a fresh `devkit.local_cluster.LocalCluster` (every raylet its own
`ray start` process) over one moto S3 server holding the lake. The job runs as
`ray job submit` runs it: `python -m pipeline clean s3://lake/raw s3://lake/<out>` on the
head with RAY_ADDRESS set. A sampler reads /proc every 0.5 s for the CPU seconds of every
process of the cluster and of the driver, by role. The driver's output lines are
time-stamped as they arrive, which gives the phases:

    list      start -> "listed N files" (interpreter start and imports included)
    ray init  -> the normalise dataset starts (joining the cluster, Ray Data planning)
    normalise -> Ray Data's normalise dataset finished
    dedup     -> the finalize dataset starts (de-duplication and split on the driver)
    finalize  -> the finalize dataset finished
    publish   -> "output:" (report, review page, moves, manifest)

On a 2-core machine the 3-raylet layout can only show the cost of being distributed
(more system processes, objects pulled between raylets), not a speed-up.

    .venv/bin/python scripts/bench/cluster_nodes.py                 # 2000 files, each layout twice
    .venv/bin/python scripts/bench/cluster_nodes.py --files 300 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO

from devkit.local_cluster import LocalCluster, _process_table
from devkit.local_s3 import LocalS3
from devkit.sample_lake import COMMITTED_CROPS, SHARED_DATA
from devkit.weights import embedding_args

BUCKET = "lake"
LAYOUTS = {
    "1 node": {"head_cpus": 2, "workers": []},
    "3 raylets": {"head_cpus": 0, "workers": [{"num_cpus": 1}, {"num_cpus": 1}]},
}
FILES_PER_TASK = 64
SAMPLE_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PHASES = ("list", "ray init", "normalise", "dedup", "finalize", "publish")


def crops(count: int) -> list[tuple[str, bytes]]:
    """`count` (class/name, bytes): real crops, renamed copies beyond the originals."""
    root = SHARED_DATA / "halmstad-crops"
    root = root if root.is_dir() else COMMITTED_CROPS
    paths = sorted(root.glob("*/*.jpg"))
    random.Random(0).shuffle(paths)
    out = []
    for i in range(count):
        path = paths[i % len(paths)]
        name = path.name if i < len(paths) else f"{path.stem}_dup{i // len(paths)}.jpg"
        out.append((f"{path.parent.name}/{name}", path.read_bytes()))
    return out


def upload(s3: LocalS3, files: list[tuple[str, bytes]]) -> None:
    fs = s3.filesystem()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: fs.pipe_file(f"{BUCKET}/raw/{kv[0]}", kv[1]), files))


@dataclass
class Run:
    layout: str
    start_s: float
    wall_s: float
    phases: dict[str, float]
    cpu_s: dict[str, float]
    kept: int
    rejected: int
    lines: list[tuple[float, str]] = field(default_factory=list)


def role(cmd: str) -> str:
    if "pipeline clean" in cmd or "-m pipeline" in cmd:
        return "driver"
    if cmd.startswith("ray::"):
        return "Ray workers (tasks)"
    if "/raylet/raylet " in cmd:
        return "raylets"
    if "gcs_server" in cmd:
        return "GCS"
    return "other Ray system"


class CpuSampler:
    """CPU seconds of the cluster's and the driver's processes, by role (last value
    seen per process; a process that lives less than SAMPLE_S may be missed)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_S)

    def sample(self) -> None:
        table = _process_table()
        children = defaultdict(list)
        for pid, (ppid, _, _) in table.items():
            children[ppid].append(pid)
        todo, tree = list(self.roots), set()
        while todo:
            pid = todo.pop()
            if pid in tree:
                continue
            tree.add(pid)
            todo += children[pid]
        for pid in tree:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
            name = self.seen.get(pid, (role(table.get(pid, (0, 0, ""))[2]), 0))[0]
            if pid in table and table[pid][2].startswith("ray::"):
                name = "Ray workers (tasks)"  # a worker renames itself after it starts
            self.seen[pid] = (name, cpu)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for name, cpu in self.seen.values():
            out[name] += cpu
        return dict(out)


def phases_of(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per phase, from the time-stamped driver lines (see the module doc)."""
    finished = [t for t, line in lines if re.search(r"Dataset \S+ execution finished", line)]
    started = [t for t, line in lines if "Starting execution of Dataset" in line]
    marks = {
        "list": next((t for t, line in lines if line.startswith("listed ")), None),
        "ray init": started[0] if started else None,
        "normalise": finished[0] if finished else None,
        "dedup": started[1] if len(started) > 1 else None,
        "finalize": finished[1] if len(finished) > 1 else None,
        "publish": next((t for t, line in lines if line.startswith("output:")), total),
    }
    out, previous = {}, 0.0
    for phase in PHASES:
        if marks[phase] is not None:
            out[phase] = marks[phase] - previous
            previous = marks[phase]
    return out


def run_layout(name: str, s3: LocalS3, output: str, timeout: float) -> Run:
    spec = LAYOUTS[name]
    started = time.perf_counter()
    env = {"PYTHONPATH": str(REPO), **s3.env()}
    with LocalCluster(head_cpus=spec["head_cpus"], env=env, object_store_bytes=512 * 2**20) as c:
        c.start(spec["workers"])
        start_s = time.perf_counter() - started
        command = [sys.executable, "-m", "pipeline", "clean", f"s3://{BUCKET}/raw",
                   f"s3://{BUCKET}/{output}", "--files-per-task", str(FILES_PER_TASK),
                   "--no-progress", *embedding_args()]  # fmt: skip
        t0 = time.perf_counter()
        job = subprocess.Popen(
            command,
            cwd=REPO,
            env={**c.node_env(), "RAY_ADDRESS": c.address},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = CpuSampler([n.process.pid for n in c.nodes] + [job.pid])
        sampler.thread.start()
        lines = []
        timer = threading.Timer(timeout, job.kill)
        timer.start()
        for line in job.stdout:
            lines.append((time.perf_counter() - t0, line.strip()))
        job.wait()
        timer.cancel()
        wall = time.perf_counter() - t0
        sampler.sample()
        sampler.stop.set()
        sampler.thread.join()
        if job.returncode != 0:
            tail = "\n".join(line for _, line in lines[-40:])
            raise RuntimeError(f"{name}: job failed ({job.returncode}):\n{tail}")
    report = json.loads(s3.filesystem().cat_file(f"{BUCKET}/{output}/report.json"))
    totals = report["totals"]
    return Run(
        name,
        start_s,
        wall,
        phases_of(lines, wall),
        sampler.totals(),
        totals["kept"],
        totals["rejected"],
        lines,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2, help="runs per layout, alternating")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--show-lines", action="store_true", help="print the drivers' output")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    runs: list[Run] = []
    with LocalS3() as s3:
        os.environ.update(s3.env())
        s3.create_bucket(BUCKET)
        upload(s3, crops(args.files))
        print(f"lake: {args.files} files on moto; load average {os.getloadavg()[0]:.1f}")
        for repeat in range(args.repeats):
            order = list(LAYOUTS) if repeat % 2 == 0 else list(reversed(LAYOUTS))
            for name in order:
                output = f"clean-{name.replace(' ', '-')}-{repeat}"
                run = run_layout(name, s3, output, args.timeout)
                runs.append(run)
                print(
                    f"  {name:9s} run {repeat + 1}: {run.wall_s:6.1f} s, "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if args.show_lines:
                    for t, line in run.lines:
                        print(f"    {t:7.1f} {line[:160]}")
    print_table(runs, args.files)
    return 0


def print_table(runs: list[Run], files: int) -> None:
    roles = sorted({r for run in runs for r in run.cpu_s})
    header = ["layout", "start s", "job s", "images/s", *PHASES, "kept/rej"]
    print()
    print("  ".join(f"{h:>9s}" for h in header))
    for run in runs:
        cells = [run.layout, f"{run.start_s:.1f}", f"{run.wall_s:.1f}", f"{files / run.wall_s:.1f}"]
        cells += [f"{run.phases.get(p, float('nan')):.1f}" for p in PHASES]
        cells.append(f"{run.kept}/{run.rejected}")
        print("  ".join(f"{c:>9s}" for c in cells))
    print("\nCPU seconds by role (driver + every process of the cluster):")
    print("  ".join(f"{h:>20s}" for h in ["layout", *roles, "total", "ms per file"]))
    for run in runs:
        total = sum(run.cpu_s.values())
        cells = [run.layout, *(f"{run.cpu_s.get(r, 0.0):.1f}" for r in roles), f"{total:.1f}"]
        cells.append(f"{1000 * total / files:.1f}")
        print("  ".join(f"{c:>20s}" for c in cells))
    for name in LAYOUTS:
        walls = sorted(r.wall_s for r in runs if r.layout == name)
        if walls:
            print(f"{name}: best {walls[0]:.1f} s, {files / walls[0]:.1f} images/s")


if __name__ == "__main__":
    sys.exit(main())
