"""What the benchmark scripts share: where the repository and the shared data sets are,
and how a table of figures is printed.

The product is installed (editable) in .venv, so scripts import it directly; this module
is found as `_common` because a script's own folder is first on sys.path when it is run
as `.venv/bin/python scripts/bench/NAME.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# ../shared next to the checkout: data sets and weights that benchmarks (never tests) read.
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
HALMSTAD_CROPS = SHARED_DATA / "halmstad-crops"
WEB_SCRAPED = SHARED_DATA / "web-scraped"
MESSY_INGREDIENTS = SHARED_DATA / "messy-ingredients"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Right-aligned columns, as wide as their widest cell, under a dashed rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = (str(cell).rjust(w) for cell, w in zip(row, widths, strict=True))
        print(indent + "  ".join(cells))
