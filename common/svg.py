"""SVG rasterisation that touches neither the network nor the file system.

resvg never fetches URLs, but it does read absolute `href` paths from disk, so every
reference that is not inside the document (`#id`) or inline (`data:`) is removed
before rendering. Documents with a DTD are refused outright (entity expansion).

resvg is imported only when an SVG is rendered: the Lambda image refuses SVG and does
not ship it.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

from PIL import Image

from common.reasons import Reason, Rejected

_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_UNITS_TO_PX = {
    "": 1.0,
    "px": 1.0,
    "pt": 4 / 3,
    "pc": 16.0,
    "mm": 96 / 25.4,
    "cm": 96 / 2.54,
    "in": 96.0,
}
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z%]*)\s*$")
# Rendered size when a document gives no usable width/height/viewBox.
_FALLBACK_SIDE = 512


def looks_like_svg(data: bytes) -> bool:
    """Cheap content sniff: an `<svg` root tag in the first few KB of a text file."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg")) and b"<svg" in head


def _length_px(value: str | None) -> float | None:
    if not value:
        return None
    m = _LENGTH.match(value)
    if not m or m.group(2) not in _UNITS_TO_PX:
        return None  # percentages and font-relative units have no absolute size
    return float(m.group(1)) * _UNITS_TO_PX[m.group(2)]


def _intrinsic_size(root: ET.Element) -> tuple[float, float]:
    width, height = _length_px(root.get("width")), _length_px(root.get("height"))
    box = (root.get("viewBox") or "").replace(",", " ").split()
    if len(box) == 4:
        try:
            bw, bh = float(box[2]), float(box[3])
        except ValueError:
            bw = bh = 0.0
        if bw > 0 and bh > 0:
            if width and not height:
                height = width * bh / bw
            elif height and not width:
                width = height * bw / bh
            elif not width and not height:
                width, height = bw, bh
    if not width or not height or width <= 0 or height <= 0:
        return float(_FALLBACK_SIDE), float(_FALLBACK_SIDE)
    return width, height


def _strip_external_refs(root: ET.Element) -> int:
    """Drop hrefs that leave the document; return how many were dropped."""
    dropped = 0
    for el in root.iter():
        for attr in ("href", _XLINK_HREF):
            ref = el.get(attr)
            if ref is not None and not ref.strip().startswith(("#", "data:")):
                del el.attrib[attr]
                dropped += 1
        if el.tag in (f"{{{_SVG_NS}}}style", "style") and el.text and "@import" in el.text:
            el.text = el.text.replace("@import", "/* import removed */")
            dropped += 1
    return dropped


def rasterize_svg(data: bytes, max_side: int, max_bytes: int) -> Image.Image:
    """Render an SVG to RGBA, fitting inside max_side (never larger than its own size)."""
    if len(data) > max_bytes:
        raise Rejected(Reason.FILE_TOO_LARGE, f"SVG of {len(data)} bytes exceeds {max_bytes}")
    if b"<!DOCTYPE" in data[:4096].upper() and b"<!ENTITY" in data.upper():
        raise Rejected(Reason.UNSUPPORTED_FORMAT, "SVG declares XML entities; refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise Rejected(Reason.UNDECODABLE, f"SVG is not well-formed XML: {exc}") from exc
    if root.tag not in (f"{{{_SVG_NS}}}svg", "svg"):
        raise Rejected(Reason.NOT_AN_IMAGE, f"XML root is <{root.tag}>, not <svg>")
    _strip_external_refs(root)
    width, height = _intrinsic_size(root)
    scale = min(1.0, max_side / max(width, height))
    target_w, target_h = max(1, round(width * scale)), max(1, round(height * scale))
    import resvg_py  # here, not at the top: only SVG rendering needs it

    try:
        png = resvg_py.svg_to_bytes(
            svg_string=ET.tostring(root, encoding="unicode"), width=target_w, height=target_h
        )
    except (ValueError, RuntimeError) as exc:
        raise Rejected(Reason.UNDECODABLE, f"SVG could not be rendered: {exc}") from exc
    image = Image.open(io.BytesIO(png))
    image.load()
    return image
