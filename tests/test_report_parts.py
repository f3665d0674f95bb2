"""The report and the review page from per-shard Ray tasks (`pipeline.report_parts`)
equal what the table-based code gave on the whole version read onto the driver: on
random shards with ties and nulls, report.json's dict dumps alike, the page chooses the
same rows, and the two passes count the same duplicate clusters as a Counter over every id."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import overrides as ov
from pipeline import report, report_clusters, report_parts
from pipeline.config import CleanConfig
from pipeline.output import read_shards
from pipeline.report import (
    IMAGE_STATS,
    NO_CLASS,
    OPTIONAL_STATS,
    REJECTED_STATS,
    build_report,
    channel_stats,
    class_balance,
    counts,
    extensions,
    label_conflicts,
    override_stats,
)
from pipeline.review import kept_copies, kept_sections, worst_first
from pipeline.sink import Shards
from pipeline.tables import IMAGES, REJECTED_DIR

REASONS = ["near_duplicate", "exact_duplicate", "label_conflict", "override", "read_error"]
CLUSTERS = [None, "", "c1", "c2", "c3", "c4", "c5" * 30]


def _strings(values: list) -> pa.Array:
    return pa.array(values, pa.string())


def _images(rng: random.Random, uris: list[str], scored: bool) -> pa.Table:
    n = len(uris)
    vectors = pa.list_(pa.float32(), 3)
    columns = {
        "source_uri": _strings(uris),
        "class_name": _strings([rng.choice(["cat", "dog", "owl"]) for _ in uris]),
        "source_format": _strings([rng.choice(["JPEG", "PNG", None]) for _ in uris]),
        "source_bytes": pa.array([rng.randint(0, 999) for _ in uris], pa.int64()),
        "image_bytes": pa.array([rng.randint(0, 99) for _ in uris], pa.int64()),
        "width": pa.array([rng.randint(1, 64) for _ in uris], pa.int32()),
        "height": pa.array([rng.randint(1, 64) for _ in uris], pa.int32()),
        "channel_mean": pa.array([[rng.random() for _ in "rgb"] for _ in uris], vectors),
        "channel_sqmean": pa.array([[rng.random() for _ in "rgb"] for _ in uris], vectors),
        "cluster_id": pa.array([rng.choice(CLUSTERS) for _ in uris], pa.string()),
        "split": _strings([rng.choice(["train", "train", "val", "test"]) for _ in uris]),
        "thumbnail": pa.array([f"t-{u}".encode() for u in uris], pa.binary()),
    }
    if scored:  # a shard of an earlier version lacks the off-class columns
        scores = [rng.choice([None, 0.5, 0.25, rng.random()]) for _ in range(n)]
        columns["off_class_score"] = pa.array(scores, pa.float32())
        columns["off_class_like"] = _strings([rng.choice([None, "dog"]) for _ in uris])
    return pa.table(columns)


def _rejected(rng: random.Random, uris: list[str], kept: list[str]) -> pa.Table:
    reasons = [rng.choice(REASONS) for _ in uris]
    conflict = [r == "label_conflict" for r in reasons]  # these have a cluster and a class
    return pa.table(
        {
            "source_uri": _strings(uris),
            "class_name": _strings(
                [rng.choice(["cat", "dog", *([] if c else [None])]) for c in conflict]
            ),
            "reason": _strings(reasons),
            "source_format": _strings([rng.choice(["JPEG", "GIF", None]) for _ in uris]),
            "source_bytes": pa.array([rng.randint(0, 999) for _ in uris], pa.int64()),
            "cluster_id": pa.array([rng.choice(CLUSTERS[2 * c :]) for c in conflict], pa.string()),
            "duplicate_of": _strings([rng.choice([None, *kept[:5]]) for _ in uris]),
            "distance": pa.array([rng.choice([None, 0, 1, 2]) for _ in uris], pa.int32()),
            "score": pa.array(
                [rng.choice([None, 1.0, 0.5, rng.random()]) for _ in uris], pa.float64()
            ),
            "detail": _strings([rng.choice(["", "x"]) for _ in uris]),
            "thumbnail": pa.array([f"t-{u}".encode() for u in uris], pa.binary()),
        }
    )


def _version(tmp_path, seed: int, image_shards: int, rejected_shards: int):
    """Shards written as Parquet under `out/`, the run's listing, and overrides."""
    rng = random.Random(seed)
    ends = [".jpg", ".JPG", ".png", ""]
    names = [f"s3://lake/c{rng.randint(0, 2)}/f{i:04d}{rng.choice(ends)}" for i in range(400)]
    rng.shuffle(names)
    carried: dict[str, list[str]] = defaultdict(list)
    kept, dropped, at = [], [], 0
    for i in range(image_shards + rejected_shards):
        uris = names[at : at + rng.randint(0, 40)]
        at += len(uris)
        if i < image_shards:
            table, folder = _images(rng, uris, scored=i % 3 != 1), IMAGES
            kept += uris
        else:
            table, folder = _rejected(rng, uris, kept), REJECTED_DIR
            dropped += uris
        (tmp_path / "out" / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp_path / "out" / folder / f"{i:03d}.parquet")
        carried[folder].append(f"{folder}/{i:03d}.parquet")
    listing = pa.table(
        {
            "source_uri": names,
            "class_name": [rng.choice(["cat", "dog", None]) for _ in names],
            "size": pa.array([rng.randint(0, 5000) for _ in names], pa.int64()),
            "mtime": pa.array(range(len(names)), pa.int64()),
        }
    )
    pq.write_table(listing, tmp_path / "snapshot.parquet", row_group_size=30)
    picked = rng.sample(kept, min(4, len(kept))) + rng.sample(dropped, min(4, len(dropped)))
    overrides = pa.table(
        {
            "source_uri": [*picked, "s3://lake/gone.jpg"],
            "decision": [rng.choice([ov.KEEP, ov.DROP]) for _ in picked] + [ov.KEEP],
            "note": [rng.choice([None, "look"]) for _ in picked] + [None],
        }
    ).cast(ov.empty().schema)
    return dict(carried), listing, overrides


