"""What the review page's enlarged previews cost: seconds per card and bytes per card,
side by side with the stored 96 px thumbnails, and the page size they bound.

The review page (`pipeline.review`) shows at most `gallery_per_reason` rejected cards
per reason and re-reads each shown card's source to make a `preview_side` preview. This
script takes a sample of real web-search images (the cards a page of that lake would
show), times `pipeline.review.source_previews` on them (the product's function, 8
threads, the job's decode limits) and the job's own thumbnail, and reports per card:
wall time, preview and thumbnail JPEG bytes; then the page size at the defaults for
`--reasons` reasons with cards.

Run from the repository root:

    .venv/bin/python scripts/bench/review_previews.py            # 48 cards, 256 px
    .venv/bin/python scripts/bench/review_previews.py --cards 144 --side 320
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from common.storage import StorageConfig
from pipeline.config import CleanConfig, NormalizeConfig, ReportConfig
from pipeline.normalize import normalise
from pipeline.review import source_previews

LAKE = Path(__file__).resolve().parents[3] / "shared" / "data" / "web-scraped" / "lake"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, default=LAKE)
    parser.add_argument("--cards", type=int, default=48)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--reasons", type=int, default=6, help="reasons with a full gallery")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = sorted(p for p in args.lake.rglob("*") if p.is_file())
    sample = random.Random(args.seed).sample(files, min(args.cards, len(files)))
    cfg = CleanConfig(
        input_uri=str(args.lake),
        storage=StorageConfig(),
        normalize=NormalizeConfig(),
        report=ReportConfig(preview_side=args.side),
    )
    thumbs = {}
    for path in sample:
        try:
            thumbs[str(path)] = normalise(path.read_bytes(), cfg.normalize).fields["thumbnail"]
        except Exception:  # noqa: BLE001 - undecodable files have no card picture
            continue
    rows = [
        {"source_uri": uri, "source_bytes": Path(uri).stat().st_size, "thumbnail": thumb}
        for uri, thumb in thumbs.items()
    ]
    started = time.perf_counter()
    previews = source_previews(rows, cfg)
    seconds = time.perf_counter() - started
    preview_kb = [len(b) / 1024 for b in previews.values()]
    thumb_kb = [len(b) / 1024 for b in thumbs.values()]
    per_page = args.cards * args.reasons
    print(f"lake {args.lake}  cards {len(rows)} (decodable of {len(sample)})  side {args.side}")
    ms = 1000 * seconds / max(len(rows), 1)
    print(f"previews made           {len(previews)}")
    print(f"wall time               {seconds:.2f} s  ({ms:.1f} ms/card)")
    for name, sizes in (("preview JPEG", preview_kb), ("thumbnail JPEG (96 px)", thumb_kb)):
        print(f"{name:<23} mean {statistics.mean(sizes):.1f} KiB  max {max(sizes):.1f} KiB")
    print(
        f"page images at {args.cards} cards x {args.reasons} reasons (base64 +33 %): "
        f"previews {per_page * statistics.mean(preview_kb) * 4 / 3 / 1024:.1f} MiB, "
        f"thumbnails {per_page * statistics.mean(thumb_kb) * 4 / 3 / 1024:.1f} MiB"
    )


if __name__ == "__main__":
    main()
