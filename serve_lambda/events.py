"""API Gateway REST (v1), HTTP API (v2) and Function URL events -> one `HttpRequest`.

The three shapes differ only in where method, path, headers and body sit; everything
after this module sees one request type. A binary body arrives base64-encoded
(`isBase64Encoded`), as API Gateway sends any media type listed as binary.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from serve_lambda.errors import HttpError

REST_V1, HTTP_V2, FUNCTION_URL = "rest-v1", "http-v2", "function-url"
PAYLOAD_V2 = "2.0"
FUNCTION_URL_DOMAIN = ".lambda-url."
DEFAULT_STAGE = "$default"
BASE64_RATIO = 3 / 4  # decoded bytes per base64 character


@dataclass(frozen=True)
class HttpRequest:
    method: str  # upper case
    path: str  # without an API Gateway stage prefix
    headers: dict[str, str]  # names lower-cased
    body: bytes
    shape: str  # REST_V1, HTTP_V2 or FUNCTION_URL

    @property
    def content_type(self) -> str:
        """The media type alone, lower-cased (no parameters)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def _headers(event: dict[str, Any]) -> dict[str, str]:
    raw = event.get("headers") or {}
    if not isinstance(raw, dict):
        raise HttpError.bad_event("headers is not an object")
    return {str(k).lower(): str(v) for k, v in raw.items()}


def _body(event: dict[str, Any], max_bytes: int) -> bytes:
    """The body as bytes, refused before decoding when it is over `max_bytes`."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise HttpError.bad_event("body is not a string")
    encoded = bool(event.get("isBase64Encoded"))
    size = int(len(body) * BASE64_RATIO) if encoded else len(body.encode())
    if size > max_bytes:
        raise HttpError.too_large(size, max_bytes)
    if not encoded:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HttpError(400, "malformed_base64", f"body is not valid base64: {exc}") from exc


def _strip_stage(path: str, stage: str | None) -> str:
    """HTTP API puts a named stage in rawPath (`/prod/predict`); routes do not have it."""
    if stage and stage != DEFAULT_STAGE and path.startswith(f"/{stage}/"):
        return path[len(stage) + 1 :]
    return path


def parse_event(event: Any, max_body_bytes: int) -> HttpRequest:
    """Any of the three HTTP event shapes -> HttpRequest; anything else is a 400."""
    if not isinstance(event, dict):
        raise HttpError.bad_event(f"the event is a {type(event).__name__}, not an object")
    context = event.get("requestContext") or {}
    if not isinstance(context, dict):
        raise HttpError.bad_event("requestContext is not an object")
    if event.get("version") == PAYLOAD_V2:
        http = context.get("http") or {}
        method, path = http.get("method"), event.get("rawPath") or http.get("path")
        domain = str(context.get("domainName", ""))
        shape = FUNCTION_URL if FUNCTION_URL_DOMAIN in domain else HTTP_V2
        path = _strip_stage(str(path or ""), context.get("stage"))
    else:
        method, path, shape = event.get("httpMethod"), event.get("path"), REST_V1
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        raise HttpError.bad_event("no HTTP method and path: not an API Gateway or URL event")
    return HttpRequest(method.upper(), path, _headers(event), _body(event, max_body_bytes), shape)
