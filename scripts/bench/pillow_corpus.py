"""Robustness of the normalisation stage on hostile real files: no crash, no hang, no loss.

1. In-process: every file of ``../shared/data/messy-ingredients/`` (Pillow's own test
   images, recursively; the openclipart SVGs; skimage-data) goes through
   ``pipeline.normalize.normalise_bytes``. ``common.reasons.Rejected`` is the expected
   way to say no; any other exception is a crash (printed with its traceback). A
   watchdog reports a file that runs longer than --hang-seconds and stops the run. The
   address space is capped (--max-address-space-gb) so a decompression bomb that got
   past the header check fails here instead of exhausting the shared machine.
2. The real job once (local folder lake, one class per corpus folder, local Ray) via
   ``pipeline.cli.main``; every file must appear exactly once in ``images`` or
   ``rejected`` of the published output, and its outcome is compared with step 1.

Printed: counts per reason, per detected format, crashes (must be 0), the slowest and
the most memory-hungry files, and the job's accounting check.

Run from the repository root:

    .venv/bin/python scripts/bench/pillow_corpus.py [--skip-job]
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import os
import resource
import shutil
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import MESSY_INGREDIENTS
from PIL import Image

from common.reasons import Rejected
from common.storage import StorageConfig
from common.svg import looks_like_svg
from devkit.weights import embedding_args
from pipeline.config import NormalizeConfig
from pipeline.normalize import normalise_bytes

INGREDIENTS = MESSY_INGREDIENTS
CORPORA = ("pillow-test-images", "openclipart-svg", "skimage-data")
HANG_SECONDS = 60.0
WATCHDOG_POLL_S = 1.0
MAX_ADDRESS_SPACE_GB = 8
TOP_N = 8
NUM_CPUS = 2
KIB_PER_MIB = 1024  # ru_maxrss is in KiB on Linux
EXIT_HANG = 3
MS = 1000.0
GIB = 2**30


@dataclass
class Outcome:
    relative: str  # corpus/path inside it
    status: str  # "kept", "rejected" or "crash"
    reason: str  # Rejected reason, or the exception type of a crash, or "" when kept
    detail: str
    detected_format: str
    seconds: float
    peak_rss_mib: float  # process peak RSS after this file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hang-seconds", type=float, default=HANG_SECONDS)
    parser.add_argument("--max-address-space-gb", type=float, default=MAX_ADDRESS_SPACE_GB)
    parser.add_argument("--skip-job", action="store_true", help="only the in-process pass")
    return parser.parse_args(argv)


def corpus_files() -> list[Path]:
    files: list[Path] = []
    for corpus in CORPORA:
        files += sorted(p for p in (INGREDIENTS / corpus).rglob("*") if p.is_file())
    return files


def sniff_format(data: bytes) -> str:
    """The format Pillow (or our SVG sniff) sees in the header; statistics only."""
    if looks_like_svg(data):
        return "SVG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data)).format or "UNKNOWN"
    except Exception:  # noqa: BLE001 - unidentifiable is an answer here
        return "unidentified"


class Watchdog:
    """Reports a file that takes longer than `limit` seconds, dumps all stacks, exits."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.current: tuple[str, float] | None = None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_POLL_S)
            current = self.current
            if current and time.monotonic() - current[1] > self.limit:
                print(f"\nHANG: {current[0]} still running after {self.limit:.0f} s", flush=True)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(EXIT_HANG)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def run_one(path: Path, cfg: NormalizeConfig, watchdog: Watchdog) -> Outcome:
    relative = str(path.relative_to(INGREDIENTS))
    data = path.read_bytes()
    watchdog.current = (relative, time.monotonic())
    started = time.perf_counter()
    try:
        result = normalise_bytes(data, cfg)
        status, reason, detail, fmt = "kept", "", "", result["source_format"]
    except Rejected as rej:
        status, reason, detail, fmt = "rejected", str(rej.reason), rej.detail, sniff_format(data)
    except Exception as exc:  # noqa: BLE001 - what this script exists to find
        status, reason, fmt = "crash", type(exc).__name__, sniff_format(data)
        detail = traceback.format_exc()
    seconds = time.perf_counter() - started
    watchdog.current = None
    return Outcome(relative, status, reason, detail, fmt, seconds, peak_rss_mib())


def in_process(files: list[Path], hang_seconds: float, max_gb: float) -> list[Outcome]:
    """Every file through normalise_bytes, with the address space capped meanwhile."""
    cfg = NormalizeConfig()
    watchdog = Watchdog(hang_seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (int(max_gb * GIB), hard))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [run_one(path, cfg, watchdog) for path in files]
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def print_counts(title: str, counts: Counter, columns: tuple[str, str]) -> None:
    print(f"\n{title}")
    width = max([len(columns[0]), *(len(str(k)) for k in counts)])
    print(f"  {columns[0]:<{width}}  {columns[1]:>6}")
    for key, n in counts.most_common():
        print(f"  {key!s:<{width}}  {n:>6}")


def print_format_table(outcomes: list[Outcome]) -> None:
    by_format: dict[str, Counter] = {}
    for o in outcomes:
        by_format.setdefault(o.detected_format, Counter())[o.status] += 1
    print("\nper detected format (kept: from the decode; rejected: from the header)")
    width = max(len(f) for f in by_format)
    print(f"  {'format':<{width}}  {'kept':>5}  {'rejected':>8}  {'crash':>5}")
    for fmt, c in sorted(by_format.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"  {fmt:<{width}}  {c['kept']:>5}  {c['rejected']:>8}  {c['crash']:>5}")


