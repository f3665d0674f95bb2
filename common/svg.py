"""SVG rasterisation that touches neither the network nor the file system.

resvg never fetches URLs, but it does read absolute `href` paths from disk, so every
reference that is not inside the document (`#id`) or inline (`data:`) is removed
before rendering. Documents with a DTD are refused outright (entity expansion).

Hostile documents are bounded twice. Before rendering, the XML is parsed incrementally
with caps on nesting depth and element count (resvg recurses per nesting level and
segfaults past ~200 nested groups). Then resvg itself runs in a long-lived helper
process (`_Renderer`), so a crash or a hang it still has becomes a `decoder_crash`
rejection of that one file instead of the death of the worker that decodes the lake.
The helper costs one interpreter start per process that renders SVG, then only the pipe.

resvg is imported only by that helper: the Lambda image refuses SVG and does not ship it.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
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
# Structural caps checked before rendering: real clip art nests < 20 deep.
MAX_SVG_DEPTH = 64
MAX_SVG_ELEMENTS = 50_000
# A render that takes longer than this is killed and the file rejected (decoder_crash).
RENDER_TIMEOUT_S = 20.0
_FEED_BYTES = 1 << 16


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


def parse_bounded(
    data: bytes, max_depth: int | None = None, max_elements: int | None = None
) -> ET.Element:
    """Parse the document, stopping as soon as it nests or grows past the caps
    (default: MAX_SVG_DEPTH and MAX_SVG_ELEMENTS)."""
    max_depth = max_depth or MAX_SVG_DEPTH
    max_elements = max_elements or MAX_SVG_ELEMENTS
    parser = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    depth = count = 0

    def consume() -> None:
        nonlocal root, depth, count
        for event, element in parser.read_events():
            if event == "end":
                depth -= 1
                continue
            root = element if root is None else root
            depth, count = depth + 1, count + 1
            if depth > max_depth:
                raise Rejected(
                    Reason.DECOMPRESSION_BOMB,
                    f"SVG nests elements more than {max_depth} levels deep; refused before "
                    "rendering",
                )
            if count > max_elements:
                raise Rejected(
                    Reason.DECOMPRESSION_BOMB,
                    f"SVG has more than {max_elements} elements; refused before rendering",
                )

    try:
        for offset in range(0, len(data), _FEED_BYTES):
            parser.feed(data[offset : offset + _FEED_BYTES])
            consume()
        parser.close()
        consume()
    except ET.ParseError as exc:
        raise Rejected(Reason.UNDECODABLE, f"SVG is not well-formed XML: {exc}") from exc
    if root is None:
        raise Rejected(Reason.UNDECODABLE, "SVG has no root element")
    return root


def rasterize_svg(
    data: bytes, max_side: int, max_bytes: int, timeout_s: float = RENDER_TIMEOUT_S
) -> Image.Image:
    """Render an SVG to RGBA, fitting inside max_side (never larger than its own size)."""
    if len(data) > max_bytes:
        raise Rejected(Reason.FILE_TOO_LARGE, f"SVG of {len(data)} bytes exceeds {max_bytes}")
    if b"<!DOCTYPE" in data[:4096].upper() and b"<!ENTITY" in data.upper():
        raise Rejected(Reason.UNSUPPORTED_FORMAT, "SVG declares XML entities; refused")
    root = parse_bounded(data)
    if root.tag not in (f"{{{_SVG_NS}}}svg", "svg"):
        raise Rejected(Reason.NOT_AN_IMAGE, f"XML root is <{root.tag}>, not <svg>")
    _strip_external_refs(root)
    width, height = _intrinsic_size(root)
    scale = min(1.0, max_side / max(width, height))
    target_w, target_h = max(1, round(width * scale)), max(1, round(height * scale))
    png = _RENDERER.render(ET.tostring(root, encoding="unicode"), target_w, target_h, timeout_s)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


# The helper's whole program: only the standard library and resvg, so it needs none of
# this package on its path. Request: u32 length, u32 width, u32 height, SVG text.
# Answer: u8 status (0 PNG, 1 error message), u32 length, payload.
_HELPER = r"""
import struct, sys
import resvg_py
src, dst = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = src.read(12)
    if len(head) < 12:
        break
    size, width, height = struct.unpack("<III", head)
    svg = src.read(size).decode("utf-8", "replace")
    try:
        status, payload = 0, resvg_py.svg_to_bytes(svg_string=svg, width=width, height=height)
    except Exception as exc:
        status, payload = 1, f"{type(exc).__name__}: {exc}".encode()
    dst.write(struct.pack("<BI", status, len(payload)) + payload)
    dst.flush()
"""


class _Renderer:
    """One resvg helper process per process that renders, restarted after a crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _HELPER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._process

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe:
                    pipe.close()

    def render(self, svg: str, width: int, height: int, timeout_s: float) -> bytes:
        with self._lock:
            process = self._started()
            body = svg.encode()
            try:
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(struct.pack("<III", len(body), width, height) + body)
                process.stdin.flush()
                deadline = time.monotonic() + timeout_s
                status, size = struct.unpack("<BI", _read(process.stdout, 5, deadline))
                payload = _read(process.stdout, size, deadline)
            except TimeoutError:
                self.close()
                raise Rejected(
                    Reason.DECODER_CRASH, f"resvg did not finish within {timeout_s:g} s; stopped"
                ) from None
            except (BrokenPipeError, EOFError):
                process.wait()
                self.close()
                raise Rejected(Reason.DECODER_CRASH, _death(process.returncode)) from None
        if status:
            message = payload.decode(errors="replace")
            raise Rejected(Reason.UNDECODABLE, f"SVG could not be rendered: {message}")
        return payload


def _read(pipe: io.BufferedReader, size: int, deadline: float) -> bytes:
    """Exactly `size` bytes from the helper, or TimeoutError / EOFError (it died)."""
    chunks, left = [], size
    fd = pipe.fileno()
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"resvg crashed ({name}) while rendering this SVG"
    return f"resvg exited with status {returncode} while rendering this SVG"


_RENDERER = _Renderer()
atexit.register(_RENDERER.close)
