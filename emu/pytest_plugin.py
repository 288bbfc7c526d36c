"""heapemu's pytest plugin, loaded through the ``pytest11`` entry point: fixtures that give a
user's own tests an emulated Windows process and heap, on x86 and x64.

Fixtures (each test using them runs once per architecture, and once per allocator when it uses
an allocator):

- ``heapemu_process``: a fresh ``Process`` for ``heapemu_arch``
- ``heapemu_allocator``: an ``Allocator`` (builtin heap or Wine's ntdll) loaded into it
- ``heapemu_run``: ``heapemu_run(scenario, **kw)`` runs a scenario file on the same arch and
  allocator (a scenario whose ``allocator:`` is its own PE/flat module runs on that module)
  and returns its ``ScenarioResult``
- ``heapemu_arch`` / ``heapemu_allocator_kind``: the current parameters

Options: ``--heapemu-arch x86,x64|both`` and ``--heapemu-allocator builtin,wine`` (or the ini
keys ``heapemu_arch`` / ``heapemu_allocator``), ``--heapemu-syscalls N``. The marker
``@pytest.mark.heapemu(arch="x64", allocator="wine")`` says what a test supports; it runs on
the intersection with the options (skipped, with the option to add, when that is empty).

When such a test fails, its report gets a ``heapemu`` section: the faulting instruction and
registers if emulation faulted, the failed scenario step, the last system calls, Wine's debug
output and the last allocation events (recorded for ``heapemu_allocator`` unless
``--heapemu-no-events``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from emu.errors import EmulationError
from emu.facade import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES, allocator_kind
from emu.nt.kernel import describe_warning
from emu.scenario import ScenarioResult, load_scenario, run_scenario

ARCHES = ("x86", "x64")
PROCESSES = pytest.StashKey[list[tuple[Process, str]]]()  # (process, allocator or "")
RESULTS = pytest.StashKey[list[ScenarioResult]]()  # what heapemu_run returned
# (process) -> lines for the failure report; the observation work adds allocation events here
EVENT_SOURCES: list[Callable[[Process], list[str]]] = []


# ---------------------------------------------------------------------- options
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("heapemu", "heapemu: emulated Windows heaps")
    group.addoption(
        "--heapemu-no-events",
        action="store_true",
        default=False,
        help="do not record allocation events (faster; failure reports then lack them)",
    )
    group.addoption(
        "--heapemu-arch",
        default=None,
        help="architectures for heapemu fixtures: x86, x64, both or x86,x64 (default both)",
    )
    group.addoption(
        "--heapemu-allocator",
        default=None,
        help=f"allocators for heapemu_allocator: {', '.join(ALLOCATOR_NAMES)} "
        "(comma-separated; default builtin)",
    )
    group.addoption(
        "--heapemu-syscalls",
        type=int,
        default=10,
        help="system calls shown in a failing heapemu test's report (default 10)",
    )
    parser.addini("heapemu_arch", "default for --heapemu-arch", default="both")
    parser.addini("heapemu_allocator", "default for --heapemu-allocator", default="builtin")


def _choices(config: pytest.Config, what: str) -> list[str]:
    known = ARCHES if what == "arch" else ALLOCATOR_NAMES
    raw = config.getoption(f"--heapemu-{what}") or config.getini(f"heapemu_{what}")
    values = list(known) if raw in ("both", "all") else [v.strip() for v in str(raw).split(",")]
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise pytest.UsageError(
            f"--heapemu-{what}: {bad[0] if bad else raw!r} is not one of {', '.join(known)} "
            f"(give one, a comma list, or both)"
        )
    return values


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "heapemu(arch=None, allocator=None): the architectures/allocators (a name or a list) "
        "this test supports; it runs on their intersection with --heapemu-arch/-allocator",
    )
    _choices(config, "arch")  # bad options are usage errors before collection
    _choices(config, "allocator")


def _marker_values(metafunc: pytest.Metafunc, key: str) -> list[str] | None:
    marker = metafunc.definition.get_closest_marker("heapemu")
    if marker is None or marker.kwargs.get(key) is None:
        return None
    value = marker.kwargs[key]
    return [value] if isinstance(value, str) else list(value)


def _already_parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    for m in metafunc.definition.iter_markers("parametrize"):
        names = m.args[0] if m.args else m.kwargs.get("argnames", "")
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, what in (("heapemu_arch", "arch"), ("heapemu_allocator_kind", "allocator")):
        if fixture not in metafunc.fixturenames or _already_parametrized(metafunc, fixture):
            continue
        chosen = _choices(metafunc.config, what)
        supported = _marker_values(metafunc, what)
        values = chosen if supported is None else [v for v in chosen if v in supported]
        if values:
            metafunc.parametrize(fixture, values, indirect=True, ids=values)
        else:
            reason = (
                f"needs heapemu {what} {' or '.join(supported or [])}; run with "
                f"--heapemu-{what} {','.join(supported or [])}"
            )
            skip = pytest.param(None, marks=pytest.mark.skip(reason=reason), id=f"no-{what}")
            metafunc.parametrize(fixture, [skip], indirect=True)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def heapemu_arch(request: pytest.FixtureRequest) -> str:
    """The architecture of this test run: "x86" or "x64"."""
    return str(getattr(request, "param", None) or _choices(request.config, "arch")[0])


@pytest.fixture
def heapemu_allocator_kind(request: pytest.FixtureRequest) -> str:
    """The allocator of this test run: "builtin" or "wine"."""
    return str(getattr(request, "param", None) or _choices(request.config, "allocator")[0])


def _remember(request: pytest.FixtureRequest, proc: Process, allocator: str) -> None:
    # stashed on the test item so the report hook finds it, even after a setup failure
    entries = request.node.stash.setdefault(PROCESSES, [])
    entries[:] = [(p, a) for p, a in entries if p is not proc]
    entries.append((proc, allocator))


@pytest.fixture
def heapemu_process(request: pytest.FixtureRequest, heapemu_arch: str) -> Process:
    """A fresh emulated Windows process (nothing loaded)."""
    proc = Process(heapemu_arch)
    _remember(request, proc, "")
    return proc


@pytest.fixture
def heapemu_allocator(
    request: pytest.FixtureRequest, heapemu_process: Process, heapemu_allocator_kind: str
) -> Allocator:
    """The builtin heap or Wine's ntdll loaded into ``heapemu_process``."""
    proc = heapemu_process
    _remember(request, proc, heapemu_allocator_kind)
    kind = heapemu_allocator_kind
    allocator = allocator_kind(kind).allocator(proc)
    if not request.config.getoption("heapemu_no_events"):
        # allocation events for the failure report (a block hook: --heapemu-no-events to skip)
        recorder = proc.record()
        proc.failure_recorder = recorder
        request.addfinalizer(recorder.stop)
    return allocator


