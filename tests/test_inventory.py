"""An S3 Inventory report read as the snapshot gives exactly the listing's snapshot.

The reports are written here the way S3 writes them (manifest.json naming gzipped CSV
files with URL-encoded keys, or ORC/Parquet files with snake-case columns), from a
boto3 listing of the local S3 endpoint, with rows the job must skip: another prefix,
a delete marker, an older version.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from common.storage import StorageConfig
from pipeline.inventory import inventory_snapshot
from pipeline.listing import LakeError, list_lake

LAYOUT = [
    "loose.jpg",
    "cat/a.jpg",
    "cat/2024/b c+d.jpg",  # a space and a plus: URL-encoded in CSV reports
    "dog/x/y/e.jpg",
    "émeu/h.jpg",
]
CSV_FIELDS = ["Bucket", "Key", "VersionId", "IsLatest", "IsDeleteMarker", "Size",
              "LastModifiedDate", "ETag", "StorageClass"]  # fmt: skip


def _objects(s3, bucket: str) -> list[dict]:
    """The bucket as an inventory sees it, plus rows the job must leave out."""
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    rows = [
        {
            "Bucket": bucket,
            "Key": o["Key"],
            "VersionId": "",
            "IsLatest": True,
            "IsDeleteMarker": False,
            "Size": o["Size"],
            "LastModifiedDate": o["LastModified"],
            "ETag": o["ETag"].strip('"'),
            "StorageClass": "STANDARD",
        }
        for o in listed
    ]
    extra = dict(rows[1], Key="lake/cat/gone.jpg", IsDeleteMarker=True, Size=0)
    older = dict(rows[1], Key="lake/cat/old.jpg", IsLatest=False)
    return [*rows, extra, older]


def _write_report(s3, bucket: str, rows: list[dict], file_format: str) -> str:
    fs = s3.filesystem()
    key = f"inventory/{bucket}/daily/data/part-0"
    if file_format == "CSV":
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL)
        for row in rows:
            values = dict(row, Key=quote_plus(row["Key"], safe="/"))
            values["LastModifiedDate"] = row["LastModifiedDate"].strftime("%Y-%m-%dT%H:%M:%S.000Z")
            values["IsLatest"] = str(row["IsLatest"]).lower()
            values["IsDeleteMarker"] = str(row["IsDeleteMarker"]).lower()
            writer.writerow([values[f] for f in CSV_FIELDS])
        key += ".csv.gz"
        fs.pipe_file(f"{bucket}/{key}", gzip.compress(out.getvalue().encode()))
        schema = ", ".join(CSV_FIELDS)
    else:
        table = pa.table(
            {
                "bucket": [r["Bucket"] for r in rows],
                "key": [r["Key"] for r in rows],
                "is_latest": [r["IsLatest"] for r in rows],
                "is_delete_marker": [r["IsDeleteMarker"] for r in rows],
                "size": pa.array([r["Size"] for r in rows], pa.int64()),
                "last_modified_date": pa.array(
                    [r["LastModifiedDate"] for r in rows], pa.timestamp("ms", tz="UTC")
                ),
                "e_tag": [r["ETag"] for r in rows],
            }
        )
        buffer = io.BytesIO()
        if file_format == "ORC":
            orc.write_table(table, buffer)
            key += ".orc"
        else:
            pq.write_table(table, buffer)
            key += ".parquet"
        fs.pipe_file(f"{bucket}/{key}", buffer.getvalue())
        schema = "struct<bucket:string,key:string,size:bigint,...>"
    for stamp in ("2026-12-01T01-00Z", "2026-12-02T01-00Z"):  # the newest one counts
        manifest = {
            "sourceBucket": bucket,
            "destinationBucket": f"arn:aws:s3:::{bucket}",
            "version": "2016-11-30",
            "fileFormat": file_format,
            "fileSchema": schema,
            "files": [{"key": key, "size": 1, "MD5checksum": "0"}]
            if stamp.startswith("2026-12-02")
            else [],
        }
        fs.pipe_file(f"{bucket}/inventory/{bucket}/daily/{stamp}/manifest.json",
                     json.dumps(manifest).encode())  # fmt: skip
    return f"s3://{bucket}/inventory/{bucket}/daily/"


@pytest.mark.parametrize("file_format", ["CSV", "ORC", "Parquet"])
def test_inventory_gives_the_listings_snapshot(s3, bucket: str, ray_session, file_format) -> None:
    fs = s3.filesystem()
    for i, rel in enumerate(LAYOUT):
        fs.pipe_file(f"{bucket}/lake/{rel}", b"x" * (i + 1))
    fs.pipe_file(f"{bucket}/elsewhere/cat/z.jpg", b"z")  # another prefix: not in the lake
    storage = StorageConfig(endpoint_url=s3.endpoint_url)
    report = _write_report(s3, bucket, _objects(s3, bucket), file_format)
    listed = list_lake(f"s3://{bucket}/lake/", storage, concurrent=False)
    snapshot = inventory_snapshot(report, f"s3://{bucket}/lake/", storage)
    assert snapshot.schema == listed.schema
    assert snapshot.to_pylist() == listed.to_pylist()
    assert snapshot.num_rows == len(LAYOUT)


def test_a_wrong_or_missing_report_stops_with_one_line(s3, bucket: str, ray_session) -> None:
    storage = StorageConfig(endpoint_url=s3.endpoint_url)
    with pytest.raises(LakeError, match="no manifest.json"):
        inventory_snapshot(f"s3://{bucket}/nothing/", f"s3://{bucket}/lake/", storage)
    s3.filesystem().pipe_file(
        f"{bucket}/inv/manifest.json", json.dumps({"fileFormat": "XLS", "files": []}).encode()
    )
    with pytest.raises(LakeError, match="fileFormat 'XLS'"):
        inventory_snapshot(f"s3://{bucket}/inv/manifest.json", f"s3://{bucket}/lake/", storage)
    s3.filesystem().pipe_file(
        f"{bucket}/inv2/manifest.json",
        json.dumps({"fileFormat": "CSV", "fileSchema": "Bucket, Key", "files": []}).encode(),
    )
    with pytest.raises(LakeError, match="lacks Size"):
        inventory_snapshot(f"s3://{bucket}/inv2/", f"s3://{bucket}/lake/", storage)
    with pytest.raises(LakeError, match="not one"):
        inventory_snapshot(f"s3://{bucket}/inv2/", "/tmp/lake", storage)


def test_the_job_runs_on_the_report_and_not_on_a_listing(s3, bucket: str, ray_session) -> None:
    from devkit.messy_lake import CERTAIN_JUNK_RULES, encode, photo
    from devkit.weights import embedding_args
    from pipeline.cli import main
    from pipeline.output import read_table

    fs = s3.filesystem()
    for i in range(3):
        fs.pipe_file(f"{bucket}/lake/birds/{i}.png", encode(photo(64, 64, i), "PNG"))
    report = _write_report(s3, bucket, _objects(s3, bucket), "CSV")
    fs.pipe_file(f"{bucket}/lake/birds/later.png", encode(photo(64, 64, 9), "PNG"))
    args = ["clean", f"s3://{bucket}/lake", f"s3://{bucket}/out", "--no-progress"]
    args += ["--inventory-uri", report, *embedding_args(), *CERTAIN_JUNK_RULES]
    assert main(args) == 0
    storage = StorageConfig(endpoint_url=s3.endpoint_url)
    kept = read_table(f"s3://{bucket}/out", "images", storage, ["source_uri"])
    names = sorted(u.rsplit("/", 1)[1] for u in kept["source_uri"].to_pylist())
    assert names == ["0.png", "1.png", "2.png"]  # later.png waits for the next report
    missing = [a if a != report else f"s3://{bucket}/no/" for a in args]
    assert main(missing) == 2  # one line, exit 2, nothing published
