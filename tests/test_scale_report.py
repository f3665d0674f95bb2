"""The report's figures computed without a Python object per file (`pipeline.report`):
the same as the dict-per-row code they replaced, on random tables."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa

from pipeline import overrides as ov
from pipeline import report_clusters
from pipeline.report import counts, override_stats


def test_duplicate_clusters_equal_the_counter_reference():
    rng = random.Random(3)
    names = [None, "", "a", "b", "c" * 70, "d"]
    for _ in range(200):
        kept = [rng.choice(names) for _ in range(rng.randint(1, 30))]
        dropped = [rng.choice(names) for _ in range(rng.randint(0, 6))]
        images = pa.table({"cluster_id": pa.array(kept, pa.string())})
        rejected = pa.table(
            {
                "cluster_id": pa.array(dropped, pa.string()),
                "reason": pa.array(["near_duplicate"] * len(dropped), pa.string()),
            }
        )
        sizes = [n for cid, n in Counter(kept + dropped).items() if cid and n > 1]
        columns = [images["cluster_id"], rejected["cluster_id"]]
        shared = report_clusters.shared_marks([report_clusters.shard_marks(c) for c in columns])
        found = report_clusters.cluster_sizes(
            [report_clusters.shard_files(c, shared) for c in columns]
        )
        assert found == (len(sizes), max(sizes, default=0))
        # the report's dropped copies: `build_report` counts them per reason
        assert counts(rejected, ["reason"]).get("near_duplicate", 0) == len(dropped)


def test_override_outcomes_count_the_persons_files_only():
    snapshot = pa.table({"source_uri": [f"f{i}" for i in range(10)]})
    images = pa.table({"source_uri": ["f1", "f2", "f3"]})
    rejected = pa.table(
        {"source_uri": ["f4", "f5"], "reason": ["read_error", "override"]},
    )
    given = pa.table(
        {
            "source_uri": ["f1", "f4", "f5", "gone"],
            "decision": [ov.KEEP, ov.KEEP, ov.DROP, ov.KEEP],
            "note": [None, None, None, None],
        }
    )
    out = override_stats(given.cast(ov.empty().schema), snapshot, images, rejected)
    assert out["given"] == {ov.KEEP: 3, ov.DROP: 1}
    assert (out["not_in_lake"], out["kept"], out["dropped"]) == (1, 1, 1)
    assert out["keep_not_honoured"] == {"read_error": 1}
