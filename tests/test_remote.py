"""The job's steps that hold a row per file run in Ray tasks (`pipeline.remote.RowTask`):
their result or their own error comes back to the driver, and a worker that dies on
every try stops the job with one line."""

from __future__ import annotations

import logging

import pytest
import ray

from pipeline.remote import RowTask, on_a_worker
from pipeline.sink import StageFailed


def test_the_result_and_the_error_come_back_as_themselves(ray_session):
    def halve(n: int) -> float:  # defined here: pickled by value into the worker
        if n < 0:
            raise KeyError(f"no half of {n}")
        return n / 2

    step = RowTask(halve, "halving")
    assert step(3) == 1.5
    with pytest.raises(KeyError, match="no half of -1"):
        step(-1)


def test_its_warnings_are_logged_on_the_driver(ray_session, caplog):
    def crowded() -> int:
        import logging

        logging.getLogger("pipeline.test_remote").warning("%d crowded buckets", 3)
        logging.getLogger("pipeline.test_remote").info("not worth the driver's log")
        return 7

    with caplog.at_level(logging.INFO):
        assert RowTask(crowded, "warning")() == 7
    found = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("test_remote")]
    assert found == [(logging.WARNING, "3 crowded buckets")]


def test_a_worker_that_dies_on_each_try_stops_the_job(ray_session):
    def die() -> None:
        import os

        os._exit(1)  # as the OOM killer would end it

    with pytest.raises(StageFailed, match="the test step: a worker died"):
        RowTask(die, "the test step")()


def test_it_goes_to_a_node_with_cpus(ray_session):
    (node,) = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    assert on_a_worker()["scheduling_strategy"].node_id == node["NodeID"]
