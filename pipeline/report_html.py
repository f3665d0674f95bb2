"""report.html: the page a person opens to review what the cleaning job dropped and why.

Self-contained (thumbnails are embedded as data: URIs, no scripts or external
assets), so it can be copied out of S3 and opened anywhere. Sections: the class
balance table and bar chart, then one gallery per rejection reason; for duplicates
the kept image is shown beside the dropped one.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from typing import Any

_CHART_WIDTH = 420
_BAR_HEIGHT = 22
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1rem 0} td,th{padding:.25rem .75rem;text-align:left}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:flex;flex-wrap:wrap;gap:.75rem}
figure{margin:0;width:220px;font-size:.75rem;border:1px solid #e3e3e3;padding:.4rem;
border-radius:4px;background:#fafafa}
figure .pair{display:flex;gap:4px} figure img{width:104px;height:104px;object-fit:contain;
background:#fff;border:1px solid #eee}
figcaption{word-break:break-all;margin-top:.3rem} .muted{color:#777}
.kept{outline:2px solid #3a3} .dropped{outline:2px solid #c33}
.nopreview{padding:.5rem 0} .legend{font-size:.7rem;display:flex;gap:4px}
.legend span{width:104px;text-align:center}
"""


def data_uri(jpeg: bytes | None) -> str | None:
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}" if jpeg else None


def _img(jpeg: bytes | None, css: str, alt: str) -> str:
    uri = data_uri(jpeg)
    if not uri:
        return '<div class="muted nopreview">no preview</div>'
    # onerror marks a thumbnail the browser could not decode (checked by the tests).
    return (
        f'<img class="{css}" src="{uri}" alt="{html.escape(alt)}" '
        f"onerror=\"this.classList.add('broken')\">"
    )


def balance_table(balance: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['class'])}</td><td class=n>{r['images']}</td>"
        f"<td class=n>{r['percent']:.2f}</td></tr>"
        for r in balance
    )
    total = sum(r["images"] for r in balance)
    return (
        f'<table id="balance"><tr><th>Class</th><th>Images</th><th>%</th></tr>{rows}'
        f"<tr><th>Total</th><th class=n>{total}</th><th class=n>100</th></tr></table>"
    )


def class_table(per_class: dict[str, Any], splits: list[str]) -> str:
    """Listed / kept / per split / rejected, per class (the numbers behind the galleries)."""
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=n>{c['listed']}</td>"
        f"<td class=n>{c['kept']}</td>"
        + "".join(f"<td class=n>{c.get('splits', {}).get(s, 0)}</td>" for s in splits)
        + f"<td class=n>{sum(c['rejected'].values())}</td></tr>"
        for name, c in per_class.items()
    )
    return (
        f'<table id="per-class"><tr><th>Class</th><th>Listed</th><th>Kept</th>{head}'
        f"<th>Rejected</th></tr>{rows}</table>"
    )


def balance_chart(balance: list[dict[str, Any]]) -> str:
    """A horizontal bar chart as inline SVG (no script, no library)."""
    peak = max((r["images"] for r in balance), default=1) or 1
    label_w = 170
    bars = []
    for i, r in enumerate(balance):
        y = i * (_BAR_HEIGHT + 6)
        w = max(1, round((_CHART_WIDTH - label_w - 60) * r["images"] / peak))
        bars.append(
            f'<text x="0" y="{y + 15}" font-size="12">{html.escape(r["class"])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{_BAR_HEIGHT}" fill="#4a7bd0"/>'
            f'<text x="{label_w + w + 6}" y="{y + 15}" font-size="12">{r["images"]}</text>'
        )
    height = len(balance) * (_BAR_HEIGHT + 6)
    return (
        f'<svg id="balance-chart" width="{_CHART_WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img">{"".join(bars)}</svg>'
    )


def _caption(row: dict[str, Any]) -> str:
    parts = [html.escape(row["source_uri"].rsplit("/", 1)[-1])]
    if row.get("class_name"):
        parts.append(f'<span class="muted">{html.escape(row["class_name"])}</span>')
    if row.get("score") is not None:
        parts.append(f"score {row['score']:.3g}")
    if row.get("distance") is not None:
        parts.append(f"distance {row['distance']}")
    if row.get("duplicate_of"):
        parts.append(f"kept: {html.escape(row['duplicate_of'].rsplit('/', 1)[-1])}")
    if row.get("detail"):
        parts.append(f'<span class="muted">{html.escape(row["detail"][:160])}</span>')
    return "<br>".join(parts)


def gallery_item(row: dict[str, Any], kept_thumbnails: dict[str, bytes]) -> str:
    dropped = _img(row.get("thumbnail"), "dropped", "dropped")
    if row.get("duplicate_of"):
        kept = _img(kept_thumbnails.get(row["duplicate_of"]), "kept", "kept copy")
        body = (
            f'<div class="pair">{dropped}{kept}</div>'
            '<div class="legend muted"><span>dropped</span><span>kept</span></div>'
        )
    else:
        body = dropped
    return (
        f'<figure data-reason="{html.escape(row["reason"])}">{body}'
        f"<figcaption>{_caption(row)}</figcaption></figure>"
    )


def render_report_html(
    report: dict[str, Any],
    rejected_sample: list[dict[str, Any]],
    kept_thumbnails: dict[str, bytes],
    per_reason_limit: int,
) -> str:
    """The page. `rejected_sample`: rejected rows (source_uri, class_name, reason, detail,
    thumbnail, score, distance, duplicate_of); at most `per_reason_limit` shown per reason."""
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rejected_sample:
        by_reason[row["reason"]].append(row)
    totals = report["totals"]
    sections = []
    for reason, count in report["rejected_by_reason"].items():
        rows = by_reason.get(reason, [])[:per_reason_limit]
        shown = f"showing {len(rows)} of {count}" if count > len(rows) else f"{count}"
        items = "".join(gallery_item(r, kept_thumbnails) for r in rows)
        sections.append(
            f'<section id="reason-{html.escape(reason)}"><h2>{html.escape(reason)}'
            f' <span class="muted">({shown})</span></h2>'
            f'<div class="gallery">{items}</div></section>'
        )
    stats = report.get("channel_stats", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cleaning report {
        html.escape(str(report.get("run_id", "")))
    }</title><style>{_STYLE}</style></head><body>
<h1>Cleaning report</h1>
<p>Input <code>{html.escape(str(report.get("input_uri", "")))}</code>, run
<code>{html.escape(str(report.get("run_id", "")))}</code>: listed <b>{totals["listed"]}</b>,
kept <b id="kept-total">{totals["kept"]}</b>, rejected <b>{totals["rejected"]}</b>.</p>
<h2>Class balance (kept images)</h2>
{balance_table(report["class_balance"])}
{balance_chart(report["class_balance"])}
<h2>Per class</h2>
{class_table(report["per_class"], sorted(report.get("splits", {})))}
<p class="muted">Mean {stats.get("mean")} &middot; std {stats.get("std")}</p>
{"".join(sections)}
</body></html>
"""