def print_extremes(outcomes: list[Outcome], baseline_mib: float) -> None:
    print(f"\nslowest {TOP_N} files")
    for o in sorted(outcomes, key=lambda o: -o.seconds)[:TOP_N]:
        print(f"  {o.seconds * MS:9.1f} ms  {o.status:<8} {o.reason:<20} {o.relative}")
    print("\nfiles that raised the process's peak RSS the most (MiB added, peak after)")
    previous = baseline_mib
    growth = []
    for o in outcomes:
        growth.append((o.peak_rss_mib - previous, o))
        previous = o.peak_rss_mib
    for added, o in sorted(growth, key=lambda g: -g[0])[:TOP_N]:
        print(f"  +{added:7.1f}  {o.peak_rss_mib:7.1f}  {o.status:<8} {o.reason:<20} {o.relative}")
    memory_errors = [o for o in outcomes if "MemoryError" in o.detail]
    print(f"\nrejections caused by MemoryError (the address-space cap): {len(memory_errors)}")
    for o in memory_errors:
        print(f"  {o.relative}: {o.detail[:200]}")


def report_in_process(outcomes: list[Outcome], seconds: float, baseline_mib: float) -> int:
    crashes = [o for o in outcomes if o.status == "crash"]
    print(
        f"\nin-process: {len(outcomes)} files in {seconds:.1f} s, peak RSS "
        f"{max(o.peak_rss_mib for o in outcomes):.0f} MiB"
    )
    print_counts("per status", Counter(o.status for o in outcomes), ("status", "files"))
    rejected = Counter(o.reason for o in outcomes if o.status == "rejected")
    print_counts("per rejection reason", rejected, ("reason", "files"))
    print_format_table(outcomes)
    print_extremes(outcomes, baseline_mib)
    print(f"\nCRASHES (exceptions other than Rejected): {len(crashes)}")
    for o in crashes:
        print(f"--- {o.relative} ({o.detected_format})\n{o.detail}")
    return len(crashes)


# --- the real job -------------------------------------------------------------------------


def build_lake(folder: Path) -> Path:
    """A local lake: one class folder per corpus, files copied byte for byte."""
    lake = folder / "lake"
    for corpus in CORPORA:
        shutil.copytree(INGREDIENTS / corpus, lake / corpus)
    return lake


def run_job(lake: Path, out: Path) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from pipeline.cli import main as pipeline_main

    argv = [
        "clean",
        str(lake),
        str(out),
        "--num-cpus",
        str(NUM_CPUS),
        "--no-progress",
        *embedding_args(),
    ]
    return pipeline_main(argv)


def check_job(lake: Path, out: Path, outcomes: list[Outcome]) -> int:
    """Every listed file exactly once in images or rejected; outcomes as in-process."""
    from pipeline.output import read_table

    storage = StorageConfig()
    images = read_table(str(out), "images", storage, columns=["source_uri", "source_format"])
    rejected = read_table(str(out), "rejected", storage, columns=["source_uri", "reason"])
    seen = Counter(images["source_uri"].to_pylist() + rejected["source_uri"].to_pylist())
    job_outcome = {u: "kept" for u in images["source_uri"].to_pylist()}
    job_outcome |= dict(
        zip(rejected["source_uri"].to_pylist(), rejected["reason"].to_pylist(), strict=True)
    )
    expected = {str(lake / o.relative): o for o in outcomes}
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    duplicated = sorted(u for u, n in seen.items() if n > 1)
    differs = [
        (u, o.status if o.status == "kept" else o.reason, job_outcome.get(u))
        for u, o in expected.items()
        if (o.status if o.status == "kept" else o.reason) != job_outcome.get(u)
    ]
    print(
        f"\njob: images {images.num_rows}, rejected {rejected.num_rows}, "
        f"files {len(expected)}; missing {len(missing)}, extra {len(extra)}, "
        f"duplicated {len(duplicated)}, outcome differs from in-process {len(differs)}"
    )
    for label, items in (("missing", missing), ("extra", extra), ("duplicated", duplicated)):
        for uri in items[:TOP_N]:
            print(f"  {label}: {uri}")
    for uri, ours, job in differs[:TOP_N]:
        print(f"  differs: {uri}: in-process {ours}, job {job}")
    print_counts(
        "job: per rejection reason", Counter(rejected["reason"].to_pylist()), ("reason", "files")
    )
    return len(missing) + len(extra) + len(duplicated)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = corpus_files()
    print(f"{len(files)} files under {INGREDIENTS} ({', '.join(CORPORA)})", flush=True)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    outcomes = in_process(files, args.hang_seconds, args.max_address_space_gb)
    crashes = report_in_process(outcomes, time.perf_counter() - started, baseline)
    problems = 0
    if not args.skip_job:
        with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
            lake = build_lake(Path(tmp))
            started = time.perf_counter()
            code = run_job(lake, Path(tmp) / "out")
            print(f"\njob exit code {code} after {time.perf_counter() - started:.1f} s")
            problems = check_job(lake, Path(tmp) / "out", outcomes) if code == 0 else 1
    print(f"\nsummary: crashes {crashes}, accounting problems {problems}")
    return 1 if crashes or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
