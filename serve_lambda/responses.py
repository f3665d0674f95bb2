"""Lambda proxy responses (the same shape for REST v1, HTTP API v2 and Function URLs),
each with the CORS headers a page on another origin needs to call the API."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from serve_lambda.errors import HttpError

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
CORS_MAX_AGE_S = 600
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
}


def response(
    status: int, body: str, content_type: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": int(status),
        "headers": {"Content-Type": content_type, **CORS_HEADERS, **(headers or {})},
        "body": body,
        "isBase64Encoded": False,
    }


def json_response(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    return response(status, json.dumps(payload), JSON_TYPE)


def html_response(html: str) -> dict[str, Any]:
    return response(HTTPStatus.OK, html, HTML_TYPE)


def preflight() -> dict[str, Any]:
    """Answer to a CORS preflight (OPTIONS) that reached the function."""
    return response(HTTPStatus.NO_CONTENT, "", JSON_TYPE)


def error_response(error: HttpError, request_id: str) -> dict[str, Any]:
    payload = {"error": error.code, "message": error.message, "request_id": request_id}
    return response(error.status, json.dumps(payload), JSON_TYPE, error.headers)


def internal_error(request_id: str) -> dict[str, Any]:
    """A bug: no detail leaks out, the request id finds the logged traceback."""
    payload = {
        "error": "internal_error",
        "message": "unexpected error; it is logged under this request id",
        "request_id": request_id,
    }
    return json_response(HTTPStatus.INTERNAL_SERVER_ERROR, payload)
