"""The concurrent listing (Ray tasks per class and sub-prefix) gives exactly the snapshot
of the sequential recursive listing, on the local filesystem and on the S3 endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.storage import StorageConfig
from pipeline.listing import LakeError, list_lake

LAYOUT = [
    "loose.jpg",  # outside any class: class null
    "cat/a.jpg",  # directly in a class
    "cat/2024/b.jpg",  # one level below a class (a fanned-out sub-prefix)
    "cat/2024/deep/c.png",
    "cat/2025/d.jpg",
    "dog/x/y/z/e.jpg",
    "dog/f g.jpg",
    "émeu/ü/h.jpg",  # non-ASCII: sorted as the sequential listing sorts
]


def _compare(uri: str, storage: StorageConfig) -> None:
    sequential = list_lake(uri, storage, concurrent=False)
    fanned = list_lake(uri, storage, concurrent=True)
    assert sequential.num_rows == len(LAYOUT)
    assert fanned.to_pylist() == sequential.to_pylist()
    assert fanned.schema == sequential.schema
    labels = dict(zip(fanned["source_uri"].to_pylist(), fanned["label"].to_pylist(), strict=True))
    assert labels[f"{uri.rstrip('/')}/loose.jpg"] is None
    assert sorted(set(labels.values()) - {None}) == [0, 1, 2]


def test_concurrent_listing_equals_sequential_locally(tmp_path: Path, ray_session) -> None:
    for i, rel in enumerate(LAYOUT):
        path = tmp_path / "lake" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
    _compare(str(tmp_path / "lake"), StorageConfig())


def test_concurrent_listing_equals_sequential_on_s3(s3, bucket: str, ray_session) -> None:
    fs = s3.filesystem()
    for i, rel in enumerate(LAYOUT):
        fs.pipe_file(f"{bucket}/lake/{rel}", b"x" * (i + 1))
    _compare(f"s3://{bucket}/lake/", StorageConfig(endpoint_url=s3.endpoint_url))


def test_listing_errors_stop_with_one_line(tmp_path: Path, ray_session) -> None:
    with pytest.raises(LakeError, match="does not exist"):
        list_lake(str(tmp_path / "missing"), StorageConfig(), concurrent=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LakeError, match="holds no files"):
        list_lake(str(tmp_path / "empty"), StorageConfig(), concurrent=True)


def test_listing_reads_s3_timestamps_as_botocore() -> None:
    """The fast LastModified reader gives botocore's instants, so the same mtime text."""
    from botocore.utils import parse_timestamp

    from pipeline.listing import _iso_timestamp

    for value in (
        "2026-12-07T05:00:00.000Z",
        "2026-12-07T05:00:00.123Z",
        "2026-12-07T05:00:00Z",
        "2026-12-07T05:00:00+02:00",
        "Mon, 07 Dec 2026 05:00:00 GMT",
        "1765083600",
    ):
        assert _iso_timestamp(value).isoformat() == parse_timestamp(value).isoformat(), value


# The listing benchmark's endpoint (devkit.s3_lake_server): S3's page cost gives moto's pages.
MODEL_KEYS = [
    *(f"lake/{('cat', 'dog')[i % 2]}/p{i % 7:02d}/img{i:04d}.jpg" for i in range(150)),
    "lake/cat/",  # a folder placeholder
    "lake/cat/p00/",
    "lake/émeu/ü/h.jpg",
    "lake/top.jpg",
    "lake/z//double.jpg",
    "other/x.jpg",
    "gone/deleted.jpg",  # its latest version is a delete marker
]
MODEL_QUERIES = [
    (prefix, delimiter, max_keys, start_after)
    for prefix in (None, "lake/", "lake/cat/", "lake/cat/p0", "lake/nothing/", "gone/")
    for delimiter in (None, "/")
    for max_keys in (0, 1, 3, 1000)
    for start_after in (None, "lake/cat/p03/", "lake/dog")
]


