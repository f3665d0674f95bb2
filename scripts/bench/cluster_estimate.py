"""A paper estimate, not a measurement: wall time and cost of the cleaning job for 1M and
100M images on an AWS fleet (cluster.yaml's node types), from per-image costs measured
on the 2-core machine (docs/history.md) and prices and rates that are assumptions.

Every input is a constant below, marked MEASURED (with the section of
docs/history.md it comes from) or ASSUMED. The model:

- normalise (Ray Data tasks) scales linearly over the fleet's vCPUs, one task per vCPU
  at the speed of one core of the benchmark machine (optimistic: a c7i vCPU is a
  hyper-thread, so the truth may be up to ~2x slower);
- listing, de-duplication's clustering pass, report and publish run on the head, in
  series with the fleet's work;
- billed fleet time = normalise time + start-up + idle timeout, per node.

    .venv/bin/python scripts/bench/cluster_estimate.py
"""

from __future__ import annotations

# --- MEASURED on the benchmark machine (2-core AMD EPYC), docs/history.md ------------
NORMALISE_CAMERA_MS = 35.3  # section 1: normalise_bytes, camera JPEG 12-24 MP, median
JUNK_SCORES_512_MS = 0.7  # section 6: score_image on a 512 px image, median
JOB_CPU_PER_FILE_MS = 633_000 / 100_000  # section 2: job CPU-s / files, 100k crops lake
DEDUP_1M_S = 17.5  # section 4: deduplicate() on 1M rows, 2 CPUs (search 11.7 s)
DEDUP_1M_DRIVER_S = 17.5 - 11.7  # the clustering pass, on the driver
DRIVER_BYTES_PER_FILE = (712 - 377) * 2**20 / 90_000  # section 2: driver RSS growth 10k->100k

# --- ASSUMED ------------------------------------------------------------------------------
# AWS on-demand list prices, us-east-1, Linux, as the author knows them (2024-2025
# price list); check https://aws.amazon.com/ec2/pricing/on-demand/ before relying on them.
PRICE_PER_HOUR = {
    "c7i.2xlarge": 0.357,
    "m7i.2xlarge": 0.4032,
    "r7i.16xlarge": 4.2336,
    "r7i.24xlarge": 6.3504,
}
S3_GET_PER_1000 = 0.0004  # GET
S3_PUT_PER_1000 = 0.005  # PUT, COPY, LIST
VCPUS = {"c7i.2xlarge": 8}
LIST_PAGE_S = 0.1  # one ListObjectsV2 page of 1,000 keys, sequential
SHARD_MOVE_S = 0.15  # S3 copy + delete of one shard, 16 moves in flight
MOVE_THREADS = 16
SHARDS_PER_TASK = 3  # images/split=train, images/split=test, rejected
START_UP_S = 300  # EC2 launch + image pull + setup_commands for a new worker
IDLE_TIMEOUT_S = 300  # cluster.yaml idle_timeout_minutes
HEAD_MEMORY_BYTES = {
    "m7i.2xlarge": 32 * 2**30,
    "r7i.16xlarge": 512 * 2**30,
    "r7i.24xlarge": 768 * 2**30,
}

PROFILES = {
    # every per-file cost of the job measured on crops, plus the format work of a
    # camera-size JPEG: the two ends of what a scraped lake holds
    "small web images (crops)": JOB_CPU_PER_FILE_MS,
    "camera-size JPEGs": JOB_CPU_PER_FILE_MS + NORMALISE_CAMERA_MS + JUNK_SCORES_512_MS,
}
PLANS = [(1_000_000, 16, 128), (100_000_000, 32, 1024)]  # files, workers, files per task


def head_for(files: int) -> str:
    need = files * DRIVER_BYTES_PER_FILE * 1.5  # headroom for the report's tables
    return next(h for h, mem in HEAD_MEMORY_BYTES.items() if mem >= need)


def estimate(files: int, workers: int, files_per_task: int, ms_per_file: float) -> dict:
    vcpus = workers * VCPUS["c7i.2xlarge"]
    normalise_s = files * ms_per_file / 1000 / vcpus
    listing_s = files / 1000 * LIST_PAGE_S
    scale = files / 1_000_000  # linear: a lower bound, the search grows faster past 1M
    dedup_s = DEDUP_1M_DRIVER_S * scale + DEDUP_1M_S * 2 / vcpus * scale
    shards = files / files_per_task * SHARDS_PER_TASK
    publish_s = shards * SHARD_MOVE_S / MOVE_THREADS
    wall_s = START_UP_S + listing_s + normalise_s + dedup_s + publish_s
    head = head_for(files)
    fleet_h = workers * (START_UP_S + normalise_s + dedup_s + IDLE_TIMEOUT_S) / 3600
    requests = files * S3_GET_PER_1000 / 1000 + (files / 1000 + 2 * shards) * (
        S3_PUT_PER_1000 / 1000
    )
    cost = {
        "fleet": fleet_h * PRICE_PER_HOUR["c7i.2xlarge"],
        "head": wall_s / 3600 * PRICE_PER_HOUR[head],
        "s3 requests": requests,
    }
    return {
        "wall_h": wall_s / 3600,
        "normalise_h": normalise_s / 3600,
        "serial_h": (listing_s + dedup_s + publish_s) / 3600,
        "head": head,
        "cost": cost,
        "vcpu_h": files * ms_per_file / 1000 / 3600,
    }


def main() -> None:
    print("ESTIMATE (paper), not measured. Inputs: see this script's constants.\n")
    header = (
        f"{'profile':26s} {'files':>11s} {'fleet':>16s} {'CPU ms/file':>11s} "
        f"{'vCPU-h':>8s} {'normalise h':>11s} {'serial h':>8s} {'wall h':>7s} "
        f"{'head':>12s} {'$ fleet':>8s} {'$ head':>7s} {'$ S3':>6s} {'$ total':>8s}"
    )
    print(header)
    for profile, ms in PROFILES.items():
        for files, workers, per_task in PLANS:
            e = estimate(files, workers, per_task, ms)
            total = sum(e["cost"].values())
            print(
                f"{profile:26s} {files:>11,d} {f'{workers} x c7i.2xlarge':>16s} {ms:>11.1f} "
                f"{e['vcpu_h']:>8.1f} {e['normalise_h']:>11.2f} {e['serial_h']:>8.2f} "
                f"{e['wall_h']:>7.2f} {e['head']:>12s} {e['cost']['fleet']:>8.2f} "
                f"{e['cost']['head']:>7.2f} {e['cost']['s3 requests']:>6.2f} {total:>8.2f}"
            )


if __name__ == "__main__":
    main()
