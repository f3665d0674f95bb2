"""Issue 29, the cleaning side: hostile input and concurrent use never hang the job nor
damage a published version silently. Real S3 (moto's server) and real Ray, tiny lakes.

1. A deeply nested SVG is refused before rendering; a renderer crash or hang is one
   file's `decoder_crash`; a worker that dies on every try fails the job (exit 2).
2. Decoding the worst accepted images stays under 1 GB of peak RSS.
3. One writer per output: a lease, a second run fails fast or waits.
4. A damaged previous version stops the next run with one line naming the damage.
5. An output bucket that does not exist is an error, never created.
8. S3 keys holding `?versionId=` (and other URL-special characters) are read.
"""

from __future__ import annotations

import os
import threading
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import svg
from common.decode import DECODE_FIXED_BYTES, DecodeLimits, decode_bytes_per_pixel, decode_within
from common.reasons import Reason, Rejected
from common.storage import StorageConfig
from devkit.costly_images import FLOAT_TIFF_SIDE, PNG16_SIDE, float_tiff, sixteen_bit_png
from devkit.local_s3 import DUMMY_CREDENTIALS, upload_files
from devkit.messy_lake import encode, photo
from devkit.peak_memory import normalise_peak
from pipeline import job
from pipeline.cli import main
from pipeline.lease import Lease, LeaseHeld
from pipeline.output import read_manifest, read_table, verify_version
from pipeline.sink import shard_name

GB = 2**30
# Junk checks off: these tests are about files and versions, not content.
NO_VERIFY = ["--embedding-weights", "none", "--no-progress", "--junk-checks", ""]


def nested_svg(depth: int) -> bytes:
    """The issue's 1.85 KB file at depth 300: resvg recurses per level and segfaults."""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="160">'
        + "<g>" * depth
        + '<rect width="9" height="9"/>'
        + "</g>" * depth
        + "</svg>"
    ).encode()


def clean(bucket: str, *extra: str, output: str = "out") -> int:
    return main(["clean", f"s3://{bucket}/raw", f"s3://{bucket}/{output}", *NO_VERIFY, *extra])


