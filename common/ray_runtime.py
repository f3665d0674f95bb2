"""Joining Ray the same way from every job, quietly unless asked (common/logs.py).

Ray is imported inside the function: the rest of `common/` ships in the Lambda image,
which has no Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from common import logs

# Set by Ray in the driver of a job submitted with `ray job submit`: its runtime
# environment is the submitter's to choose.
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
NO_BARS_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
# OpenBLAS's idle threads spin for 2**28 cycles (its default) before they sleep; on
# cores shared with other work that spinning was most of a BLAS call's CPU (the
# off-class probe's solves: 0.25 against 0.10 CPU-s each at 4, the same result to the
# bit: the timeout changes when a thread sleeps, not how the work is split).
BLAS_SPIN_ENV = "OPENBLAS_THREAD_TIMEOUT"
BLAS_SPIN = "4"
# A local Ray starts no workers before a task needs them: it would start num_cpus when
# it starts and num_cpus again for the first driver, and the first ones never ran a task
# (each start costs ~0.4 CPU-s, more once it imports). And an idle worker beyond num_cpus
# is stopped after 10 minutes, not 1 s: the later stages' tasks then run in the workers
# that planned and listed the run, idle while the normalise stage ran (stopped after it,
# the decisions started new ones, four at 20,000 crops: ~1.5-2.5 CPU-s each with their
# imports); the worker that built the embedding network is the first normalise worker.
# The normalise workers (~0.9 GiB each) stay until the job ends, unless it runs 10
# minutes past their stage.
LOCAL_SYSTEM_CONFIG = {
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "idle_worker_killing_time_threshold_ms": 600_000,
}


def init_options(log_to_driver: bool) -> dict[str, Any]:
    """ray.init's logging options: Ray's own logs at WARNING unless verbose, and every
    worker process set up like the driver (its library loggers quiet too)."""
    options: dict[str, Any] = {
        "log_to_driver": log_to_driver,
        "logging_level": logging.INFO if logs.verbose() else logging.WARNING,
    }
    if not os.environ.get(SUBMITTED_JOB_ENV):
        # Ray Train also logs what a worker prints (its print patch): with the printed
        # line forwarded too, every epoch line would show twice.
        env = {logs.VERBOSE_ENV: "1" if logs.verbose() else "0", PRINT_PATCH_ENV: "0"}
        # Bars drawn inside a worker reach the driver as forwarded lines, not as bars.
        env[NO_BARS_ENV] = "1"
        env[BLAS_SPIN_ENV] = os.environ.get(BLAS_SPIN_ENV, BLAS_SPIN)
        options["runtime_env"] = {
            "worker_process_setup_hook": "common.logs.quiet_worker",
            "env_vars": env,
        }
    return options


def ensure_ray(address: str | None, num_cpus: int | None, log_to_driver: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS: a cluster, `ray job submit`), else start a local
    Ray with `num_cpus`; a Ray already running in this process (tests) is reused."""
    import ray
    import ray.data  # noqa: F401 - its loggers exist from here on, and get quieted

    logs.quiet_libraries()
    # Progress bars on a terminal only, and only for data the driver runs: with the
    # workers' output forwarded (Ray Train's data runs in workers), their bars arrive as
    # hundreds of lines. A job may turn them off further (--no-progress).
    bars = logs.show_bars() and not log_to_driver
    ray.data.DataContext.get_current().enable_progress_bars = bars
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **init_options(log_to_driver))
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _system_config=dict(LOCAL_SYSTEM_CONFIG),  # ray.init adds to the dict
            **init_options(log_to_driver),
        )
    logs.quiet_libraries()  # ray.init configures Ray's loggers again
