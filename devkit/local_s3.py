"""A real S3 HTTP endpoint on loopback: moto's server mode in its own process.

Code under test talks to it with s3fs/boto3 exactly as to AWS; only the endpoint URL
differs (AWS_ENDPOINT_URL). Nothing is mocked inside the process under test.

With `fill`, `listing` or `list_latency_ms`, the process is `devkit.s3_lake_server`
instead: the same moto server, filled in its own process, with S3's listing cost on
demand (for listing at scale: `scripts/bench/scale_listing.py`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

# moto accepts any credentials; real ones must never be sent to a local endpoint.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """Start/stop a moto S3 server; use as a context manager.

    fill: {bucket: file of keys, one a line} created in the server before it answers;
    listing: "moto" (moto's own ListObjectsV2) or "s3" (a page costs O(page), as on S3);
    list_latency_ms: a fixed latency per LIST request (see `devkit.s3_listing_model`)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        fill: dict[str, str | Path] | None = None,
        listing: str | None = None,
        list_latency_ms: float = 0.0,
        start_timeout_s: float = _START_TIMEOUT_S,
    ) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self.lake_server = bool(fill) or listing is not None or list_latency_ms > 0
        self._options = [f"--fill={bucket}={path}" for bucket, path in (fill or {}).items()]
        if listing is not None:
            self._options.append(f"--listing={listing}")
        if list_latency_ms:
            self._options.append(f"--list-latency-ms={list_latency_ms}")
        self.start_timeout_s = start_timeout_s

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def env(self) -> dict[str, str]:
        """Environment that points AWS SDKs (and Ray workers started after it) here."""
        return {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def _command(self) -> list[str]:
        address = ["-H", "127.0.0.1", "-p", str(self.port)]
        if self.lake_server:
            return [sys.executable, "-m", "devkit.s3_lake_server", *address, *self._options]
        return [sys.executable, "-m", "moto.server", *address]

    def start(self) -> LocalS3:
        self._process = subprocess.Popen(
            self._command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **DUMMY_CREDENTIALS},
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")

    def set_listing(self, listing: str, list_latency_ms: float = 0.0) -> dict:
        """Switch the running lake server's listing model and LIST latency; returns the
        server's settings ({"model", "latency_ms"})."""
        if not self.lake_server:
            raise RuntimeError("set_listing needs the lake server (fill, listing or latency)")
        query = urllib.parse.urlencode({"model": listing, "latency_ms": list_latency_ms})
        url = f"{self.endpoint_url}/_devkit/listing?{query}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def filesystem(self):  # noqa: ANN201 - s3fs is an optional import here
        import s3fs

        return s3fs.S3FileSystem(
            key=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            use_listings_cache=False,  # as common.storage: tests poll what other processes write
        )

    def client(self):  # noqa: ANN201 - boto3 is an optional import here
        """A boto3 S3 client of this endpoint, as on AWS."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, **_boto_credentials())

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def upload_files(fs, prefix: str, files: dict[str, bytes]) -> None:  # noqa: ANN001
    """Write {relative path: bytes} under `prefix` (s3://bucket/key or a local folder)."""
    for relative, data in files.items():
        fs.pipe_file(f"{prefix.rstrip('/')}/{relative}", data)
