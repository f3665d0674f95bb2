"""What keeps the cleaning job's processes small changes no result: the embedding network
built once in a task and shared (the driver never imports torch, the workers never
import torchvision), the off-class probe's statistics added up block by block outside
the driver, the neighbour votes in chunks of queries (docs/cleaning.md, cost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
from PIL import Image

from common.backbone import NO_WEIGHTS, WeightsUnavailable
from devkit.messy_lake import encode, photo
from devkit.weights import local_embedding_weights
from pipeline.embed import embedding_input
from pipeline.offclass import probe
from pipeline.offclass.probe import (
    FoldStats,
    References,
    discriminants,
    fold_stats,
    neighbour_votes,
    one_fold_stats,
    summed_stats,
)

needs_weights = pytest.mark.skipif(
    local_embedding_weights() == NO_WEIGHTS, reason="no local MobileNetV2 weights"
)


@needs_weights
@pytest.mark.usefixtures("ray_session")
def test_the_shared_network_embeds_to_the_bit_without_torchvision():
    import ray

    from pipeline.embed_task import shared_features

    def embed_both(features: list, inputs: list[np.ndarray], weights: str) -> tuple:
        """In a fresh worker: the shared network's embeddings, whether that imported
        torchvision, then the embeddings of the network built in this process."""
        from pipeline.embed import embedder
        from pipeline.embed_task import shared_embedder

        shared = shared_embedder(features[0])(inputs)
        torchvision_loaded = "torchvision" in sys.modules
        return shared, torchvision_loaded, embedder(weights)(inputs)

    weights = local_embedding_weights()
    images = [photo(80, 60, seed) for seed in range(5)] + [Image.new("RGB", (64, 64), "white")]
    inputs = [embedding_input(image, 112) for image in images]
    features = shared_features(weights)
    fresh = {"env_vars": {"LAKECLEAN_TEST_WORKER": str(time.time())}}  # a new process
    task = ray.remote(embed_both).options(runtime_env=fresh, max_retries=0)
    # The reference travels inside a list: Ray hands the task the reference, not the network.
    shared, torchvision_loaded, local = ray.get(task.remote([features], inputs, weights))
    assert not torchvision_loaded
    assert shared.shape == (6, 1280)
    assert np.array_equal(shared.view(np.uint16), local.view(np.uint16))


@pytest.mark.usefixtures("ray_session")
def test_weights_that_cannot_load_stop_the_run_in_the_driver(tmp_path):
    from pipeline.embed_task import shared_features

    with pytest.raises(WeightsUnavailable, match="local state-dict path"):
        shared_features(str(tmp_path / "missing.pth"))


_DRIVER = """
import json, sys
import pipeline
from devkit.weights import local_embedding_weights
cfg = pipeline.CleanConfig(input_uri=sys.argv[1], output_uri=sys.argv[2])
cfg.dedup.embedding_weights = local_embedding_weights()
cfg.execution.progress = False
totals = pipeline.clean(cfg).report["totals"]
print(json.dumps({"listed": totals["listed"], "modules": [m for m in ("torch", "torchvision")
                  if m in sys.modules]}))