def s3_client(endpoint_url: str):  # noqa: ANN201 - boto3's client type is generated
    """A plain boto3 client: writes keys exactly as given (s3fs would cut `?versionId=`)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def photos(n: int, side: int = 64, first: int = 0) -> dict[str, bytes]:
    return {f"{i}.png": encode(photo(side, side, first + i), "PNG") for i in range(n)}


# -- 1. SVG: limits before rendering, crashes and hangs isolated ---------------------------


def test_deeply_nested_svg_is_refused_before_rendering():
    with pytest.raises(Rejected) as info:
        decode_within(nested_svg(300), DecodeLimits(), 512)
    assert info.value.reason == Reason.DECOMPRESSION_BOMB
    assert "levels deep" in info.value.detail
    wide = b'<svg xmlns="http://www.w3.org/2000/svg">' + b"<rect/>" * 60_000 + b"</svg>"
    with pytest.raises(Rejected) as info:
        decode_within(wide, DecodeLimits(), 512)
    assert "elements" in info.value.detail
    assert decode_within(nested_svg(20), DecodeLimits(), 512).image.size == (240, 160)


def test_renderer_crash_rejects_one_file_and_the_next_svg_renders(monkeypatch):
    monkeypatch.setattr(svg, "MAX_SVG_DEPTH", 10_000)  # let the crashing file through
    with pytest.raises(Rejected) as info:
        svg.rasterize_svg(nested_svg(300), 512, 10**6)
    assert info.value.reason == Reason.DECODER_CRASH
    assert "SIGSEGV" in info.value.detail
    assert svg.rasterize_svg(nested_svg(3), 512, 10**6).size == (240, 160)


def test_hung_renderer_is_stopped_at_the_timeout(monkeypatch):
    monkeypatch.setattr(svg, "_HELPER", "import time; time.sleep(120)")
    monkeypatch.setattr(svg, "_RENDERER", svg._Renderer())
    started = time.monotonic()
    with pytest.raises(Rejected) as info:
        svg.rasterize_svg(nested_svg(3), 512, 10**6, timeout_s=1.0)
    assert info.value.reason == Reason.DECODER_CRASH and "within 1 s" in info.value.detail
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("ray_session")
def test_job_with_the_nested_svg_finishes(s3, bucket):
    files = {f"birds/{k}": v for k, v in photos(2).items()}
    files["birds/nested.svg"] = nested_svg(300)
    upload_files(s3.filesystem(), f"{bucket}/raw", files)
    assert clean(bucket) == 0
    storage = StorageConfig(endpoint_url=s3.endpoint_url)
    rejected = read_table(f"s3://{bucket}/out", "rejected", storage).to_pylist()
    assert [(r["source_uri"].rsplit("/", 1)[1], r["reason"]) for r in rejected] == [
        ("nested.svg", "decompression_bomb")
    ]


@pytest.mark.usefixtures("ray_session")
def test_worker_deaths_fail_the_job_after_bounded_retries(s3, bucket, monkeypatch, capsys):
    upload_files(s3.filesystem(), f"{bucket}/raw", {f"birds/{k}": v for k, v in photos(2).items()})

    def crash(batch, cfg):  # noqa: ANN001, ARG001 - pickled by value into the worker
        os._exit(1)

    monkeypatch.setattr(job, "normalise_batch", crash)
    started = time.monotonic()
    assert clean(bucket) == 2
    assert time.monotonic() - started < 180
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "normalise stage" in err[0] and "3 tries" in err[0]


# -- 2. Decode memory ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "side", "mode"),
    [
        ("grey16.png", sixteen_bit_png, PNG16_SIDE, "I;16"),
        ("float.tif", float_tiff, FLOAT_TIFF_SIDE, "F"),
    ],
)
def test_worst_accepted_images_decode_under_1gb(tmp_path, name, make, side, mode):
    path = tmp_path / name
    path.write_bytes(make())
    assert path.stat().st_size < 2**20  # a small file...
    before, peak, width, stored = normalise_peak(path)
    assert (width, stored) == (side, 512)  # ...accepted and decoded
    print(f"{name}: peak RSS {peak / 2**20:.0f} MB ({before / 2**20:.0f} MB before decoding)")
    assert peak <= 1 * GB, f"peak RSS {peak / 2**20:.0f} MB"
    # The documented per-mode cost holds (plus fixed costs: strips, the file's bytes).
    assert peak - before <= side * side * decode_bytes_per_pixel(mode) + DECODE_FIXED_BYTES


@pytest.mark.usefixtures("ray_session")
def test_one_normalise_task_on_the_worst_images_stays_under_1gb(s3, bucket):
    """The task as the job runs it (fetch from S3, decode, hashes, junk scores, the
    embedding model when this machine has its weights) in a fresh Ray worker."""
    import ray

    from devkit.weights import local_embedding_weights
    from pipeline.config import CleanConfig
    from pipeline.listing import list_lake
    from pipeline.planning import with_work_columns

    upload_files(
        s3.filesystem(),
        f"{bucket}/raw",
        {"a/grey16.png": sixteen_bit_png(), "a/float.tif": float_tiff()},
    )
    cfg = CleanConfig(input_uri=f"s3://{bucket}/raw", output_uri=f"s3://{bucket}/out")
    cfg.dedup.embedding_weights = local_embedding_weights()
    snapshot = list_lake(cfg.input_uri, cfg.storage)
    work = with_work_columns(snapshot, ["a"], 0, cfg)

    def task(batch, cfg):  # noqa: ANN001, ANN202 - pickled by value into the worker
        import threading

        from pipeline.normalize import normalise_batch

        def status() -> dict[str, int]:
            with open("/proc/self/status") as lines:
                fields = (line.split() for line in lines if line.startswith(("Vm", "Rss")))
                return {f[0].rstrip(":"): int(f[1]) * 1024 for f in fields if len(f) > 1}

        peaks = {"anon": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.002):
                peaks["anon"] = max(peaks["anon"], status()["RssAnon"])

        before = status()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = normalise_batch(batch, cfg)
        done.set()
        sampler.join()
        after = status()
        # Anonymous memory at its peak: sampled, and bounded below by the high-water mark
        # less the file-backed pages resident at the end (shared libraries).
        anon = max(peaks["anon"], after["VmHWM"] - after["RssFile"])
        return before, after, anon, out["reason"].to_pylist(), out["width"].to_pylist()

    # Its own runtime_env: a worker started for this task alone, so VmHWM is this task's.
    fresh = {"env_vars": {"LAKECLEAN_MEMORY_PROBE": str(time.time())}}
    before, after, anon, reasons, widths = ray.get(
        ray.remote(task).options(runtime_env=fresh, max_retries=0).remote(work, cfg)
    )
    assert widths == [512, 512], reasons  # decoded (a flat gradient may then be junk)
    mb = {k: f"{v / 2**20:.0f} MB" for k, v in after.items() if k in ("VmHWM", "RssFile")}
    print(f"one normalise task on the worst images: anonymous peak {anon / 2**20:.0f} MB; {mb}")
    # The bar is on the memory the task itself needs (anonymous pages): the file-backed
    # pages of torch and the other libraries are shared by every worker on the node and
    # their size depends on the torch build (this CUDA build maps ~230 MB more than CPU).
    assert anon <= 1 * GB, f"anonymous peak of the task's worker {anon / 2**20:.0f} MB"
    assert anon - before["RssAnon"] <= 600 * 2**20, "decoding, hashing and the model"


def test_an_image_over_the_decode_budget_is_refused_from_its_header():
    # 8000 x 8000 grey+alpha costs ~14 bytes/pixel to flatten: over the default budget,
    # although under the pixel limit. Refused before any pixel is decoded (fast).
    data = encode(photo(64, 64).convert("LA").resize((8000, 8000)), "PNG")
    started = time.monotonic()
    with pytest.raises(Rejected) as info:
        decode_within(data, DecodeLimits(), 512)
    assert info.value.reason == Reason.DECOMPRESSION_BOMB and "MiB" in info.value.detail
    assert time.monotonic() - started < 1.0
    small = DecodeLimits(max_decode_bytes=64 * 2**20)
    with pytest.raises(Rejected):
        decode_within(encode(photo(64, 64).resize((4000, 4000)), "PNG"), small, 512)


# -- 3. One writer per output ----------------------------------------------------------


def _hold_lease(bucket: str, run_id: str, ttl_s: float = 120.0) -> Lease:
    lease = Lease(f"s3://{bucket}/out", run_id, StorageConfig(), ttl_s=ttl_s)
    assert lease.try_acquire() is None
    return lease


@pytest.mark.usefixtures("ray_session")
def test_second_run_on_a_busy_output_fails_fast_naming_the_other_run(s3, bucket, capsys):
    upload_files(s3.filesystem(), f"{bucket}/raw", {f"a/{k}": v for k, v in photos(2).items()})
    holder = _hold_lease(bucket, "20990101T000000Z-other")
    started = time.monotonic()
    assert clean(bucket) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "20990101T000000Z-other" in err[0] and "--wait-for-lock" in err[0]
    assert read_manifest(f"s3://{bucket}/out", StorageConfig()) is None
    holder.release()


@pytest.mark.usefixtures("ray_session")
def test_wait_for_lock_waits_for_the_other_run(s3, bucket):
    upload_files(s3.filesystem(), f"{bucket}/raw", {f"a/{k}": v for k, v in photos(2).items()})
    holder = _hold_lease(bucket, "20990101T000000Z-other")
    threading.Timer(3.0, holder.release).start()
    started = time.monotonic()
    assert clean(bucket, "--wait-for-lock") == 0
    assert time.monotonic() - started >= 3.0
    assert read_manifest(f"s3://{bucket}/out", StorageConfig())["totals"]["kept"] == 2
    assert not s3.filesystem().exists(f"{bucket}/out/_lease.json")  # released at the end


@pytest.mark.usefixtures("ray_session")
def test_a_stale_lease_expires(s3, bucket):
    upload_files(s3.filesystem(), f"{bucket}/raw", {f"a/{k}": v for k, v in photos(2).items()})
    _hold_lease(bucket, "20990101T000000Z-dead", ttl_s=0.5)  # a driver that died
    time.sleep(1.0)
    assert clean(bucket) == 0


@pytest.mark.usefixtures("ray_session")
def test_two_runs_on_one_output_never_mix(s3, bucket, capsys):
    """The issue's repro: run B (--max-side 128) starts while run A works on the output."""
    upload_files(
        s3.filesystem(), f"{bucket}/raw", {f"a/{k}": v for k, v in photos(6, side=300).items()}
    )
    storage = StorageConfig()
    codes: list[int] = []
    run_a = threading.Thread(target=lambda: codes.append(clean(bucket)))
    run_a.start()
    deadline = time.monotonic() + 60
    while not s3.filesystem().exists(f"{bucket}/out/_lease.json"):
        assert time.monotonic() < deadline and run_a.is_alive()
        time.sleep(0.1)
    assert clean(bucket, "--max-side", "128") == 2
    assert "is being written by run" in capsys.readouterr().err
    run_a.join(timeout=300)
    assert codes == [0]
    manifest = read_manifest(f"s3://{bucket}/out", storage)
    verify_version(f"s3://{bucket}/out", manifest, storage)  # every shard as recorded
    images = read_table(f"s3://{bucket}/out", "images", storage, ["width"], manifest)
    assert images["width"].to_pylist() == [300] * 6  # A's settings, A's shards


