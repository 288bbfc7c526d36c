"""Issue 20 D11/D12 and the kernel's warnings: what a long run keeps is bounded.

- D12: ``proc.syscalls`` is a ring of the last ``syscall_log`` records with counters for the
  whole run (100,000 x alloc+free of 1 MiB once grew it by 254 MiB).
- D11: a program's output is kept once, up to ``output_limit`` bytes per stream, the rest
  counted or passed to a sink (64 x WriteFile(1 MiB) once cost 241 MiB: the capture plus a
  decoded copy in every record).
- Unhandled system calls are the run's warnings, reported after the program's output (they
  were logged to heapemu's stderr in the middle of the program's own).
"""

from __future__ import annotations

import io
import json

import pytest
from asmutil import assemble, syscall_stubs
from programbuild import build
from rich.console import Console
from test_front_doors import heapemu

from emu import Process
from emu.facade import run_program
from emu.heap.allocator import Allocator
from emu.nt.records import DEFAULT_SYSCALL_LOG, SyscallRecord
from emu.scenario.render import render_result
from emu.scenario.run import Observer, ScenarioRun, run_scenario
from emu.scenario.shipped import find_scenario
from emu.win.ntdefs import NtStatus

MIB = 1 << 20


def test_syscall_log_keeps_the_last_records_and_counts_every_call(arch: str) -> None:
    proc = Process(arch, syscall_log=10)
    stubs = syscall_stubs(proc)
    for _ in range(25):
        assert proc.call(stubs["NtClose"], 0) == NtStatus.INVALID_HANDLE
    n = len(proc.syscalls)
    for _ in range(5):
        assert proc.call(stubs["NtYieldExecution"]) == NtStatus.NO_YIELD_PERFORMED  # one thread
    log = proc.syscalls
    assert len(log) == 30 and log.first == 20 and log.dropped == 20
    assert [r.seq for r in log] == list(range(20, 30))  # the newest ten, in order
    assert [r.name for r in log[n:]] == ["NtYieldExecution"] * 5  # "since n" still works
    assert log[-1].seq == 29 and log[20].name == "NtClose"
    assert [r.seq for r in log[:22]] == [20, 21]  # a slice starts at the oldest kept record
    with pytest.raises(IndexError, match="dropped"):
        log[19]
    assert log.counts == {"NtClose": 25, "NtYieldExecution": 5}
    assert log.failed == {"NtClose": 25}
    # keeping more from now on, or everything (opt-in)
    log.keep = None
    for _ in range(20):
        proc.call(stubs["NtYieldExecution"])
    assert len(list(log)) == 30 and log.first == 20


def test_syscall_log_is_bounded_by_default(arch: str) -> None:
    """Alloc+free of 1 MiB blocks (a reserve and a release each) keeps DEFAULT_SYSCALL_LOG
    records, whatever the number of calls; the counters see them all."""
    proc = Process(arch, syscall_log=100)
    allocator = Allocator(proc, proc.load_builtin_heap())
    heap = allocator.create_heap(0x2, 0, 0)  # HEAP_GROWABLE
    before = dict(proc.syscalls.counts)
    for _ in range(300):
        block = allocator.alloc(heap, MIB)
        assert block and allocator.free(heap, block)
    log = proc.syscalls
    assert len(list(log)) == 100 and len(log) > 600
    grown = {k: v - before.get(k, 0) for k, v in log.counts.items()}
    assert grown["NtAllocateVirtualMemory"] >= 300 and grown["NtFreeVirtualMemory"] >= 300
    assert Process(arch).syscalls.keep == DEFAULT_SYSCALL_LOG


def test_observers_see_every_call_even_when_nothing_is_kept(arch: str) -> None:
    proc = Process(arch, syscall_log=0)
    stubs = syscall_stubs(proc)
    seen: list[SyscallRecord] = []
    proc.syscall_observers.append(seen.append)
    for _ in range(3):
        proc.call(stubs["NtYieldExecution"])
    assert [r.seq for r in seen] == [0, 1, 2] and not list(proc.syscalls)
    assert proc.syscalls.counts == {"NtYieldExecution": 3}


def test_snapshots_restore_the_log_and_its_counters(arch: str) -> None:
    proc = Process(arch, syscall_log=4)
    stubs = syscall_stubs(proc)
    for _ in range(6):
        proc.call(stubs["NtYieldExecution"])
    log = proc.syscalls
    snap = proc.snapshot()
    for _ in range(3):
        proc.call(stubs["NtClose"], 0)
    proc.restore(snap)
    assert proc.syscalls is log  # in place: observers may hold it
    assert len(log) == 6 and [r.seq for r in log] == [2, 3, 4, 5]
    assert log.counts == {"NtYieldExecution": 6} and not log.failed


@pytest.mark.wine
def test_program_output_is_kept_once_up_to_the_limit(arch: str) -> None:
    exe = build("flood.exe", arch)
    result = run_program(exe, ["flood.exe", "8"], output_limit=MIB + 5)
    assert result.exit_code == 0
    assert result.stdout == b"x" * (MIB - 1) + b"\n" + b"xxxxx"
    assert result.stdout_truncated == 7 * MIB - 5 and result.stderr == b"before\nafter\n"


