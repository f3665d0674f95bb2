"""The review page (report.html): worst cards first, and selecting cards in headless
Chromium downloads an overrides file the next run accepts."""

from __future__ import annotations

import base64
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.dataset import read_shards
from common.storage import StorageConfig
from devkit import browser
from devkit.messy_lake import encode, photo
from devkit.planted import logo
from pipeline.overrides import parse_overrides
from pipeline.report_html import render_report_html
from pipeline.review import kept_sections, worst_first

RAW = "s3://lake/raw"


def test_each_reason_shows_its_worst_rows_first_and_at_most_the_limit():
    rejected = pa.table(
        {
            "source_uri": [f"{RAW}/a/{i}.jpg" for i in range(7)],
            "reason": ["flat_graphics"] * 4 + ["near_duplicate"] * 3,
            "score": [0.5, 0.9, None, 0.7, None, None, None],
            "distance": [None] * 4 + [6, 0, 3],
        }
    )
    shown = worst_first(rejected, 3).to_pylist()
    assert [(r["reason"], r["score"] or r["distance"]) for r in shown] == [
        ("flat_graphics", 0.9),
        ("flat_graphics", 0.7),
        ("flat_graphics", 0.5),
        ("near_duplicate", 0),  # the closest copy first
        ("near_duplicate", 3),
        ("near_duplicate", 6),
    ]


def _jpeg(image) -> bytes:  # noqa: ANN001
    return encode(image, "JPEG", quality=80)


def page() -> str:
    report = {
        "run_id": "r1",
        "input_uri": RAW,
        "totals": {"listed": 9, "kept": 5, "rejected": 4},
        "class_balance": [{"class": "birds", "images": 3, "percent": 60.0},
                          {"class": "drones", "images": 2, "percent": 40.0}],
        "per_class": {"birds": {"listed": 6, "kept": 3, "rejected": {"flat_graphics": 2}},
                      "drones": {"listed": 3, "kept": 2, "rejected": {"near_duplicate": 1}}},
        "splits": {},
        "rejected_by_reason": {"flat_graphics": 2, "near_duplicate": 1, "override": 1},
        "channel_stats": {},
    }  # fmt: skip
    rejected = [
        {"source_uri": f"{RAW}/birds/logo, \"final\".png", "class_name": "birds",
         "reason": "flat_graphics", "score": 0.93, "detail": "score 0.93",
         "thumbnail": _jpeg(logo().resize((96, 96))), "preview": _jpeg(logo().resize((256, 256)))},
        {"source_uri": f"{RAW}/birds/white_drone.jpg", "class_name": "birds",
         "reason": "flat_graphics", "score": 0.41, "detail": "score 0.41",
         "thumbnail": _jpeg(photo(96, 72, 1))},
        {"source_uri": f"{RAW}/drones/copy.jpg", "class_name": "drones",
         "reason": "near_duplicate", "distance": 4, "duplicate_of": f"{RAW}/drones/orig.png",
         "detail": "distance 4", "thumbnail": _jpeg(photo(96, 72, 2))},
        {"source_uri": f"{RAW}/birds/blurry.jpg", "class_name": "birds", "reason": "override",
         "detail": "override: blurry", "thumbnail": _jpeg(photo(96, 72, 3))},
    ]  # fmt: skip
    kept = [
        {"source_uri": f"{RAW}/drones/ours.png", "class_name": "drones", "reason": None,
         "signal": "kept", "override_note": "our logo",
         "thumbnail": _jpeg(logo().resize((96, 96)))},
    ]  # fmt: skip
    pictures = {f"{RAW}/drones/orig.png": _jpeg(photo(256, 192, 2))}
    return render_report_html(
        report, rejected, pictures, 48, [("kept-by-override", "kept by an override", kept)]
    )


def test_cards_name_their_signal_and_score_and_pair_duplicates():
    html = page()
    assert "<script" in html and 'src="http' not in html and 'href="http' not in html
    assert '<span class="signal">flat_graphics</span> <span class="score">0.930</span>' in html
    assert '<span class="score">distance 4</span>' in html
    assert html.count('class="kept zoom"') == 2  # the duplicate's kept copy, the kept card
    assert html.count('data-decision="keep"') == 4 and html.count('data-decision="drop"') == 1


def _wait_for_file(folder, name: str, timeout_s: float = 30.0):  # noqa: ANN001
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        path = folder / name
        if path.is_file() and path.stat().st_size:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} not downloaded into {folder}: {list(folder.iterdir())}")


