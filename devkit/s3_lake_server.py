"""moto's S3 server with a lake filled inside its own process, for listing at scale.

    python -m devkit.s3_lake_server -p 5000 --fill lake=keys.txt --listing s3 --list-latency-ms 50

Filling moto over HTTP runs at ~30 objects/s on the 2-core machine (9 hours for 1M), so
the objects of `--fill BUCKET=FILE` (one key a line, each a 1-byte body) are created
directly in moto's backend before the port opens; clients then talk HTTP to it exactly
as to AWS or `python -m moto.server`. The filled objects share one body, ETag, metadata
and modification time (a write to one gives it its own), so 1M of them take ~0.3 GB.

`--listing s3` answers ListObjectsV2 with S3's cost model and `--list-latency-ms` adds a
fixed latency per LIST request (`devkit.s3_listing_model`); both can be changed while it
runs: GET /_devkit/listing?model=s3&latency_ms=50 answers the settings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import FakeKey, S3Backend, s3_backends
from werkzeug.serving import run_simple

from devkit import s3_listing_model

CONTROL_PATH = "/_devkit/listing"  # never a bucket: bucket names cannot start with "_"
REGION = "us-east-1"


def backend() -> S3Backend:
    """The backend that requests signed with the dummy credentials reach."""
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _dispose(self: FakeKey, garbage: bool = False) -> None:
    if "_value_buffer" in self.__dict__:  # a body of its own: moto's dispose
        FakeKey.dispose(self, garbage)
    else:  # the shared body stays open for the other filled objects
        self.disposed = True


def _set_value(self: FakeKey, value: bytes) -> None:
    if "_value_buffer" not in self.__dict__:  # first write: a body of its own (moto's dispose
        # closes it, as for any FakeKey)
        self._value_buffer = tempfile.SpooledTemporaryFile(self._max_buffer_size)  # noqa: SIM115
        self.lock = threading.Lock()
    FakeKey.value.fset(self, value)


def _set_metadata(self: FakeKey, metadata: Any, replace: bool = False) -> None:  # noqa: ANN401
    if "_metadata" not in self.__dict__:
        self._metadata = type(self._metadata)(self._metadata)
    FakeKey.set_metadata(self, metadata, replace)


def _getstate(self: FakeKey) -> dict[str, Any]:
    """As FakeKey's: a copy gets a body of its own (its other fields stay shared)."""
    return {**self.__dict__, "value": self.value, "_value_buffer": None, "lock": None}


def filled_key_class(bucket_name: str, body: bytes = b"x") -> type[FakeKey]:
    """A FakeKey subclass whose instances read every field but their name from one
    template object (class attributes), so an object costs a name and a tiny dict."""
    store = backend()
    template = FakeKey(
        name="",
        value=body,
        account_id=store.account_id,
        region_name=REGION,
        bucket_name=bucket_name,
    )
    _ = template.etag  # computed once, shared
    fields = {k: v for k, v in vars(template).items() if k != "name"}
    methods = {
        "dispose": _dispose,
        "value": property(FakeKey.value.fget, _set_value),
        "set_metadata": _set_metadata,
        "__getstate__": _getstate,
        "_devkit_template": template,  # keeps the shared body open
    }
    return type("FilledKey", (FakeKey,), fields | methods)


def fill(bucket_name: str, keys: Iterable[str]) -> int:
    """Create `bucket_name` (if needed) and one object per key, in this process."""
    store = backend()
    if bucket_name not in store.buckets:
        store.create_bucket(bucket_name, REGION)
    bucket = store.get_bucket(bucket_name)
    key_class = filled_key_class(bucket_name)
    count = 0
    for name in keys:
        key = object.__new__(key_class)
        key.name = name
        if dict.__contains__(bucket.keys, name):
            bucket.keys.setlist(name, [key])  # moto's own replace (disposes the old one)
        else:
            dict.__setitem__(bucket.keys, name, [key])
        count += 1
    s3_listing_model.index(bucket.keys)  # sorted once now, not in the first timed LIST
    return count


def read_keys(path: Path) -> Iterable[str]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if key := line.rstrip("\n"):
                yield key


def with_control(app: Callable) -> Callable:
    """`app` plus the control route that reads and sets the listing model."""

    def control(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != CONTROL_PATH:
            return app(environ, start_response)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        status = "200 OK"
        try:
            current = s3_listing_model.describe()
            answer = s3_listing_model.configure(
                query.get("model", [current["model"]])[0],
                float(query.get("latency_ms", [current["latency_ms"]])[0]),
            )
        except ValueError as exc:
            status, answer = "400 Bad Request", {"error": str(exc)}
        body = json.dumps(answer).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return control


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--fill", action="append", default=[], metavar="BUCKET=KEYS_FILE")
    parser.add_argument("--listing", choices=s3_listing_model.MODELS, default="moto")
    parser.add_argument("--list-latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    s3_listing_model.install()
    s3_listing_model.configure(args.listing, args.list_latency_ms)
    for spec in args.fill:
        bucket_name, _, path = spec.partition("=")
        fill(bucket_name, read_keys(Path(path)))
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto.server
    run_simple(
        args.host,
        args.port,
        with_control(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
