"""S3's cost model for ListObjectsV2 on moto's server: a page costs O(page), not O(bucket).

moto (5.x) answers every ListObjectsV2 request by scanning every key of the bucket and
sorting the matches, so a listing of N keys in pages of 1,000 costs O(N^2 / 1,000) and
more (per-prefix) requests cost more, unlike S3, where a page is read from a sorted
index. `install()` patches moto's backend class in the calling process only (the devkit
server, `devkit.s3_lake_server`): each bucket's key names are kept in a sorted list and a
page bisects to its prefix or continuation point; the response's XML is written
directly (moto's generic serializer costs ~0.1 ms a key, ~100 ms a page, on the same
CPUs as the client under test, where S3's serving costs the client nothing). The pages
are moto's own: the same keys, common prefixes, truncation, continuation tokens and
bytes (`tests/test_scale_listing.py`).

`configure()` switches between moto's listing and this one at run time, and adds an
optional fixed latency per LIST request (S3 answers a page in ~20-100 ms); the server's
threads sleep it concurrently, as S3 serves many requests at once.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
import urllib.parse
from typing import Any
from xml.sax.saxutils import escape

import moto.core.serialize
from moto import settings
from moto.s3.models import FakeDeleteMarker, FakeKey, FakeTableStorageBucket, S3Backend
from moto.s3.responses import S3Response
from moto.s3.utils import _VersionedKeyStore

MODELS = ("moto", "s3")

_settings: dict[str, Any] = {"model": "moto", "latency_s": 0.0}
_lock = threading.Lock()  # guards every bucket's index and its pending names
_moto_list_objects_v2 = S3Backend.list_objects_v2
_moto_response = S3Response.list_objects_v2
_moto_to_datetime = moto.core.serialize.parse_to_aware_datetime
_parsed = functools.lru_cache(maxsize=4096)(_moto_to_datetime)


class _KeyIndex:
    """The sorted key names of one bucket's key store, and the names touched since."""

    def __init__(self, store: dict) -> None:
        self.names = sorted(dict.keys(store))
        self.touched: set[str] = set()

    def reconcile(self, store: dict) -> None:
        """Insert or drop the touched names: O(touched x log N) plus list moves, never a
        re-sort of the bucket."""
        for name in self.touched:
            at = bisect.bisect_left(self.names, name)
            listed = at < len(self.names) and self.names[at] == name
            if dict.__contains__(store, name) and not listed:
                self.names.insert(at, name)
            elif listed and not dict.__contains__(store, name):
                del self.names[at]
        self.touched.clear()


def index(store: dict) -> list[str]:
    """The sorted names of `store` (built once, then kept in step with its changes)."""
    with _lock:
        key_index = store.__dict__.get("_devkit_index")
        if key_index is None:
            key_index = store.__dict__["_devkit_index"] = _KeyIndex(store)
        key_index.reconcile(store)
        return key_index.names


