"""Synthetic de-duplication inputs and their decisions' fingerprints: the behaviour pin of
`pipeline.dedup` (tests/test_dedup_golden.py).

The rows are numbers, not images (no ../shared, no weights, no Pillow in the loop): groups
of copies whose hashes, embeddings, colour and grey layouts are their original's plus
noise, from a few shared "scenes" so unrelated groups collide on pHash and must be told
apart by verification; plus exact copies, label conflicts, low-detail, low-stability,
hashless, signal-less and huge (int32-overflowing) rows.

The fingerprints in tests/data/dedup_golden.json were written by the module as it was
before it became a package. Rewrite them only for a change meant to alter decisions:

    .venv/bin/python tests/dedup_cases.py --write   # with PYTHONPATH at the reference tree
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

GOLDEN = Path(__file__).resolve().parent / "data" / "dedup_golden.json"
EMBEDDING_DIM, COLOUR_CELLS, GREY_CELLS = 32, 48, 576


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def synthetic_rows(seed: int = 0, groups: int = 70) -> list[dict[str, Any]]:
    """One lake's de-duplication input rows (as `pipeline.decide.dedup_input` passes them)."""
    rng = np.random.default_rng(seed)
    scenes = rng.integers(0, 2**64, 8, dtype=np.uint64)
    rows: list[dict[str, Any]] = []
    for g in range(groups):
        flips = rng.choice(64, int(rng.integers(0, 10)), replace=False)
        base = int(scenes[g % scenes.size]) ^ sum(1 << int(b) for b in flips)
        embedding = _unit(rng.standard_normal(EMBEDDING_DIM))
        colour = rng.uniform(0.2, 0.8, COLOUR_CELLS)
        grey = rng.uniform(0, 255, GREY_CELLS)
        cls = ("bird", "drone", "plane")[g % 3]
        copies = int(rng.integers(0, 5))
        for c in range(copies + 1):
            original = c == 0
            exact = not original and rng.random() < 0.2
            if original or exact:
                h, e, col, gr = base, embedding, colour, grey
            else:
                bits = rng.choice(64, int(rng.integers(0, 14)), replace=False)
                h = base ^ sum(1 << int(b) for b in bits)
                e = _unit(embedding + rng.standard_normal(EMBEDDING_DIM) * rng.uniform(0, 0.15))
                col = colour + rng.standard_normal(COLOUR_CELLS) * rng.uniform(0, 0.05)
                gr = grey + rng.standard_normal(GREY_CELLS) * rng.uniform(0, 90)
            uri = f"s3://lake/{cls}/g{g:03d}_c{c}.jpg"
            sha = f"sha-{g}" if original or exact else f"sha-{g}-{c}"
            huge = rng.random() < 0.05
            signalless = rng.random() < 0.03
            rows.append(
                {
                    "source_uri": uri,
                    "class_name": ("bird", "drone", "plane")[(g + 1) % 3]
                    if exact and rng.random() < 0.3
                    else cls,
                    "sha256": sha,
                    "phash": None if rng.random() < 0.02 else f"{h:016x}",
                    "width": 60_000 if huge else int(rng.integers(64, 2000)),
                    "height": 50_000 if huge else int(rng.integers(64, 2000)),
                    "source_format": ("JPEG", "PNG", "WEBP", None)[int(rng.integers(0, 4))],
                    "seen_order": None if rng.random() < 0.05 else int(rng.integers(0, 1000)),
                    "low_detail": bool(rng.random() < 0.05),
                    "hash_stability": None if rng.random() < 0.1 else float(rng.uniform(100, 3000)),
                    "embedding": None if signalless else e.astype(np.float16).tolist(),
                    "colour_layout": None if signalless else col.astype(np.float32).tolist(),
                    "grey_layout": np.clip(gr, 0, 255).astype(np.uint8).tolist(),
                }
            )
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows typed as the cleaning job writes them (int32 sizes, float32 stability)."""
    schema = pa.schema(
        [
            ("source_uri", pa.string()),
            ("class_name", pa.string()),
            ("sha256", pa.string()),
            ("phash", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source_format", pa.string()),
            ("seen_order", pa.int64()),
            ("low_detail", pa.bool_()),
            ("hash_stability", pa.float32()),
            ("embedding", pa.list_(pa.float16())),
            ("colour_layout", pa.list_(pa.float32())),
            ("grey_layout", pa.list_(pa.uint8())),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


# name -> (DedupConfig changes, incremental: the first half is decided first, then the rest)
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "verified": ({"embedding_weights": "default"}, False),
    "verified-first-grey-near-keep-conflicts": (
        {
            "embedding_weights": "default",
            "assign_to": "first",
            "grey_hash_distance": 6,
            "conflict_matching": "near",
            "drop_label_conflicts": False,
            "keep_policy": ["lossless", "earliest", "resolution"],
        },
        False,
    ),
    "unverified": ({"embedding_weights": "none", "max_hash_distance": 10}, False),
    "unverified-closest-3-bands": (
        {"embedding_weights": "none", "hash_bands": 3, "max_hash_collisions": 3},
        False,
    ),
    "verified-incremental": ({"embedding_weights": "default"}, True),
}


def run_case(dedup: Any, name: str) -> dict[str, Any]:
    """The decisions' sha256 (every column, in order) and the summary's counts."""
    changes, incremental = CASES[name]
    cfg = dedup.DedupConfig(**changes)
    rows = synthetic_rows()
    existing = None
    if incremental:
        half = len(rows) // 2
        first = dedup.deduplicate(table(rows[:half]), cfg).decisions.to_pylist()
        cluster = {d["source_uri"]: d["cluster_id"] for d in first if d["keep"]}
        kept = [
            dict(r, cluster_id=cluster[r["source_uri"]])
            for r in rows[:half]
            if r["source_uri"] in cluster
        ]
        existing = table([{k: v for k, v in r.items() if k != "cluster_id"} for r in kept])
        existing = existing.append_column("cluster_id", pa.array([r["cluster_id"] for r in kept]))
        rows = rows[half:]
    result = dedup.deduplicate(table(rows), cfg, existing)
    decisions = result.decisions
    digest = hashlib.sha256(
        json.dumps(decisions.to_pylist(), sort_keys=True).encode() + str(decisions.schema).encode()
    ).hexdigest()
    s = result.summary
    return {
        "decisions_sha256": digest,
        "rows": s["rows"],
        "kept": s["kept"],
        "dropped": s["dropped"],
        "clusters": s["clusters"],
        "near_pairs": s["search"]["near_pairs"],
        "failed_verification": s["search"]["failed_verification"],
    }


if __name__ == "__main__":
    import os

    import ray

    from pipeline import dedup as module

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    found = {name: run_case(module, name) for name in CASES}
    print(f"{module.__file__}:\n{json.dumps(found, indent=1)}")
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
