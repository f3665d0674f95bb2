"""One writer per output at a time: a lease object, `_lease.json`, next to the manifest.

A run takes the lease before it writes anything and gives it back when it ends. The
object says who holds it (run id, host, process), since when, and until when: a
background thread renews it while the run works, so a run that dies leaves a lease
that expires on its own (`ttl_s`) and the next run takes it over.

Taking and renewing are conditional writes, so two runs can never both believe they
hold it: on S3 a create-only PUT (If-None-Match: *) and a PUT that must match the
ETag of the lease it read (If-Match); on a local folder an exclusive create and a
compare-then-write (one machine: good enough for local outputs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from common.storage import StorageConfig, filesystem, is_object_store, join
from pipeline.output import LEASE

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
_POLL_S = 2.0


class LeaseHeld(Exception):
    """Another run holds the output: the job stops with a one-line message (exit 2)."""


@dataclass
class _Seen:
    body: dict[str, Any]
    token: str  # ETag on S3, the file's text on a local folder


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _describe(body: dict[str, Any]) -> str:
    return (
        f"run {body.get('run_id')} ({body.get('owner')}, started {body.get('started_at')}, "
        f"lease valid until {body.get('expires_at')})"
    )


class Lease:
    """The lease of one run on one output; use `acquire` and `release` (or `with`)."""

    def __init__(
        self,
        output_uri: str,
        run_id: str,
        storage: StorageConfig,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.output_uri = output_uri
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.fs, self.path = filesystem(join(output_uri, LEASE), storage)
        self.lost: str | None = None  # why the lease was lost, if it was
        self._token: str | None = None
        self._started = _now()
        self._stop = threading.Event()
        self._renewing = threading.Lock()  # the renewer thread and check() never race
        self._renewer: threading.Thread | None = None

    # -- storage primitives ---------------------------------------------------------
    def _body(self) -> bytes:
        now = _now()
        return json.dumps(
            {
                "run_id": self.run_id,
                "owner": f"{os.environ.get('USER', 'unknown')}@{socket.gethostname()} "
                f"pid {os.getpid()}",
                "started_at": self._started.isoformat(),
                "renewed_at": now.isoformat(),
                "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat(),
            },
            indent=2,
        ).encode()

    def _read(self) -> _Seen | None:
        try:
            data = self.fs.cat_file(self.path)
            token = self._token_of(data)
        except FileNotFoundError:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            body = {}  # unreadable: treated as expired, and replaced conditionally
        return _Seen(body if isinstance(body, dict) else {}, token)

    def _token_of(self, data: bytes) -> str:
        if is_object_store(self.fs):
            return str(self.fs.info(self.path).get("ETag", "")).strip('"')
        return data.decode(errors="replace")

    def _create(self, data: bytes) -> bool:
        """Write the lease only if there is none; False if there is one."""
        if is_object_store(self.fs):
            try:
                out = self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:
                return False
            self._token = _etag(out) or self._token_of(data)
            return True
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._token = data.decode()
        return True

    def _replace(self, data: bytes, token: str) -> bool:
        """Overwrite the lease only if it is still the one read (token); else False."""
        if is_object_store(self.fs):
            try:
                out = self.fs.pipe_file(self.path, data, IfMatch=f'"{token}"')
            except (FileNotFoundError, FileExistsError):
                return False
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # 412 PreconditionFailed: someone else wrote
                    return False
                raise
            self._token = _etag(out) or self._token_of(data)
            return True
        seen = self._read()
        if seen is None or seen.token != token:
            return False
        self.fs.pipe_file(self.path, data)
        self._token = data.decode()
        return True

    # -- the protocol ---------------------------------------------------------------
    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease if it is free or expired; else return the holder's lease."""
        while True:
            if self._create(self._body()):
                return None
            seen = self._read()
            if seen is None:
                continue  # released between our two calls: try again
            expires = _parse_time(seen.body.get("expires_at"))
            if seen.body.get("run_id") == self.run_id or expires is None or expires < _now():
                if seen.body.get("run_id") not in (None, self.run_id):
                    log.warning("taking over the expired lease of %s", _describe(seen.body))
                if self._replace(self._body(), seen.token):
                    return None
                continue  # another run changed it first: look again
            return seen.body

    def acquire(self, wait: bool = False) -> Lease:
        """Take the lease; if another live run holds it, raise LeaseHeld or (wait) poll."""
        announced = False
        while (holder := self.try_acquire()) is not None:
            if not wait:
                raise LeaseHeld(
                    f"{self.output_uri} is being written by {_describe(holder)}; "
                    "run again when it ends, or pass --wait-for-lock"
                )
            if not announced:
                log.info("waiting for %s to release %s", _describe(holder), self.output_uri)
                announced = True
            time.sleep(_POLL_S)
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="lease")
        self._renewer.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - retried on the next tick
                log.warning("could not renew the lease on %s: %s", self.output_uri, exc)

    def renew(self) -> None:
        with self._renewing:
            if self.lost or self._token is None:
                return
            if not self._replace(self._body(), self._token):
                seen = self._read()
                holder = _describe(seen.body) if seen else "nobody (it was deleted)"
                self.lost = f"the lease on {self.output_uri} was taken over by {holder}"

    def check(self) -> None:
        """Raise LeaseHeld if this run no longer holds the lease (before publishing)."""
        self.renew()
        if self.lost:
            raise LeaseHeld(self.lost)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        seen = self._read()
        if seen is not None and seen.body.get("run_id") == self.run_id:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _etag(put_result: Any) -> str | None:
    if isinstance(put_result, dict) and put_result.get("ETag"):
        return str(put_result["ETag"]).strip('"')
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