"""


@needs_weights
@pytest.mark.usefixtures("ray_session")
def test_the_jobs_driver_never_imports_torch(tmp_path):
    import ray

    lake = tmp_path / "lake"
    for i, name in enumerate(("cats/a.png", "cats/b.png", "dogs/c.png")):
        (lake / name).parent.mkdir(parents=True, exist_ok=True)
        (lake / name).write_bytes(encode(photo(64, 64, i + 1), "PNG"))
    # A driver of its own on the session's Ray: the test process has imported torch.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(lake), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"listed": 3, "modules": []}


def test_the_probes_block_sums_equal_one_sum_to_the_bit():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((700, 48)).astype(np.float16)
    labels, folds = rng.integers(0, 4, 700), rng.integers(0, 5, 700)
    parts = [fold_stats(vectors[i : i + 64], labels[i : i + 64], folds[i : i + 64], 5, 4)
             for i in range(0, 700, 64)]  # fmt: skip
    expected = FoldStats(
        sum(p.sums for p in parts), sum(p.counts for p in parts), sum(p.scatter for p in parts)
    )
    got = summed_stats(iter(parts))
    for name in ("sums", "counts", "scatter"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert parts[0].scatter is not got.scatter  # the first block is not added into


@pytest.mark.parametrize("queries", [0, 1, 7, 300])
def test_neighbour_votes_in_chunks_equal_all_at_once(monkeypatch, queries):
    rng = np.random.default_rng(queries)
    refs = rng.standard_normal((400, 32)).astype(np.float16)
    refs /= np.linalg.norm(refs.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
    uris = np.array([f"r{i}" for i in range(400)], dtype=object)
    references = References(refs, rng.integers(0, 3, 400).astype(np.int32), uris)
    chosen = rng.choice(400, queries, replace=False)
    query_vectors = refs[chosen] + rng.standard_normal((queries, 32)).astype(np.float16) * 0.1
    query_uris = uris[chosen]  # each query is also a reference: left out by URI

    def votes() -> np.ndarray:
        return neighbour_votes(query_vectors, query_uris, references, 3, 10, 0.95)

    monkeypatch.setattr(probe, "VOTE_ROWS", 10**9)
    whole = votes()  # the queries in one piece, as before chunks
    monkeypatch.setattr(probe, "VOTE_ROWS", 3)
    chunked = votes()
    assert whole.dtype == chunked.dtype and whole.shape == chunked.shape == (queries, 3)
    assert np.array_equal(whole, chunked)


def _probe_case(rows: int = 600, dim: int = 1280) -> tuple:
    """References in 3 classes and 5 folds, and their statistics as the driver summed
    them before: every block's `fold_stats`, added up with `sum()`."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((rows, dim)).astype(np.float16)
    labels, folds = rng.integers(0, 3, rows).astype(np.int32), rng.integers(0, 5, rows)
    refs = References(vectors, labels, np.array([f"u{i}" for i in range(rows)], dtype=object))
    parts = [fold_stats(vectors[i : i + 64], labels[i : i + 64], folds[i : i + 64], 5, 3)
             for i in range(0, rows, 64)]  # fmt: skip
    stats = FoldStats(*(sum(getattr(p, n) for p in parts) for n in ("sums", "counts", "scatter")))
    return refs, folds, stats


def test_one_folds_statistics_equal_that_fold_of_the_blocks_sum():
    refs, folds, stats = _probe_case(dim=48)
    for fold in range(5):
        got = one_fold_stats(refs.vectors, refs.labels, folds, fold, 3, 64)
        for name in ("sums", "counts", "scatter"):
            assert np.array_equal(getattr(got, name), getattr(stats, name)[fold]), name


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("one_task_rows", [0, 10_000], ids=["a task per fold", "one task"])
def test_the_probes_fitted_off_the_driver_are_the_drivers_to_the_bit(
    one_task_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fold's statistics are summed in a task (or, for few references, all in the
    solving task) and the probes solved by a task whose BLAS runs the driver's thread
    count: the same weights as the driver's own solve of its own sum (d = 1280, where
    the LU solve runs threaded)."""
    from pipeline.offclass import fit

    monkeypatch.setattr(fit, "ONE_TASK_ROWS", one_task_rows)
    refs, folds, stats = _probe_case()
    probes = ray.get(fit.fold_probes(fit.share(refs), folds, 5, 3, 64, np.arange(5), 0.3))
    assert len(probes) == 5
    for fold, (weights, offsets) in enumerate(probes):
        want_weights, want_offsets = discriminants(stats, fold, 0.3)
        assert np.array_equal(weights, want_weights) and np.array_equal(offsets, want_offsets)
