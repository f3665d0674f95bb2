"""The embedding as a stage of its own (`pipeline.embed_stage`, `--embedding-device`):
the same job, the same output. On the CPU the actors run the very network the normalise
tasks run, on the same rows, so the outputs are equal column for column, embeddings to
the bit; a GPU's kernels round differently, so there the embeddings may move by one
float16 step (tested where Ray has a GPU)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from sample_lake_decisions import write_lake
from test_config_validation import assert_one_line_naming, run_main

from common.dataset import TABLES
from devkit.messy_lake import encode, photo
from devkit.weights import SHARED_WEIGHTS
from pipeline import job
from pipeline.cli import main as clean_main
from pipeline.config import CleanConfig
from pipeline.embed_stage import embedding_stage, pending_rows, pending_table
from pipeline.normalize import EMBEDDING_INPUT, normalise_item, score_columns
from pipeline.tables import work_schema

pytestmark = pytest.mark.usefixtures("ray_session")

FILES_PER_TASK = "8"  # the sample lake's 81 files in 11 blocks: several actor batches


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ImageNet backbone where this machine has it, else a seeded random one: the
    embedding stage needs a network, and a fresh clone has no weights."""
    if SHARED_WEIGHTS.is_file():
        return str(SHARED_WEIGHTS)
    import torch
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_backbone.pth"
    torch.save({k: v for k, v in mobilenet_v2().state_dict().items() if "features" in k}, path)
    return str(path)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed-stage") / "lake"
    write_lake(root)
    return root


def clean(lake: Path, out: Path, weights: str, device: str) -> int:
    argv = ["clean", str(lake), str(out), "--no-progress", "--embedding-weights", weights]
    return clean_main([*argv, "--files-per-task", FILES_PER_TASK, "--embedding-device", device])


def published(out: Path) -> dict[str, pa.Table]:
    """Each published table (images, rejected, index), all its columns, by source."""
    files = json.loads((out / "_manifest.json").read_text())["files"]
    tables = {}
    for name in TABLES:
        table = pa.concat_tables(
            [pq.read_table(out / rel) for rel in files[name]], promote_options="default"
        )
        tables[name] = table.sort_by("source_uri")
    return tables


@pytest.fixture(scope="module")
def in_tasks(lake: Path, weights: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("in-tasks") / "clean"
    assert clean(lake, out, weights, "cpu") == 0
    return published(out)


def test_cpu_actors_publish_what_the_normalise_tasks_do(
    lake, weights, in_tasks, tmp_path, monkeypatch
):
    plans = []

    def stage_with_its_plan(*args: Any) -> ray.data.Dataset:
        dataset = embedding_stage(*args)
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            dataset.explain()
        plans.append(printed.getvalue())
        return dataset

    monkeypatch.setattr(job, "embedding_stage", stage_with_its_plan)
    assert clean(lake, tmp_path / "clean", weights, "cpu-actors") == 0
    (plan,) = plans  # the stage ran, in actors of its own, not fused into the tasks
    assert "ActorPoolMapOperator[MapBatches(EmbedBatches)]" in plan, plan
    assert "TaskPoolMapOperator[MapBatches(normalise_block)]" in plan, plan
    found = published(tmp_path / "clean")
    assert in_tasks["images"].num_rows and in_tasks["rejected"].num_rows  # both sides tested
    for name in TABLES:
        expected, got = in_tasks[name], found[name]
        assert got.schema == expected.schema, name
        for column in expected.column_names:  # one by one: the failure names the column
            assert got[column].equals(expected[column]), (name, column)
    assert "embedding" in found["index"].column_names  # equal to the bit, checked above


def test_gpu_actors_publish_the_same_decisions(lake, weights, in_tasks, tmp_path):
    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("no GPU in this Ray: the CPU-actor test covers the stage")
    assert clean(lake, tmp_path / "clean", weights, "gpu") == 0
    found = published(tmp_path / "clean")
    for name, columns in (
        ("images", ["source_uri", "split"]),
        ("rejected", ["source_uri", "reason"]),
    ):
        assert found[name].select(columns).equals(in_tasks[name].select(columns)), name
    index = found["index"]
    assert index["source_uri"].equals(in_tasks["index"]["source_uri"])
    gpu = np.stack(index["embedding"].to_numpy(zero_copy_only=False)).astype(np.float16)
    cpu = np.stack(in_tasks["index"]["embedding"].to_numpy(zero_copy_only=False))
    cpu = cpu.astype(np.float16)
    one_step = np.spacing(np.maximum(np.abs(cpu), np.abs(gpu)))
    assert np.all(np.abs(gpu.astype(np.float32) - cpu.astype(np.float32)) <= one_step)


def test_gpu_without_a_gpu_stops_with_one_line(lake, weights, tmp_path, capsys):
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray has a GPU")
    out = tmp_path / "clean"
    assert clean(lake, out, weights, "gpu") == 2  # instead of waiting for a GPU forever
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --embedding-device gpu"), err
    assert not (out / "_manifest.json").exists()


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--embedding-device", "tpu"], "embedding_device"),
        (["--embedding-actors", "0"], "embedding_actors"),
        (["--embedding-gpus-per-actor", "0"], "embedding_gpus_per_actor"),
        (["--embedding-gpus-per-actor", "1.5"], "embedding_gpus_per_actor"),
    ],
)
def test_bad_embedding_settings_stop_before_any_work(tmp_path, capsys, flags, field):
    lake = tmp_path / "lake"
    (lake / "cats").mkdir(parents=True)
    (lake / "cats" / "a.png").write_bytes(encode(photo(48, 48, 1), "PNG"))
    out = tmp_path / "out"
    assert run_main(clean_main, ["clean", str(lake), str(out), *flags]) == 2
    assert_one_line_naming(capsys.readouterr().err, field)
    assert not out.exists()


def test_pending_rows_come_back_as_the_normalise_task_left_them():
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = "any"  # verified: the rows carry embedding inputs
    rows = []
    for seed, side in ((1, 64), (2, 300)):
        data = encode(photo(side, side, seed), "PNG")
        item = {"source_uri": f"s3://lake/raw/Drones/{seed}.png", "class_name": "Drones",
                "label": 0, "etag": "e", "mtime": None, "size": len(data)}  # fmt: skip
        rows.append(normalise_item(item, data, cfg))
    back = pending_rows(pending_table(copy.deepcopy(rows), cfg), cfg)
    for row, again in zip(rows, back, strict=True):
        assert np.array_equal(row.pop(EMBEDDING_INPUT), again.pop(EMBEDDING_INPUT))
        for column in score_columns(cfg):  # full precision: a verdict on a threshold holds
            assert repr(again[column]) == repr(row[column]), column
    schema = work_schema(score_columns(cfg))  # the rest as the table stores it (NaN != NaN)
    others = [name for name in schema.names if name not in score_columns(cfg)]
    stored = [pa.Table.from_pylist(r, schema=schema).select(others) for r in (back, rows)]
    assert stored[0].equals(stored[1])
