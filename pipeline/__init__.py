"""The cleaning job: a messy image lake (one folder or prefix per class) in, a cleaned,
de-duplicated, split data set of Parquet shards with a review page out.

Python API (the CLI `lakeclean clean` / `python -m pipeline clean` calls the same)::

    from pipeline import CleanConfig, clean

    cfg = CleanConfig(input_uri="s3://lake/raw", output_uri="s3://lake/clean")
    cfg.normalize.max_side = 384
    result = clean(cfg)
    print(result.report["totals"], result.output_uri + "/report.html")

Settings can also come from a TOML file: `common.config.load_config(CleanConfig, path)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import CleanConfig
    from pipeline.job import CleanResult


def clean(config: CleanConfig) -> CleanResult:
    """Run the cleaning job on `config` and return its result: `output_uri`, the
    published `manifest`, the `report` (the summary: totals per class, split and
    rejection reason, as in report.json) and `seconds`.

    The settings are validated first: a bad one raises `common.config.ConfigError`
    (a ValueError naming the field) before anything is listed or Ray starts. Ray is
    joined as the CLI does (RAY_ADDRESS or `config.execution.ray_address`, else a local
    Ray); a Ray already initialised in this process is used as it is. Raises
    `pipeline.listing.LakeError`, `pipeline.output.OutputError`... when the job as a
    whole cannot run; a bad file never does (it is rejected with a reason)."""
    from common.config import validate
    from pipeline.job import run_clean

    return run_clean(validate(config))


def __getattr__(name: str) -> Any:
    """`pipeline.CleanConfig`, loaded on first use (the package is imported by every
    Ray task that runs a stage: keep its import cheap)."""
    if name == "CleanConfig":
        from pipeline.config import CleanConfig

        return CleanConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
