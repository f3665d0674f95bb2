"""A person's decisions (--overrides): the file format, de-duplication's respect for a
keep, and the job honouring them across incremental runs on the real S3 endpoint."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.backbone import NO_WEIGHTS
from devkit.local_s3 import upload_files
from devkit.messy_lake import PIXEL_JUNK_RULES
from devkit.planted import logo
from devkit.sample_lake import COMMITTED_CROPS
from devkit.weights import embedding_args
from pipeline.cli import main
from pipeline.dedup import EXACT_DUPLICATE, DedupConfig, deduplicate
from pipeline.overrides import (
    OverridesError,
    changed,
    merged,
    newly_dropped,
    parse_overrides,
    with_overrides,
)

pytestmark = pytest.mark.usefixtures("ray_session")


# --- The file --------------------------------------------------------------------------


def test_csv_and_json_give_the_same_rows_relative_paths_resolved_against_the_lake():
    csv = (
        b"source_uri,decision,note,reason\n"
        b"birds/a.jpg,keep,a real bird,flat_graphics\n"
        b"s3://lake/raw/drones/b.png, DROP ,,\n"
        b'birds/a.jpg,keep,"a real bird",\n'  # the same decision twice is fine
    )
    rows = parse_overrides(csv, "x.csv", root="s3://lake/raw").to_pylist()
    assert rows == [
        {"source_uri": "s3://lake/raw/birds/a.jpg", "decision": "keep", "note": "a real bird"},
        {"source_uri": "s3://lake/raw/drones/b.png", "decision": "drop", "note": None},
    ]
    data = json.dumps(
        {
            "overrides": [
                {"source_uri": "birds/a.jpg", "decision": "keep", "note": "a real bird"},
                {"source_uri": "s3://lake/raw/drones/b.png", "decision": "drop"},
            ]
        }
    ).encode()
    assert parse_overrides(data, "x.json", root="s3://lake/raw").to_pylist() == rows


@pytest.mark.parametrize(
    "text,message",
    [
        ("source_uri,decision\nbirds/a.jpg,maybe\n", "line 2: decision 'maybe'"),
        ("source_uri,note\nbirds/a.jpg,x\n", "lacks column(s) decision"),
        ("uri,decision\nbirds/a.jpg,keep\n", "lacks column(s) source_uri"),
        ("source_uri,decision\n,keep\n", "empty source_uri"),
        ("source_uri,decision\na.jpg,keep\na.jpg,drop\n", "is both keep and drop"),
        ('[{"source_uri": "a.jpg"}]', "entry 1 lacks decision"),
        ('{"a.jpg": "keep"}', "JSON must be a list"),
        ("[{", "not valid JSON"),
    ],
)
def test_a_malformed_file_is_one_line_naming_the_problem(text, message):
    with pytest.raises(OverridesError) as caught:
        parse_overrides(text.encode(), "o.csv")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def table(*rows: tuple[str, str, str | None]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"source_uri": u, "decision": d, "note": n} for u, d, n in rows],
        schema=pa.schema(
            [("source_uri", pa.string()), ("decision", pa.string()), ("note", pa.string())]
        ),
    )


def test_overrides_stick_across_versions_and_auto_forgets_one():
    before = table(("a", "keep", None), ("b", "drop", "ad"), ("c", "keep", None))
    given = table(
        ("a", "auto", None), ("b", "drop", "ad"), ("d", "drop", None), ("c", "drop", None)
    )
    now = merged(before, given)
    assert (
        now.to_pylist()
        == table(("b", "drop", "ad"), ("c", "drop", None), ("d", "drop", None)).to_pylist()
    )
    assert changed(before, now) == {"a", "c", "d"}  # b is as it was: not processed again
    assert newly_dropped(before, now) == {"c", "d"}
    assert changed(now, merged(now, table())) == set()


def test_work_rows_carry_the_decision_and_note():
    work = pa.table({"source_uri": ["x", "y", "z"]})
    out = with_overrides(work, table(("y", "drop", "a banner"), ("q", "keep", None)))
    assert out["override"].to_pylist() == [None, "drop", None]
    assert out["override_note"].to_pylist() == [None, "a banner", None]
    assert with_overrides(work, None)["override"].null_count == 3


# --- De-duplication never drops a keep ---------------------------------------------------


def test_a_kept_by_override_copy_stays_kept_in_its_cluster():
    def row(uri: str, override: str | None = None) -> dict:
        return {
            "source_uri": uri, "class_name": "cat", "sha256": "same", "phash": "0123456789abcdef",
            "width": 100, "height": 100, "source_format": "JPEG", "seen_order": 0,
            "low_detail": False, "hash_stability": None, "override": override,
        }  # fmt: skip

    new = pa.Table.from_pylist([row("a"), row("b", "keep"), row("c")])
    result = deduplicate(new, DedupConfig(embedding_weights=NO_WEIGHTS))
    out = {d["source_uri"]: d for d in result.decisions.to_pylist()}
    assert out["a"]["keep"] and out["b"]["keep"] and out["b"]["reason"] is None
    assert out["c"]["reason"] == EXACT_DUPLICATE and not out["c"]["keep"]
    assert out["a"]["cluster_id"] == out["b"]["cluster_id"] == out["c"]["cluster_id"]
    assert result.summary["kept"] == 2 and result.summary["kept_by_override"] == 1


# --- The job ---------------------------------------------------------------------------


def _png(jpeg: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, "PNG")
    return buffer.getvalue()


def _lake() -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Real CC0 crops (kept by every rule), two exact-copy pairs and a logo (junk)."""
    files = {}
    for folder, name in (("Flying_Birds", "birds"), ("Large_QuadCopters", "drones")):
        for path in sorted((COMMITTED_CROPS / folder).glob("*.jpg"))[:4]:
            files[f"{name}/{path.name}"] = path.read_bytes()
    birds = sorted(f for f in files if f.startswith("birds/"))
    pairs = [(birds[0], "birds/copy_x.png"), (birds[1], "birds/copy_y.png")]
    for original, copy in pairs:
        files[copy] = _png(files[original])
    buffer = io.BytesIO()
    logo().save(buffer, "PNG")
    files["drones/logo.png"] = buffer.getvalue()
    return files, pairs


