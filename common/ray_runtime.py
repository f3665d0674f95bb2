"""Joining Ray the same way from every job.

Ray is imported inside the function: the rest of `common/` ships in the Lambda image,
which has no Ray.
"""

from __future__ import annotations

import os


def ensure_ray(address: str | None, num_cpus: int | None, log_to_driver: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS: a cluster, `ray job submit`), else start a local
    Ray with `num_cpus`; a Ray already running in this process (tests) is reused."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
