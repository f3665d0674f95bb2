"""What a job prints: its own lines, and Ray's and the libraries' only when they matter.

By default the job's own INFO lines are shown as plain messages and every library logs
at WARNING (Ray, Ray Data, Ray Train, fsspec...); `--verbose` shows their INFO lines
too. Ray Data's full logs still go to the Ray session's log folder either way. Progress:
Ray Data's bars on a terminal; when the output is not a terminal (a log file, CI), one
line per stage with its counts and rate (`stage_line`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Loggers of the libraries the jobs use; set to WARNING unless verbose.
LIBRARY_LOGGERS = (
    "ray",
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.air",
    "fsspec",
    "s3fs",
    "botocore",
    "urllib3",
    "numba",
    "matplotlib",
    "PIL",
    "filelock",
)
# Ray's notices that are wrong or not actionable for these jobs, hidden unless verbose,
# by the logger that emits them: the token-auth notice of the local Ray a job starts;
# Ray Data's "no available CPUs ... will hang" when Ray Train workers hold the CPUs they
# reserved (the data tasks run on the CPUs the workers leave free: train/job.py sizes
# them); Ray Data's "progress bars disabled" when the job turned them off on purpose.
FALSE_ALARMS = {
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
    "ray.data.dataset": "does not have any available CPUs",
    "ray.data._internal.progress": "Progress bars disabled",
}
VERBOSE_ENV = "LAKECLEAN_VERBOSE"
RAY_TRAIN_REPORTER = "train/v2/_internal/execution/context.py"
log = logging.getLogger("lakeclean")


class _DropFalseAlarm(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or self.text not in record.getMessage()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_logs: bool = False) -> None:
    """The CLI's logging: the job's own lines as plain messages on stderr, libraries at
    WARNING unless `verbose_logs`. Also recorded in the environment, so the worker
    processes of a local Ray (which inherit it) and `quiet_worker` follow it."""
    os.environ[VERBOSE_ENV] = "1" if verbose_logs else "0"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()


def quiet_libraries() -> None:
    """Libraries at WARNING (INFO when verbose), and Ray's false alarms hidden. Ray and
    Ray Data install their own handlers when imported: call this after importing them
    (ensure_ray does)."""
    level = logging.INFO if verbose() else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if name == "ray.data":
            # Ray Data's logger feeds its log file at DEBUG: keep that, quiet the console.
            for handler in logger.handlers:
                if type(handler).__name__ != "SessionFileHandler":
                    handler.setLevel(level)
        else:
            logger.setLevel(level)
    for name, text in FALSE_ALARMS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFalseAlarm) for f in logger.filters):
            logger.addFilter(_DropFalseAlarm(text))


def quiet_worker() -> None:
    """Ray's worker_process_setup_hook: a worker logs like the driver that started it."""
    import ray
    import ray.data  # noqa: F401 - installs Ray Data's handlers first, so they get quieted

    quiet_libraries()
    if not verbose():
        # Ray Data's own code setting its own deprecated field (not ours to fix).
        warnings.filterwarnings(
            "ignore", message="`ExecutionOptions.exclude_resources` is deprecated"
        )
        # Ray Train's "Reporting training result N" goes to a logger named after its
        # file's path, outside `ray.train`'s: quiet that one by its name (not imported:
        # most workers never load Ray Train).
        path = os.path.join(os.path.dirname(ray.__file__), RAY_TRAIN_REPORTER)
        logging.getLogger(path).setLevel(logging.WARNING)


def show_bars() -> bool:
    """Progress bars only on a terminal; elsewhere they become hundreds of lines."""
    return sys.stderr.isatty()


@dataclass
class Stage:
    """A running stage; set `count` (and `detail`) before it ends."""

    name: str
    unit: str
    count: int | None = None
    detail: str = ""


@contextmanager
def stage_line(name: str, unit: str = "files", logger: logging.Logger = log) -> Iterator[Stage]:
    """Log one line when the stage ends: `normalise  48 files  7.7 s  6.2 files/s`."""
    stage = Stage(name, unit)
    started = time.perf_counter()
    yield stage
    seconds = time.perf_counter() - started
    parts = [f"{stage.name:<10}"]
    if stage.count is not None:
        rate = stage.count / seconds if seconds > 0 else 0.0
        parts += [f"{stage.count} {stage.unit}", f"{seconds:.1f} s", f"{rate:.1f} {stage.unit}/s"]
    else:
        parts.append(f"{seconds:.1f} s")
    if stage.detail:
        parts.append(stage.detail)
    logger.info("  ".join(parts))