def _card_picture(page: str, uri: str) -> Image.Image:
    """The picture on `uri`'s card in report.html."""
    card = page[page.index(f'data-uri="{html.escape(uri)}">') :]
    src = re.search(r'src="data:image/jpeg;base64,([^"]+)"', card).group(1)
    return Image.open(io.BytesIO(base64.b64decode(src)))


def _version(fs, output: str):  # noqa: ANN001
    manifest = json.loads(fs.cat_file(f"{output}/_manifest.json"))
    tables = {}
    for name in ("images", "rejected"):
        parts = [pq.read_table(fs.open(f"{output}/{rel}", "rb")) for rel in manifest["files"][name]]
        tables[name] = {r["source_uri"]: r for p in parts for r in p.to_pylist()}
    return (
        manifest,
        tables["images"],
        tables["rejected"],
        json.loads(fs.cat_file(f"{output}/report.json")),
    )


def test_overrides_keep_and_drop_across_incremental_runs(s3, bucket):
    fs = s3.filesystem()
    files, pairs = _lake()
    upload_files(fs, f"{bucket}/raw", files)
    raw = f"s3://{bucket}/raw"
    args = ["clean", raw, f"s3://{bucket}/out", "--endpoint-url", s3.endpoint_url]
    # The pixel rules catch the drawn logo with or without embedding weights on the
    # machine (a fresh clone has none, and the content check is then off).
    args += ["--no-progress", "--files-per-task", "4", *embedding_args(), *PIXEL_JUNK_RULES]
    assert main(args) == 0
    v1, kept, rejected, _ = _version(fs, f"{bucket}/out")

    logo_uri = f"{raw}/drones/logo.png"
    assert logo_uri in rejected and rejected[logo_uri]["reason"] != "override"  # a rule drops it
    # The review page shows it enlarged from its source (256 px), not the 96 px thumbnail.
    page = fs.cat_file(f"{bucket}/out/report.html").decode()
    assert _card_picture(page, logo_uri).size == (256, 256)
    copies = []  # per pair: (the copy dropped as a duplicate, the one kept)
    for pair in pairs:
        a, b = (f"{raw}/{f}" for f in pair)
        dropped = a if a in rejected else b
        assert rejected[dropped]["reason"] == EXACT_DUPLICATE
        copies.append((dropped, rejected[dropped]["duplicate_of"]))
    involved = {u for pair in copies for u in pair}
    photo = sorted(u for u in kept if u not in involved)[0]  # kept by every rule

    keep_x, keeper_x = copies[0]  # a person keeps the dropped copy: both stay
    copy_y, drop_y = copies[1]  # a person drops the kept one: its copy takes its place
    overrides = (
        "source_uri,decision,note\n"
        f"drones/logo.png,keep,our own logo\n"  # relative to the lake
        f"{photo},drop,blurry\n"
        f"{keep_x},keep,\n"
        f"{drop_y},drop,\n"
    )
    fs.pipe_file(f"{bucket}/overrides.csv", overrides.encode())
    with_file = [*args, "--overrides", f"s3://{bucket}/overrides.csv"]
    assert main(with_file) == 0
    v2, kept, rejected, report = _version(fs, f"{bucket}/out")
    assert v2["run_id"] != v1["run_id"]
    # Only the files whose override changed, and the copy dropped in favour of drop_y.
    assert report["this_run"]["processed"] == 5
    assert kept[logo_uri]["override"] == "keep"
    assert kept[logo_uri]["override_note"] == "our own logo"
    assert rejected[photo]["reason"] == "override" and "blurry" in rejected[photo]["detail"]
    assert rejected[drop_y]["reason"] == "override"
    assert copy_y in kept  # decided again now that what it copied is dropped
    assert kept[keep_x]["override"] == "keep" and keeper_x in kept  # both, one cluster
    assert kept[keep_x]["cluster_id"] == kept[keeper_x]["cluster_id"]
    assert kept[keep_x]["split"] == kept[keeper_x]["split"]
    assert set(kept) | set(rejected) == {f"{raw}/{f}" for f in files}
    assert not set(kept) & set(rejected)
    assert report["overrides"]["kept"] == 2 and report["overrides"]["dropped"] == 2
    assert report["overrides"]["given"] == {"keep": 2, "drop": 2}
    assert report["rejected_by_reason"]["override"] == 2
    page = fs.cat_file(f"{bucket}/out/report.html").decode()
    assert 'id="reason-override"' in page and 'id="kept-by-override"' in page
    kept_card = page.split('id="kept-by-override"', 1)[1]
    assert f'data-uri="{html.escape(logo_uri)}" data-decision="drop"' in kept_card

    # The decisions stick: a run without the file has nothing to do, and stages nothing.
    runs_before = fs.ls(f"{bucket}/out/runs")
    assert main(args) == 0
    v3, *_ = _version(fs, f"{bucket}/out")
    assert v3["run_id"] == v2["run_id"] and len(v3["overrides"]) == 4
    assert fs.ls(f"{bucket}/out/runs", refresh=True) == runs_before

    # `auto` hands a file back to the rules: only it is processed again.
    fs.pipe_file(f"{bucket}/overrides.csv", f"source_uri,decision\n{photo},auto\n".encode())
    assert main(with_file) == 0
    _, kept, rejected, report = _version(fs, f"{bucket}/out")
    assert report["this_run"]["processed"] == 1
    assert photo in kept and kept[photo]["override"] is None
    assert kept[logo_uri]["override"] == "keep" and report["overrides"]["dropped"] == 1


@pytest.mark.parametrize(
    "content",
    [b"source_uri,decision\nbirds/a.jpg,perhaps\n", b"source_uri\nbirds/a.jpg\n", None],
    ids=["unknown-decision", "missing-column", "missing-file"],
)
def test_a_bad_overrides_file_stops_before_any_work(s3, bucket, capsys, content):
    fs = s3.filesystem()
    upload_files(fs, f"{bucket}/raw", dict(list(_lake()[0].items())[:2]))
    if content is not None:
        fs.pipe_file(f"{bucket}/o.csv", content)
    code = main(
        [
            "clean", f"s3://{bucket}/raw", f"s3://{bucket}/out", "--endpoint-url",
            s3.endpoint_url, "--overrides", f"s3://{bucket}/o.csv", "--no-progress",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "o.csv" in err and "\n" not in err
    assert not fs.exists(f"{bucket}/out")  # nothing written: not even the staging probe
