"""s3fs with S3 keys taken literally: a key may contain `?versionId=`.

s3fs cuts every path at `?versionId=` to read a version id from it, even when the
filesystem is not version-aware, so an object whose key contains that text (legal in
S3) could never be read or listed by name. The lake is not read by version, so here
the whole text after the bucket is the key.
"""

from __future__ import annotations

from s3fs import S3FileSystem

_VERSION_MARK = "?versionId="
_PLACEHOLDER = "\x00versionId="  # never in a key s3fs is given: S3 keys are listed text


class LiteralKeyS3FileSystem(S3FileSystem):
    """S3FileSystem whose paths never carry a version id unless version_aware is set."""

    def split_path(self, path: str) -> tuple[str, str, str | None]:
        if self.version_aware or _VERSION_MARK not in path:
            return super().split_path(path)
        bucket, key, _ = super().split_path(path.replace(_VERSION_MARK, _PLACEHOLDER))
        return bucket, key.replace(_PLACEHOLDER, _VERSION_MARK), None
