"""Serving settings and limits, in one place.

On Lambda every setting comes from an environment variable (that is how a function is
configured); `LocalConfig` holds the flags of `python -m serve_lambda local`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import option
from common.decode import DecodeLimits

MIB = 2**20
# API Gateway refuses larger request payloads (REST and HTTP APIs alike).
API_GATEWAY_PAYLOAD_LIMIT = 10 * MIB
# A synchronous Lambda invoke's request and its response are each capped at 6 MB; a
# binary body travels base64-encoded inside the request event, so the largest image
# that reaches the function is about 4.5 MB.
LAMBDA_SYNC_PAYLOAD_LIMIT = 6 * MIB
# The cleaning job's default `--max-side`: training images were decoded (JPEG draft
# mode) and shrunk to this longest side before the evaluation transform saw them.
SOURCE_SIDE = 512
# Where serve_lambda/Dockerfile bakes the model.
DEFAULT_MODEL_DIR = "/var/task/model"
HANDLER = "serve_lambda.handler.handler"

MODEL_DIR_ENV = "LAKECLEAN_MODEL_DIR"
MAX_BODY_ENV = "LAKECLEAN_MAX_BODY_BYTES"
MAX_PIXELS_ENV = "LAKECLEAN_MAX_PIXELS"
THREADS_ENV = "LAKECLEAN_TORCH_THREADS"


def visible_cpus() -> int:
    """The vCPUs this process may run on (Lambda gives more with more memory)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeSettings:
    """What the function reads from its environment once per container."""

    model_dir: str = DEFAULT_MODEL_DIR
    max_body_bytes: int = API_GATEWAY_PAYLOAD_LIMIT
    max_pixels: int = DecodeLimits().max_pixels
    torch_threads: int = 0  # 0: one per visible vCPU

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServeSettings:
        default = cls()
        return cls(
            model_dir=env.get(MODEL_DIR_ENV, default.model_dir),
            max_body_bytes=int(env.get(MAX_BODY_ENV, default.max_body_bytes)),
            max_pixels=int(env.get(MAX_PIXELS_ENV, default.max_pixels)),
            torch_threads=int(env.get(THREADS_ENV, default.torch_threads)),
        )

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads > 0 else visible_cpus()

    def decode_limits(self) -> DecodeLimits:
        """The cleaning job's decoding rules; SVG is refused (the image ships no resvg)."""
        return DecodeLimits(max_pixels=self.max_pixels, allow_svg=False)


@dataclass
class LocalConfig:
    """`python -m serve_lambda local`: the function under the Runtime Interface Emulator."""

    model_dir: str = option("", "Folder with model.pt and model.json (`python -m train export`)")
    host: str = option("127.0.0.1", "Address of the HTTP front (the web page and the API)")
    port: int = option(3000, "Port of the HTTP front")
    rie_port: int = option(0, "Port of the emulator's invoke endpoint (0: a free one)")
    rie: str = option("", "aws-lambda-rie binary (default: next to python, then on PATH)")
    torch_threads: int = option(1, "torch threads in the function (Lambda: one per vCPU)")
    max_body_bytes: int = option(API_GATEWAY_PAYLOAD_LIMIT, "Largest image the function takes")
