"""Property-based fuzzing of the Lambda handler (Hypothesis): whatever the event and the
body, the answer is a proxy response with a status below 500 that the runtime can
serialise, and the runtime process survives.

Breadth runs in-process (`serve_lambda.handler.handler` with the real model loaded);
a smaller sample goes through the Runtime Interface Emulator the image runs under.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.messy_lake import bomb_png, corrupt_png, encode, photo
from serve_lambda import handler as handler_module
from serve_lambda.config import ServeSettings
from serve_lambda.local import LocalError, LocalFunction, find_rie, max_body_env, threads_env
from serve_lambda.model import load_model

IN_PROCESS_EXAMPLES = 200
THROUGH_RIE_EXAMPLES = 15
MAX_BODY = 2**20  # small, so the too-large paths are reachable
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure is reproducible
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JPEG = encode(photo(96, 72, 3), "JPEG", quality=85)
PNG = encode(photo(40, 30, 4), "PNG")
IMAGES = [JPEG, PNG, corrupt_png(), bomb_png(), JPEG[: len(JPEG) // 2], b"", b"\0" * 64]

# Any character, lone surrogates included (what a JSON "\ud800" escape decodes to).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(IMAGES)))
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def nested(depth: int, opener: str) -> str:
    """`depth` levels of JSON arrays or objects around a 1."""
    if opener == "[":
        return "[" * depth + "1" + "]" * depth
    return '{"k": ' * depth + "1" + "}" * depth


def json_body(image: bytes, draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["image", "data-url", "value", "deep", "garbage"]))
    encoded = base64.b64encode(image).decode()
    if kind == "image":
        return json.dumps({"image": encoded})
    if kind == "data-url":
        return json.dumps({"image": f"data:image/jpeg;base64,{encoded}"})
    if kind == "value":
        return json.dumps({"image": draw(json_values)})
    if kind == "deep":
        depth = draw(st.sampled_from([10, 900, 5_000, 100_000]))
        return '{"image": ' + nested(depth, draw(st.sampled_from("[{"))) + "}"
    return draw(any_text)


def multipart_body(image: bytes, draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "xyz", "", '"q"', "\udcfe", "a" * 80]))
    name = draw(st.sampled_from(["image", "file", "other", '"', "\udcff"]))
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f.jpg"\r\n'
    body = head.encode("utf-8", "surrogateescape") + b"\r\n" + image
    body += f"\r\n--{boundary}--\r\n".encode("utf-8", "surrogateescape")
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body, f"multipart/form-data; boundary={boundary}"


CONTENT_TYPES = ["image/jpeg", "application/json", "multipart/form-data", "text/plain", ""]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[Any, Any, str]:
    """(body, isBase64Encoded, content type), mostly plausible, sometimes not."""
    image = draw(mutated_image())
    kind = draw(st.sampled_from(["binary", "json", "multipart", "text", "any"]))
    if kind == "binary":
        body, flag, ctype = base64.b64encode(image).decode(), True, "image/jpeg"
    elif kind == "json":
        body, flag, ctype = json_body(image, draw), False, "application/json"
    elif kind == "multipart":
        raw, ctype = multipart_body(image, draw)
        body, flag = base64.b64encode(raw).decode(), True
    elif kind == "text":
        body, flag, ctype = draw(any_text), False, draw(st.sampled_from(CONTENT_TYPES))
    else:
        body, flag, ctype = draw(json_values), draw(json_values), draw(any_text)
    if draw(st.integers(0, 9)) == 0:  # a wrong or odd flag
        flag = draw(st.sampled_from([True, False, None, "true", "false", "TRUE", 1, 0, "", []]))
    if draw(st.integers(0, 9)) == 0:
        ctype = draw(st.sampled_from(CONTENT_TYPES) | any_text)
    return body, flag, ctype


def maybe(draw: st.DrawFn, value: Any) -> Any:
    """`value` most of the time; else any JSON value, or the key left out (...)."""
    roll = draw(st.integers(0, 14))
    if roll == 0:
        return draw(json_values)
    if roll == 1:
        return ...
    return value


@st.composite
def events(draw: st.DrawFn) -> Any:
    """HTTP API / Function URL (2.0), REST (1.0) events with any field replaced, or any
    JSON value at all."""
    shape = draw(st.sampled_from(["v2", "v1", "any"]))
    if shape == "any":
        return draw(json_values)
    body, flag, ctype = draw(bodies())
    method = draw(st.sampled_from(["POST", "GET", "OPTIONS", "PUT", "post"]))
    path = draw(st.sampled_from(["/predict", "/info", "/", "/prod/predict", "predict", "/x"]))
    headers = {"content-type": ctype, "host": "abc.lambda-url.eu-west-1.on.aws"}
    if draw(st.integers(0, 9)) == 0:
        headers = draw(st.dictionaries(any_text, json_values, max_size=3))
    if shape == "v2":
        http = present({"method": maybe(draw, method), "path": maybe(draw, path)})
        context = {
            "http": maybe(draw, http),
            "domainName": maybe(draw, headers.get("host")),
            "stage": maybe(draw, draw(st.sampled_from(["$default", "prod"]))),
        }
        event = {"version": maybe(draw, "2.0"), "rawPath": maybe(draw, path)}
    else:
        context = {"stage": maybe(draw, "prod")}
        event = {"httpMethod": maybe(draw, method), "path": maybe(draw, path)}
    event.update(
        requestContext=maybe(draw, present(context)),
        headers=maybe(draw, headers),
        body=maybe(draw, body),
        isBase64Encoded=maybe(draw, flag),
    )
    return present(event)


def present(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that `maybe` did not leave out."""
    return {k: v for k, v in fields.items() if v is not ...}


