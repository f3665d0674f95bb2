"""The Lambda function for real: `python -m awslambdaric serve_lambda.handler.handler`
(the image's ENTRYPOINT + CMD) under the AWS Runtime Interface Emulator, with the local
HTTP front and the web page in headless Chromium. One emulator for the whole module."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from devkit import browser
from devkit.messy_lake import bomb_png, corrupt_png, encode, exif_rotated_jpeg, photo, svg
from devkit.sample_lake import COMMITTED_CROPS, DEMO_CLASSES
from serve_lambda.config import API_GATEWAY_PAYLOAD_LIMIT, ServeSettings
from serve_lambda.local import (
    HttpFront,
    LocalError,
    LocalFunction,
    find_rie,
    max_body_env,
    threads_env,
)
from serve_lambda.model import ServedModel, load_model


def rie_installed() -> bool:
    try:
        find_rie()
    except LocalError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not rie_installed(), reason="aws-lambda-rie not installed (scripts/setup.sh extracts it)"
)

REPO = Path(__file__).resolve().parent.parent
# The function's own body limit, lowered so a direct invoke (capped at 6 MB by Lambda
# and the emulator) can exceed it.
FUNCTION_MAX_BODY = 2**20
PROBABILITY_TOLERANCE = 1e-5
MUTATIONS = 20
RAW_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def function(serve_model_dir, tmp_path_factory) -> Iterator[LocalFunction]:
    log = tmp_path_factory.mktemp("rie") / "rie.log"
    env = {**threads_env(1), **max_body_env(FUNCTION_MAX_BODY)}
    with LocalFunction(serve_model_dir, env=env, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def front(function) -> Iterator[HttpFront]:
    with HttpFront(function) as server:
        yield server


@pytest.fixture(scope="module")
def in_process(serve_model_dir) -> ServedModel:
    return load_model(ServeSettings(model_dir=str(serve_model_dir), torch_threads=1))


def v2_event(method: str, path: str, body: bytes | None, content_type: str, url: bool = False):
    domain = "abc123.lambda-url.eu-west-1.on.aws" if url else "abc123.execute-api.amazonaws.com"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": content_type, "host": domain},
        "requestContext": {
            "domainName": domain,
            "http": {"method": method, "path": path},
            "requestId": str(uuid.uuid4()),
            "stage": "$default",
        },
        "body": base64.b64encode(body).decode() if body is not None else None,
        "isBase64Encoded": body is not None,
    }


def v1_event(method: str, path: str, body: bytes | None, content_type: str):
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": content_type},
        "requestContext": {"requestId": str(uuid.uuid4()), "stage": "prod"},
        "body": base64.b64encode(body).decode() if body is not None else None,
        "isBase64Encoded": body is not None,
    }


def json_event(document: Any) -> dict:
    event = v2_event("POST", "/predict", None, "application/json")
    event["body"] = document if isinstance(document, str) else json.dumps(document)
    return event


def body_of(answer: dict) -> dict:
    assert answer.get("headers", {}).get("Access-Control-Allow-Origin") == "*", answer
    return json.loads(answer["body"])


def good_images() -> dict[str, bytes]:
    """A real crop of each class, plus camera-like and odd-but-valid files."""
    images = {
        name: sorted((COMMITTED_CROPS / name).glob("*.jpg"))[0].read_bytes()
        for name in DEMO_CLASSES
    }
    images["1mp.jpg"] = encode(photo(1152, 864, 1), "JPEG", quality=90)
    images["alpha.png"] = encode(photo(120, 90, 5).convert("RGBA"), "PNG")
    images["exif-rotated.jpg"] = exif_rotated_jpeg()
    images["small.webp"] = encode(photo(40, 30, 2), "WEBP")
    return images


def test_good_images_match_in_process_inference(function, in_process):
    for name, data in good_images().items():
        answer = function.invoke(v2_event("POST", "/predict", data, "image/jpeg"))
        assert answer["statusCode"] == 200, (name, answer)
        body = body_of(answer)
        expected = in_process.predict(data)
        assert body["class"] == expected.class_name and body["label"] == expected.label, name
        got = [body["probabilities"][c] for c in in_process.classes]
        assert np.allclose(got, expected.probabilities, atol=PROBABILITY_TOLERANCE), name
        assert body["model"]["sha256"] == in_process.info["sha256"]
        assert body["inference_ms"] >= 0 and body["image"]["bytes"] == len(data)


def test_v1_v2_and_function_url_events_answer_alike(function):
    data = good_images()["Airplane"]
    events = {
        "rest-v1": v1_event("POST", "/predict", data, "image/jpeg"),
        "http-v2": v2_event("POST", "/predict", data, "image/jpeg"),
        "function-url": v2_event("POST", "/predict", data, "image/jpeg", url=True),
        "json": json_event({"image": base64.b64encode(data).decode()}),
    }
    answers = {shape: body_of(function.invoke(event)) for shape, event in events.items()}
    assert len({json.dumps(a["probabilities"]) for a in answers.values()}) == 1, answers
    info = function.invoke(v1_event("GET", "/info", None, ""))
    assert info["statusCode"] == 200 and body_of(info)["status"] == "ok"


def text_event(text: bytes, content_type: str) -> dict:
    """A body API Gateway passes as text (not base64), as for a JSON or form upload."""
    event = v2_event("POST", "/predict", None, content_type)
    event["body"], event["isBase64Encoded"] = text.decode(), False
    return event


JPEG = encode(photo(160, 120, 1), "JPEG", quality=90)
DEEP = 100_000  # JSON nesting levels: far past Python's recursion limit
FORM_WITHOUT_FILE = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n"
SVG = svg('<rect width="9" height="9"/>')
HEIC = b"\0\0\0\x18ftypheic" + b"\0" * 64


def post(data: bytes | None, content_type: str = "image/jpeg") -> dict:
    return v2_event("POST", "/predict", data, content_type)


BAD_INPUTS = {
    "empty body": (post(b""), 400, "empty"),
    "no body": (post(None), 400, "empty"),
    "text": (post(b"not pixels\n" * 50), 415, "not_an_image"),
    "html": (post(b"<!DOCTYPE html><html></html>", "text/html"), 415, "not_an_image"),
    "truncated": (post(JPEG[: len(JPEG) // 2]), 422, "truncated"),
    "corrupt": (post(corrupt_png(), "image/png"), 422, "undecodable"),
    "bomb": (post(bomb_png(), "image/png"), 413, "decompression_bomb"),
    "svg": (post(SVG, "image/svg+xml"), 415, "unsupported_format"),
    "heic": (post(HEIC, "image/heic"), 415, "unsupported_format"),
    "oversized": (post(b"\xff" * (FUNCTION_MAX_BODY + 1)), 413, "body_too_large"),
    "malformed json": (json_event('{"image": '), 400, "malformed_json"),
    "json without image": (json_event({"picture": "abc"}), 400, "missing_image"),
    "json image not base64": (json_event({"image": "***"}), 400, "malformed_base64"),
    "body not base64": ({**post(b"x"), "body": "@@@"}, 400, "malformed_base64"),
    "form without file": (
        text_event(FORM_WITHOUT_FILE, "multipart/form-data; boundary=b"),
        400,
        "missing_image",
    ),
    "GET /predict": (v2_event("GET", "/predict", None, ""), 405, "method_not_allowed"),
    "POST /info": (v1_event("POST", "/info", JPEG, "image/jpeg"), 405, "method_not_allowed"),
    "wrong path": (v2_event("POST", "/classify", JPEG, "image/jpeg"), 404, "not_found"),
    "not an HTTP event": ({"Records": []}, 400, "unsupported_event"),
    "not an object": ([1, 2, 3], 400, "unsupported_event"),
    # Issue 29 item 6: each answered 500 (an escaped exception) before.
    "deeply nested json": (json_event("[" * DEEP + "]" * DEEP), 400, "malformed_json"),
    "deeply nested image": (
        json_event('{"image": ' + "[" * DEEP + "]" * DEEP + "}"),
        400,
        "malformed_json",
    ),
    "requestContext.http a string": (
        {**post(JPEG), "requestContext": {"http": "POST /predict"}},
        400,
        "unsupported_event",
    ),
    "requestContext.http a list": (
        {**post(JPEG), "requestContext": {"http": ["POST", "/predict"]}},
        400,
        "unsupported_event",
    ),
    "body with a lone surrogate": (
        {**post(None, "application/json"), "body": '{"image": "\ud800"}', "isBase64Encoded": False},
        400,
        "malformed_text",
    ),
    "header with a lone surrogate": (
        {**post(JPEG, "multipart/form-data; boundary=\udfff"), "isBase64Encoded": True},
        400,
        "malformed_text",
    ),
    "isBase64Encoded neither true nor false": (
        {**post(JPEG), "isBase64Encoded": "yes"},
        400,
        "unsupported_event",
    ),
    "header value an object": (
        {**post(JPEG), "headers": {"content-type": {"type": "image/jpeg"}}},
        400,
        "unsupported_event",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_4xx(function, case):
    event, status, code = BAD_INPUTS[case]
    answer = function.invoke(event)
    assert answer.get("statusCode") == status, answer
    body = body_of(answer)
    assert body["error"] == code and len(body["message"]) > 10, body
    assert body["request_id"]  # the Lambda request id, to find the log line


def test_is_base64_encoded_false_as_a_string_is_false(function, in_process):
    """A hand-written event's "false" is not Python's truthy string (issue 29 item 6)."""
    document = json.dumps({"image": base64.b64encode(JPEG).decode()})
    for flag in ("false", "False", False, None):
        event = {**post(None, "application/json"), "body": document, "isBase64Encoded": flag}
        answer = function.invoke(event)
        assert answer["statusCode"] == 200, (flag, answer)
        assert body_of(answer)["class"] == in_process.predict(JPEG).class_name
    raw = {**post(JPEG), "isBase64Encoded": "true"}
    assert function.invoke(raw)["statusCode"] == 200


def test_mutated_images_never_answer_5xx(function):
    rng = np.random.default_rng(0)
    for _ in range(MUTATIONS):
        data = bytearray(JPEG)
        for position in rng.integers(0, len(data), 10):
            data[position] = rng.integers(0, 256)
        answer = function.invoke(v2_event("POST", "/predict", bytes(data), "image/jpeg"))
        assert answer["statusCode"] in (200, 413, 415, 422), answer


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str = ""):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method or None)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_http_front_serves_raw_form_page_and_preflight(front, in_process):
    data = good_images()["Flying_Birds"]
    expected = in_process.predict(data).class_name
    status, _, raw = http(f"{front.url}/predict", data, {"Content-Type": "image/jpeg"})
    assert status == 200 and json.loads(raw)["class"] == expected
    form, content_type = multipart("image", "bird.jpg", data)
    status, _, raw = http(f"{front.url}/predict", form, {"Content-Type": content_type})
    assert status == 200 and json.loads(raw)["class"] == expected  # what curl -F sends
    status, headers, page = http(f"{front.url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="file"' in page
    status, headers, _ = http(f"{front.url}/predict", method="OPTIONS")
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]


def test_http_front_refuses_what_api_gateway_would(front):
    status, _, raw = http(f"{front.url}/predict", b"\0" * (API_GATEWAY_PAYLOAD_LIMIT + 1))
    assert status == 413
    # Under API Gateway's 10 MB but over Lambda's 6 MB event once base64-encoded.
    status, _, raw = http(f"{front.url}/predict", b"\0" * (5 * 2**20))
    assert status == 413 and b"6291456" in raw


def raw_http(url: str, request: bytes) -> bytes:
    """Send `request` as written (http.client refuses a bad Content-Length) and read the
    whole answer; the front closes the connection after refusing it."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=RAW_TIMEOUT_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(2**16):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "5, 7", ""])
