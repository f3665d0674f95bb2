"""De-duplication's string columns as numbers (`pipeline.dedup.codes`) against the Arrow
kernels they replace on the driver: the same codes, the same answers, the same errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.dedup.codes import all_distinct, first_seen_codes, hashes_to_uint64


def chunked(values: list, rng: np.random.Generator) -> pa.ChunkedArray:
    """`values` in up to four chunks, some of them empty or sliced."""
    n = len(values)
    cuts = sorted(rng.integers(0, n + 1, 3)) if n else []
    parts = [values[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    arrays = [pa.array(["pad", *p], pa.string()).slice(1) for p in parts]  # offset != 0
    return pa.chunked_array(arrays, pa.string())


def arrow_codes(column: pa.ChunkedArray) -> np.ndarray:
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices, np.int64)


@pytest.mark.parametrize("seed", range(60))
def test_codes_are_dictionary_encodes(seed):
    """First-appearance codes, also for columns the fast path hands back to Arrow:
    other characters, short strings, and two digests sharing their first 64 bits."""
    rng = np.random.default_rng(seed)
    pool = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(int(rng.integers(1, 40)))]
    if seed % 3 == 1:
        pool.append(pool[0][:16] + "0" * 48)  # the same first 16 digits, another digest
    if seed % 5 == 2:
        pool += ["not hex at all, long enough", "short"]
    values = [pool[i] for i in rng.integers(0, len(pool), int(rng.integers(0, 400)))]
    column = chunked(values, rng)
    assert first_seen_codes(column).tolist() == arrow_codes(column).tolist()


@pytest.mark.parametrize("seed", range(40))
def test_all_distinct_is_count_distinct(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    values = [f"s3://lake/class/{i}.jpg" for i in rng.permutation(n)]
    if seed % 2 and n > 1:
        values[int(rng.integers(1, n))] = values[0]  # one repeated URI
    if seed % 7 == 3 and n:
        values[int(rng.integers(0, n))] = None
    column = chunked(values, rng)
    assert all_distinct(column) == (pc.count_distinct(column).as_py() == len(column))


def test_all_distinct_compares_strings_that_share_a_fingerprint(monkeypatch):
    """Equal fingerprints of different strings do not make a repeat, nor hide one."""
    from pipeline.dedup import codes

    monkeypatch.setattr(codes, "fingerprints", lambda c: np.zeros(len(c), np.uint64))
    assert all_distinct(pa.chunked_array([["a", "b", "c"], ["d"]]))
    assert not all_distinct(pa.chunked_array([["a", "b", "c"], ["a"]]))


@pytest.mark.parametrize("seed", range(30))
def test_hex_hashes_decode_as_int(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    values = rng.integers(0, 2**63, n, dtype=np.uint64) << np.uint64(1)
    values |= rng.integers(0, 2, n).astype(np.uint64)
    text = [
        format(int(v), "016x" if rng.random() < 0.5 else "016X") if rng.random() > 0.1 else None
        for v in values
    ]
    decoded, valid = hashes_to_uint64(chunked(text, rng))
    assert decoded.tolist() == [int(t, 16) if t else 0 for t in text]
    assert valid.tolist() == [t is not None for t in text]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("0123456789abcdeg", "found other characters"),
        ("0123456789abcdeé", "found other characters"),  # 16 characters, 17 bytes
        ("0123456789abcdef0", "got '0123456789abcdef0'"),
        ("0123", "got '0123'"),
    ],
)
def test_bad_hashes_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        hashes_to_uint64(pa.array(["0" * 16, bad]))