def _walk(backend, bucket, query: tuple) -> list:  # noqa: ANN001
    """Every page's (names, truncated, token) of one query under the current model,
    following the continuation tokens."""
    from devkit.s3_listing_model import _list_objects_v2

    prefix, delimiter, max_keys, start_after = query
    pages, token = [], None
    while True:
        items, truncated, token = _list_objects_v2(
            backend, bucket, prefix, delimiter, token, start_after, max_keys
        )
        pages.append(([i if isinstance(i, str) else i.name for i in items], truncated, token))
        if not truncated or len(pages) > 500:
            return pages


def test_s3_listing_model_gives_motos_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from devkit import s3_listing_model as model

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the session's server: not here
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        client.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
        for key in MODEL_KEYS:
            client.put_object(Bucket="models", Key=key, Body=b"x")
        client.delete_object(Bucket="models", Key="gone/deleted.jpg")
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        bucket = backend.get_bucket("models")
        try:
            for query in MODEL_QUERIES:
                pages = {}
                for name in model.MODELS:
                    model.configure(name)
                    pages[name] = _walk(backend, bucket, query)
                assert pages["s3"] == pages["moto"], query
        finally:
            model.configure("moto")


RAW_QUERIES = [
    "",
    "&max-keys=0",
    "&prefix=lake/&max-keys=7",
    "&prefix=lake/&delimiter=/",
    "&prefix=lake/c1/&delimiter=/&max-keys=2&start-after=lake/c1/p1",
    "&prefix=nothing/&delimiter=/",
    "&prefix=lake/&delimiter=/&encoding-type=url",  # as botocore asks
    "&prefix=lake/c2/p2/&encoding-type=url&max-keys=5&start-after=lake/c2/p2/f1",
    "&prefix=lake/&fetch-owner=true&encoding-type=url&max-keys=3",  # moto renders these
]


def _raw_pages(endpoint_url: str) -> list[bytes]:
    """ListObjectsV2 bodies as sent (moto checks no signature)."""
    import urllib.request

    auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, Signature=x"
    bodies = []
    for query in RAW_QUERIES:
        request = urllib.request.Request(
            f"{endpoint_url}/lake?list-type=2{query}", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            bodies.append(answer.read())
    return bodies


def test_lake_server_fills_lists_and_switches_models(tmp_path: Path) -> None:
    import time

    from devkit.local_s3 import LocalS3

    keys = tmp_path / "keys.txt"
    names = [f"lake/c{i % 3}/p{i % 5}/f{i:03d}.jpg" for i in range(300)]
    keys.write_text("".join(f"{k}\n" for k in [*names, "lake/a&b <c>.jpg", "lake/émeu.jpg"]))
    with LocalS3(fill={"lake": keys}, listing="s3") as server:
        client = server.client()

        def listed(**kwargs: object) -> list:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket="lake", PaginationConfig={"PageSize": 7}, **kwargs
            )
            return [{k: v for k, v in p.items() if k != "ResponseMetadata"} for p in pages]

        queries = [{}, {"Prefix": "lake/c1/"}, {"Prefix": "lake/", "Delimiter": "/"}]
        s3_pages = [listed(**q) for q in queries]
        assert sum(p["KeyCount"] for p in s3_pages[0]) == 302
        client.put_object(Bucket="lake", Key="lake/c1/new.jpg", Body=b"yy")  # the index follows
        client.delete_object(Bucket="lake", Key="lake/c1/p1/f001.jpg")
        assert client.get_object(Bucket="lake", Key="lake/c2/p2/f002.jpg")["Body"].read() == b"x"
        after = [listed(**q) for q in queries]
        assert server.set_listing("moto") == {"model": "moto", "latency_ms": 0.0}
        assert [listed(**q) for q in queries] == after
        assert after != s3_pages
        moto_raw = _raw_pages(server.endpoint_url)
        assert server.set_listing("s3", 300) == {"model": "s3", "latency_ms": 300.0}
        assert _raw_pages(server.endpoint_url) == moto_raw  # the same bytes
        started = time.perf_counter()
        client.list_objects_v2(Bucket="lake", MaxKeys=1)
        assert time.perf_counter() - started >= 0.3
