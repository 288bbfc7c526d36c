"""``@pytest.mark.alone``: a test that runs while no other test does, under pytest-xdist.

tests/conftest.py imports the autouse fixture; tests/test_parallel_safety.py checks it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def alone_under_xdist(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test marked ``@pytest.mark.alone`` runs while no other test does: the suite runs on
    pytest-xdist's workers (pyproject's addopts), and a test that times the machine (the
    watchdog's limits under load, tests/test_load.py) must not share it with a sibling worker.

    Two lock files in the run's shared temporary root (each worker's basetemp is a folder of
    it): every test holds "run" shared; an ``alone`` test takes "gate" first, so the other
    workers' next tests wait at the gate while it waits for their current tests to end, then
    holds "run" exclusively. Outside xdist (``-n 0``) there is nothing to wait for."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    root = tmp_path_factory.getbasetemp().parent
    alone = request.node.get_closest_marker("alone") is not None
    with (root / "alone-gate.lock").open("a") as gate, (root / "alone-run.lock").open("a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)
