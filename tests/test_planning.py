"""The run's plan made in a Ray task (`pipeline.planning`): the work blocks it stages are
the work table's rows, `files_per_task` at a time and in order, and its errors reach
the caller as they were raised."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.storage import filesystem
from pipeline import planning
from pipeline.config import CleanConfig
from pipeline.listing import LakeError, list_lake


def _chunked(n: int) -> pa.Table:
    """Rows in chunks of uneven sizes (a listing's tables concatenated)."""
    cuts = [0, 5, 6, 19, n]
    parts = [
        pa.table({"source_uri": [f"s3://b/a/{i:03d}.jpg" for i in range(lo, hi)],
                  "seen_order": pa.array(range(lo, hi), pa.int64()),
                  "group": pa.nulls(hi - lo, pa.string())})
        for lo, hi in zip(cuts, cuts[1:], strict=False)
    ]  # fmt: skip
    return pa.concat_tables(parts)


def test_blocks_are_the_work_rows_step_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "BLOCKS_PER_FILE", 3)  # 7 blocks: three files
    work = _chunked(45)
    cfg = CleanConfig(input_uri="s3://b/a", output_uri=f"file://{tmp_path}/out")
    blocks = planning.write_blocks(work, 7, f"file://{tmp_path}/stage", cfg)
    assert len(blocks) == 7 and len({uri for uri, _ in blocks}) == 3
    read = [planning.read_block(uri, k, cfg) for uri, k in blocks]
    assert [t.num_rows for t in read] == [7] * 6 + [3]
    for i, table in enumerate(read):
        assert table.equals(work.slice(7 * i, 7).combine_chunks())  # rows, order and types
    fs, path = filesystem(blocks[0][0], cfg.storage)
    with fs.open(path, "rb") as f:
        assert pq.ParquetFile(f).metadata.num_row_groups == 3


def test_plan_stages_the_snapshot_and_the_work(tmp_path, ray_session):
    lake = tmp_path / "lake"
    for name in ("birds/1.jpg", "birds/2.png", "drones/3.jpg"):
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(b"not decoded here " + name.encode())
    cfg = CleanConfig(input_uri=f"file://{lake}", output_uri=f"file://{tmp_path}/out")
    cfg.execution.files_per_task = 2
    stage, snapshot_uri = f"file://{tmp_path}/stage", f"file://{tmp_path}/stage/snapshot.parquet"
    plan = planning.plan_in_task(cfg, None, None, stage, snapshot_uri)
    assert (plan.classes, plan.listed, plan.todo, plan.carried) == (["birds", "drones"], 3, 3, 0)
    assert plan.has_work and len(plan.blocks) == 2
    snapshot = list_lake(cfg.input_uri, cfg.storage)
    assert pq.read_table(snapshot_uri.removeprefix("file://")).equals(snapshot)
    staged = pa.concat_tables(planning.read_block(u, k, cfg) for u, k in plan.blocks)
    expected = planning.with_work_columns(snapshot, plan.classes, 0, cfg, plan.in_force)
    assert staged.equals(expected.combine_chunks())


def test_plan_errors_are_raised_as_themselves(tmp_path, ray_session):
    cfg = CleanConfig(input_uri=f"file://{tmp_path}/missing", output_uri=f"file://{tmp_path}/o")
    with pytest.raises(LakeError, match="does not exist"):
        planning.plan_in_task(cfg, None, None, f"file://{tmp_path}/s", f"file://{tmp_path}/s/x")
    assert not (tmp_path / "s").exists()  # nothing staged
