"""The function for real, locally: the AWS Lambda Runtime Interface Emulator (RIE, the
binary `scripts/setup.sh` takes from the aws-sam-cli wheel) runs
`python -m awslambdaric serve_lambda.handler.handler`, the image's own entry point, and
a small HTTP front turns plain HTTP requests into API Gateway HTTP API (v2) events, so
`curl` and the web page work against it as against API Gateway.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serve_lambda.config import (
    API_GATEWAY_PAYLOAD_LIMIT,
    HANDLER,
    LAMBDA_SYNC_PAYLOAD_LIMIT,
    MAX_BODY_ENV,
    MODEL_DIR_ENV,
    THREADS_ENV,
)

RIE_BINARY = "aws-lambda-rie"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Lambda's defaults for a function the template does not size otherwise.
FUNCTION_TIMEOUT_S = 30
FUNCTION_MEMORY_MB = 2048
START_TIMEOUT_S = 30.0
POLL_S = 0.05
INVOKE_TIMEOUT_S = FUNCTION_TIMEOUT_S + 30  # the first invoke also starts the runtime
# An oversized body the client sends anyway is read and dropped up to this size.
DRAIN_LIMIT = 8 * API_GATEWAY_PAYLOAD_LIMIT
DRAIN_CHUNK = 2**20


class LocalError(Exception):
    """The emulator is missing or did not start (exit status 2)."""


def find_rie(explicit: str = "") -> Path:
    """The RIE binary: `explicit`, else next to this python (.venv/bin), else on PATH."""
    if explicit:
        candidates = [explicit]
    else:
        candidates = [str(Path(sys.executable).parent / RIE_BINARY), shutil.which(RIE_BINARY)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise LocalError(f"{RIE_BINARY} not found: run scripts/setup.sh (it extracts the binary)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalError(f"{RIE_BINARY} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(POLL_S)
    raise LocalError(f"{RIE_BINARY} did not listen on port {port} within {timeout_s} s")


class LocalFunction:
    """The RIE running the handler; `invoke` sends one event as Lambda's Invoke API does.

    The RIE starts the Python runtime on the first invoke (as Lambda does on a cold
    start), so the first invoke pays interpreter start, imports and model load.
    """

    def __init__(
        self,
        model_dir: str | Path,
        rie: str = "",
        port: int = 0,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.rie = find_rie(rie)
        self.port = port or free_port()
        self.extra_env = env or {}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{INVOKE_PATH}"

    def environment(self) -> dict[str, str]:
        pythonpath = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        )
        return {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "LAMBDA_TASK_ROOT": str(PROJECT_ROOT),
            MODEL_DIR_ENV: str(self.model_dir),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(FUNCTION_TIMEOUT_S),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(FUNCTION_MEMORY_MB),
            **self.extra_env,
        }

    def command(self) -> list[str]:
        return [
            str(self.rie),
            "--runtime-interface-emulator-address",
            f"{LOOPBACK}:{self.port}",
            # The RIE's runtime API defaults to a fixed port; two emulators would collide.
            "--runtime-api-address",
            f"{LOOPBACK}:{free_port()}",
            sys.executable,
            "-m",
            "awslambdaric",
            HANDLER,
        ]

    def start(self) -> LocalFunction:
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=PROJECT_ROOT,
            env=self.environment(),
            stdout=self._log,  # None: the function's logs go to this terminal
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process, START_TIMEOUT_S)
        return self

    def invoke_raw(self, payload: bytes, timeout_s: float = INVOKE_TIMEOUT_S) -> bytes:
        request = urllib.request.Request(self.url, data=payload, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:  # the RIE's own refusals (payload size...)
            return exc.read()

    def invoke(self, event: Any, timeout_s: float = INVOKE_TIMEOUT_S) -> dict[str, Any]:
        return json.loads(self.invoke_raw(json.dumps(event).encode(), timeout_s))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> LocalFunction:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The API Gateway HTTP API (payload 2.0) event for one plain HTTP request."""
    url = urlsplit(target)
    now = time.time()
    lowered = {k.lower(): v for k, v in headers.items()}
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": url.path or "/",
        "rawQueryString": url.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "domainName": lowered.get("host", LOOPBACK),
            "http": {
                "method": method,
                "path": url.path or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": LOOPBACK,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode() if body else None,
        "isBase64Encoded": bool(body),
    }


