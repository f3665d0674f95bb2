"""Test rigs shared by every test: a real S3 endpoint on loopback and one local Ray.

Both are session-scoped: moto's server and Ray each take seconds to start.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from devkit.local_s3 import LocalS3

# Ray is sized for the 2-core CI machine; Train workers in later tests take fractions.
RAY_CPUS = 2
RAY_OBJECT_STORE_BYTES = 512 * 2**20


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    """A moto S3 server process; its endpoint and dummy credentials are put in the
    environment before Ray starts, so Ray workers inherit them like on a real node."""
    with LocalS3() as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        yield server
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ray_session(s3: LocalS3) -> Iterator[None]:
    import ray

    # Ray Data logs per-operator metrics at DEBUG; a failing test's report drowns in them.
    logging.getLogger("ray.data").setLevel(logging.INFO)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=RAY_CPUS,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


# The serving tests' model: small so it builds in seconds, exported for real.
SERVE_INPUT_SIZE = 64


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """An int8 TorchScript model.pt + model.json written by train/export.py's own
    functions, from a seeded random-init MobileNetV2 (no training run needed)."""
    from devkit.serve_model import build_model

    out = tmp_path_factory.mktemp("serve-model")
    build_model(out, SERVE_INPUT_SIZE)
    return out