@pytest.mark.parametrize("where", ["s3", "local"])
def test_lease_is_renewed_while_held_and_a_stalled_run_loses_it(s3, bucket, tmp_path, where):
    uri = f"s3://{bucket}/out" if where == "s3" else str(tmp_path / "out")
    first = Lease(uri, "run-a", StorageConfig(), ttl_s=1.0).acquire()
    time.sleep(1.5)  # past the first expiry: the renewer kept it
    second = Lease(uri, "run-b", StorageConfig(), ttl_s=1.0)
    assert second.try_acquire()["run_id"] == "run-a"
    first._stop.set()  # run A's driver stalls: nothing renews its lease any more
    first._renewer.join()
    time.sleep(1.5)
    assert second.try_acquire() is None  # expired: taken over
    with pytest.raises(LeaseHeld, match="run-b"):
        first.check()  # A must not publish
    first.release()  # and does not remove B's lease
    assert Lease(uri, "run-c", StorageConfig()).try_acquire()["run_id"] == "run-b"
    second.release()
    assert Lease(uri, "run-c", StorageConfig()).try_acquire() is None


def test_shard_names_are_unique_per_run():
    uris = ["s3://b/raw/a/1.png", "s3://b/raw/a/2.png"]
    assert shard_name(uris, "norm", "s3://b/out/_staging/run-1") == shard_name(
        list(reversed(uris)), "norm", "s3://b/out/_staging/run-1"
    )  # a retried task overwrites its own shard
    assert shard_name(uris, "norm", "s3://b/out/_staging/run-1") != shard_name(
        uris, "norm", "s3://b/out/_staging/run-2"
    )


