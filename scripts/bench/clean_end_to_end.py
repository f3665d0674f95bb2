"""The whole cleaning job end to end: throughput, wall time and peak memory, at 1x and Sx.

For each scale this script starts a fresh moto S3 server on loopback (devkit.local_s3),
uploads a lake of real crops from ``../shared/data/halmstad-crops`` (all 5 class
folders; beyond the 8,384 originals, copies under new names in the same class), then
runs the product's own command in a child process:

    python -m pipeline clean s3://lake/raw s3://lake/clean --endpoint-url URL --num-cpus 2

Ray is local (num_cpus=2). While the job runs, a sampler thread here reads the RSS of
the job's driver and of every descendant process (raylet with its plasma store, GCS,
Ray workers) every 0.2 s; the moto server is not part of the job and is left out.
Reported: images/s, wall time, the peak of the summed RSS, the peak of the largest
single Ray worker, and the ratio of those peaks between the largest scale and 1x; the
job's CPU time (user + system, each process's last value seen) per file, by role: the
driver, Ray's system processes, and the workers by kind (the normalise pool, Ray Data's
actors, the others), each process's in cpu_<scale>x.json in the log dir. --decisions
also writes each run's decisions there (which copy of a duplicate is kept depends on
the files' upload times: compare two trees' runs on one uploaded lake).

Side by side: --baseline DIR names another checkout of this repository (a git worktree
of the commit to compare with). Each scale's lake is then uploaded once, and the two
trees' jobs run on it in turn: one warm-up run each (not counted: the lake's first
reads, a checkout's first imports), then --rounds times each (A B B A ...: drift on a
shared machine falls on both), the output removed between runs; printed: each run's CPU
per file and peaks, each tree's mean, the ratio, and whether every run made the
baseline's first run's decisions, file by file.

Run from the repository root:

    .venv/bin/python scripts/bench/clean_end_to_end.py                  # 10k, then 100k
    .venv/bin/python scripts/bench/clean_end_to_end.py --scales 1,5     # 10k, then 50k
    .venv/bin/python scripts/bench/clean_end_to_end.py --files 500 --scales 1   # quick check
    .venv/bin/python scripts/bench/clean_end_to_end.py --files 2000 --scales 1 \
        --baseline ../before --rounds 2                # side by side with another commit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ray  # noqa: F401 - puts Ray's bundled psutil on sys.path

import psutil  # isort: skip

from _common import HALMSTAD_CROPS, REPO, print_table

from devkit.local_s3 import LocalS3
from devkit.weights import embedding_args

CROPS_DIR = HALMSTAD_CROPS
BUCKET = "lake"
INPUT_PREFIX, OUTPUT_PREFIX = "raw", "clean"
DEFAULT_FILES = 10_000
DEFAULT_SCALES = "1,10"
NUM_CPUS = 2
SAMPLE_INTERVAL_S = 0.2
UPLOAD_THREADS = 32
JOB_TIMEOUT_S = 1800
MEMORY_RATIO_TARGET = 1.3
SEED = 0
MIB = 2**20
# Ray's system processes, for the per-role peaks and CPU: (role, what names them: the
# process name, or a script in its command line). Checked before the workers: the
# raylet's command line names default_worker.py, and the agents are named ray::<Agent>.
SYSTEM_ROLES = (
    ("raylet", "raylet"),
    ("gcs_server", "gcs_server"),
    ("dashboard agent", "ray::DashboardAgent"),
    ("runtime_env agent", "ray::RuntimeEnvAgent"),
    ("dashboard", "dashboard/dashboard.py"),
    ("log_monitor", "log_monitor.py"),
    ("monitor.py", "autoscaler/_private/monitor.py"),
)
# Ray Data's own actors: worker processes of their own, started by every Dataset run.
RAY_DATA_ACTORS = ("ray::_StatsActor", "ray::_AutoscalingCoordinatorActor")
# The normalise tasks' worker pool runs with this variable (pipeline.embed_task).
POOL_VARIABLE = "LAKECLEAN_WORKERS"


@dataclass
class MemoryPeaks:
    total: int = 0  # peak of the sum over the job's processes
    driver: int = 0
    largest_worker: int = 0
    by_role: dict[str, int] = field(default_factory=dict)
    processes_seen: set[int] = field(default_factory=set)
    samples: int = 0
    cpu_seconds: dict[int, float] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # pid -> role, for CPU per role
    rss_peaks: dict[int, int] = field(default_factory=dict)  # pid -> its own peak RSS
    names: dict[int, str] = field(default_factory=dict)  # pid -> last process name seen
    reaped_cpu: float = 0.0  # CPU s of the job's processes that were waited for (getrusage)

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu_seconds.items():
            out[self.roles[pid]] = out.get(self.roles[pid], 0.0) + seconds
        return out


@dataclass
class RunResult:
    scale: int
    files: int
    upload_s: float
    wall_s: float
    job_s: float  # the CLI's own "output: ... (N s)": listing to manifest
    report_s: float  # report.json's "seconds": stops before the report/publish step
    listing_s: float | None
    publish_s: float | None  # from the sink's last write to the CLI's last line
    kept: int
    rejected: int
    peaks: MemoryPeaks
    moto_cpu_s: float
    exit_code: int
    tree: str = "this tree"
    decisions: list | None = None  # [source key, 'kept' or reason, split], sorted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="files in the 1x lake")
    parser.add_argument(
        "--scales", default=DEFAULT_SCALES, help="comma-separated multiples of --files to run"
    )
    parser.add_argument("--timeout", type=int, default=JOB_TIMEOUT_S, help="per job, seconds")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep the jobs' logs here (default: temp)"
    )
    parser.add_argument(
        "--decisions",
        action="store_true",
        help="write each run's decisions (source key, 'kept' or reason, split) to "
        "decisions_<scale>x.json in the log dir, to compare two trees' runs",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of this repository: its job and this tree's run in turn on "
        "each uploaded lake, side by side (see the module doc)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        choices=range(1, 100),
        metavar="N",
        help="with --baseline: runs of each tree per scale, after one warm-up run each",
    )
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="with --baseline: no warm-up runs (both trees ran their jobs just before)",
    )
    return parser.parse_args(argv)


# --- the lake ---------------------------------------------------------------------------


def crop_sources() -> list[tuple[str, bytes]]:
    """(class/name, bytes) of every real crop, in a fixed shuffled order."""
    paths = sorted(CROPS_DIR.glob("*/*.jpg"))
    random.Random(SEED).shuffle(paths)
    return [(str(p.relative_to(CROPS_DIR)), p.read_bytes()) for p in paths]


def lake_keys(sources: list[tuple[str, bytes]], count: int) -> Iterator[tuple[str, bytes]]:
    """`count` (key, bytes): the crops first, then copies renamed `<stem>_dupN.jpg`."""
    for i in range(count):
        relative, data = sources[i % len(sources)]
        copy = i // len(sources)
        if copy:
            stem, ext = relative.rsplit(".", 1)
            relative = f"{stem}_dup{copy}.{ext}"
        yield f"{INPUT_PREFIX}/{relative}", data


def upload_lake(s3: LocalS3, sources: list[tuple[str, bytes]], count: int) -> float:
    """PUT the lake with a thread pool (boto3 clients are thread-safe); return seconds."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(
            lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]),
            lake_keys(sources, count),
        ):
            pass
    return time.perf_counter() - started


