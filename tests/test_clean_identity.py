"""The cleaning job's output is pinned: on the devkit sample lake (committed crops plus the
generated mess), at its defaults, it keeps, rejects (with the same reasons) and splits
exactly the files it did when tests/data/clean_identity_golden.json was written
(tests/sample_lake_decisions.py). A refactor must leave this test green untouched."""

from __future__ import annotations

import json

import pytest
from sample_lake_decisions import GOLDEN, WEIGHTS, run_case

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_decisions_equal_the_golden(case, tmp_path):
    # 'none' runs on a fresh clone; 'local' needs the ImageNet backbone in ../shared.
    if WEIGHTS[case] is None:
        pytest.skip("no ../shared/weights on this machine: the 'none' case pins the job")
    expected = [list(row) for row in json.loads(GOLDEN.read_text())[case]]
    found = run_case(WEIGHTS[case], tmp_path)
    missing = [row for row in expected if row not in found]
    extra = [row for row in found if row not in expected]
    assert not missing and not extra, {"golden only": missing, "now only": extra}
    assert found == expected
