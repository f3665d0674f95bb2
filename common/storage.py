"""fsspec access to local folders, S3 and S3-compatible endpoints, the same way on every node.

The endpoint and options travel inside the job config (not only as process
environment), so Ray tasks on any node open the filesystem the driver meant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

from common.config import option


@dataclass
class StorageConfig:
    endpoint_url: str | None = option(
        None, "S3-compatible endpoint URL (defaults to the AWS_ENDPOINT_URL environment variable)"
    )
    anon: bool = option(False, "Access S3 anonymously (public buckets)")

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )


def storage_options(uri: str, storage: StorageConfig) -> dict:
    """fsspec keyword arguments for `uri`'s protocol."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    # The lake and the outputs change under a long-lived driver (new files, published
    # versions, checkpoints written by other processes): never answer from a cached listing.
    opts: dict = {"anon": storage.anon, "use_listings_cache": False}
    endpoint = storage.resolved_endpoint()
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `uri` and the path inside it (no protocol). S3 keys are taken
    literally, `?versionId=` included (see common.s3keys)."""
    options = storage_options(uri, storage)
    if uri.startswith(("s3://", "s3a://")):
        from common.s3keys import LiteralKeyS3FileSystem  # s3fs only for S3 URIs

        fs = LiteralKeyS3FileSystem(**options)
        return fs, fs._strip_protocol(uri)
    return url_to_fs(uri, **options)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """True for S3-like stores, where folders need no creating (and creating the path's
    first component would create a bucket)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in ("s3", "s3a", "gs", "gcs", "abfs", "az") for p in protocols)


def ensure_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Create the folder that will hold `path` on file systems that have folders; never
    a bucket: a missing bucket stays an error."""
    if not is_object_store(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/', whatever the protocol."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def relative_to(uri: str, root: str) -> str:
    """`uri`'s path below `root` (the inverse of `join`); `uri` itself when not below it."""
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix) :] if root and uri.startswith(prefix) else uri
