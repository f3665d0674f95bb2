"""The content junk classifier's data: where its sets lie under ../shared, the labels by
eye of the web-scraped lake, and the folds.

One definition for the two scripts that must agree on them: the training script
(scripts/train_junk_classifier.py fits on folds 1-4) and the benchmark that measures
the job on the same data (scripts/bench/web_scraped_cleaning.py reports fold 0, never
fitted on).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from devkit.sample_lake import REPO, SHARED_DATA

SHARED = SHARED_DATA
LAKE = SHARED / "web-scraped" / "lake"
LOGOS = SHARED / "web-scraped" / "junk-logos"
CLIPART = SHARED / "messy-ingredients" / "openclipart-svg"
SKIMAGE = SHARED / "messy-ingredients" / "skimage-data"
PILLOW = SHARED / "messy-ingredients" / "pillow-test-images"
HALMSTAD = SHARED / "halmstad-crops"
LABELS = REPO / "scripts" / "bench" / "labels" / "web_scraped_lake.csv"

FOLDS, HELD_OUT = 5, 0


def fold_of(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % FOLDS


def lake_labels(path: Path | None) -> dict[str, tuple[str, str]]:
    """file -> (label, kind), from the committed labels CSV (none when it is missing)."""
    if not (path and path.is_file()):
        return {}
    with open(path, newline="") as f:
        return {
            r["file"]: (r["label"].strip(), (r.get("kind") or "").strip())
            for r in csv.DictReader(f)
        }
