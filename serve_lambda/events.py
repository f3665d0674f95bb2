"""API Gateway REST (v1), HTTP API (v2) and Function URL events -> one `HttpRequest`.

The three shapes differ only in where method, path, headers and body sit; everything
after this module sees one request type. A binary body arrives base64-encoded
(`isBase64Encoded`), as API Gateway sends any media type listed as binary.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from serve_lambda.errors import HttpError

REST_V1, HTTP_V2, FUNCTION_URL = "rest-v1", "http-v2", "function-url"
PAYLOAD_V2 = "2.0"
FUNCTION_URL_DOMAIN = ".lambda-url."
DEFAULT_STAGE = "$default"
BASE64_RATIO = 3 / 4  # decoded bytes per base64 character
BOOLEAN_STRINGS = {"true": True, "false": False}


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


def _utf8(text: str, what: str) -> bytes:
    """`text` as UTF-8; a lone surrogate (JSON's "\\ud800") has no UTF-8 form: a 400."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            "malformed_text",
            f"{what} is not valid Unicode text (a lone surrogate at character {exc.start})",
        ) from exc


def _text(value: Any, what: str) -> str | None:
    """A string field of the event that must also be valid text, None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise HttpError.bad_event(f"{what} is a {type(value).__name__}, not a string")
    _utf8(value, what)
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    """An object field of the event; absent or null reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError.bad_event(f"{what} is a {type(value).__name__}, not an object")
    return value


def _headers(event: dict[str, Any]) -> dict[str, str]:
    raw = _object(event.get("headers"), "headers")
    return {
        str(_text(name, "a header name")).lower(): _text(value, f"header {name!r}") or ""
        for name, value in raw.items()
    }


def _is_base64(flag: Any) -> bool:
    """`isBase64Encoded`: a JSON boolean (API Gateway's); the strings "true"/"false" of a
    hand-written event read as meant, never as Python's truthiness of a string."""
    if flag is None or isinstance(flag, bool):
        return bool(flag)
    if isinstance(flag, str) and flag.strip().lower() in BOOLEAN_STRINGS:
        return BOOLEAN_STRINGS[flag.strip().lower()]
    raise HttpError.bad_event(f"isBase64Encoded is {flag!r}, not true or false")


def _body(event: dict[str, Any], max_bytes: int) -> bytes:
    """The body as bytes, refused before decoding when it is over `max_bytes`."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise HttpError.bad_event("body is not a string")
    encoded = _is_base64(event.get("isBase64Encoded"))
    if not encoded:
        data = _utf8(body, "the body")
        if len(data) > max_bytes:
            raise HttpError.too_large(len(data), max_bytes)
        return data
    size = int(len(body) * BASE64_RATIO)
    if size > max_bytes:
        raise HttpError.too_large(size, max_bytes)
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
    context = _object(event.get("requestContext"), "requestContext")
    if event.get("version") == PAYLOAD_V2:
        http = _object(context.get("http"), "requestContext.http")
        method = _text(http.get("method"), "requestContext.http.method")
        path = _text(event.get("rawPath"), "rawPath") or _text(http.get("path"), "http.path")
        domain = _text(context.get("domainName"), "requestContext.domainName") or ""
        shape = FUNCTION_URL if FUNCTION_URL_DOMAIN in domain else HTTP_V2
        path = _strip_stage(path or "", _text(context.get("stage"), "requestContext.stage"))
    else:
        method = _text(event.get("httpMethod"), "httpMethod")
        path, shape = _text(event.get("path"), "path"), REST_V1
    if not method or not path or not path.startswith("/"):
        raise HttpError.bad_event("no HTTP method and path: not an API Gateway or URL event")
    return HttpRequest(method.upper(), path, _headers(event), _body(event, max_body_bytes), shape)
