"""`python -m pipeline clean INPUT_URI OUTPUT_URI [options]`."""

from __future__ import annotations

import argparse
import logging
import sys

from common.backbone import WeightsUnavailable
from common.config import add_config_command, config_from_args
from common.storage import join
from pipeline.config import CleanConfig
from pipeline.listing import LakeError
from pipeline.output import OutputError
from pipeline.report import summary_lines

EXIT_JOB_FAILED = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Clean a scraped image lake into Parquet shards."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_config_command(
        commands,
        "clean",
        CleanConfig,
        {
            "input_uri": "lake: s3://bucket/raw/, a folder...",
            "output_uri": "where the cleaned set goes",
        },
        help="normalise every file of a lake into images/ or rejected/",
        description="List INPUT_URI once (one sub-prefix per class), normalise every file "
        "through Ray Data, and publish images/, rejected/, report.json and _manifest.json "
        "under OUTPUT_URI. Exit status 2 only when the job as a whole cannot run.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = config_from_args(CleanConfig, args)
    except (ValueError, OSError) as exc:
        print(f"error: bad configuration: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    from pipeline.job import run_clean  # imports Ray: keep --help and config errors fast

    try:
        result = run_clean(cfg)
    except (LakeError, OutputError, WeightsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    for line in summary_lines(result.report):
        print(line)
    print(f"output:  {result.output_uri}  ({result.seconds:.1f} s)")
    print(f"report:  {join(result.output_uri, 'report.json')}")
    return 0
