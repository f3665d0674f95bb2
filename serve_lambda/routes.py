"""The API: which method and path does what.

GET  /         the web page (serve_lambda/web/index.html)
GET  /info     model info and health
POST /predict  an image in, the top class and every class probability out
OPTIONS *      CORS preflight
"""

from __future__ import annotations

import time
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any

from common.reasons import Rejected
from serve_lambda import responses
from serve_lambda.config import ServeSettings
from serve_lambda.errors import HttpError
from serve_lambda.events import HttpRequest, parse_event
from serve_lambda.model import MS, ServedModel
from serve_lambda.payload import image_bytes

PAGE = Path(__file__).parent / "web" / "index.html"
PAGE_PATH, INFO_PATH, PREDICT_PATH = "/", "/info", "/predict"
ALLOWED = {PAGE_PATH: "GET", INFO_PATH: "GET", PREDICT_PATH: "POST"}
PROBABILITY_DIGITS = 6
MS_DIGITS = 2


@cache
def page() -> str:
    return PAGE.read_text()


def model_or_503(state: ServedModel | Exception) -> ServedModel:
    if isinstance(state, Exception):
        raise HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE, "model_unavailable", f"the model is not loaded: {state}"
        )
    return state


def info(state: ServedModel | Exception) -> dict[str, Any]:
    if isinstance(state, Exception):
        return responses.json_response(
            HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "error": str(state)}
        )
    return responses.json_response(
        HTTPStatus.OK,
        {"status": "ok", "model": state.public_info(), "startup_ms": state.startup_ms},
    )


def predict(request: HttpRequest, state: ServedModel | Exception, max_bytes: int) -> dict:
    started = time.perf_counter()
    model = model_or_503(state)
    data = image_bytes(request, max_bytes)
    try:
        result = model.predict(data)
    except Rejected as rejected:
        raise HttpError.from_rejected(rejected) from rejected
    probabilities = {
        name: round(p, PROBABILITY_DIGITS)
        for name, p in zip(model.classes, result.probabilities, strict=True)
    }
    return responses.json_response(
        HTTPStatus.OK,
        {
            "class": result.class_name,
            "label": result.label,
            "probability": probabilities[result.class_name],
            "probabilities": probabilities,
            "model": {"version": model.public_info()["version"], "sha256": model.info["sha256"]},
            "image": {
                "format": result.decoded.source_format,
                "width": result.decoded.width,
                "height": result.decoded.height,
                "bytes": len(data),
            },
            "decode_ms": round(result.decode_ms, MS_DIGITS),
            "inference_ms": round(result.inference_ms, MS_DIGITS),
            "total_ms": round((time.perf_counter() - started) * MS, MS_DIGITS),
        },
    )


def route(
    event: Any, state: ServedModel | Exception, settings: ServeSettings, request_id: str
) -> dict[str, Any]:
    """The response to one event; every foreseeable failure is a 4xx (or 503)."""
    try:
        request = parse_event(event, settings.max_body_bytes)
        if request.method == "OPTIONS":
            return responses.preflight()
        allowed = ALLOWED.get(request.path)
        if allowed is None:
            raise HttpError(
                HTTPStatus.NOT_FOUND,
                "not_found",
                f"no route {request.path}: use GET /, GET /info or POST /predict",
            )
        if request.method != allowed:
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "method_not_allowed",
                f"{request.method} {request.path}: only {allowed} is allowed here",
                {"Allow": f"{allowed}, OPTIONS"},
            )
        if request.path == PAGE_PATH:
            return responses.html_response(page())
        if request.path == INFO_PATH:
            return info(state)
        return predict(request, state, settings.max_body_bytes)
    except HttpError as error:
        return responses.error_response(error, request_id)
