"""The cleaning job's second half end to end: duplicates, conflicts, junk, the split,
the review page and incremental runs, on the real S3 endpoint through Ray."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest

from devkit.browser import dump_dom
from devkit.local_s3 import upload_files
from devkit.messy_lake import KEPT, PIXEL_JUNK_RULES, encode, photo
from devkit.planted import DUPLICATE_OF, planted_cases
from devkit.weights import embedding_args, local_embedding_weights
from pipeline.cli import main
from pipeline.dedup import DedupConfig
from pipeline.tables import INDEX_COLUMNS, REJECTED_COLUMNS, image_columns, schema_of

pytestmark = pytest.mark.usefixtures("ray_session")
CFG = DedupConfig(embedding_weights=local_embedding_weights())  # what the job runs with
THRESHOLD = CFG.search_distance


def read_version(fs, output: str):  # noqa: ANN001
    manifest = json.loads(fs.cat_file(f"{output}/_manifest.json"))
    tables = {}
    for name in ("images", "rejected", "index"):
        parts = [pq.read_table(fs.open(f"{output}/{rel}", "rb")) for rel in manifest["files"][name]]
        tables[name] = {row["source_uri"]: row for p in parts for row in p.to_pylist()}
    report = json.loads(fs.cat_file(f"{output}/report.json"))
    return manifest, tables, report


@pytest.fixture(scope="module")
def cleaned(s3, tmp_path_factory):
    bucket = "planted"
    s3.create_bucket(bucket)
    cases = planted_cases()
    fs = s3.filesystem()
    upload_files(fs, f"{bucket}/raw", {c.path: c.data for c in cases})
    args = [
        "clean",
        f"s3://{bucket}/raw",
        f"s3://{bucket}/out",
        "--endpoint-url",
        s3.endpoint_url,
        "--no-progress",
        "--files-per-task",
        "8",
        *embedding_args(),
        *PIXEL_JUNK_RULES,
    ]
    assert main(args) == 0
    return bucket, cases, args, read_version(fs, f"{bucket}/out")


def test_each_planted_file_gets_its_outcome(cleaned):
    bucket, cases, _, (_, tables, _) = cleaned
    images, rejected = tables["images"], tables["rejected"]
    uri = f"s3://{bucket}/raw/".__add__
    assert set(images) | set(rejected) == {uri(c.path) for c in cases}
    for case in cases:
        if case.status == KEPT:
            assert uri(case.path) in images, (case.path, rejected.get(uri(case.path)))
        else:
            row = rejected[uri(case.path)]
            assert row["reason"].startswith(case.reason), (case.path, row["reason"])
    for dropped, keeper in DUPLICATE_OF.items():
        row = rejected[uri(dropped)]
        assert row["duplicate_of"] == uri(keeper)
        assert row["distance"] is not None and row["distance"] <= THRESHOLD
        assert row["cluster_id"] == images[uri(keeper)]["cluster_id"]
    assert rejected[uri("birds/original_copy.bmp")]["distance"] == 0


def test_junk_rows_carry_their_score_and_thumbnail(cleaned):
    bucket, _, _, (_, tables, _) = cleaned
    for row in tables["rejected"].values():
        if row["reason"].startswith("junk_"):
            assert row["score"] is not None and row["thumbnail"]


def test_published_schemas_are_the_declared_ones(cleaned, s3):
    """Every published table's Parquet schema is `pipeline.tables`' declaration of its
    columns, name for name and type for type (one declaration, no drift)."""
    bucket, *_ = cleaned
    fs = s3.filesystem()
    manifest = json.loads(fs.cat_file(f"{bucket}/out/_manifest.json"))
    for name in ("images", "rejected", "index"):
        for rel in manifest["files"][name]:
            written = pq.read_schema(fs.open(f"{bucket}/out/{rel}", "rb")).remove_metadata()
            scores = [c for c in written.names if c.startswith("junk_")]
            columns = {
                "images": image_columns(scores),
                "rejected": REJECTED_COLUMNS,
                "index": INDEX_COLUMNS,
            }[name]
            assert written.names == columns, rel
            assert written == schema_of(columns, scores), rel


def near(a: dict, b: dict) -> bool:
    """The near-duplicate rule, restated from the config: pHash distance, and with
    verification the embedding and colour-layout checks (from the hash index's rows)."""
    distance = imagehash.hex_to_hash(a["phash"]) - imagehash.hex_to_hash(b["phash"])
    if distance > THRESHOLD or not CFG.verified:
        return distance <= THRESHOLD
    similarity = np.dot(a["embedding"], b["embedding"])
    colours = np.array([a["colour_layout"], b["colour_layout"]])
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    angle = np.degrees(np.arccos(min(1.0, colours[0] @ colours[1])))
    strict = min(a["hash_stability"], b["hash_stability"]) < CFG.min_hash_stability
    limit = CFG.strict_colour_angle if strict else CFG.max_colour_angle
    return similarity >= CFG.min_embedding_similarity and angle <= limit


def test_no_kept_test_image_has_a_near_copy_in_train(cleaned):
    _, _, _, (_, tables, _) = cleaned
    kept = list(tables["index"].values())
    assert {r["split"] for r in kept} == {"train", "test"}
    for a, b in itertools.combinations(kept, 2):
        if a["split"] != b["split"]:
            assert not near(a, b), (a["source_uri"], b["source_uri"])


def test_report_counts_conflicts_and_clusters(cleaned):
    bucket, cases, _, (manifest, tables, report) = cleaned
    assert report["totals"]["listed"] == len(cases)
    assert report["label_conflicts"]["count"] == 1
    assert report["label_conflicts"]["clusters"][0]["classes"] == ["birds", "drones"]
    assert report["duplicates"]["largest"] >= len(DUPLICATE_OF) + 1
    assert report["duplicates"]["exact_duplicates_dropped"] == 1
    assert report["per_class"]["birds"]["rejected"]["near_duplicate"] == 4
    balance = {r["class"]: r["images"] for r in report["class_balance"]}
    assert sum(balance.values()) == len(tables["images"])
    assert len(report["channel_stats"]["mean"]) == 3
    assert set(manifest["files"]) >= {"images", "rejected", "index", "report_html"}
    assert all("/split=" in rel for rel in manifest["files"]["images"])
    assert set(tables["index"]) == set(tables["images"])


def test_adding_a_file_touches_only_it_and_moves_nothing(cleaned, s3):
    bucket, _, args, (_, before, _) = cleaned
    fs = s3.filesystem()
    fs.pipe_file(f"{bucket}/raw/drones/late_arrival.png", encode(photo(300, 200, 300), "PNG"))
    fs.pipe_file(
        f"{bucket}/raw/birds/late_copy.jpg", encode(photo(400, 300, 105), "JPEG", quality=70)
    )  # near copy of a kept one
    assert main(args) == 0
    _, after, report = read_version(fs, f"{bucket}/out")
    assert report["this_run"]["processed"] == 2
    for uri, row in before["images"].items():
        assert after["images"][uri]["split"] == row["split"]
    new = f"s3://{bucket}/raw/drones/late_arrival.png"
    assert after["images"][new]["split"] in ("train", "test")
    late = after["rejected"][f"s3://{bucket}/raw/birds/late_copy.jpg"]
    assert late["reason"] == "near_duplicate"
    assert late["duplicate_of"] == f"s3://{bucket}/raw/birds/original.png"

    assert main(args) == 0  # nothing changed since: no image work at all
    _, again, report = read_version(fs, f"{bucket}/out")
    assert report["this_run"]["processed"] == 2  # the report of the version in force
    assert again["images"].keys() == after["images"].keys()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_review_page_renders_in_headless_chromium(cleaned, s3, tmp_path):
    bucket, _, _, (_, tables, report) = cleaned
    page = tmp_path / "report.html"
    page.write_bytes(s3.filesystem().cat_file(f"{bucket}/out/report.html"))
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    assert 'id="balance"' in dom and 'id="balance-chart"' in dom
    for reason in report["rejected_by_reason"]:
        assert f'id="reason-{reason}"' in dom
    assert dom.count('class="kept') >= len(DUPLICATE_OF)
    assert dom.count("<img") >= len(tables["rejected"]) - 3
    assert not re.search(r'class="[^"]*\bbroken\b', dom)  # every thumbnail decoded
