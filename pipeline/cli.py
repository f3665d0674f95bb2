"""`python -m pipeline clean INPUT_URI OUTPUT_URI [options]`."""

from __future__ import annotations

import argparse
import sys

from common.backbone import WeightsUnavailable
from common.flags import ConfigParser, add_config_command, run_command
from common.storage import join
from pipeline.config import CleanConfig
from pipeline.lease import LeaseHeld
from pipeline.listing import LakeError
from pipeline.output import OutputError
from pipeline.overrides import OverridesError
from pipeline.report import summary_lines
from pipeline.sink import StageFailed

EXIT_JOB_FAILED = 2


def build_parser(prog: str = "python -m pipeline") -> argparse.ArgumentParser:
    parser = ConfigParser(prog=prog, description="Clean a scraped image lake into Parquet shards.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`clean`, here and in the `lakeclean` console command."""
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
        run=clean,
    )


def main(argv: list[str] | None = None) -> int:
    # A bad setting stops in run_command, with exit status 2, before any work.
    return run_command(build_parser(), argv)


def clean(cfg: CleanConfig) -> int:
    """Run the job on a validated config and print its summary; the exit status."""
    from pipeline.driver_memory import return_freed_memory
    from pipeline.job import run_clean  # imports Ray: keep --help and config errors fast

    return_freed_memory()  # this process is the job's driver
    try:
        result = run_clean(cfg)
    except (
        LakeError,
        OutputError,
        OverridesError,
        WeightsUnavailable,
        LeaseHeld,
        StageFailed,
    ) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return EXIT_JOB_FAILED
    for line in summary_lines(result.report):
        print(line)
    print(f"output:  {result.output_uri}  ({result.seconds:.1f} s)")
    print(f"review:  {join(result.output_uri, 'report.html')}  (open it in a browser)")
    print(f"report:  {join(result.output_uri, 'report.json')}")
    return 0
