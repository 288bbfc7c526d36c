"""Bad input and misuse: clear errors, nothing leaked, the process stays usable (both arches)."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
import weakref

import pytest
from asmutil import assemble, syscall_stubs

from emu import EmulationError, Process
from emu.errors import NtStatusError
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RESERVE,
    MEM_RESET,
    PAGE_READONLY,
    PAGE_READWRITE,
    NtStatus,
)


def test_proc_call_from_a_callback_is_refused(proc: Process) -> None:
    inner = assemble(proc, "mov eax, 7\nret")

    def reenter(p: Process) -> int:
        return p.call(inner)

    cb = proc.register_callback(reenter, 0)
    with pytest.raises(EmulationError, match="not re-entrant"):
        proc.call(cb)
    assert proc.call(inner) == 7


def test_int3_is_reported_at_its_own_address(proc: Process) -> None:
    f = assemble(proc, "nop\nint3\nret")
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert e.value.pc == f + 1 and e.value.instruction == "int3"
    assert e.value.status == NtStatus.BREAKPOINT


def test_reservations_cost_constant_host_memory(proc: Process) -> None:
    """Issue 20 D4: 16 reservations of 16 GiB took a list slot per page (+512 MiB). Page
    states are run-length now: a reservation costs the same host memory whatever its size."""
    mem = proc.memory
    n = len(mem.regions())
    if proc.arch.name == "x86":  # past the 2 GiB user address space
        with pytest.raises(NtStatusError) as e:
            mem.allocate(0x10000000, 1 << 40, MEM_RESERVE, PAGE_READWRITE)
        assert e.value.status == NtStatus.INVALID_PARAMETER_4
        assert len(mem.regions()) == n
        return
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bases = [mem.allocate(0, 16 << 30, MEM_RESERVE, PAGE_READWRITE)[0] for _ in range(16)]
        big, size = mem.allocate(0x100000000000, 1 << 40, MEM_RESERVE, PAGE_READWRITE)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 << 10, f"{grown} bytes of host memory for 16 GiB x 16 + 1 TiB"
    assert (big, size) == (0x100000000000, 1 << 40)
    mem.allocate(bases[3] + (8 << 30), 0x1000, MEM_COMMIT, PAGE_READWRITE)
    assert mem.query(bases[3]).RegionSize == 8 << 30
    assert len(mem.regions()) == n + 17


def test_region_limit_is_an_answer_not_a_crash(proc: Process) -> None:
    mem = proc.memory
    mem.region_limit = len(mem.regions()) + 2
    mem.allocate(0, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    mem.allocate(0, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    with pytest.raises(NtStatusError) as e:
        mem.allocate(0, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    assert e.value.status == NtStatus.NO_MEMORY and "region_limit" in str(e.value)


def test_mem_reset_keeps_protections(proc: Process) -> None:
    stubs = syscall_stubs(proc)
    base, _ = proc.memory.allocate(0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY)
    scratch, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    proc.write_ptr(scratch, base + 0x10)
    proc.write_ptr(scratch + 8, 0x10)
    st = proc.call(
        stubs["NtAllocateVirtualMemory"], -1, scratch, 0, scratch + 8, MEM_RESET, PAGE_READWRITE
    )
    assert st == NtStatus.SUCCESS
    assert (proc.read_ptr(scratch), proc.read_ptr(scratch + 8)) == (base, 0x1000)
    assert proc.memory.query(base).Protect == PAGE_READONLY
    gone, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.free(gone, 0, 0x8000)  # MEM_RELEASE: now free address space
    proc.write_ptr(scratch, gone)
    st = proc.call(
        stubs["NtAllocateVirtualMemory"], -1, scratch, 0, scratch + 8, MEM_RESET, PAGE_READWRITE
    )
    assert st == NtStatus.CONFLICTING_ADDRESSES


def test_bad_syscall_argument_array_is_an_access_violation() -> None:
    # x86 int 0x2e with edx pointing nowhere: the kernel's probe fails, the caller goes on
    proc = Process("x86")
    f = assemble(proc, "mov eax, 0x18\nmov edx, 0x10\nint 0x2e\nret")
    proc.register_syscall_table(f, f + 0x100, {0x18: "NtAllocateVirtualMemory"})
    assert proc.call(f, convention="cdecl") == NtStatus.ACCESS_VIOLATION


def test_memory_watch_needs_a_size(proc: Process) -> None:
    with pytest.raises(ValueError, match="size > 0"):
        proc.watch_memory(proc.teb, 0)


def test_python_reads_name_the_bad_page(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)
    with pytest.raises(EmulationError) as e:
        proc.read(base + 0xF00, 0x200)
    assert e.value.address == base + 0x1000 and "reserved (not committed)" in str(e.value)


def test_processes_are_freed(arch: str) -> None:
    proc = Process(arch)
    proc.load_builtin_heap()
    ref = weakref.ref(proc)
    del proc
    gc.collect()
    assert ref() is None  # no watchdog, view cache or hook keeps a process alive


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_time_limits_hold_while_other_threads_make_processes(arch: str) -> None:
    """Issue 20 D2: the shared watchdog is safe against processes created in other threads
    while it checks (it once died with "Set changed size during iteration", and from then on no
    time limit held)."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def make_processes() -> None:
        try:
            while not stop.is_set():
                Process(arch)
        except BaseException as e:  # recorded, asserted below
            errors.append(e)

    threads = [threading.Thread(target=make_processes) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        proc = Process(arch)
        loop = assemble(proc, "l: jmp l")
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(EmulationError, match="wall-clock limit"):
                proc.call(loop, time_limit=0.3)
            assert time.monotonic() - start < 5  # the limit fired, not a hang
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors
    assert watchdog_thread_alive()


def watchdog_thread_alive() -> bool:
    return any(t.name == "heapemu-watchdog" and t.is_alive() for t in threading.enumerate())