# -- 4. A damaged previous version -----------------------------------------------------


@pytest.fixture
def published(s3, bucket, ray_session):  # noqa: ARG001
    """A published version (3 kept in class a, 2 in b) and a new file for the next run:
    a byte copy of a kept image under the other class (an intact index rejects it)."""
    fs = s3.filesystem()
    files = {f"a/{k}": v for k, v in photos(3).items()}
    files |= {f"b/{k}": v for k, v in photos(2, first=10).items()}
    upload_files(fs, f"{bucket}/raw", files)
    assert clean(bucket) == 0
    fs.pipe_file(f"{bucket}/raw/b/copy.png", files["a/0.png"])
    return read_manifest(f"s3://{bucket}/out", StorageConfig())


def test_manifest_records_every_shard(s3, bucket, published):
    shards = published["shards"]
    listed = {rel for t in ("images", "rejected", "index") for rel in published["files"][t]}
    assert listed | {published["files"]["snapshot"]} == set(shards)
    for rel, record in shards.items():
        info = s3.filesystem().info(f"{bucket}/out/{rel}")
        assert record["bytes"] == info["size"] and len(record["footer_sha256"]) == 64
    index_rows = sum(shards[rel]["rows"] for rel in published["files"]["index"])
    assert index_rows == 5


def test_empty_index_shard_stops_the_next_run(s3, bucket, published, capsys):
    fs = s3.filesystem()
    index = published["files"]["index"][0]
    schema = pq.read_schema(fs.open(f"{bucket}/out/{index}", "rb"))
    with fs.open(f"{bucket}/out/{index}", "wb") as f:
        pq.write_table(pa.Table.from_pylist([], schema=schema), f)  # valid, empty
    assert clean(bucket) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and index in err[0] and "damaged" in err[0]
    assert read_manifest(f"s3://{bucket}/out", StorageConfig())["run_id"] == published["run_id"]


