"""The pytest plugin, exercised on a small user test suite with pytester."""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SEED = Path(__file__).resolve().parent.parent / "emu" / "scenarios" / "lec04_growable_heap.yaml"
# pytester points HOME at a temporary directory; Wine's DLLs stay in the real per-user cache
CACHE = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")


@pytest.fixture(autouse=True)
def real_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", CACHE)


USER_TESTS = """
import pytest

def test_process(heapemu_process, heapemu_arch):
    assert heapemu_process.arch.name == heapemu_arch

def test_alloc(heapemu_allocator, heapemu_allocator_kind):
    a = heapemu_allocator
    h = a.create_heap()
    p = a.alloc(h, 0x100)
    assert p and a.size(h, p) == 0x100 and a.name == heapemu_allocator_kind

@pytest.mark.heapemu(arch="x64")
def test_x64_only(heapemu_process):
    assert heapemu_process.arch.name == "x64"

@pytest.mark.heapemu(allocator="wine")
def test_wine_only(heapemu_allocator):
    assert heapemu_allocator.name == "wine"
"""


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # load only our plugin in the inner runs, whatever else is installed
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    # -W: the outer session imported the plugin already, so it cannot be assertion-rewritten
    return p.runpytest(
        "-p",
        "emu.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "-v",
        "-rs",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *args,
    )


def test_fixtures_run_on_both_architectures(user_suite: pytest.Pytester) -> None:
    r = run(user_suite)
    r.assert_outcomes(passed=5, skipped=2)  # test_wine_only, on each arch
    r.stdout.fnmatch_lines(
        [
            "*test_process?x86? PASSED*",
            "*test_process?x64? PASSED*",
            "*test_alloc?x86-builtin? PASSED*",
            "*test_alloc?x64-builtin? PASSED*",
            "*test_x64_only?x64? PASSED*",
            "*test_wine_only?x86-no-allocator? SKIPPED*",
            "SKIPPED*needs heapemu allocator wine; run with --heapemu-allocator wine",
        ]
    )


def test_arch_option_and_ini(user_suite: pytest.Pytester) -> None:
    r = run(user_suite, "--heapemu-arch", "x86", "-k", "process or x64_only")
    r.assert_outcomes(passed=1, skipped=1)  # test_x64_only supports no chosen arch
    r.stdout.fnmatch_lines(["*test_process?x86? PASSED*", "*needs heapemu arch x64*"])
    user_suite.makeini("[pytest]\nheapemu_arch = x64\n")
    run(user_suite, "-k", "process").assert_outcomes(passed=1)


@pytest.mark.wine
def test_allocator_option_parameterises_over_allocators(user_suite: pytest.Pytester) -> None:
    r = run(user_suite, "--heapemu-allocator", "builtin,wine", "--heapemu-arch", "x64")
    r.assert_outcomes(passed=5)
    r.stdout.fnmatch_lines(["*test_alloc?x64-builtin? PASSED*", "*test_alloc?x64-wine? PASSED*"])


def test_bad_option_is_a_usage_error(user_suite: pytest.Pytester) -> None:
    r = run(user_suite, "--heapemu-arch", "arm64")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--heapemu-arch: 'arm64' is not one of x86, x64*"])


def test_a_failing_test_reports_system_calls_and_the_fault(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        test_fails="""
        def test_wrong_size(heapemu_allocator):
            a = heapemu_allocator
            h = a.create_heap()
            assert a.size(h, a.alloc(h, 0x100000)) == 1

        def test_fault(heapemu_allocator):
            a = heapemu_allocator
            h = a.create_heap()
            p = a.alloc(h, 0x100)
            a.alloc(h, 0x100)
            a.free(h, p)
            a.proc.write(p, b"A" * 16)  # the free block's list links
            a.alloc(h, 0x100)  # unlinking it writes through them

        def test_no_heapemu():
            assert False
        """
    )
    r = run(pytester, "--heapemu-arch", "x64", "--heapemu-syscalls", "3")
    r.assert_outcomes(failed=3)
    out = r.stdout.str()
    # the section appears for the two heapemu tests only
    assert out.count("- heapemu -") == 2, out
    r.stdout.fnmatch_lines(
        [
            "*- heapemu -*",
            "process x64 builtin: last 3 of * system calls",
            "  #* NtAllocateVirtualMemory(*) -> STATUS_SUCCESS*",
        ]
    )
    r.stdout.fnmatch_lines(
        [
            "last * of * allocation events:",
            "  #* ntheap!RtlAllocateHeap(HeapHandle=0x*, Flags=0, Size=0x100000) = 0x*  <- *",
        ]
    )
    r.stdout.fnmatch_lines(["  #* ntheap!RtlAllocateHeap(*) (did not return)  <- *"])
    r.stdout.fnmatch_lines(
        [
            "emulation fault: unmapped write at address 0x*",
            "  pc=0x* ntheap!*: mov *",
            "  in call to ntheap!RtlAllocateHeap(*)",
            "  rax=*",
        ]
    )


