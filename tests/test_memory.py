"""A camera-size file must not cost a full-size decode: 50 MP JPEGs decode at 1/8 scale."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from devkit.messy_lake import encode

# RGB at 50 MP is 150 MB; the draft decode of a 7072 px JPEG to >= 512 px needs ~1/64.
FULL_DECODE_MB = 150
ALLOWED_GROWTH_MB = 60

_MEASURE = """
import resource, sys
from pathlib import Path
data = Path(sys.argv[1]).read_bytes()
from pipeline.config import NormalizeConfig
from pipeline.normalize import normalise_bytes
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
row = normalise_bytes(data, NormalizeConfig())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(row["source_width"], row["source_height"], row["width"], (after - before) // 1024)
"""


def test_fifty_megapixel_jpeg_stays_small_in_memory(tmp_path):
    side = 7072  # 50.0 MP
    path = tmp_path / "camera.jpg"
    gradient = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    path.write_bytes(encode(gradient, "JPEG", quality=85))
    del gradient
    # The child imports everything before measuring, so only the decode is counted.
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    width, height, out_width, growth_mb = (int(x) for x in out)
    assert (width, height, out_width) == (side, side, 512)
    assert growth_mb < ALLOWED_GROWTH_MB < FULL_DECODE_MB
