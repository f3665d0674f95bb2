"""Peak memory of normalising one file, measured in a fresh interpreter.

VmHWM (the process's own high-water mark), not ru_maxrss: Linux carries ru_maxrss over
fork and exec, so a child would report its parent's peak (e.g. the process that just
generated a 9400x9400 test image).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_MEASURE = """
import sys
from pathlib import Path
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
data = Path(sys.argv[1]).read_bytes()
from pipeline.config import NormalizeConfig
from pipeline.normalize import normalise_bytes
before = peak()
row = normalise_bytes(data, NormalizeConfig())
print(before, peak(), row["source_width"], row["width"])
"""


def normalise_peak(path: Path) -> tuple[int, int, int, int]:
    """(RSS before decoding, peak RSS, source width, stored width) of one file through
    `pipeline.normalize.normalise_bytes`; everything is imported before the baseline."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=REPO,
    ).stdout.split()
    before, peak, width, stored = (int(x) for x in out)
    return before, peak, width, stored