def test_heapemu_run_fixture_reports_the_failed_step(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        test_scn=f"""
        def test_seed(heapemu_run):
            r = heapemu_run({str(SEED)!r})
            assert r.ok and len(r.names["a"]) == 100

        def test_expect(heapemu_run):
            r = heapemu_run({{"steps": [{{"create_heap": None}}, {{"alloc": 16, "as": "p"}},
                                       {{"size": "p", "expect": 17}}]}})
            assert r.ok
        """
    )
    r = run(pytester, "--heapemu-arch", "x86")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(
        ["scenario scenario x86 builtin: step 3 size p: expected 0x11, got 0x10"]
    )


def test_the_entry_point_loads_the_plugin(pytester: pytest.Pytester) -> None:
    """As installed: `pytest` in a user's project gets the fixtures without any -p."""
    names = [ep.value for ep in entry_points(group="pytest11")]
    assert "emu.pytest_plugin" in names
    pytester.makepyfile(test_ep="def test_ep(heapemu_process):\n    assert heapemu_process.peb\n")
    r = pytester.runpytest_subprocess("--heapemu-arch", "x64", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    assert sys.executable  # the subprocess ran with this interpreter's installed plugins


def test_heapemu_run_keeps_a_scenarios_own_module(user_suite: pytest.Pytester) -> None:
    """Issue 15, defect 6: a scenario naming its own allocator module runs on it, not on the
    test's allocator."""
    pytester = user_suite
    pytester.makefile(
        ".s",
        bump_x64="my_create: mov rax, 0x1000\n ret\nmy_alloc: lea rax, [r8 + 0x100]\n ret\n",
        bump_x86="my_create: mov eax, 0x1000\n ret 24\nmy_alloc: mov eax, [esp + 12]\n"
        " add eax, 0x100\n ret 12\n",
    )
    pytester.makefile(
        ".yaml",
        own="allocator: {flat: 'bump_{arch}.s', exports: {RtlCreateHeap: my_create, "
        "RtlAllocateHeap: my_alloc}}\nsteps:\n  - create_heap:\n  - alloc: 0x10\n"
        "    as: p\n    expect: 0x110\n",
    )
    pytester.makepyfile(
        test_user="def test_own(heapemu_run):\n"
        "    r = heapemu_run('own.yaml')\n"
        "    assert r.ok, r.failure\n"
        "    assert r.allocator.startswith('flat:bump_')\n"
    )
    run(pytester).assert_outcomes(passed=2)  # x86 and x64


def test_fixtures_and_failure_reports_work_under_xdist(user_suite: pytest.Pytester) -> None:
    """The suite itself runs under pytest-xdist (pyproject's addopts): the plugin's fixtures
    run in the workers, and the ``heapemu`` section of a failing test's report comes back to
    the controller with the report."""
    pytester = user_suite
    pytester.makepyfile(
        test_fails="""
        def test_wrong_size(heapemu_allocator):
            a = heapemu_allocator
            h = a.create_heap()
            assert a.size(h, a.alloc(h, 0x100)) == 1
        """,
    )
    r = run(pytester, "-p", "xdist", "-n", "2")
    r.assert_outcomes(passed=5, skipped=2, failed=2)  # x86 and x64
    r.stdout.fnmatch_lines(
        ["created: 2/2 workers", "[[]gw?[]] *PASSED test_user.py::test_alloc?x86-builtin?*"]
    )
    out = r.stdout.str()
    assert out.count("- heapemu -") == 2, out  # the failure report's section, for both arches
    for arch in ("x86", "x64"):
        r.stdout.fnmatch_lines(
            [f"process {arch} builtin: last * of * system calls", "last * allocation events:"]
        )
