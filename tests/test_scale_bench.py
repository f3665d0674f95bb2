"""The scale benchmark's interface (scripts/bench/scale.py --rows N): it runs the product's
job on synthetic rows and ends with one JSON line of figures; the version it publishes
is a real one (readable through the manifest, every synthetic file accounted for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from common.dataset import read_manifest, read_shards, split_uris, table_uris
from common.storage import StorageConfig
from devkit import synthetic_rows as synth
from train.data import class_counts

REPO = Path(__file__).resolve().parents[1]


def test_planted_copies_share_their_originals_hashes() -> None:
    table = synth.candidate_rows("file:///lake", 0, 5000, seed=3, dup_rate=0.2)
    original, kind = synth.planted(3, pa.array(range(5000)).to_numpy(), 0.2)
    phash = [int(h, 16) for h in table["phash"].to_pylist()]
    sha = table["sha256"].to_pylist()
    copies = [i for i in range(5000) if original[i] >= 0]
    assert len(copies) == synth.expected_copies(5000, 3, 0.2) > 300
    for i in copies:
        j = int(original[i])
        assert original[j] < 0  # an original is never itself a copy
        distance = bin(phash[i] ^ phash[j]).count("1")
        if kind[i] == synth.EXACT:
            assert (sha[i], distance) == (sha[j], 0)
        else:
            assert sha[i] != sha[j] and 1 <= distance <= 4


def test_scale_bench_prints_figures_and_publishes(tmp_path: Path) -> None:
    rows = 3000
    out = subprocess.run(
        [
            sys.executable,
            "scripts/bench/scale.py",
            "--rows",
            str(rows),
            "--rows-per-shard",
            "1000",
            "--work",
            str(tmp_path / "w"),
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["rows"] == rows
    for key in ("wall_s", "driver_peak_rss_mb", "worker_peak_rss_mb"):
        assert figures[key] > 0
    assert figures["kept"] + figures["rejected"] == rows
    assert 0 < figures["rejected"] <= 1.2 * figures["planted_copies"]
    peaks = figures["stages_peak_rss_mb"]  # each timed stage's driver peak
    assert set(peaks) == set(figures["stages_s"])
    assert 0 < peaks["decide_in_task"] <= peaks["deduplicate_and_finalize"]
    assert max(peaks.values()) <= figures["driver_peak_rss_mb"] + 1
    output = f"file://{tmp_path}/w/out"
    manifest = read_manifest(output, StorageConfig())
    kept = read_shards(table_uris(output, manifest, "images"), StorageConfig(), ["source_uri"])
    assert kept.num_rows == figures["kept"]
    # Published in place under the run's prefix, and train/'s readers find every split.
    assert all(rel.startswith(f"runs/{manifest['run_id']}/") for rel in manifest["files"]["images"])
    by_split = [split_uris(output, manifest, s) for s in ("train", "test")]
    assert sum(len(u) for u in by_split) == len(manifest["files"]["images"])
    assert sum(class_counts(u, StorageConfig())[0] for u in by_split) > 0
    assert not (tmp_path / "w" / "out" / "_staging").exists()