def test_http_front_answers_400_to_a_bad_content_length(front, length):
    """Issue 29 item 6: the front sent no response at all for these."""
    request = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\nabc"
    ).encode()
    if length == "5, 7":  # two headers that disagree
        request = request.replace(b"5, 7", b"5\r\nContent-Length: 7")
    answer = raw_http(front.url, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.endswith(b'{"message": "Bad Request"}'), answer[-200:]


def test_the_runtime_survived_every_request(function):
    """All of the above ran in one runtime process: no crash, no restart."""
    assert function.process.poll() is None
    info = body_of(function.invoke(v2_event("GET", "/info", None, "")))
    assert info["status"] == "ok" and info["startup_ms"]["model_load"] > 0


@pytest.mark.skipif(not browser.available(), reason="Debian chromium not installed")
def test_web_page_uploads_an_image_and_shows_every_class(front, in_process, tmp_path):
    image = tmp_path / "airplane.jpg"
    image.write_bytes(good_images()["Airplane"])
    expected = in_process.predict(image.read_bytes())
    with browser.Chromium(tmp_path / "profile") as chromium:
        chromium.open(f"{front.url}/")
        chromium.wait_for("document.getElementById('model').textContent.startsWith('model ')")
        chromium.upload("#file", image)
        chromium.wait_for("document.body.dataset.state === 'done'")
        shown = chromium.evaluate(
            "({top: document.getElementById('top').textContent,"
            " error: document.getElementById('error').textContent,"
            " preview: document.getElementById('preview').naturalWidth,"
            " rows: [...document.querySelectorAll('#bars .row')].map(r =>"
            "   [r.dataset.class, Number(r.dataset.probability), r.classList.contains('best')])})"
        )
    assert shown["error"] == "" and shown["preview"] > 0, shown
    assert shown["top"].startswith(expected.class_name), shown
    assert [row[0] for row in shown["rows"]] == in_process.classes
    best = [row[0] for row in shown["rows"] if row[2]]
    assert best == [expected.class_name]
    got = [row[1] for row in shown["rows"]]
    assert np.allclose(got, expected.probabilities, atol=PROBABILITY_TOLERANCE)


PAGE_PARTS = ["h1", "#model", "#drop", "#preview", "#result"]


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    """Two boxes share some area (touching edges do not count)."""
    return (
        min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]) > 0
        and min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]) > 0
    )