class Context:
    aws_request_id = "fuzz"


def assert_answer_ok(answer: Any) -> None:
    """A proxy response under 500 that JSON-serialises as the runtime will send it."""
    assert isinstance(answer, dict) and isinstance(answer.get("statusCode"), int), answer
    assert answer["statusCode"] < 500, answer
    json.dumps(answer).encode()
    assert isinstance(answer["body"], str) and isinstance(answer["headers"], dict)


class Records(logging.Handler):
    """The handler's error log lines: an unexpected exception logs one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_handler(serve_model_dir) -> Iterator[Records]:
    """The module's handler with the real model and a small body limit."""
    served = load_model(ServeSettings(model_dir=str(serve_model_dir), torch_threads=1))
    state, saved = handler_module.STATE, handler_module.SETTINGS
    handler_module.STATE = served
    handler_module.SETTINGS = ServeSettings(
        model_dir=str(serve_model_dir), max_body_bytes=MAX_BODY, torch_threads=1
    )
    records = Records()
    handler_module.log.addHandler(records)
    yield records
    handler_module.log.removeHandler(records)
    handler_module.STATE, handler_module.SETTINGS = state, saved


@settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES)
@given(event=events())
def test_no_event_gets_a_5xx_in_process(fuzz_handler, event):
    fuzz_handler.records.clear()
    answer = handler_module.handler(event, Context())
    assert_answer_ok(answer)
    # Nothing reached the "unexpected error" path.
    assert not fuzz_handler.records, [r.getMessage() for r in fuzz_handler.records]


@settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES // 2)
@given(body=bodies())
def test_no_body_gets_a_5xx_in_process(fuzz_handler, body):
    """Well-formed v2 events to POST /predict: only the body, its flag and type vary."""
    data, flag, ctype = body
    event = {
        "version": "2.0",
        "rawPath": "/predict",
        "headers": {"content-type": ctype},
        "requestContext": {"http": {"method": "POST", "path": "/predict"}},
        "body": data,
        "isBase64Encoded": flag,
    }
    assert_answer_ok(handler_module.handler(event, Context()))


def rie_installed() -> bool:
    try:
        find_rie()
    except LocalError:
        return False
    return True


@pytest.fixture(scope="module")
def function(serve_model_dir, tmp_path_factory) -> Iterator[LocalFunction]:
    log = tmp_path_factory.mktemp("rie-fuzz") / "rie.log"
    env = {**threads_env(1), **max_body_env(MAX_BODY)}
    with LocalFunction(serve_model_dir, env=env, log_path=log) as running:
        yield running


@pytest.mark.skipif(not rie_installed(), reason="aws-lambda-rie not installed (scripts/setup.sh)")
@settings(FUZZ, max_examples=THROUGH_RIE_EXAMPLES)
@given(event=events())
def test_no_event_gets_a_5xx_through_the_emulator(function, event):
    assert_answer_ok(function.invoke(event))
    assert function.process.poll() is None  # the runtime is still the first one


@pytest.mark.skipif(not rie_installed(), reason="aws-lambda-rie not installed (scripts/setup.sh)")
def test_the_emulated_runtime_still_answers_after_the_fuzzing(function):
    event = {
        "version": "2.0",
        "rawPath": "/predict",
        "headers": {"content-type": "image/jpeg"},
        "requestContext": {"http": {"method": "POST", "path": "/predict"}},
        "body": base64.b64encode(JPEG).decode(),
        "isBase64Encoded": True,
    }
    answer = function.invoke(event)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["class"], answer
