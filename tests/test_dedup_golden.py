"""De-duplication's decisions are pinned: the package gives, on synthetic lakes of every
kind of row and several settings, exactly the decisions the single module gave before
it was split (tests/dedup_cases.py; fingerprints in tests/data/dedup_golden.json)."""

from __future__ import annotations

import json

import pytest
from dedup_cases import CASES, GOLDEN, run_case

from pipeline import dedup

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.parametrize("name", list(CASES))
def test_decisions_equal_the_reference(name):
    expected = json.loads(GOLDEN.read_text())[name]
    found = run_case(dedup, name)
    assert {k: v for k, v in found.items() if k != "decisions_sha256"} == {
        k: v for k, v in expected.items() if k != "decisions_sha256"
    }
    assert found["decisions_sha256"] == expected["decisions_sha256"]


def test_the_cases_exercise_every_outcome():
    golden = json.loads(GOLDEN.read_text())
    for reason in (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE, dedup.LABEL_CONFLICT):
        assert all(case["dropped"][reason] > 0 for case in golden.values()), reason
    assert golden["verified"]["failed_verification"] > 0
