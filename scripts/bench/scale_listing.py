"""Listing the lake on the local S3 endpoint (moto): today's sequential recursive listing
against the concurrent one (Ray tasks per class and per sub-prefix), same snapshot.

    .venv/bin/python scripts/bench/scale_listing.py --objects 50000

The lake: 4 classes x `--subprefixes` sub-prefixes each, empty-ish objects (the listing
never reads them). Prints both times, the ratio, and as its last line one JSON object.

Note on moto: its ListObjectsV2 scans every key of the bucket and sorts the matches on
each 1,000-key page, so a page costs O(bucket) there, unlike S3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import ray

from common.storage import StorageConfig
from devkit.local_s3 import LocalS3
from pipeline.listing import list_lake

CLASSES = ("airplane", "bird", "drone", "helicopter")


def fill(client, bucket: str, objects: int, subprefixes: int) -> None:  # noqa: ANN001
    keys = [
        f"lake/{CLASSES[i % 4]}/p{(i // 4) % subprefixes:03d}/img{i:08d}.jpg"
        for i in range(objects)
    ]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--subprefixes", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    with LocalS3() as s3:
        os.environ.update(s3.env())
        client = boto3.client("s3", endpoint_url=s3.endpoint_url)
        client.create_bucket(Bucket="lake")
        started = time.perf_counter()
        fill(client, "lake", args.objects, args.subprefixes)
        fill_s = time.perf_counter() - started
        storage = StorageConfig(endpoint_url=s3.endpoint_url)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            ray.get([ray.remote(lambda: 0).remote() for _ in range(4)])  # workers up
            started = time.perf_counter()
            sequential = list_lake("s3://lake/lake/", storage, concurrent=False)
            sequential_s = time.perf_counter() - started
            times = []
            for _ in range(2):  # the first pays for importing the listing in the workers
                started = time.perf_counter()
                fanned = list_lake("s3://lake/lake/", storage, concurrent=True)
                times.append(time.perf_counter() - started)
            cold_s, concurrent_s = times
        finally:
            ray.shutdown()
    same = fanned.equals(sequential)
    figures = {
        "objects": args.objects,
        "subprefixes_per_class": args.subprefixes,
        "fill_s": round(fill_s, 1),
        "sequential_s": round(sequential_s, 2),
        "concurrent_cold_s": round(cold_s, 2),
        "concurrent_s": round(concurrent_s, 2),
        "speedup": round(sequential_s / concurrent_s, 2),
        "same_snapshot": same,
    }
    print(
        f"sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s "
        f"(first call {cold_s:.2f} s), same: {same}"
    )
    print(json.dumps(figures))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
