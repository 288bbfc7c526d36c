"""Shared fixtures: every feature is tested on both architectures."""

from __future__ import annotations

import pytest

from emu import Process


@pytest.fixture(params=["x86", "x64"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proc(arch: str) -> Process:
    return Process(arch, time_limit=10.0)
