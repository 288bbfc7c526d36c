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
from pathlib import Path

import pytest
from conformance.build import ARCH_CC, FILES_BY_KEY, BuildError, build, selectable_source
from conformance.run import parse_output, run_program

from loader.errors import LoaderError
from loader.wine_tests import TEST_FILES, WineSourceError, find_wine_tests, verify_wine_tests

FUNCTION = "test_CreateFileMapping_protection"
# failures measured with this tree (python -m tests.conformance --file kernel32-virtual
# --functions): none on either arch; the count may only go down
MAX_FAILURES = {"x86": 0, "x64": 0}
MIN_CHECKS = 600


@pytest.mark.wine
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


SOURCE = """/* a test */
static void test_a(void) {}
START_TEST(virtual)
{
    if (argc >= 3)
    {
        test_child(TRUE);
        return;
    }
    test_a();
    if (flag)
    {
        test_b( 1 );
    }
}
"""


def test_selectable_source_keeps_line_numbers() -> None:
    """Each test_*() call of START_TEST is made selectable on its own line (failures keep
    Wine's line numbers); the child-process modes are left alone."""
    out, names = selectable_source(SOURCE, "virtual")
    assert names == ["test_a", "test_b"]
    assert len(out.splitlines()) == len(SOURCE.splitlines())
    lines = out.splitlines()
    assert lines[6] == "        test_child(TRUE);"
    assert lines[9] == '    if (heapemu_test_selected("test_a")) test_a();'
    assert lines[12] == '        if (heapemu_test_selected("test_b")) test_b( 1 );'


def test_parse_output() -> None:
    text = (
        "virtual.c:12: Test failed: one\r\nvirtual.c:12: Test failed: two\r\n"
        "virtual.c:40: Test succeeded inside todo block: three\r\n"
        "0400:virtual: 2599 tests executed (97 marked as todo, 0 as flaky, 3 failures), "
        "1 skipped.\r\n"
    )
    out = parse_output(text)
    assert (out["completed"], out["executed"], out["failures"], out["todo"], out["skipped"]) == (
        True, 2599, 3, 97, 1,
    )  # fmt: skip
    assert out["failure_lines"] == {"virtual.c:12": 2, "virtual.c:40": 1}
    unfinished = parse_output(text.rsplit("0400", 1)[0])
    assert (unfinished["completed"], unfinished["failures"]) == (False, 3)


def test_modified_wine_sources_are_refused(tmp_path: Path) -> None:
    for rel in TEST_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("not Wine's\n")
    with pytest.raises(WineSourceError, match=r"not Wine 8\.0's file"):
        verify_wine_tests(tmp_path)