def _old_report(cfg, images, rejected, snapshot, overrides) -> dict[str, Any]:
    """report.json as the table-based `build_report` computed it before the tasks."""
    formats = pc.fill_null(
        pa.chunked_array([*images["source_format"].chunks, *rejected["source_format"].chunks]),
        "unidentified",
    )
    listed = counts(pa.table({"c": pc.fill_null(snapshot["class_name"], NO_CLASS)}), ["c"])
    splits = counts(images, ["class_name", "split"])
    dropped = counts(
        pa.table({"c": pc.fill_null(rejected["class_name"], NO_CLASS), "r": rejected["reason"]}),
        ["c", "r"],
    )
    per_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, name), n in sorted(counts(images, ["split", "class_name"]).items()):
        per_split[split][name] = n
    moments = images.select(["width", "height", "channel_mean", "channel_sqmean"])
    reasons = counts(rejected, ["reason"])
    by_count = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
    total = lambda t, c: int(pc.sum(t[c]).as_py() or 0) if t.num_rows else 0  # noqa: E731
    return {
        "run_id": "r",
        "input_uri": cfg.input_uri,
        "classes": ["cat", "dog"],
        "totals": {"listed": len(snapshot), "kept": len(images), "rejected": len(rejected)},
        "per_class": {
            name: {
                "listed": n,
                "kept": counts(images, ["class_name"]).get(name, 0),
                "splits": {s: k for (c, s), k in sorted(splits.items()) if c == name},
                "rejected": {r: k for (c, r), k in sorted(dropped.items()) if c == name},
            }
            for name, n in sorted(listed.items())
        },
        "class_balance": class_balance(counts(images, ["class_name"])),
        "splits": {
            s: {"images": sum(c.values()), "per_class": c} for s, c in sorted(per_split.items())
        },
        "rejected_by_reason": by_count(reasons),
        "duplicates": duplicate_stats(images, rejected),
        "label_conflicts": label_conflicts(rejected),
        "input_extensions": extensions(snapshot["source_uri"]),
        "input_formats": by_count(counts(pa.table({"f": formats}), ["f"])),
        "kept_formats": by_count(counts(images, ["source_format"])),
        "bytes": {
            "listed": total(snapshot, "size"),
            "kept_sources": total(images, "source_bytes"),
            "kept_jpeg": total(images, "image_bytes"),
        },
        "channel_stats": channel_stats(moments.filter(pc.equal(images["split"], "train"))),
        "channel_stats_all_kept": channel_stats(moments),
        "overrides": override_stats(overrides, snapshot, images, rejected),
        "off_class": {"n": 1},
        "this_run": {"processed": 3},
    }


