"""One of Wine 8.0's own conformance tests under ``heapemu exec``, on x86 and x64 (issue 16).

The whole set runs with ``make conformance`` (``python -m tests.conformance``, not part of the
normal suite; results in docs/conformance.md). Here one small function of kernel32's
virtual.c, test_CreateFileMapping_protection (625 checks: file sections of every protection,
views, commits and protections in them, over files the program creates), must run to its end
with no failure, as on Windows. Wine's sources are fetched from Debian's wine source package
into ~/.cache/heapemu on first use (``python -m loader fetch-tests``); without them, or without
the mingw-w64 compilers, the test is skipped.
"""

from __future__ import annotations

import shutil

import pytest
from conformance.build import ARCH_CC, FILES_BY_KEY, BuildError, build
from conformance.run import run_program

from loader.errors import LoaderError
from loader.wine_tests import find_wine_tests

pytestmark = pytest.mark.wine

FUNCTION = "test_CreateFileMapping_protection"
# failures measured with this tree (python -m tests.conformance --file kernel32-virtual
# --functions): none on either arch; the count may only go down
MAX_FAILURES = {"x86": 0, "x64": 0}
MIN_CHECKS = 600


def test_wine_conformance_function_runs_clean(arch: str) -> None:
    if shutil.which(ARCH_CC[arch]) is None:
        pytest.skip(f"{ARCH_CC[arch]} is not installed (make toolchains)")
    try:
        wine = find_wine_tests()
    except (LoaderError, OSError) as exc:
        pytest.skip(f"Wine's test sources are not available: {exc}")
    try:
        exe = build(FILES_BY_KEY["kernel32-virtual"], arch, wine)
    except BuildError as exc:
        pytest.fail(f"the conformance test does not build: {exc}")
    result = run_program(exe, "kernel32-virtual", arch, FUNCTION, time_limit=120)
    assert result.completed, result.ending
    assert result.executed >= MIN_CHECKS
    assert result.failures <= MAX_FAILURES[arch], result.failure_lines