# --- memory sampling ----------------------------------------------------------------------


def role(proc: psutil.Process, driver_pid: int) -> str:
    """driver, a Ray system process, "worker" (every Ray worker: the memory bar's unit),
    or a worker's kind for CPU: "worker: normalise" (the normalise tasks' own pool, the
    network build task among them), "worker: Ray Data actors", "worker: other"."""
    if proc.pid == driver_pid:
        return "driver"
    name = proc.name()
    cmdline = " ".join(proc.cmdline())
    for system, marker in SYSTEM_ROLES:
        if name == marker or cmdline.startswith(marker) or f"/{marker} " in cmdline:
            return system
    if name.startswith("ray::") or "default_worker.py" in cmdline:
        if cmdline.startswith(RAY_DATA_ACTORS):
            return "worker: Ray Data actors"
        if POOL_VARIABLE in proc.environ():
            return "worker: normalise"
        return "worker: other"
    return "other"


def name_of(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def memory_role(kind: str) -> str:
    """Workers of every kind count as one role for the memory peaks."""
    return "worker" if kind.startswith("worker") else kind


def sample_once(driver: psutil.Process, peaks: MemoryPeaks) -> None:
    """Add one sample of the job's process tree to `peaks`."""
    try:
        procs = [driver, *driver.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    total = 0
    per_role: dict[str, int] = {}
    for proc in procs:
        try:
            rss = proc.memory_info().rss
            cpu_role = role(proc, driver.pid)
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        kind = memory_role(cpu_role)
        total += rss
        per_role[kind] = per_role.get(kind, 0) + rss
        peaks.processes_seen.add(proc.pid)
        peaks.cpu_seconds[proc.pid] = times.user + times.system
        peaks.roles[proc.pid] = cpu_role
        peaks.names[proc.pid] = name_of(proc)
        peaks.rss_peaks[proc.pid] = max(peaks.rss_peaks.get(proc.pid, 0), rss)
        if kind == "worker":
            peaks.largest_worker = max(peaks.largest_worker, rss)
        if kind == "driver":
            peaks.driver = max(peaks.driver, rss)
    peaks.total = max(peaks.total, total)
    for kind, rss in per_role.items():
        peaks.by_role[kind] = max(peaks.by_role.get(kind, 0), rss)
    peaks.samples += 1


def sample_until(driver: psutil.Process, peaks: MemoryPeaks, stop: threading.Event) -> None:
    while not stop.is_set():
        sample_once(driver, peaks)
        stop.wait(SAMPLE_INTERVAL_S)


# --- one run --------------------------------------------------------------------------------


def job_command(endpoint_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "clean",
        f"s3://{BUCKET}/{INPUT_PREFIX}",
        f"s3://{BUCKET}/{OUTPUT_PREFIX}",
        "--endpoint-url",
        endpoint_url,
        "--num-cpus",
        str(NUM_CPUS),
        "--no-progress",
        *embedding_args(),
    ]


def copy_log(stream, log_path: Path, started: float, marks: dict[str, float]) -> None:  # noqa: ANN001
    """Write the job's output with elapsed seconds; remember when listing finished."""
    with log_path.open("w") as log:
        for line in stream:
            elapsed = time.perf_counter() - started
            if line.startswith("listed ") and "listing" not in marks:
                marks["listing"] = elapsed
            elif "CleanOutputSink finished" in line:
                marks["sink_done"] = elapsed
            elif line.startswith("output:"):
                marks["done"] = elapsed
                marks["cli_seconds"] = float(line.rsplit("(", 1)[1].split()[0])
            log.write(f"[{elapsed:8.1f}s] {line}")


def run_job(
    s3: LocalS3, log_path: Path, timeout: int, tree: Path = REPO
) -> tuple[int, float, MemoryPeaks, dict]:
    """Run the CLI of the checkout `tree` in a child process while sampling its tree of
    processes; (rc, wall s, peaks, marks)."""
    env = {**os.environ, **s3.env(), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(tree)}
    peaks, marks, stop = MemoryPeaks(), {}, threading.Event()
    started = time.perf_counter()
    reaped_before = children_cpu()
    child = subprocess.Popen(
        job_command(s3.endpoint_url),
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = threading.Thread(
        target=sample_until, args=(psutil.Process(child.pid), peaks, stop), daemon=True
    )
    reader = threading.Thread(
        target=copy_log, args=(child.stdout, log_path, started, marks), daemon=True
    )
    sampler.start()
    reader.start()
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    reader.join()
    peaks.reaped_cpu = children_cpu() - reaped_before
    return code, wall, peaks, marks


def children_cpu() -> float:
    """User + system CPU s of this process's waited-for descendants: the job's driver,
    and every process under it that its parent reaped (a cross-check of the sampling)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_report(s3: LocalS3) -> dict:
    fs = s3.filesystem()
    return json.loads(fs.cat_file(f"{BUCKET}/{OUTPUT_PREFIX}/report.json"))


def moto_cpu(s3: LocalS3) -> float:
    times = psutil.Process(s3._process.pid).cpu_times()
    return times.user + times.system


def read_decisions(s3: LocalS3) -> list:
    """Sorted [source key, 'kept' or the reason, split] of every row of the output's
    images and rejected tables (as tests/sample_lake_decisions.py reads them)."""
    import pyarrow.parquet as pq

    fs = s3.filesystem()
    root = f"{BUCKET}/{OUTPUT_PREFIX}"
    manifest = json.loads(fs.cat_file(f"{root}/_manifest.json"))
    rows = []
    for table in ("images", "rejected"):
        columns = ["source_uri", "reason" if table == "rejected" else "split"]
        for rel in manifest["files"][table]:
            with fs.open(f"{root}/{rel}", "rb") as file:
                for row in pq.read_table(file, columns=columns).to_pylist():
                    key = row["source_uri"].split(f"/{INPUT_PREFIX}/", 1)[-1]
                    rows.append([key, row.get("reason", "kept"), row.get("split")])
    rows.sort(key=lambda r: [str(v) for v in r])
    return rows


def write_decisions(rows: list, path: Path) -> None:
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


def run_scale(
    scale: int,
    files: int,
    sources: list[tuple[str, bytes]],
    log_dir: Path,
    timeout: int,
    decisions: bool = False,
    trees: list[tuple[str, Path]] | None = None,
) -> list[RunResult]:
    """Upload the lake once; run the job of each (name, checkout) in `trees` on it, in
    that order (this tree alone by default), the output removed before each run."""
    count = files * scale
    trees = trees or [("this tree", REPO)]
    results = []
    with LocalS3() as s3:
        s3.create_bucket(BUCKET)
        print(f"[{scale}x] uploading {count} files ...", flush=True)
        upload_s = upload_lake(s3, sources, count)
        print(f"[{scale}x] uploaded in {upload_s:.0f} s", flush=True)
        for i, (name, tree) in enumerate(trees):
            if i:  # the previous run's output, if it wrote any
                with contextlib.suppress(FileNotFoundError):
                    s3.filesystem().rm(f"{BUCKET}/{OUTPUT_PREFIX}", recursive=True)
            tag = f"{scale}x" if len(trees) == 1 else f"{scale}x_{i}"
            results.append(
                run_once(s3, scale, count, upload_s, log_dir, tag, timeout, decisions, name, tree)
            )
    return results


def run_once(
    s3: LocalS3, scale: int, count: int, upload_s: float, log_dir: Path, tag: str,
    timeout: int, decisions: bool, name: str, tree: Path,
) -> RunResult:  # fmt: skip
    print(f"[{tag}] running the job of {name} ...", flush=True)
    moto_before = moto_cpu(s3)
    log_path = log_dir / f"job_{tag}.log"
    code, wall, peaks, marks = run_job(s3, log_path, timeout, tree)
    write_cpu_detail(log_dir / f"cpu_{tag}.json", peaks)
    moto_s = moto_cpu(s3) - moto_before
    report = read_report(s3) if code == 0 else {"totals": {}, "seconds": float("nan")}
    rows = read_decisions(s3) if code == 0 else None
    if rows is not None and decisions:
        write_decisions(rows, log_dir / f"decisions_{tag}.json")
    totals = report["totals"]
    print(f"[{tag}] exit {code} after {wall:.0f} s; log: {log_path}", flush=True)
    return RunResult(
        scale=scale,
        files=count,
        upload_s=upload_s,
        wall_s=wall,
        job_s=marks.get("cli_seconds", float("nan")),
        report_s=report["seconds"],
        listing_s=marks.get("listing"),
        publish_s=marks["done"] - marks["sink_done"] if "sink_done" in marks else None,
        kept=totals.get("kept", 0),
        rejected=totals.get("rejected", 0),
        peaks=peaks,
        moto_cpu_s=moto_s,
        exit_code=code,
        tree=name,
        decisions=rows,
    )


WARM_UP = "warm-up"


def side_by_side_order(baseline: Path, rounds: int, warm_up: bool) -> list[tuple[str, Path]]:
    """A warm-up run of each tree (each checkout's first imports and .pyc writes; not
    counted), then A B B A A B ...: each tree `rounds` times, neither always first."""
    pair = [("baseline", baseline.resolve()), ("this tree", REPO)]
    warm = [(f"{WARM_UP} {name}", tree) for name, tree in pair[::-1]] if warm_up else []
    return warm + [p for r in range(rounds) for p in (pair if r % 2 == 0 else pair[::-1])]


def print_side_by_side(results: list[RunResult]) -> None:
    """Per scale: each tree's mean CPU per file and peaks over its runs that finished
    (warm-ups aside), the ratio, and how many runs made the decisions of the baseline's
    first finished run."""
    for scale in sorted({r.scale for r in results}):
        runs = [r for r in results if r.scale == scale and r.exit_code == 0]
        reference = next((r.decisions for r in runs if r.tree.endswith("baseline")), None)
        means = {}
        for tree in ("baseline", "this tree"):
            mine = [r for r in runs if r.tree == tree]
            if not mine:
                print(f"  {scale}x {tree}: no run finished")
                continue
            cpu = [1000 * sum(r.peaks.cpu_seconds.values()) / r.files for r in mine]
            means[tree] = sum(cpu) / len(cpu)
            same = sum(r.decisions == reference for r in runs if r.tree.endswith(tree))
            print(
                f"  {scale}x {tree}: CPU ms per file {means[tree]:.1f} "
                f"({', '.join(f'{c:.1f}' for c in cpu)}); driver peak "
                f"{mib(max(r.peaks.driver for r in mine))} MiB, largest worker "
                f"{mib(max(r.peaks.largest_worker for r in mine))} MiB, summed "
                f"{mib(max(r.peaks.total for r in mine))} MiB; the baseline's decisions in "
                f"{same} of its {sum(r.tree.endswith(tree) for r in runs)} runs (warm-up too)"
            )
        if len(means) == 2:
            ratio = means["this tree"] / means["baseline"]
            print(f"  {scale}x this tree / baseline, CPU per file: {ratio:.2f}x")


# --- the table ------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MIB:.0f}"


def result_row(r: RunResult) -> list[str]:
    listing = f"{r.listing_s:.1f}" if r.listing_s is not None else "-"
    publish = f"{r.publish_s:.1f}" if r.publish_s is not None else "-"
    return [
        f"{r.scale}x" if r.tree == "this tree" else f"{r.scale}x {r.tree}",
        str(r.files),
        f"{r.kept}/{r.rejected}",
        f"{r.wall_s:.1f}",
        f"{r.job_s:.1f}",
        f"{r.report_s:.1f}",
        listing,
        publish,
        f"{r.files / r.job_s:.0f}",
        mib(r.peaks.total),
        mib(r.peaks.driver),
        mib(r.peaks.largest_worker),
        mib(r.peaks.by_role.get("raylet", 0)),
        f"{sum(r.peaks.cpu_seconds.values()):.0f}",
        f"{r.moto_cpu_s:.0f}",
        str(r.exit_code),
    ]


HEADER = [
    "scale",
    "files",
    "kept/rejected",
    "wall s",
    "job s",
    "report s",
    "listed at s",
    "report+publish s",
    "images/s (job)",
    "peak sum RSS MiB",
    "peak driver MiB",
    "peak 1 worker MiB",
    "peak raylet MiB",
    "job CPU s",
    "moto CPU s",
    "rc",
]


def write_cpu_detail(path: Path, peaks: MemoryPeaks) -> None:
    """Each process's CPU s, peak RSS, role and command line, most CPU first."""
    rows = [
        {
            "pid": pid,
            "role": peaks.roles[pid],
            "cpu_s": round(cpu, 2),
            "peak_mib": round(peaks.rss_peaks.get(pid, 0) / MIB),
            "name": peaks.names[pid],
        }
        for pid, cpu in sorted(peaks.cpu_seconds.items(), key=lambda kv: -kv[1])
    ]
    path.write_text(json.dumps(rows, indent=1))


def print_ratios(results: list[RunResult]) -> None:
    base, top = results[0], results[-1]
    if top is base or not base.peaks.total:
        return
    total = top.peaks.total / base.peaks.total
    worker = top.peaks.largest_worker / max(1, base.peaks.largest_worker)
    driver = top.peaks.driver / max(1, base.peaks.driver)
    verdict = "PASS" if total <= MEMORY_RATIO_TARGET else "FAIL"
    label = f"{top.scale}x/{base.scale}x"
    print(f"\npeak memory {label}: sum {total:.2f}x ({verdict}, target <= {MEMORY_RATIO_TARGET}x)")
    print(f"  largest worker {worker:.2f}x, driver {driver:.2f}x")
    print(f"  throughput {label}: {(top.files / top.job_s) / (base.files / base.job_s):.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scales = [int(s) for s in args.scales.split(",") if s]
    sources = crop_sources()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        trees = (
            side_by_side_order(args.baseline, args.rounds, args.warm_up) if args.baseline else None
        )
        results = [
            r
            for s in scales
            for r in run_scale(s, args.files, sources, log_dir, args.timeout, args.decisions, trees)
        ]
    print(
        f"\n{os.cpu_count()} cores; Ray num_cpus={NUM_CPUS}; RSS sampled every "
        f"{SAMPLE_INTERVAL_S} s over the job's driver and all its descendants (moto excluded)\n"
    )
    print_table(HEADER, [result_row(r) for r in results])
    for r in results:
        if len(results) > len(scales):
            print(f"  {r.scale}x {r.tree}:")
        roles = ", ".join(f"{k} {mib(v)}" for k, v in sorted(r.peaks.by_role.items()))
        print(
            f"  {r.scale}x peak MiB per role (summed): {roles}; "
            f"{len(r.peaks.processes_seen)} processes, {r.peaks.samples} samples"
        )
        cpu = r.peaks.cpu_by_role()
        per_file = ", ".join(
            f"{k} {1000 * v / r.files:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
        )
        print(f"  {r.scale}x CPU ms per file by role: {per_file}")
        print(
            f"  {r.scale}x job CPU {1000 * sum(cpu.values()) / r.files:.1f} ms per file "
            f"(sampled; {1000 * r.peaks.reaped_cpu / r.files:.1f} by the reaped processes' "
            "own accounting)"
        )
    if args.baseline:
        print("\nside by side, one uploaded lake per scale:")
        print_side_by_side(results)
    else:
        print_ratios(results)
    return max(r.exit_code for r in results)


if __name__ == "__main__":
    raise SystemExit(main())