@pytest.mark.skipif(not browser.available(), reason="Debian chromium not installed")
def test_web_page_parts_do_not_overlap(front, tmp_path):
    """Issue 31: the drop zone (an inline label) overlapped the model line and the
    preview. Laid out after a prediction, every part has its own box; the screenshot
    is kept next to the test's files for a person to look at."""
    image = tmp_path / "airplane.jpg"
    image.write_bytes(good_images()["Airplane"])
    with browser.Chromium(tmp_path / "profile") as chromium:
        chromium.open(f"{front.url}/")
        chromium.call(
            "Emulation.setDeviceMetricsOverride",
            width=900,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        chromium.wait_for("document.getElementById('model').textContent.startsWith('model ')")
        chromium.upload("#file", image)
        chromium.wait_for("document.body.dataset.state === 'done'")
        chromium.wait_for("document.getElementById('preview').complete")
        boxes = chromium.boxes(PAGE_PARTS)
        chromium.screenshot(tmp_path / "page.png")
    assert all(box["width"] > 0 and box["height"] > 0 for box in boxes.values()), boxes
    clashes = [
        (a, b)
        for i, a in enumerate(PAGE_PARTS)
        for b in PAGE_PARTS[i + 1 :]
        if overlaps(boxes[a], boxes[b])
    ]
    assert not clashes, (clashes, boxes)
    assert (tmp_path / "page.png").stat().st_size > 0


# A fresh interpreter with every fd above stderr closed, so the harness's first
# os.pipe() returns fds 3 and 4: the fds Chromium's --remote-debugging-pipe uses.
LOW_FDS = """
import os, sys
from pathlib import Path
from devkit import browser
os.closerange(3, 4096)
pipes = []
real_pipe = os.pipe
def recording_pipe():
    pipes.append(real_pipe())
    return pipes[-1]
os.pipe = recording_pipe
with browser.Chromium(Path(sys.argv[1])) as chromium:
    chromium.open("data:text/html,<p id=x>fds</p>")
    text = chromium.wait_for("document.querySelector('#x')?.textContent")
print(pipes[0], text)
"""


@pytest.mark.skipif(not browser.available(), reason="Debian chromium not installed")
def test_browser_harness_works_when_its_pipes_are_fds_3_and_4(tmp_path):
    """Issue 31: "chromium closed the pipe" when os.pipe() returned fds 3 and 4."""
    done = subprocess.run(
        [sys.executable, "-c", LOW_FDS, str(tmp_path / "profile")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(3,", "4)", "fds"], done.stdout
