"""Peak memory of decoding one image per Pillow mode, against the documented budget.

For each case an image is generated (small on disk: flat or ramp content compresses
to kilobytes), then decoded through `common.decode.decode_within` (what one normalise
task and the Lambda handler do) in a fresh subprocess that measures its peak RSS
(devkit.peak_memory) after importing everything. Printed per case: pixels, the growth
in MB, the growth per pixel and `decode_bytes_per_pixel(mode)`. The budget's rule is
growth <= pixels x bytes per pixel + `DECODE_FIXED_BYTES` (64 MiB), so at a few MP the
fixed costs show as more bytes per pixel; at 36 MP and above the table must be larger.

    .venv/bin/python scripts/bench/decode_memory.py [--megapixels 36]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from common.decode import decode_bytes_per_pixel
from devkit.costly_images import FLOAT_TIFF_SIDE, PNG16_SIDE, float_tiff, sixteen_bit_png
from devkit.peak_memory import normalise_peak


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def flat(mode: str, fmt: str, colour: object, **params: object) -> Callable[[int, int], bytes]:
    return lambda width, height: _save(Image.new(mode, (width, height), colour), fmt, **params)


# (name, mode Pillow decodes to, keyed transparency, generator)
CASES: list[tuple[str, str, bool, Callable[[int, int], bytes]]] = [
    ("png-grey16", "I;16", False, sixteen_bit_png),
    ("tiff-float32", "F", False, float_tiff),
    ("png-rgb", "RGB", False, flat("RGB", "PNG", (10, 200, 30))),
    ("png-rgba", "RGBA", False, flat("RGBA", "PNG", (10, 200, 30, 128))),
    ("png-la", "LA", False, flat("LA", "PNG", (90, 128))),
    ("png-grey", "L", False, flat("L", "PNG", 90)),
    ("tiff-cmyk", "CMYK", False, flat("CMYK", "TIFF", (1, 2, 3, 4), compression="tiff_lzw")),
]
# The worst accepted images of issue 29 at their full size.
WORST = [("png-grey16", PNG16_SIDE, PNG16_SIDE), ("tiff-float32", FLOAT_TIFF_SIDE, FLOAT_TIFF_SIDE)]


def measure(data: bytes) -> tuple[int, int]:
    """(RSS before the decode, peak RSS) in bytes, in a fresh interpreter."""
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        before, peak, _, _ = normalise_peak(Path(f.name))
    return before, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=36.0, help="size of the per-mode cases")
    args = parser.parse_args()
    side = int((args.megapixels * 1e6) ** 0.5)
    runs = [(name, side, side) for name, *_ in CASES] + WORST
    by_name = {name: (mode, keyed, make) for name, mode, keyed, make in CASES}
    print(f"{'case':<14}{'size':>12}{'file KB':>9}{'base MB':>9}{'peak MB':>9}"
          f"{'growth B/px':>13}{'budget B/px':>13}")  # fmt: skip
    for name, width, height in runs:
        mode, keyed, make = by_name[name]
        data = make(width, height)
        before, peak = measure(data)
        per_pixel = (peak - before) / (width * height)
        print(
            f"{name:<14}{f'{width}x{height}':>12}{len(data) // 1024:>9}{before // 2**20:>9}"
            f"{peak // 2**20:>9}{per_pixel:>13.2f}{decode_bytes_per_pixel(mode, keyed):>13g}"
        )


if __name__ == "__main__":
    main()
