"""How much a user reads: lines printed by `clean` on 3 files, a 2-epoch tiny `fit` and
`export`, split into the job's own lines and library lines (Ray, progress bars, warnings).

    .venv/bin/python scripts/bench/log_lines.py [--verbose]

Runs the console modules in subprocesses (stdout and stderr together, not a TTY) on the
committed sample crops (samples/halmstad-crops), in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devkit.weights import embedding_args

ROOT = Path(__file__).resolve().parents[2]

SAMPLES = ROOT / "samples" / "halmstad-crops"
# A line is the library's when it looks like a logger record, a progress bar, a Python
# warning (with its source line) or a traceback; everything else is the job's own,
# including what the job prints from a Ray worker (the "(RayTrainWorker pid=N)" prefix
# Ray adds is ignored).
WORKER_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)*\((\w+ )?pid=\d+[^)]*\)(\x1b\[[0-9;]*m)*\s?")
LIBRARY = re.compile(
    r"\b(INFO|WARNING|WARN|DEBUG|ERROR)\b|Warning:|warnings\.warn|Traceback|Error:|"
    r"^\s+File |^\s*\^+\s*$|\d+%\||it/s\]|row/s\]|Running Dataset|ray\.|Ray |Dataset|"
    r"^\s*$|\[A|core_worker|Exception in thread"
)
TINY_FIT = [
    "--workers", "1", "--cpus-per-worker", "0.5", "--input-size", "64",
    "--batch-size", "8", "--weights", "none", "--epochs", "2",
]  # fmt: skip


def run(args: list[str], verbose: bool) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", *args] + (["--verbose"] if verbose else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    text = (out.stdout + out.stderr).replace("\r", "\n")
    return out.returncode, text.splitlines()


def is_library(line: str, previous_was: bool) -> bool:
    text = WORKER_PREFIX.sub("", line)
    return bool(LIBRARY.search(text)) or (previous_was and text[:1] in (" ", "\t"))


def count(name: str, rc: int, lines: list[str]) -> None:
    library, previous = [], False
    for line in lines:
        previous = is_library(line, previous)
        if previous:
            library.append(line)
    own = len(lines) - len(library)
    print(f"{name:<14} rc={rc}  lines={len(lines):5d}  own={own:4d}  library={len(library):5d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="pass --verbose to the jobs")
    parser.add_argument("--show", action="store_true", help="print every line too")
    parser.add_argument("--skip-clean3", action="store_true", help="skip the 3-file clean")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake3, lake = Path(tmp, "lake3"), Path(tmp, "lake")
        shutil.copytree(SAMPLES, lake, ignore=shutil.ignore_patterns("*.csv"))
        for path in sorted(SAMPLES.glob("*/*.jpg"))[:3]:
            (lake3 / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, lake3 / path.parent.name / path.name)
        jobs = [
            ("clean 3 files", ["pipeline", "clean", str(lake3), f"{tmp}/out3", *embedding_args()]),
            ("clean samples", ["pipeline", "clean", str(lake), f"{tmp}/out", *embedding_args()]),
            ("fit 2 epochs", ["train", "fit", f"{tmp}/out", f"{tmp}/run", *TINY_FIT]),
            ("export", ["train", "export", f"{tmp}/run", f"{tmp}/model", "--max-int8-drop", "100"]),
        ]
        for name, job in jobs[1:] if args.skip_clean3 else jobs:
            rc, lines = run(job, args.verbose)
            if args.show:
                print("\n".join(f"  | {line}" for line in lines))
            count(name, rc, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
