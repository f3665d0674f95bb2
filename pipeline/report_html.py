"""report.html: the page a person opens to review what the cleaning job dropped and why,
and to overrule it.

Self-contained (images are embedded as data: URIs, a small inline script, no external
assets), so it can be copied out of S3 and opened anywhere. Sections: the class balance
table and bar chart, then one gallery per rejection reason, worst score first, each
card naming the signal that fired and its score (for duplicates the kept image is shown
beside the dropped one), then the files a person chose to keep. A click enlarges a
card's image; the checkboxes select cards, and "Download overrides.csv" writes the
`--overrides` file for them (keep for a rejected card, drop for a kept one).
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from typing import Any

_CHART_WIDTH = 420
_BAR_HEIGHT = 22
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;margin-top:0;color:#222;max-width:1200px}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1rem 0} td,th{padding:.25rem .75rem;text-align:left}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:flex;flex-wrap:wrap;gap:.75rem}
figure{margin:0;width:220px;font-size:.75rem;border:1px solid #e3e3e3;padding:.4rem;
border-radius:4px;background:#fafafa}
figure.picked{background:#fff6d6;border-color:#e0b000}
figure .pair{display:flex;gap:4px} figure img{width:104px;height:104px;object-fit:contain;
background:#fff;border:1px solid #eee;cursor:zoom-in}
figcaption{word-break:break-all;margin-top:.3rem} .muted{color:#777}
.signal{font-weight:600} .score{font-variant-numeric:tabular-nums}
.kept{outline:2px solid #3a3} .dropped{outline:2px solid #c33}
.nopreview{padding:.5rem 0} .legend{font-size:.7rem;display:flex;gap:4px}
.legend span{width:104px;text-align:center}
label.pick{float:right;cursor:pointer;margin-left:.3rem}
#review-bar{position:sticky;top:0;z-index:5;background:#f7f9fc;border-bottom:1px solid #ccd;
padding:.5rem 1rem;margin:0 -2rem 1rem;display:flex;gap:1rem;align-items:center}
#review-bar>span:first-of-type,#review-bar button{white-space:nowrap}
#lightbox{position:fixed;inset:0;background:#000c;display:flex;flex-direction:column;
align-items:center;justify-content:center;z-index:10;color:#eee;cursor:zoom-out}
#lightbox[hidden]{display:none} #lightbox img{max-width:90vw;max-height:80vh;
min-width:384px;object-fit:contain;background:#fff;image-rendering:auto}
#lightbox div{margin-top:.6rem;max-width:90vw;word-break:break-all;font-size:.85rem}
"""
# Selecting cards and writing the overrides file; the test reads overridesCsv().
_SCRIPT = r"""
function picks(){return [...document.querySelectorAll('input.pick:checked')];}
function csvField(v){v=String(v??'');return /[",\r\n]/.test(v)?'"'+v.replace(/"/g,'""')+'"':v;}
function overridesCsv(){
  const lines=['source_uri,decision,note'];
  for(const c of picks()) lines.push([c.dataset.uri,c.dataset.decision,c.dataset.note]
    .map(csvField).join(','));
  return lines.join('\n')+'\n';
}
function refresh(){
  document.getElementById('picked-count').textContent=picks().length;
  for(const c of document.querySelectorAll('input.pick'))
    c.closest('figure').classList.toggle('picked',c.checked);
}
function downloadOverrides(){
  const url=URL.createObjectURL(new Blob([overridesCsv()],{type:'text/csv'}));
  const a=document.createElement('a');a.href=url;a.download='overrides.csv';
  document.body.appendChild(a);a.click();a.remove();
  setTimeout(()=>URL.revokeObjectURL(url),1000);
}
function pickAll(button){
  const boxes=[...button.closest('section').querySelectorAll('input.pick')];
  const on=!boxes.every(b=>b.checked);for(const b of boxes)b.checked=on;refresh();
}
function enlarge(img){
  const box=document.getElementById('lightbox');
  document.getElementById('lightbox-img').src=img.src;
  document.getElementById('lightbox-caption').textContent=img.dataset.caption||img.alt;
  box.hidden=false;
}
document.addEventListener('change',e=>{if(e.target.matches('input.pick'))refresh();});
document.addEventListener('click',e=>{
  if(e.target.matches('img.zoom'))enlarge(e.target);
  else if(e.target.closest('#lightbox'))document.getElementById('lightbox').hidden=true;
});
document.addEventListener('keydown',e=>{
  if(e.key==='Escape')document.getElementById('lightbox').hidden=true;});
"""