def gateway_error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    """What API Gateway itself answers when a request never reaches the function."""
    body = json.dumps({"message": message}).encode()
    return status, {"Content-Type": "application/json"}, body


def content_length(values: list[str]) -> int | None:
    """Content-Length header values -> the length (0 when absent); None when they are not
    one non-negative decimal integer ("abc", "-5", two different values)."""
    if not values:
        return 0
    value = values[0].strip()
    if len(set(values)) != 1 or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def proxy(function: LocalFunction, lock: threading.Lock, event: dict[str, Any]):
    """Invoke with `event`; the function's proxy response as (status, headers, body)."""
    payload = json.dumps(event).encode()
    if len(payload) > LAMBDA_SYNC_PAYLOAD_LIMIT:
        return gateway_error(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the request event is {len(payload)} bytes; Lambda takes at most "
            f"{LAMBDA_SYNC_PAYLOAD_LIMIT} (a binary body grows by a third in base64)",
        )
    try:
        with lock:  # one invoke at a time, like one Lambda execution environment
            answer = json.loads(function.invoke_raw(payload))
        body = answer.get("body") or ""
        data = base64.b64decode(body) if answer.get("isBase64Encoded") is True else body.encode()
        return int(answer["statusCode"]), dict(answer.get("headers") or {}), data
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        # No answer, or not a proxy response: API Gateway answers 502 for both.
        return gateway_error(HTTPStatus.BAD_GATEWAY, "Internal Server Error")


def front_handler(function: LocalFunction, log_requests: bool) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _length(self) -> int | None:
            """The body's length; None when the header is not one non-negative integer."""
            return content_length(self.headers.get_all("Content-Length") or [])

        def _refused(self, sent: bool) -> bool:
            """Answer a request that never reaches the function, as API Gateway would: a
            Content-Length that is not a number (400), a body over its limit (413)."""
            length = self._length()
            if length is None:
                self.close_connection = True  # where the body ends is unknown
                self._send(*gateway_error(HTTPStatus.BAD_REQUEST, "Bad Request"))
                return True
            if length <= API_GATEWAY_PAYLOAD_LIMIT:
                return False
            if sent and length <= DRAIN_LIMIT:
                self._drop(length)
            else:
                self.close_connection = True  # the body is left unread: no keep-alive
            self._send(
                *gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Entity Too Large")
            )
            return True

        def _drop(self, length: int) -> None:
            while length > 0:
                chunk = self.rfile.read(min(length, DRAIN_CHUNK))
                if not chunk:
                    return
                length -= len(chunk)

        def handle_expect_100(self) -> bool:
            # curl asks before sending a large body: answer 413 instead of "continue".
            return not self._refused(sent=False) and super().handle_expect_100()

        def _forward(self) -> None:
            if self._refused(sent=True):
                return
            length = self._length() or 0
            body = self.rfile.read(length) if length else b""
            event = http_event(self.command, self.path, dict(self.headers.items()), body)
            self._send(*proxy(function, lock, event))

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _forward

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            if log_requests:
                sys.stderr.write(f"front: {format % args}\n")

    return Front


class HttpFront:
    """A threaded HTTP server in front of a LocalFunction (what API Gateway does)."""

    def __init__(
        self,
        function: LocalFunction,
        host: str = LOOPBACK,
        port: int = 0,
        log_requests: bool = False,
    ) -> None:
        handler = front_handler(function, log_requests)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HttpFront:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def threads_env(threads: int) -> dict[str, str]:
    return {THREADS_ENV: str(threads)}


def max_body_env(max_bytes: int) -> dict[str, str]:
    return {MAX_BODY_ENV: str(max_bytes)}
