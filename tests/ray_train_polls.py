"""Ray Train's controller looks at its worker group every 2 s by default: a finished fit
returns, a reported checkpoint is registered and a dead worker is noticed up to 2 s late
(one tiny fit each, loaded host: 3.9 s from the loop's end to fit() returning, 0.7 s at
0.25 s). The tests poll faster; Ray passes the setting from the driver to the controller
at each fit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_S = "0.25"


@pytest.fixture(scope="module", autouse=True)
def quick_train_polls() -> Iterator[None]:
    """Every fit of a module that imports this (autouse, so before its module-scoped
    fixtures' fits too) under the faster poll."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HEALTH_CHECK_ENV, POLL_S)
        yield
