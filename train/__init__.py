"""The training job: fine-tune MobileNetV2 with Ray Train on the cleaning job's output,
then export an int8 TorchScript model for serving.

Python API (the CLI `lakeclean fit|export` / `python -m train fit|export` call the same)::

    from train import ExportConfig, TrainConfig, export, fit

    result = fit(TrainConfig(data_uri="s3://lake/clean", run_uri="s3://lake/runs/1"))
    info = export(ExportConfig(run_uri="s3://lake/runs/1", model_dir="out/model"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.config import ExportConfig, TrainConfig
    from train.job import FitResult


def fit(config: TrainConfig) -> FitResult:
    """Train on `config.data_uri`, checkpointing every epoch and writing the reports to
    `config.run_uri`; returns `run_uri`, the last epoch's `metrics` and the test
    `report` (metrics.json). Settings are validated first (ConfigError, a ValueError
    naming the field, before Ray starts); raises `train.job.FitError` when the job
    cannot run."""
    from common.config import validate
    from train.job import run_fit

    return run_fit(validate(config))


def export(config: ExportConfig) -> dict[str, Any]:
    """Quantize the best checkpoint of `config.run_uri` to int8 TorchScript and write
    model.pt and model.json to `config.model_dir`; returns model.json's content
    (accuracies, size). Raises `train.export.ExportError` when int8 loses more than
    `max_int8_drop` points or the run has no checkpoint."""
    from common.config import validate
    from train.export import run_export

    return run_export(validate(config))


def __getattr__(name: str) -> Any:
    """`train.TrainConfig` / `train.ExportConfig`, loaded on first use."""
    if name in ("TrainConfig", "ExportConfig"):
        from train import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
