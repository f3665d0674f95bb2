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