def _tracking(method):  # noqa: ANN001, ANN202 - wraps the store's own methods
    def tracked(self: dict, key: str, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        result = method(self, key, *args, **kwargs)
        key_index = self.__dict__.get("_devkit_index")
        if key_index is not None:
            with _lock:
                key_index.touched.add(key)
        return result

    return tracked


def _after(folder: str) -> str:
    """The first string above every name that starts with `folder`."""
    return folder[:-1] + chr(ord(folder[-1]) + 1)


def s3_page(
    backend: S3Backend,
    bucket: Any,  # noqa: ANN401 - moto's FakeBucket
    prefix: str | None,
    delimiter: str | None,
    limit: str | None,
    max_keys: int,
) -> tuple[list, bool, str | None]:
    """moto's page (keys and common prefixes after `limit`, in name order) read from the
    sorted index: it visits the page's items and one key per common prefix only."""
    store = bucket.keys
    names = index(store)
    prefix = prefix or ""
    at = bisect.bisect_left(names, prefix)
    if limit is not None:
        at = max(at, bisect.bisect_right(names, limit))
    items: list = []
    while at < len(names) and len(items) <= max_keys:
        name = names[at]
        if not name.startswith(prefix):
            break
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            folder = prefix + rest.split(delimiter)[0] + delimiter
            if limit is None or folder > limit:
                items.append(folder)
            at = bisect.bisect_left(names, _after(folder), at)
            continue
        key = store[name]  # the latest version, as moto lists it
        if not isinstance(key, FakeDeleteMarker):
            items.append(key)
        at += 1
    return backend._truncate_result(items, max_keys)


def _list_objects_v2(
    self: S3Backend,
    bucket: Any,  # noqa: ANN401 - moto's FakeBucket
    prefix: str | None,
    delimiter: str | None,
    continuation_token: str | None,
    start_after: str | None,
    max_keys: int,
) -> tuple[list, bool, str | None]:
    if _settings["latency_s"]:
        time.sleep(_settings["latency_s"])
    if _settings["model"] == "moto" or isinstance(bucket, FakeTableStorageBucket):
        return _moto_list_objects_v2(
            self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
        )
    limit = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
    return s3_page(self, bucket, prefix, delimiter, limit, max_keys)


def _to_datetime(value: Any) -> Any:  # noqa: ANN401 - as botocore's
    """moto's serializer parses each listed key's own timestamp text again (with dateutil,
    about half its CPU per page); the S3 model reads it from a cache (the same datetimes)."""
    if _settings["model"] == "s3" and isinstance(value, str):
        return _parsed(value)
    return _moto_to_datetime(value)


def _rendered(self: S3Response) -> tuple[int, dict, str] | None:
    """moto's ListObjectsV2 answer, the same bytes, written directly: moto's generic
    serializer costs ~0.1 ms a key. None where moto's own rendering is needed (owners,
    checksums, keys without a storage class)."""
    query = self.querystring
    encoding = query.get("encoding-type", [None])[0]  # botocore asks for "url"
    if "fetch-owner" in query or encoding not in (None, "url"):
        return None
    name = urllib.parse.quote if encoding else str
    token = query.get("continuation-token", [None])[0]
    if token == "":
        return None  # moto's InvalidContinuationToken
    prefix = self._get_querystring(self.request, self.uri).get("prefix", [None])[0]
    prefix = prefix.decode("utf-8") if isinstance(prefix, bytes) else prefix
    delimiter = query.get("delimiter", [None])[0]
    max_keys = int(query.get("max-keys", [settings.get_s3_default_max_keys()])[0])
    start_after = query.get("start-after", [None])[0]
    bucket = self.backend.get_bucket(self.bucket_name)
    items, truncated, next_token = self.backend.list_objects_v2(
        bucket, prefix, delimiter, token, start_after, max_keys
    )
    keys = [i for i in items if isinstance(i, FakeKey)]
    if any(k.checksum_algorithm or not k.storage_class for k in keys):
        return None
    out = [
        '<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult '
        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<IsTruncated>{str(truncated).lower()}</IsTruncated>",
        *(
            f"<Contents><Key>{escape(name(k.name))}</Key><LastModified>{k.last_modified_ISO8601}"
            f"</LastModified><ETag>{escape(k.etag)}</ETag><Size>{k.size}</Size>"
            f"<StorageClass>{escape(k.storage_class)}</StorageClass></Contents>"
            for k in keys
        ),
        f"<Name>{escape(bucket.name)}</Name>",
        f"<Prefix>{escape(name(prefix))}</Prefix>" if prefix else "<Prefix/>",
    ]
    if delimiter:
        out.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
    out.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        out += (
            f"<CommonPrefixes><Prefix>{escape(name(f))}</Prefix></CommonPrefixes>"
            for f in items
            if isinstance(f, str)
        )
    if encoding:
        out.append(f"<EncodingType>{encoding}</EncodingType>")
    out.append(f"<KeyCount>{len(items)}</KeyCount>")
    if next_token:
        out.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
    if not token and start_after:
        out.append(f"<StartAfter>{escape(start_after)}</StartAfter>")
    out.append("</ListBucketResult>")
    return 200, {"Content-Type": "application/xml", **self.response_headers}, "".join(out)


def _list_objects_v2_response(self: S3Response) -> Any:  # noqa: ANN401 - moto's response
    if _settings["model"] == "s3" and (rendered := _rendered(self)) is not None:
        return rendered
    return _moto_response(self)


def install() -> None:
    """Patch moto's backend and key store classes in this process (idempotent)."""
    if S3Backend.list_objects_v2 is _list_objects_v2:
        return
    for name in ("__setitem__", "setlist", "pop", "__delitem__"):
        setattr(_VersionedKeyStore, name, _tracking(getattr(_VersionedKeyStore, name)))
    S3Backend.list_objects_v2 = _list_objects_v2
    moto.core.serialize.parse_to_aware_datetime = _to_datetime
    S3Response.list_objects_v2 = _list_objects_v2_response


def configure(model: str = "moto", latency_ms: float = 0.0) -> dict[str, Any]:
    """Choose the listing model and the latency per LIST request; returns the settings."""
    if model not in MODELS:
        raise ValueError(f"listing model {model!r}: one of {', '.join(MODELS)}")
    if latency_ms < 0:
        raise ValueError("latency_ms must be >= 0")
    _settings.update(model=model, latency_s=latency_ms / 1000)
    return describe()


def describe() -> dict[str, Any]:
    return {"model": _settings["model"], "latency_ms": _settings["latency_s"] * 1000}