def test_missing_shard_stops_the_next_run(s3, bucket, published, capsys):
    shard = published["files"]["images"][0]
    s3.filesystem().rm_file(f"{bucket}/out/{shard}")
    assert clean(bucket) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shard in err[0] and "missing" in err[0]


def test_reversed_classes_stop_the_next_run(s3, bucket, published, capsys):
    import json

    fs = s3.filesystem()
    manifest = dict(published, classes=list(reversed(published["classes"])))
    fs.pipe_file(f"{bucket}/out/_manifest.json", json.dumps(manifest).encode())
    assert clean(bucket) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classes" in err[0] and "_manifest.json" in err[0]


def test_intact_version_rejects_the_cross_class_copy(s3, bucket, published):
    assert clean(bucket) == 0
    storage = StorageConfig()
    rejected = read_table(f"s3://{bucket}/out", "rejected", storage, ["source_uri", "reason"])
    reasons = dict(zip(*(rejected[c].to_pylist() for c in ("source_uri", "reason")), strict=True))
    assert reasons[f"s3://{bucket}/raw/b/copy.png"] in ("exact_duplicate", "label_conflict")


# -- 5. Output bucket ------------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_output_bucket_that_does_not_exist_is_an_error(s3, bucket, capsys):
    upload_files(s3.filesystem(), f"{bucket}/raw", {f"a/{k}": v for k, v in photos(1).items()})
    missing = f"no-such-{bucket}"
    args = ["clean", f"s3://{bucket}/raw", f"s3://{missing}/out", *NO_VERIFY]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    client = s3_client(s3.endpoint_url)
    assert missing not in {b["Name"] for b in client.list_buckets()["Buckets"]}


# -- 8. Keys with URL-special characters ------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_keys_with_url_special_characters_are_read(s3, bucket):
    client = s3_client(s3.endpoint_url)
    names = ["a?versionId=3.png", "b?versionId=.png", "c#frag.png", "d%20e.png", "f+g h.png"]
    for i, name in enumerate(names):
        body = encode(photo(64, 64, 20 + i), "PNG")
        client.put_object(Bucket=bucket, Key=f"raw/birds/{name}", Body=body)
    assert clean(bucket) == 0
    storage = StorageConfig()
    images = read_table(f"s3://{bucket}/out", "images", storage, ["source_uri"])
    assert sorted(u.rsplit("/", 1)[1] for u in images["source_uri"].to_pylist()) == names
