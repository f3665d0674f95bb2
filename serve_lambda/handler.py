"""The Lambda entry point: `serve_lambda.handler.handler` (the image's CMD).

The model is loaded when the container starts (Lambda's init phase), once. A model
that cannot be loaded does not crash the runtime: every request then answers 503 with
the reason, and GET /info says so. An unexpected exception answers 500 with the
request id and is logged with its traceback.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()
_CPU_BEFORE_IMPORTS = time.process_time()  # interpreter + awslambdaric start-up

import logging  # noqa: E402 - after the clock that times the imports
from typing import Any  # noqa: E402

from serve_lambda import responses  # noqa: E402
from serve_lambda.config import ServeSettings  # noqa: E402
from serve_lambda.model import MS, ModelError, ServedModel, load_model  # noqa: E402
from serve_lambda.routes import route  # noqa: E402

log = logging.getLogger(__name__)
# awslambdaric leaves the root logger at WARNING: the start-up record is INFO.
logging.getLogger("serve_lambda").setLevel(logging.INFO)
IMPORT_MS = (time.perf_counter() - _IMPORT_STARTED) * MS
_CPU_AFTER_IMPORTS = time.process_time()


def startup(settings: ServeSettings) -> ServedModel | Exception:
    """The served model, or the reason there is none."""
    try:
        served = load_model(settings)
    except ModelError as exc:
        log.error("model not loaded, answering 503: %s", exc)
        return exc
    # CPU seconds of each part of the process's life so far: what the cold start costs
    # a core, whatever else shares the machine (wall times above include waiting).
    cpu_now = time.process_time()
    served.startup_ms = {
        "imports": IMPORT_MS,
        **served.startup_ms,
        "cpu_runtime_start": _CPU_BEFORE_IMPORTS * MS,
        "cpu_imports": (_CPU_AFTER_IMPORTS - _CPU_BEFORE_IMPORTS) * MS,
        "cpu_model": (cpu_now - _CPU_AFTER_IMPORTS) * MS,
        "cpu_total": cpu_now * MS,
    }
    return served


SETTINGS = ServeSettings.from_env()
STATE = startup(SETTINGS)


def handler(event: Any, context: Any) -> dict[str, Any]:
    request_id = str(getattr(context, "aws_request_id", "") or "")
    try:
        return route(event, STATE, SETTINGS, request_id)
    except Exception:  # noqa: BLE001 - the function answers, whatever happened
        log.exception("unexpected error in request %s", request_id)
        return responses.internal_error(request_id)