@pytest.mark.wine
def test_program_output_goes_whole_to_a_sink(arch: str) -> None:
    from emu.facade import load_program

    sink = io.BytesIO()
    program = load_program(
        build("flood.exe", arch), ["flood.exe", "3"], output_limit=0, stdout_sink=sink
    )
    result = program.run()
    assert result.exit_code == 0 and result.stdout == b""
    assert sink.getvalue() == (b"x" * (MIB - 1) + b"\n") * 3
    assert result.stdout_truncated == 3 * MIB
    writes = [r for r in program.proc.syscalls if r.name == "NtWriteFile"]
    big = [r for r in writes if r.details["bytes"] == MIB]
    assert len(big) == 3
    assert all(len(r.details["text"]) <= 80 for r in writes)  # a preview, not a copy


@pytest.mark.wine
def test_exec_reports_unhandled_calls_after_the_programs_output(arch: str) -> None:
    exe = build("flood.exe", arch)
    p = heapemu("exec", exe, "1")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines[:2] == ["before", "after"]  # the program's stderr, uninterrupted
    assert lines[2].startswith("heapemu: unhandled system call: NtAllocateLocallyUniqueId (1 call")
    assert len(p.stdout) == MIB
    report = json.loads(heapemu("exec", "--json", "--output-limit", "100", exe, "2").stdout)
    assert report["stderr"] == "before\nafter\n" and report["outcome"] == "exited"
    assert len(report["stdout"]) == 100 and report["stdout_truncated"] == 2 * MIB - 100
    assert [(w["kind"], w["name"], w["calls"]) for w in report["warnings"]] == [
        ("unhandled system call", "NtAllocateLocallyUniqueId", 1)
    ]


def unserved_call(proc: Process) -> int:
    """A function issuing system call 0x777, which no table names (cdecl, no arguments)."""
    if proc.arch.name == "x64":
        f = assemble(proc, "mov r10, rcx; mov eax, 0x777; syscall; ret")
    else:
        f = assemble(proc, "mov eax, 0x777; lea edx, [esp+4]; int 0x2e; ret")
    proc.register_syscall_table(f, f + 0x100, {})
    return f


class _UnservedCall(Observer):
    """Issues a system call no table names once the allocator is loaded."""

    def started(self, run: ScenarioRun) -> None:
        f = unserved_call(run.proc)
        for _ in range(3):
            assert run.proc.call(f, convention="cdecl") == NtStatus.NOT_IMPLEMENTED


def test_scenario_results_carry_the_kernels_warnings(arch: str) -> None:
    result = run_scenario(find_scenario("lec04_growable_heap"), arch, "builtin",
                          observers=[_UnservedCall()])  # fmt: skip
    assert result.ok
    (warning,) = result.warnings
    assert (warning["kind"], warning["name"], warning["calls"]) == (
        "unhandled system call",
        "syscall_0x777",
        3,
    )
    assert result.to_json()["warnings"] == [warning]
    console = Console(file=io.StringIO(), width=200)
    render_result(console, result)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "heapemu warnings" in text and "syscall_0x777 (3 calls" in text


def test_a_large_write_is_captured_whole_or_not_at_all(arch: str) -> None:
    """NtWriteFile copies a chunk at a time, after probing the whole buffer as ProbeForRead
    does: a buffer whose tail is not readable writes nothing (STATUS_ACCESS_VIOLATION)."""
    from emu.nt.objects import STD_HANDLES
    from emu.nt.output import OutputCapture
    from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE

    proc = Process(arch)
    stubs = syscall_stubs(proc)
    proc.objects.stdout = OutputCapture(limit=None)
    size = 3 * MIB + 5
    base, _ = proc.memory.allocate(0, 4 * MIB, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, size + 0x1000, MEM_COMMIT, PAGE_READWRITE)
    data = bytes(range(256)) * (size // 256) + b"tail!"
    proc.write(base, data)
    iosb = base + size + 0x10
    out = STD_HANDLES["stdout"]
    args = (out, 0, 0, 0, iosb, base, 4 * MIB - 0x10, 0, 0)
    assert proc.call(stubs["NtWriteFile"], *args) == NtStatus.ACCESS_VIOLATION
    assert proc.objects.stdout.total == 0
    assert proc.call(stubs["NtWriteFile"], out, 0, 0, 0, iosb, base, size, 0, 0) == 0
    assert proc.objects.stdout.getvalue() == data
    record = proc.syscalls[-1]
    assert record.details["bytes"] == size and len(record.details["text"]) <= 67


def test_failure_reports_count_every_call_and_show_the_warnings(arch: str) -> None:
    from emu.pytest_plugin import failure_context

    proc = Process(arch, syscall_log=2)
    stubs = syscall_stubs(proc)
    for _ in range(5):
        proc.call(stubs["NtYieldExecution"])
    assert proc.call(unserved_call(proc), convention="cdecl") == NtStatus.NOT_IMPLEMENTED
    text = failure_context([(proc, "")], [], None, n_syscalls=10)
    assert f"process {arch}: last 2 of 6 system calls" in text
    assert "heapemu: unhandled system call: syscall_0x777 (1 call" in text
