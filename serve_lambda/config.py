"""Serving settings and limits, in one place.

On Lambda every setting comes from an environment variable (that is how a function is
configured); `LocalConfig` holds the flags of `python -m serve_lambda local`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import option
from common.decode import DecodeLimits, budget_for_memory

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
# Lambda sets this from the function's MemorySize (template.yaml: 2048 by default).
MEMORY_ENV = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"

# The decode memory budget follows from the memory the function is deployed with:
#   RUNTIME_MB + pixels x bytes per pixel (of the image's mode) <= PEAK_SHARE x memory
# common.decode refuses, from the header, any image over it (`decode_bytes_per_pixel`
# gives each mode's cost: 5 for 16-bit grey, 6 for float, 14 at most), so the worst
# image the function accepts still fits, with a margin for the allocator.
DEFAULT_MEMORY_MB = 2048
PEAK_SHARE = 0.7  # 2048 MB -> a peak of at most 1434 MiB (under 1.5 GiB)
# Peak RSS after Lambda's init phase (interpreter, torch, the int8 model): 550 MiB
# measured with devkit.serve_model.handler_peak_rss; the rest is margin (larger models,
# the request's own buffers).
RUNTIME_MB = 700


def decode_budget(memory_mb: int) -> int:
    """Bytes a decode may use in a function deployed with `memory_mb` (the rule above)."""
    budget = budget_for_memory(int(PEAK_SHARE * memory_mb * MIB), RUNTIME_MB * MIB)
    if budget <= 0:
        raise ValueError(
            f"{memory_mb} MB leaves no memory to decode images in: {PEAK_SHARE:.0%} of it "
            f"must hold the runtime ({RUNTIME_MB} MB) and a decode; deploy with more "
            f"(the template's default is {DEFAULT_MEMORY_MB} MB)"
        )
    return budget


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
    max_decode_bytes: int = decode_budget(DEFAULT_MEMORY_MB)
    torch_threads: int = 0  # 0: one per visible vCPU

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServeSettings:
        """The decode budget comes from the function's memory (Lambda's variable)."""
        default = cls()
        return cls(
            model_dir=env.get(MODEL_DIR_ENV, default.model_dir),
            max_body_bytes=int(env.get(MAX_BODY_ENV, default.max_body_bytes)),
            max_pixels=int(env.get(MAX_PIXELS_ENV, default.max_pixels)),
            max_decode_bytes=decode_budget(int(env.get(MEMORY_ENV, DEFAULT_MEMORY_MB))),
            torch_threads=int(env.get(THREADS_ENV, default.torch_threads)),
        )

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads > 0 else visible_cpus()

    def decode_limits(self) -> DecodeLimits:
        """The cleaning job's decoding rules; SVG is refused (the image ships no resvg)."""
        return DecodeLimits(
            max_pixels=self.max_pixels, max_decode_bytes=self.max_decode_bytes, allow_svg=False
        )


@dataclass
class LocalConfig:
    """`python -m serve_lambda local`: the function under the Runtime Interface Emulator."""

    model_dir: str = option("", "Folder with model.pt and model.json (`python -m train export`)")
    host: str = option("127.0.0.1", "Address of the HTTP front (the web page and the API)")
    port: int = option(3000, "Port of the HTTP front", min=1, max=65535)
    rie_port: int = option(
        0, "Port of the emulator's invoke endpoint (0: a free one)", min=0, max=65535
    )
    rie: str = option("", "aws-lambda-rie binary (default: next to python, then on PATH)")
    torch_threads: int = option(1, "torch threads in the function (Lambda: one per vCPU)", min=1)
    max_body_bytes: int = option(
        API_GATEWAY_PAYLOAD_LIMIT, "Largest image the function takes", min=1, unit="bytes"
    )
