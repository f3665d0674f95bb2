"""The cleaning job end to end: a messy lake on the real S3 endpoint, through Ray Data."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.storage import StorageConfig
from devkit.local_s3 import upload_files
from devkit.messy_lake import CERTAIN_JUNK_RULES, KEPT, as_files, encode, messy_cases, photo
from devkit.weights import embedding_args
from pipeline import job
from pipeline.cli import main
from pipeline.output import read_manifest, read_table

pytestmark = pytest.mark.usefixtures("ray_session")


def read_output(fs, output: str):  # noqa: ANN001
    manifest = json.loads(fs.cat_file(f"{output}/_manifest.json"))
    tables = {}
    for name in ("images", "rejected"):
        parts = [pq.read_table(fs.open(f"{output}/{rel}", "rb")) for rel in manifest["files"][name]]
        tables[name] = {row["source_uri"]: row for p in parts for row in p.to_pylist()}
    report = json.loads(fs.cat_file(f"{output}/report.json"))
    return manifest, tables["images"], tables["rejected"], report


@pytest.fixture
def messy_lake(s3, bucket, tmp_path):
    red = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red)
    cases = messy_cases(local_file_for_svg=str(red))
    upload_files(s3.filesystem(), f"{bucket}/raw", as_files(cases))
    return cases


def test_every_file_once_with_its_outcome(s3, bucket, messy_lake):
    # Formats and corrupt files only: junk checks would (rightly) drop the clip art.
    code = main(
        [
            "clean",
            "--junk-checks",
            "",
            f"s3://{bucket}/raw",
            f"s3://{bucket}/clean",
            "--endpoint-url",
            s3.endpoint_url,
            "--files-per-task",
            "8",
            "--no-progress",
            *embedding_args(),
        ]
    )
    assert code == 0
    fs = s3.filesystem()
    manifest, images, rejected, report = read_output(fs, f"{bucket}/clean")

    listed = {f"s3://{bucket}/raw/{c.path}" for c in messy_lake}
    assert set(images) | set(rejected) == listed
    assert not set(images) & set(rejected)
    assert len(images) + len(rejected) == len(messy_lake)

    for case in messy_lake:
        uri = f"s3://{bucket}/raw/{case.path}"
        if case.status == KEPT:
            assert uri in images, (case.path, rejected.get(uri))
            row = images[uri]
            assert row["source_format"] == case.source_format, case.path
            assert row["frames"] == case.frames, case.path
            assert row["class_name"] == case.path.split("/")[0]
            assert manifest["classes"][row["label"]] == row["class_name"]
            out = Image.open(io.BytesIO(row["image"]))
            assert (out.format, out.mode) == ("JPEG", "RGB")
            assert out.size == (row["width"], row["height"]) and max(out.size) <= 512
            assert row["source_bytes"] == len(case.data)
            assert row["source_etag"]
        else:
            assert rejected[uri]["reason"] == case.reason, case.path
            assert rejected[uri]["detail"]

    # Same stem, different extension: two rows with different content names.
    plane_jpg, plane_png = (images[f"s3://{bucket}/raw/planes/plane.{e}"] for e in ("jpg", "png"))
    assert plane_jpg["sha256"] != plane_png["sha256"]

    assert report["totals"] == {
        "listed": len(messy_lake),
        "kept": len(images),
        "rejected": len(rejected),
    }
    assert sum(report["rejected_by_reason"].values()) == len(rejected)
    assert report["per_class"]["planes"]["rejected"]["truncated"] == 1
    assert report["input_formats"]["GIF"] == 2 and report["input_extensions"][".jpg"] >= 5
    assert len(report["channel_stats"]["mean"]) == 3
    assert all(0 < s < 0.5 for s in report["channel_stats"]["std"])
    assert sum(r["images"] for r in report["class_balance"]) == len(images)
    assert not fs.exists(f"{bucket}/clean/_staging")


def test_snapshot_isolates_the_run_from_files_arriving_and_changing(s3, bucket, monkeypatch):
    fs = s3.filesystem()
    upload_files(
        fs, f"{bucket}/raw", {f"birds/{i}.png": encode(photo(64, 64, i), "PNG") for i in range(4)}
    )
    normalise_once = job.normalise_stage

    def mutate_then_normalise(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        """The lake changes after the plan listed it, before a file is read."""
        fs.pipe_file(f"{bucket}/raw/birds/new.png", encode(photo(64, 64, 9), "PNG"))
        fs.pipe_file(f"{bucket}/raw/birds/0.png", encode(photo(90, 90, 8), "PNG"))
        return normalise_once(*args, **kwargs)

    monkeypatch.setattr(job, "normalise_stage", mutate_then_normalise)
    storage = StorageConfig(endpoint_url=s3.endpoint_url)
    args = ["clean", f"s3://{bucket}/raw", f"s3://{bucket}/out", "--no-progress"]
    assert main([*args, *embedding_args(), *CERTAIN_JUNK_RULES]) == 0
    images = read_table(f"s3://{bucket}/out", "images", storage, ["source_uri"])
    rejected = read_table(f"s3://{bucket}/out", "rejected", storage).to_pylist()
    assert f"s3://{bucket}/raw/birds/new.png" not in images["source_uri"].to_pylist()
    assert [(r["source_uri"].rsplit("/", 1)[1], r["reason"]) for r in rejected] == [
        ("0.png", "source_changed")
    ]
    assert images.num_rows == 3


def test_rerun_publishes_a_new_version_and_leaves_no_strays(s3, bucket):
    fs = s3.filesystem()
    upload_files(
        fs, f"{bucket}/raw", {f"a/{i}.png": encode(photo(64, 64, i), "PNG") for i in range(3)}
    )
    fs.pipe_file(f"{bucket}/out/images/part-crashed-run.parquet", b"leftover of a dead run")
    args = ["clean", f"s3://{bucket}/raw", f"s3://{bucket}/out", "--no-progress"]
    args += embedding_args() + CERTAIN_JUNK_RULES
    assert main(args) == 0
    first = read_manifest(f"s3://{bucket}/out", StorageConfig())
    fs.pipe_file(f"{bucket}/raw/a/extra.png", encode(photo(64, 64, 7), "PNG"))
    assert main(args) == 0
    second = read_manifest(f"s3://{bucket}/out", StorageConfig())
    assert second["run_id"] != first["run_id"] and second["totals"]["kept"] == 4
    # Shards stay under the prefix of the run that wrote them (runs/<run>/images/...).
    on_disk = sorted(p.split("/out/", 1)[1] for p in fs.find(f"{bucket}/out") if "/images/" in p)
    assert on_disk == second["files"]["images"]


def test_local_folder_lake(tmp_path):
    lake = tmp_path / "lake"
    for name, data in {
        "cats/a.png": encode(photo(64, 64, 1), "PNG"),
        "dogs/b.jpg": encode(photo(64, 64, 2), "JPEG"),
        "dogs/c.jpg": b"",
    }.items():
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(data)
    assert (
        main(
            [
                "clean",
                str(lake),
                str(tmp_path / "out"),
                "--no-progress",
                *embedding_args(),
                *CERTAIN_JUNK_RULES,
            ]
        )
        == 0  # fmt: skip
    )
    manifest = read_manifest(str(tmp_path / "out"), StorageConfig())
    assert manifest["classes"] == ["cats", "dogs"]
    assert manifest["totals"] == {"listed": 3, "kept": 2, "rejected": 1}
