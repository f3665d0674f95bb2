"""The exported model's files: what `train export` writes and the Lambda loads.

One place for the names and the checksum, so the writer and the reader cannot drift;
no torch here (the Lambda imports it before deciding to load anything).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.pt"
MODEL_JSON = "model.json"
HASH_CHUNK = 2**20


def file_sha256(path: Path) -> str:
    """model.json records it; the Lambda refuses a model.pt that does not match."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