def _last_events(proc: Process, count: int = 10) -> list[str]:
    recorder = proc.failure_recorder
    if recorder is None or not recorder.all:
        return []
    events = recorder.all[-count:]
    lines = [f"last {len(events)} of {len(recorder.all)} allocation events:"]
    for ev in events:
        ret = "(did not return)" if ev.ret is None else f"= 0x{ev.ret:x}"
        lines.append(f"  #{ev.seq} {ev.function}({ev.describe_args()}) {ret}  <- {ev.caller}")
    return lines


EVENT_SOURCES.append(_last_events)


@pytest.fixture
def heapemu_run(
    request: pytest.FixtureRequest, heapemu_arch: str, heapemu_allocator_kind: str
) -> Callable[..., ScenarioResult]:
    """``heapemu_run(path_or_mapping, **run_scenario_kwargs) -> ScenarioResult`` on this
    test's architecture and allocator."""

    def run(scenario: str | Path | dict[str, Any], **kw: Any) -> ScenarioResult:
        sc = load_scenario(scenario)
        kw.setdefault("arch", heapemu_arch)
        modules = [spec for spec in sc.allocators if spec.kind not in ALLOCATOR_NAMES]
        # a scenario that names its own allocator module runs on it; otherwise on this
        # test's allocator
        kw.setdefault("allocator", modules[0] if modules else heapemu_allocator_kind)
        result = run_scenario(sc, **kw)
        request.node.stash.setdefault(RESULTS, []).append(result)
        return result

    return run


# ---------------------------------------------------------------------- failure reports
def _exceptions(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def failure_context(
    processes: list[tuple[Process, str]],
    results: list[ScenarioResult],
    exc: BaseException | None,
    n_syscalls: int = 10,
) -> str:
    """The ``heapemu`` report section of a failing test."""
    lines: list[str] = []
    for e in _exceptions(exc):
        if isinstance(e, EmulationError):
            lines.append(
                f"emulation fault: {e.kind}"
                + (f" at address 0x{e.address:x}" if e.address is not None else "")
            )
            lines.append(f"  pc=0x{e.pc:x} {e.symbol}: {e.instruction}")
            if e.context:
                lines.append(f"  {e.context}")
            if e.registers:
                lines.append("  " + "  ".join(f"{k}={v:x}" for k, v in e.registers.items()))
            break
    for r in results:
        f = r.failure
        if f is not None:
            where = f"step {f.step.index}" + (f" (line {f.step.line})" if f.step.line else "")
            lines.append(
                f"scenario {r.scenario} {r.arch} {r.allocator}: {where} {f.step.label}: "
                f"{f.headline}"
            )
            calls = [c for c in f.syscalls if c.name != "__wine_dbg_write"][-n_syscalls:]
            lines += [f"  {c}" for c in calls] if n_syscalls > 0 else []
    for proc, allocator in processes:
        calls = [r for r in proc.syscalls if r.name != "__wine_dbg_write"]
        what = f"{proc.arch.name}" + (f" {allocator}" if allocator else "")
        shown = calls[-n_syscalls:] if n_syscalls > 0 else []
        # every call counts, including those the ring of records no longer holds
        made = len(proc.syscalls) - proc.syscalls.counts.get("__wine_dbg_write", 0)
        lines.append(f"process {what}: last {len(shown)} of {made} system calls")
        lines += [f"  {r}" for r in shown]
        lines += [f"  heapemu: {describe_warning(w)}" for w in proc.syscall_dispatcher.warnings()]
        if proc.debug_output:
            lines.append("Wine debug output (last 10 lines):")
            lines += [f"  {m.rstrip()}" for m in proc.debug_output[-10:]]
        for source in EVENT_SOURCES:
            lines += source(proc)
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        processes = item.stash.get(PROCESSES, [])
        results = item.stash.get(RESULTS, [])
        if processes or results:
            exc = call.excinfo.value if call.excinfo is not None else None
            n = int(item.config.getoption("--heapemu-syscalls"))
            report.sections.append(("heapemu", failure_context(processes, results, exc, n)))
    return report
