"""1,000 requests, a third of them bad, against the local function through the HTTP
front (plain HTTP -> API Gateway v2 event -> Runtime Interface Emulator -> handler).

Good requests: generated photos of several sizes as raw bodies, multipart forms and
JSON base64. Bad ones cycle through every kind of bad input the function promises a
4xx for (empty, not an image, truncated, corrupt, bomb, SVG, HEIC, oversized,
malformed JSON/base64/form, wrong method or path) plus randomly corrupted JPEGs.
Counts answers by status, checks there is no 5xx, and that the runtime never
restarted (same process, same start-up record before and after).

    .venv/bin/python scripts/bench/serve_robustness.py [--model-dir DIR] [--requests 1000]
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from devkit.messy_lake import bomb_png, corrupt_png, encode, photo, svg
from devkit.serve_model import bench_model
from serve_lambda.config import API_GATEWAY_PAYLOAD_LIMIT
from serve_lambda.local import HttpFront, LocalFunction, threads_env

BAD_SHARE = 3  # one request in three is bad
SIZES = ((224, 224), (640, 480), (1152, 864), (96, 160))
JPEG = "image/jpeg"


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        f"Content-Type: {JPEG}\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def good_request(rng: random.Random, photos: list[bytes]) -> tuple[str, str, bytes, str]:
    data = rng.choice(photos)
    kind = rng.randrange(3)
    if kind == 0:
        return "POST", "/predict", data, JPEG
    if kind == 1:
        body, content_type = multipart(data)
        return "POST", "/predict", body, content_type
    body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    return "POST", "/predict", body, "application/json"


def corrupted(rng: random.Random, data: bytes) -> bytes:
    mutable = bytearray(data)
    for _ in range(rng.randint(1, 30)):
        mutable[rng.randrange(len(mutable))] = rng.randrange(256)
    return bytes(mutable)


def bad_requests(jpeg: bytes) -> list[tuple[str, str, bytes, str]]:
    return [
        ("POST", "/predict", b"", JPEG),
        ("POST", "/predict", b"plain text, not pixels\n" * 40, JPEG),
        ("POST", "/predict", b"<!DOCTYPE html><html><body>404</body></html>", "text/html"),
        ("POST", "/predict", jpeg[: len(jpeg) // 3], JPEG),
        ("POST", "/predict", corrupt_png(), "image/png"),
        ("POST", "/predict", bomb_png(), "image/png"),
        ("POST", "/predict", svg('<circle r="40" cx="50" cy="50"/>'), "image/svg+xml"),
        ("POST", "/predict", b"\0\0\0\x18ftypheic" + b"\0" * 64, "image/heic"),
        ("POST", "/predict", b"\xff" * (API_GATEWAY_PAYLOAD_LIMIT + 1), JPEG),
        ("POST", "/predict", b"\xff" * (5 * 2**20), JPEG),  # over Lambda's 6 MB event
        ("POST", "/predict", b'{"image": ', "application/json"),
        ("POST", "/predict", b'{"image": "not base64!"}', "application/json"),
        ("POST", "/predict", b'{"picture": "AAAA"}', "application/json"),
        ("POST", "/predict", b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x"),
        ("GET", "/predict", b"", ""),
        ("DELETE", "/info", b"", ""),
        ("POST", "/no-such-route", jpeg, JPEG),
    ]


def send(url: str, method: str, path: str, body: bytes, content_type: str) -> int:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url + path, data=body or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def hammer(front: HttpFront, function: LocalFunction, requests: int) -> dict:
    """Send the requests; statuses overall and per kind, and whether the runtime held."""
    rng = random.Random(0)
    photos = [encode(photo(w, h, i), "JPEG", quality=90) for i, (w, h) in enumerate(SIZES)]
    fixed_bad = bad_requests(photos[0])
    statuses: collections.Counter[int] = collections.Counter()
    by_kind: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    send(front.url, "GET", "/info", b"", "")  # the cold start, not counted
    pid = function.process.pid
    info_before = json.loads(urllib.request.urlopen(front.url + "/info").read())
    started = time.perf_counter()
    for i in range(requests):
        if i % BAD_SHARE == BAD_SHARE - 1:
            if rng.random() < 0.5:
                request = fixed_bad[(i // BAD_SHARE) % len(fixed_bad)]
                kind = f"bad {request[0]} {request[1]} {request[3] or '-'}"
            else:
                request = ("POST", "/predict", corrupted(rng, rng.choice(photos)), JPEG)
                kind = "bad: corrupted JPEG"
        else:
            request, kind = good_request(rng, photos), "good"
        status = send(front.url, *request)
        statuses[status] += 1
        by_kind[kind][status] += 1
    elapsed = time.perf_counter() - started
    info_after = json.loads(urllib.request.urlopen(front.url + "/info").read())
    return {
        "statuses": statuses,
        "by_kind": by_kind,
        "elapsed": elapsed,
        "restarted": info_before["startup_ms"] != info_after["startup_ms"],
        "alive": function.process.poll() is None and function.process.pid == pid,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a `train export` folder (default: generated 224 px)")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    model_dir = bench_model(args.model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "rie.log"
        function = LocalFunction(model_dir, env=threads_env(1), log_path=log)
        with function, HttpFront(function) as front:
            result = hammer(front, function, args.requests)
        inits = log.read_text(errors="replace").count("INIT START")
    statuses = result["statuses"]
    print(
        f"{args.requests} requests in {result['elapsed']:.1f} s; "
        f"statuses: {dict(sorted(statuses.items()))}"
    )
    for kind, counter in sorted(result["by_kind"].items()):
        print(f"  {kind}: {dict(sorted(counter.items()))}")
    fives = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"5xx: {fives}; runtime inits in the emulator log: {inits} (1 = never restarted); "
        f"runtime restarted: {result['restarted']}; emulator alive: {result['alive']}"
    )
    held = inits == 1 and result["alive"] and not result["restarted"]
    sys.exit(0 if fives == 0 and held else 1)


if __name__ == "__main__":
    main()
