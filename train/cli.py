"""`python -m train fit DATA_URI RUN_URI [options]`, `python -m train export RUN_URI MODEL_DIR`."""

from __future__ import annotations

import argparse
import json
import sys

from common.flags import ConfigParser, add_config_command, run_command
from common.storage import join
from train.config import ExportConfig, TrainConfig

EXIT_JOB_FAILED = 2


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    parser = ConfigParser(prog=prog, description="Fine-tune MobileNetV2 on a cleaned data set.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`fit` and `export`, here and in the `lakeclean` console command."""
    add_config_command(
        commands,
        "fit",
        TrainConfig,
        {"data_uri": "the cleaning job's OUTPUT_URI", "run_uri": "checkpoints, logs and reports"},
        help="train with Ray Train; checkpoints, TensorBoard logs and reports go to RUN_URI",
        description="Read DATA_URI (the cleaning job's output) through Ray Data, train "
        "MobileNetV2 with Ray Train's TorchTrainer, checkpoint every epoch and write the "
        "reports to RUN_URI. Exit status 2 when the job cannot run.",
        run=fit,
    )
    add_config_command(
        commands,
        "export",
        ExportConfig,
        {"run_uri": "a `fit` run", "model_dir": "local output folder"},
        help="int8 TorchScript model.pt + model.json from a run's best checkpoint",
        description="Quantize the best checkpoint of RUN_URI (static int8, calibrated on "
        "train images), script it, and write model.pt and model.json to MODEL_DIR. Exit "
        "status 2 when int8 loses more than --max-int8-drop accuracy points.",
        run=export,
    )


def main(argv: list[str] | None = None) -> int:
    # run_command validates the settings (each config's validate() included) before Ray
    # or torch start: a bad value is one line and exit status 2, not minutes of work.
    return run_command(build_parser(), argv)


def export(cfg: ExportConfig) -> int:
    from train.export import ExportError, run_export  # imports torch: keep --help fast

    try:
        info = run_export(cfg)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    keys = ("fp32_test_accuracy", "int8_test_accuracy", "int8_fp32_agreement", "bytes")
    print(f"model:   {cfg.model_dir}  {json.dumps({k: info[k] for k in keys})}")
    return 0


def fit(cfg: TrainConfig) -> int:
    from train.job import FitError, run_fit  # imports Ray and torch: keep --help fast

    try:
        result = run_fit(cfg)
    except FitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    summary = {k: result.report[k] for k in ("accuracy", "balanced_accuracy", "best_epoch")}
    print(f"test:    {json.dumps(summary)}")
    print(f"reports: {join(result.run_uri, 'metrics.json')}")
    return 0
