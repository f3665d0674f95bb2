"""Listing the lake on the local S3 endpoint: today's sequential recursive listing against
the concurrent one (Ray tasks per class and per sub-prefix), same snapshot, for each
endpoint model in turn on the same filled endpoint.

    .venv/bin/python scripts/bench/scale_listing.py --objects 1000000 --models s3,s3-latency

The lake: 4 classes x `--subprefixes` sub-prefixes each, 1-byte objects (the listing never
reads them), created inside the server process (`devkit.s3_lake_server`: filling moto
over HTTP runs at ~30 objects/s). The endpoint models, switched on the running server:

  moto        moto's own ListObjectsV2: every request scans and sorts the whole bucket,
              so a page costs O(bucket) (unlike S3; more requests cost more);
  s3          S3's cost model: a page costs O(page) (a sorted key index per bucket);
  s3-latency  as s3, plus a fixed `--latency-ms` per LIST request (S3: ~20-100 ms).

With `--before-listing FILE` (today's `pipeline/listing.py`, e.g. `git show
ad4efa8:pipeline/listing.py > /tmp/listing_before.py`), that code's sequential listing is
timed too, on the same endpoint: the issue's bar compares against it.

Prints one line per model and as its last line one JSON object. The exit status is 1 if
any listing differs from the first sequential one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import ray

from common.s3keys import LiteralKeyS3FileSystem
from common.storage import StorageConfig
from devkit.local_s3 import LocalS3
from pipeline.listing import list_lake

CLASSES = ("airplane", "bird", "drone", "helicopter")
URI = "s3://lake/lake/"


def write_keys(path: Path, objects: int, subprefixes: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for i in range(objects):
            out.write(f"lake/{CLASSES[i % 4]}/p{(i // 4) % subprefixes:03d}/img{i:08d}.jpg\n")
    return path


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ray_cpu_s(server_pid: int) -> float:
    """CPU seconds of this process's live descendants but the server: Ray's workers,
    raylet and GCS (ray.init started them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    family, total = {os.getpid()}, 0.0
    for _ in range(4):  # driver -> raylet -> workers, a few levels
        family |= {pid for pid, parent in parents.items() if parent in family}
    for pid in family - {os.getpid(), server_pid}:
        try:
            total += _cpu_s(pid)
        except (OSError, ValueError):
            continue
    return total


def timed(server_pid: int, listing: Callable[[], pa.Table]) -> tuple[pa.Table, dict]:
    """`listing()`'s table, its wall seconds and the CPU seconds of the driver, of Ray's
    processes and of the server. Every listing starts with a new filesystem object (and
    botocore session), as a new job would."""
    LiteralKeyS3FileSystem.clear_instance_cache()
    server, ray_cpu = _cpu_s(server_pid), _ray_cpu_s(server_pid)
    driver, started = _driver_cpu_s(), time.perf_counter()
    table = listing()
    return table, {
        "wall_s": round(time.perf_counter() - started, 2),
        "driver_cpu_s": round(_driver_cpu_s() - driver, 2),
        "ray_cpu_s": round(_ray_cpu_s(server_pid) - ray_cpu, 2),
        "server_cpu_s": round(_cpu_s(server_pid) - server, 2),
    }


def load_listing(path: Path) -> Callable:
    """`list_lake` of another version of pipeline/listing.py (its imports from this tree)."""
    spec = importlib.util.spec_from_file_location("listing_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.list_lake


def measure(
    s3: LocalS3, storage: StorageConfig, reference: pa.Table | None, before: Callable | None
) -> dict:
    """Today's sequential listing (if given), this tree's sequential, then concurrent."""
    figures: dict = {}
    same = True
    if before:
        table, figures["sequential_before"] = timed(s3.pid, lambda: before(URI, storage, False))
        reference = table if reference is None else reference
        same = table.equals(reference)
        del table
    sequential, figures["sequential"] = timed(
        s3.pid, lambda: list_lake(URI, storage, concurrent=False)
    )
    reference = sequential if reference is None else reference
    same = same and sequential.equals(reference)
    del sequential
    fanned, figures["concurrent"] = timed(s3.pid, lambda: list_lake(URI, storage, concurrent=True))
    same = same and fanned.equals(reference)
    concurrent_s = figures["concurrent"]["wall_s"]
    for name in ("sequential_before", "sequential"):
        if name in figures:
            figures[f"speedup_vs_{name}"] = round(figures[name]["wall_s"] / concurrent_s, 2)
    return {"rows": fanned.num_rows, **figures, "same_snapshot": same, "_table": reference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--subprefixes", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--models", default="moto,s3,s3-latency")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--before-listing", type=Path, help="today's pipeline/listing.py")
    args = parser.parse_args()
    models = {"moto": ("moto", 0.0), "s3": ("s3", 0.0), "s3-latency": ("s3", args.latency_ms)}
    chosen = args.models.split(",")
    if unknown := set(chosen) - set(models):
        parser.error(f"unknown models {sorted(unknown)}: choose from {sorted(models)}")
    figures: dict = {"objects": args.objects, "subprefixes_per_class": args.subprefixes}
    figures["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        fill = {  # "warm": a small lake whose listing starts the workers, untimed
            "lake": write_keys(Path(tmp) / "lake.txt", args.objects, args.subprefixes),
            "warm": write_keys(Path(tmp) / "warm.txt", 200, 2),
        }
        started = time.perf_counter()
        s3 = LocalS3(fill=fill, listing="moto", start_timeout_s=900).start()
        figures["fill_s"] = round(time.perf_counter() - started, 1)
    try:
        os.environ.update(s3.env())
        storage = StorageConfig(endpoint_url=s3.endpoint_url)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        ray.get([ray.remote(lambda: 0).remote() for _ in range(4)])  # workers up
        before = load_listing(args.before_listing) if args.before_listing else None
        reference = None
        for name in chosen:
            model, latency_ms = models[name]
            endpoint = s3.set_listing(model, latency_ms)
            if reference is None:
                list_lake(URI.replace("//lake/", "//warm/"), storage, concurrent=True)
            result = measure(s3, storage, reference, before)
            reference = result.pop("_table")
            figures[name] = {"endpoint": endpoint, **result}
            walls = {k: v["wall_s"] for k, v in result.items() if isinstance(v, dict)}
            print(
                f"{name} (listing model {endpoint['model']}, {endpoint['latency_ms']:g} ms per "
                f"LIST): {walls} s, speedups "
                f"{ {k: v for k, v in result.items() if k.startswith('speedup')} }, "
                f"{result['rows']} rows, same snapshot: {result['same_snapshot']}",
                flush=True,
            )
    finally:
        ray.shutdown()
        s3.stop()
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures))
    same = all(figures[name]["same_snapshot"] for name in chosen)
    complete = all(figures[name]["rows"] == args.objects for name in chosen)
    return 0 if same and complete else 1


if __name__ == "__main__":
    sys.exit(main())
