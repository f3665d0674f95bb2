"""The published data set's format (`common.dataset`): what both jobs read it by."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import dataset
from common.storage import StorageConfig
from pipeline import output, tables


def publish(root, files: dict[str, list[str]]) -> None:  # noqa: ANN001 - a pytest tmp_path
    for rels in files.values():
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"source_uri": [rel], "n": [len(rel)]}), root / rel)
    (root / dataset.MANIFEST).write_text(json.dumps({"files": files}))


def test_a_published_version_is_read_by_table_and_by_split(tmp_path):
    storage = StorageConfig()
    files = {
        dataset.IMAGES: [
            f"{dataset.split_folder(dataset.TRAIN)}/part-0.parquet",
            f"{dataset.split_folder(dataset.TRAIN)}/part-1.parquet",
            f"{dataset.split_folder(dataset.TEST)}/part-0.parquet",
        ],
        dataset.REJECTED: ["rejected/part-0.parquet"],
        dataset.INDEX: [],
    }
    publish(tmp_path, files)
    root = str(tmp_path)
    manifest = dataset.read_manifest(root, storage)
    assert dataset.split_folder(dataset.TRAIN) == "images/split=train"
    train = dataset.split_uris(root, manifest, dataset.TRAIN)
    assert [u.rsplit("/", 2)[-2:] for u in train] == [
        ["split=train", "part-0.parquet"],
        ["split=train", "part-1.parquet"],
    ]
    assert dataset.split_uris(root, manifest, dataset.VAL) == []
    images = dataset.read_table(root, dataset.IMAGES, storage, columns=["source_uri"])
    assert images.column_names == ["source_uri"]
    assert sorted(images["source_uri"].to_pylist()) == sorted(files[dataset.IMAGES])
    assert dataset.read_table(root, dataset.INDEX, storage).num_rows == 0


def test_a_missing_or_damaged_manifest_is_a_one_line_error(tmp_path):
    storage = StorageConfig()
    assert dataset.read_manifest(str(tmp_path), storage) is None
    with pytest.raises(dataset.OutputError, match="no published cleaning output"):
        dataset.read_table(str(tmp_path), dataset.IMAGES, storage)
    (tmp_path / dataset.MANIFEST).write_text("{not json")
    with pytest.raises(dataset.OutputError, match="not valid JSON"):
        dataset.read_manifest(str(tmp_path), storage)
    (tmp_path / dataset.MANIFEST).write_text(json.dumps({"files": {"images": "x"}}))
    with pytest.raises(dataset.OutputError, match="no valid 'files'"):
        dataset.read_manifest(str(tmp_path), storage)


def test_the_cleaning_job_names_the_data_set_as_the_format_does():
    """One definition: the cleaning job's names are the format's, not copies."""
    assert output.OutputError is dataset.OutputError
    assert output.read_manifest is dataset.read_manifest
    assert (output.MANIFEST, output.TABLES) == (dataset.MANIFEST, dataset.TABLES)
    assert (tables.IMAGES, tables.REJECTED_DIR, tables.INDEX) == dataset.TABLES
    routed = tables.route_final(_work_table(dataset.VAL))
    assert dataset.split_folder(dataset.VAL) in routed


def _work_table(split: str) -> pa.Table:
    schema = tables.work_schema([])
    row = {name: None for name in schema.names} | {"status": tables.KEPT, "split": split}
    return pa.Table.from_pylist([row], schema=schema)