@pytest.mark.skipif(not browser.available(), reason="Debian chromium not installed")
def test_selecting_cards_downloads_an_overrides_file_the_job_reads(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with browser.Chromium(tmp_path / "profile") as chromium:
        chromium.call(
            "Browser.setDownloadBehavior", page=False, behavior="allow",
            downloadPath=str(downloads),
        )  # fmt: skip
        chromium.open(path.as_uri())
        chromium.wait_for(
            "typeof overridesCsv === 'function' && document.readyState === 'complete'"
        )
        assert (
            chromium.evaluate(
                "[...document.images].filter(i => i.classList.contains('broken')).length"
            )
            == 0
        )
        # A person ticks the logo (rejected: keep it) and the kept card (drop it).
        chromium.evaluate(
            "for (const uri of [" + repr(f"{RAW}/birds/logo, \"final\".png") + ", "
            + repr(f"{RAW}/drones/ours.png") + "])"
            " document.querySelector(`figure[data-uri='${CSS.escape(uri)}'] input.pick`).click()"
        )  # fmt: skip
        assert chromium.evaluate("document.getElementById('picked-count').textContent") == "2"
        assert chromium.evaluate("document.querySelectorAll('figure.picked').length") == 2
        csv_text = chromium.evaluate("overridesCsv()")
        chromium.evaluate("document.getElementById('download-overrides').click()")
        downloaded = _wait_for_file(downloads, "overrides.csv").read_text()
        # Click to enlarge: the lightbox shows the card's preview, with its full URI.
        chromium.evaluate("document.querySelector('figure[data-reason=flat_graphics] img').click()")
        shown = chromium.evaluate(
            "({hidden: document.getElementById('lightbox').hidden,"
            " width: document.getElementById('lightbox-img').naturalWidth,"
            " caption: document.getElementById('lightbox-caption').textContent})"
        )
        screenshot = chromium.call("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "review.png").write_bytes(base64.b64decode(screenshot))
    assert downloaded == csv_text
    rows = parse_overrides(downloaded.encode(), "overrides.csv").to_pylist()
    assert rows == [
        {"source_uri": f"{RAW}/birds/logo, \"final\".png", "decision": "keep",
         "note": "review: was flat_graphics 0.930"},
        {"source_uri": f"{RAW}/drones/ours.png", "decision": "drop", "note": "review: was kept"},
    ]  # fmt: skip
    assert not shown["hidden"] and shown["width"] == 256
    assert (
        shown["caption"].startswith(f"{RAW}/birds/logo")
        and "flat_graphics 0.930" in shown["caption"]
    )


def test_kept_images_worth_a_second_look_are_offered_for_a_drop():
    images = pa.table(
        {
            "source_uri": [f"{RAW}/birds/{n}.jpg" for n in "abcd"],
            "off_class_score": pa.array([0.2, None, 0.9, 0.5], pa.float32()),
            "off_class_like": ["drones", None, "drones", None],
        }
    )
    overrides = pa.table(
        {"source_uri": [f"{RAW}/birds/b.jpg", f"{RAW}/birds/x.jpg"], "decision": ["keep"] * 2,
         "note": ["mine", None]}
    )  # fmt: skip
    sections = {key: rows for key, _, rows in kept_sections(images, overrides, limit=2)}
    assert [r["source_uri"][-5:] for r in sections["kept-by-override"]] == ["b.jpg"]
    assert sections["kept-by-override"][0]["override_note"] == "mine"
    worst = sections["kept-off-class"]
    assert [(r["source_uri"][-5:], round(r["score"], 2)) for r in worst] == [
        ("c.jpg", 0.9),
        ("d.jpg", 0.5),
    ]
    assert worst[0]["detail"] == "looks like drones" and worst[1]["detail"] == ""


def test_shards_of_an_earlier_version_without_the_off_class_columns_still_read(tmp_path):
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    pq.write_table(pa.table({"source_uri": ["a"], "width": [1]}), old)
    score = pa.array([0.5], pa.float32())
    pq.write_table(
        pa.table(
            {"source_uri": ["b"], "width": [2], "off_class_score": score, "off_class_like": ["x"]}
        ),
        new,
    )
    optional = {"off_class_score": pa.float32(), "off_class_like": pa.string()}
    table = read_shards(
        [str(old), str(new)], StorageConfig(), ["source_uri", "width"], True, optional
    )
    assert table.sort_by("source_uri").select(["source_uri", "off_class_score"]).to_pylist() == [
        {"source_uri": "a", "off_class_score": None},
        {"source_uri": "b", "off_class_score": 0.5},
    ]
