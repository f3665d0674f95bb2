"""The one exception a request can end in short of a bug: an HTTP status, a stable
machine-readable `error` code and a message a person can act on."""

from __future__ import annotations

from http import HTTPStatus

from common.reasons import Reason, Rejected

# Decoding rejections (common.reasons) -> status: what the caller should fix.
REASON_STATUS = {
    Reason.EMPTY: HTTPStatus.BAD_REQUEST,
    Reason.FILE_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Reason.DECOMPRESSION_BOMB: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Reason.NOT_AN_IMAGE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    Reason.UNSUPPORTED_FORMAT: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    Reason.TRUNCATED: HTTPStatus.UNPROCESSABLE_ENTITY,
    Reason.UNDECODABLE: HTTPStatus.UNPROCESSABLE_ENTITY,
    Reason.TOO_SMALL: HTTPStatus.UNPROCESSABLE_ENTITY,
}
REASON_MESSAGE = {
    Reason.EMPTY: "the request has no image: send the image bytes as the body",
    Reason.DECOMPRESSION_BOMB: "the image has too many pixels",
    Reason.NOT_AN_IMAGE: "the body is not an image",
    Reason.UNSUPPORTED_FORMAT: "this image format is not accepted (send JPEG, PNG, WebP...)",
    Reason.TRUNCATED: "the image is truncated",
    Reason.UNDECODABLE: "the image is corrupt",
    Reason.TOO_SMALL: "the image is too small",
}


class HttpError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = int(status)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @classmethod
    def bad_event(cls, detail: str) -> HttpError:
        return cls(HTTPStatus.BAD_REQUEST, "unsupported_event", detail)

    @classmethod
    def too_large(cls, size: int, limit: int) -> HttpError:
        return cls(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "body_too_large",
            f"the body is {size} bytes; the limit is {limit} bytes",
        )

    @classmethod
    def from_rejected(cls, rejected: Rejected) -> HttpError:
        status = REASON_STATUS.get(rejected.reason, HTTPStatus.UNPROCESSABLE_ENTITY)
        message = REASON_MESSAGE.get(rejected.reason, "the image cannot be used")
        detail = f" ({rejected.detail})" if rejected.detail else ""
        return cls(status, str(rejected.reason), message + detail)
