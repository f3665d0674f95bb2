"""The off-class keys as numbers (`pipeline.offclass.keys`): the same folds and ranks as
hashing each key string (`probe.uri_rank`), equal codes exactly for equal keys, in one
block or many."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from pipeline.offclass import keys as offclass_keys
from pipeline.offclass.keys import Keys, keys_of
from pipeline.offclass.probe import uri_rank


@pytest.mark.parametrize("block", [7, 10_000])
def test_keys_are_the_strings_ranks_folds_and_equalities(block, monkeypatch):
    monkeypatch.setattr(offclass_keys, "BLOCK_ROWS", block)  # 7: blocks across chunks
    rng = np.random.default_rng(3)
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]
    pool = digests + [f"s3://lake/bird/{i}.jpg" for i in range(10)]
    strings = [pool[i] for i in rng.integers(0, len(pool), 60)]
    found = keys_of(pa.chunked_array([strings[:25], strings[25:]]), splits=3, folds=5)
    values = np.array(strings, dtype=object)
    assert found.rank.tolist() == uri_rank(values).tolist()
    for split in range(3):
        assert found.fold(split).tolist() == (uri_rank(values, split) % 5).tolist()
    same = found.codes[:, None] == found.codes[None, :]
    assert (same == (values[:, None] == values[None, :])).all()


def test_rows_and_concatenation_keep_every_field():
    found = keys_of(["a", "b", "a", "c"], splits=2, folds=3)
    picked = Keys.concat([found[np.array([2])], found[1:2]])
    assert picked.codes.tolist() == [found.codes[0], found.codes[1]]
    assert picked.folds.shape == (2, 2) and len(picked) == 2