@pytest.mark.parametrize(
    ("seed", "image_shards", "rejected_shards", "limit"),
    [(1, 5, 4, 3), (2, 7, 3, 1), (3, 3, 0, 2), (4, 4, 5, 0), (5, 1, 1, 50)],
)
def test_merged_figures_equal_the_whole_tables(
    ray_session, tmp_path, monkeypatch, seed, image_shards, rejected_shards, limit
):
    monkeypatch.setattr(report_parts, "LISTING_ROWS_PER_TASK", 100)  # several listing tasks
    monkeypatch.setattr(report_parts, "MERGE_BATCH", 3)  # rows pruned between batches
    monkeypatch.setattr(report, "SHARDS_PER_TASK", 2)  # tasks reading several shards
    carried, snapshot, overrides = _version(tmp_path, seed, image_shards, rejected_shards)
    cfg = CleanConfig(input_uri="s3://lake", output_uri=f"file://{tmp_path}/out")
    cfg.report.gallery_per_reason = limit
    figures = report_parts.read_version(
        cfg, Shards(), carried, f"file://{tmp_path}/snapshot.parquet", overrides
    )
    shards = {t: [f"file://{tmp_path}/out/{rel}" for rel in carried.get(t, [])] for t in carried}
    images = read_shards(
        shards[IMAGES], cfg.storage, IMAGE_STATS, with_shard=True, optional=OPTIONAL_STATS
    )
    rejected = (
        read_shards(shards[REJECTED_DIR], cfg.storage, REJECTED_STATS, with_shard=True)
        if REJECTED_DIR in shards
        else figures.rejected_rows
    )
    stats = {"processed": 3, "off_class": {"n": 1}}
    found = build_report(cfg, "r", ["cat", "dog"], figures, stats, overrides)
    expected = _old_report(cfg, images, rejected, snapshot, overrides)
    assert json.dumps(found, indent=2) == json.dumps(expected, indent=2)

    assert worst_first(figures.rejected_rows, limit).to_pylist() == (
        worst_first(rejected, limit).to_pylist()
    )
    chosen = kept_sections(figures.images, overrides, limit, figures.scored)
    assert chosen == kept_sections(images, overrides, limit)
    keepers = set(rejected["duplicate_of"].drop_null().to_pylist())
    copies = images.filter(pc.is_in(images["source_uri"], value_set=_strings(sorted(keepers))))
    assert kept_copies(cfg, figures.image_shards, keepers) == copies.to_pylist()


def duplicate_stats(images: pa.Table, rejected: pa.Table) -> dict[str, Any]:
    """The report's duplicates section by a Counter over every id (a null or empty id
    is none): the reference the tasks' two passes are held to."""
    ids = images["cluster_id"].to_pylist() + rejected["cluster_id"].to_pylist()
    sizes = [n for cid, n in Counter(ids).items() if cid and n > 1]
    reasons = Counter(rejected["reason"].to_pylist())
    return {
        "clusters": len(sizes),
        "largest": max(sizes, default=0),
        "exact_duplicates_dropped": reasons.get("exact_duplicate", 0),
        "near_duplicates_dropped": reasons.get("near_duplicate", 0),
    }


@pytest.mark.parametrize("collide", [False, True])
def test_two_passes_count_clusters_as_a_counter(collide, monkeypatch):
    """Exactly a Counter's figures, also when every id shares one fingerprint
    (the second pass tells them apart)."""
    if collide:
        monkeypatch.setattr(
            report_clusters.units, "fingerprints", lambda c: np.zeros(len(c), np.uint64)
        )
    rng = random.Random(7)
    for _ in range(100):
        tables = [
            pa.table(
                {"cluster_id": pa.array([rng.choice(CLUSTERS) for _ in range(n)], pa.string())}
            )
            for n in (rng.randint(0, 30) for _ in range(rng.randint(1, 6)))
        ]
        shared = report_clusters.shared_marks(
            [report_clusters.shard_marks(t["cluster_id"]) for t in tables]
        )
        found = report_clusters.cluster_sizes(
            [report_clusters.shard_files(t["cluster_id"], shared) for t in tables]
        )
        whole = pa.concat_tables(tables)
        expected = duplicate_stats(whole, whole.slice(0, 0).append_column("reason", pa.nulls(0)))
        assert found == (expected["clusters"], expected["largest"])