def data_uri(jpeg: bytes | None) -> str | None:
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}" if jpeg else None


def _img(jpeg: bytes | None, css: str, alt: str, caption: str = "") -> str:
    uri = data_uri(jpeg)
    if not uri:
        return '<div class="muted nopreview">no preview</div>'
    # onerror marks a thumbnail the browser could not decode (checked by the tests).
    return (
        f'<img class="{css} zoom" src="{uri}" alt="{html.escape(alt)}" '
        f'data-caption="{html.escape(caption)}" '
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


def signal(row: dict[str, Any]) -> str:
    """What fired, as the card names it: the check and its score, or the hash distance."""
    name = html.escape(row.get("signal") or row.get("reason") or "kept")
    if row.get("score") is not None:
        return f'<span class="signal">{name}</span> <span class="score">{row["score"]:.3f}</span>'
    if row.get("distance") is not None:
        return (
            f'<span class="signal">{name}</span> '
            f'<span class="score">distance {row["distance"]}</span>'
        )
    return f'<span class="signal">{name}</span>'


def _caption(row: dict[str, Any]) -> str:
    parts = [signal(row), html.escape(row["source_uri"].rsplit("/", 1)[-1])]
    if row.get("class_name"):
        parts.append(f'<span class="muted">{html.escape(row["class_name"])}</span>')
    if row.get("duplicate_of"):
        parts.append(f"kept: {html.escape(row['duplicate_of'].rsplit('/', 1)[-1])}")
    if _detail(row):
        parts.append(f'<span class="muted">{html.escape(_detail(row)[:160])}</span>')
    if row.get("override_note"):
        parts.append(f'<span class="muted">note: {html.escape(row["override_note"][:160])}</span>')
    return "<br>".join(parts)


def _detail(row: dict[str, Any]) -> str:
    """The row's detail unless it says nothing the signal and score do not."""
    detail = row.get("detail") or ""
    redundant = detail.startswith(("score ", "distance ")) or detail == row.get("reason")
    return "" if redundant else detail


def _long_caption(row: dict[str, Any]) -> str:
    """The enlarged image's caption: the full URI and what decided it."""
    signal = row.get("signal")
    what = row.get("reason") or ("kept" if signal in (None, "kept") else f"kept, {signal}")
    if row.get("score") is not None:
        what += f" {row['score']:.3f}"
    elif row.get("distance") is not None:
        what += f" distance {row['distance']} to {row.get('duplicate_of')}"
    return " - ".join(p for p in (row["source_uri"], what, _detail(row)[:300]) if p)


def _note(row: dict[str, Any]) -> str:
    """The note a downloaded override carries: what the person overruled."""
    was = row.get("reason") or "kept"
    if row.get("signal") and row["signal"] not in (was, "kept"):
        was += f", {row['signal']}"
    score = f" {row['score']:.3f}" if row.get("score") is not None else ""
    return f"review: was {was}{score}"


def pick_box(row: dict[str, Any], decision: str) -> str:
    return (
        f'<label class="pick" title="select to {decision}"><input type="checkbox" class="pick" '
        f'data-uri="{html.escape(row["source_uri"])}" data-decision="{decision}" '
        f'data-note="{html.escape(_note(row))}"> {decision}</label>'
    )


def gallery_item(row: dict[str, Any], kept_images: dict[str, bytes], decision: str = "keep") -> str:
    """One card: the image (its larger preview when there is one), the kept copy beside a
    dropped duplicate, the signal and score, and a checkbox that selects it for
    `decision` in the downloaded overrides file."""
    picture = row.get("preview") or row.get("thumbnail")
    css = "dropped" if decision == "keep" else "kept"
    dropped = _img(picture, css, css, _long_caption(row))
    if row.get("duplicate_of"):
        keeper = row["duplicate_of"]
        kept = _img(kept_images.get(keeper), "kept", "kept copy", f"{keeper} - kept")
        body = (
            f'<div class="pair">{dropped}{kept}</div>'
            '<div class="legend muted"><span>dropped</span><span>kept</span></div>'
        )
    else:
        body = dropped
    return (
        f'<figure data-reason="{html.escape(row.get("reason") or "kept")}" '
        f'data-uri="{html.escape(row["source_uri"])}">{body}'
        f"<figcaption>{pick_box(row, decision)}{_caption(row)}</figcaption></figure>"
    )


def _section(key: str, title: str, shown: str, items: str) -> str:
    return (
        f'<section id="{html.escape(key)}"><h2>{html.escape(title)}'
        f' <span class="muted">({shown})</span> '
        '<button type="button" class="pick-all" onclick="pickAll(this)">select all</button></h2>'
        f'<div class="gallery">{items}</div></section>'
    )


def render_report_html(
    report: dict[str, Any],
    rejected_sample: list[dict[str, Any]],
    kept_images: dict[str, bytes],
    per_reason_limit: int,
    kept_sections: list[tuple[str, str, list[dict[str, Any]]]] | None = None,
) -> str:
    """The page. `rejected_sample`: rejected rows (source_uri, class_name, reason, detail,
    thumbnail, optional preview, score, distance, duplicate_of), worst first per reason;
    at most `per_reason_limit` shown per reason. `kept_images`: pictures of the kept
    copies of dropped duplicates. `kept_sections`: (id, title, kept rows) offered for a
    drop, e.g. the files a person chose to keep."""
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rejected_sample:
        by_reason[row["reason"]].append(row)
    totals = report["totals"]
    sections = []
    for reason, count in report["rejected_by_reason"].items():
        rows = by_reason.get(reason, [])[:per_reason_limit]
        shown = f"showing {len(rows)} of {count}" if count > len(rows) else f"{count}"
        items = "".join(gallery_item(r, kept_images) for r in rows)
        sections.append(_section(f"reason-{reason}", reason, shown, items))
    for key, title, kept in kept_sections or []:
        rows = kept[:per_reason_limit]
        items = "".join(gallery_item(r, kept_images, "drop") for r in rows)
        sections.append(_section(key, title, f"{len(rows)}", items))
    stats = report.get("channel_stats", {})
    run_id = html.escape(str(report.get("run_id", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cleaning report {run_id}</title>
<style>{_STYLE}</style></head><body>
<div id="review-bar"><b>Review</b><span><span id="picked-count">0</span> selected</span>
<button type="button" id="download-overrides" onclick="downloadOverrides()">Download
overrides.csv</button><span class="muted">then run the next clean with
<code>--overrides overrides.csv</code> (ticked rejected cards are kept, ticked kept
cards dropped)</span></div>
<h1>Cleaning report</h1>
<p>Input <code>{html.escape(str(report.get("input_uri", "")))}</code>, run
<code>{run_id}</code>: listed <b>{totals["listed"]}</b>,
kept <b id="kept-total">{totals["kept"]}</b>, rejected <b>{totals["rejected"]}</b>.</p>
<h2>Class balance (kept images)</h2>
{balance_table(report["class_balance"])}
{balance_chart(report["class_balance"])}
<h2>Per class</h2>
{class_table(report["per_class"], sorted(report.get("splits", {})))}
<p class="muted">Mean {stats.get("mean")} &middot; std {stats.get("std")}</p>
{"".join(sections)}
<div id="lightbox" hidden><img id="lightbox-img" alt="enlarged"><div id="lightbox-caption">
</div></div>
<script>{_SCRIPT}</script>
</body></html>
"""
