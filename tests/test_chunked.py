"""`pipeline.chunked.take` gathers what Arrow's own take gathers, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.chunked import take


@pytest.mark.parametrize("sizes", [[5, 0, 17, 1, 9], [40], [], [0, 3]])
def test_take_equals_arrows_take(sizes):
    rng = np.random.default_rng(len(sizes))
    values = [f"v{i}" if i % 7 else None for i in range(sum(sizes))]
    bounds = np.cumsum([0, *sizes])
    column = pa.chunked_array(
        [pa.array(values[a:b], pa.string()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        pa.string(),
    )
    n = len(values)
    for count in (0, 1, 25) if n else (0,):
        rows = rng.integers(0, n, count)
        mask = rng.random(count) < 0.3
        expected = column.combine_chunks().take(pa.array(rows, mask=mask))
        assert take(column, rows, mask).equals(expected)
        assert take(column, rows).equals(column.combine_chunks().take(pa.array(rows)))
        assert take(column.combine_chunks(), rows, mask).equals(expected)  # a plain array
