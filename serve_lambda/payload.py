"""Where the image is in a request body: the raw bytes, a JSON `{"image": "<base64>"}`
(a `data:` URL is accepted too), or the first file of a multipart form (`curl -F`)."""

from __future__ import annotations

import base64
import binascii
import email.message
import email.parser
import email.policy
import json
from http import HTTPStatus

from serve_lambda.errors import HttpError
from serve_lambda.events import HttpRequest

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
IMAGE_FIELD = "image"
FORM_FIELDS = (IMAGE_FIELD, "file")
DATA_URL_MARK = ";base64,"


def _bad(code: str, message: str) -> HttpError:
    return HttpError(HTTPStatus.BAD_REQUEST, code, message)


def from_json(body: bytes) -> bytes:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("malformed_json", f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # `[[[[...` thousands deep: the parser recurses per level
        raise _bad("malformed_json", "the body's JSON is nested too deeply") from exc
    if not isinstance(document, dict) or IMAGE_FIELD not in document:
        raise _bad("missing_image", 'JSON bodies must be {"image": "<base64 of the image>"}')
    value = document[IMAGE_FIELD]
    if not isinstance(value, str):
        raise _bad("malformed_base64", '"image" must be a base64 string')
    if value.startswith("data:") and DATA_URL_MARK in value:
        value = value.split(DATA_URL_MARK, 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("malformed_base64", f'"image" is not valid base64: {exc}') from exc


def from_multipart(content_type: str, body: bytes) -> bytes:
    """The part named image/file, else the first part that carries a file name."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    try:
        chosen = _form_file(
            email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        )
        data = chosen.get_payload(decode=True) if chosen is not None else None
    except HttpError:
        raise
    except (ValueError, TypeError, LookupError, AttributeError, RecursionError) as exc:
        # The stdlib's MIME parser raises these on hostile headers and parameters.
        raise _bad("malformed_multipart", f"the multipart body cannot be parsed: {exc}") from exc
    if chosen is None:
        raise _bad("missing_image", f"the form has no file field (name it {IMAGE_FIELD!r})")
    return data if isinstance(data, bytes) else b""


def _form_file(message: email.message.Message) -> email.message.Message | None:
    if not message.is_multipart():
        raise _bad("malformed_multipart", "the multipart body has no parts (boundary?)")
    parts = [p for p in message.iter_parts() if p.get_content_disposition() == "form-data"]
    chosen = next(
        (p for p in parts if p.get_param("name", header="content-disposition") in FORM_FIELDS), None
    )
    return chosen or next((p for p in parts if p.get_filename()), None)


def image_bytes(request: HttpRequest, max_bytes: int) -> bytes:
    """The image the caller sent; `HttpError` when the body cannot carry one."""
    if request.content_type == JSON_TYPE:
        data = from_json(request.body)
    elif request.content_type == MULTIPART_TYPE:
        data = from_multipart(request.headers.get("content-type", ""), request.body)
    else:
        data = request.body
    if len(data) > max_bytes:
        raise HttpError.too_large(len(data), max_bytes)
    return data
