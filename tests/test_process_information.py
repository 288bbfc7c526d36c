"""Process and system information (issue 16 causes 5 and 6): NtSetInformationProcess answers
every class (implemented, or a refusal, never a silent success), ProcessThreadStackAllocation,
ProcessVmCounters, SystemPerformanceInformation, the time zone classes, Wine's version class
and the KUSER_SHARED_DATA fields Windows fills, through system calls and through a mingw
program run with Wine's DLLs (tests/programs/sysinfo.c), on x86 and x64."""

from __future__ import annotations

import struct

import pytest
from programbuild import build
from test_virtual_memory import CURRENT, Nt

from emu import Process
from emu.facade import load_program
from emu.nt.calls.info import WINE_VERSION_BLOCK
from emu.process.core import KUSER_SHARED_DATA_ADDRESS
from emu.win.layouts import KUSER_SHARED_DATA
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RESERVE,
    PAGE_READWRITE,
    PROCESSINFOCLASS,
    NtStatus,
)

P = PROCESSINFOCLASS


@pytest.fixture
def nt(arch: str) -> Nt:
    return Nt(Process(arch))


def _set(nt: Nt, cls: int, data: bytes) -> int:
    nt.proc.write(nt.buf, data)
    return nt.NtSetInformationProcess(CURRENT, cls, nt.buf, len(data))


def _query(nt: Nt, cls: int, length: int) -> tuple[int, bytes]:
    st = nt.NtQueryInformationProcess(CURRENT, cls, nt.buf, length, nt.psize)
    return st, nt.proc.read(nt.buf, length)


def test_set_information_process_never_succeeds_silently(nt: Nt) -> None:
    """Issue 16 cause 5: every class answered STATUS_SUCCESS and did nothing."""
    implemented_with_zero = {
        P.ProcessDefaultHardErrorMode, P.ProcessDebugFlags, P.ProcessPriorityBoost,
        P.ProcessIoPriority, P.ProcessPagePriority,
    }  # fmt: skip
    refusals = {
        NtStatus.INVALID_INFO_CLASS, NtStatus.NOT_IMPLEMENTED, NtStatus.PRIVILEGE_NOT_HELD,
        NtStatus.INFO_LENGTH_MISMATCH, NtStatus.INVALID_PARAMETER, NtStatus.ACCESS_DENIED,
    }  # fmt: skip
    for cls in [*range(0, 110), 1000, 0xFFFFFFFF]:
        st = _set(nt, cls, bytes(4))
        if cls in implemented_with_zero:
            assert st == NtStatus.SUCCESS, cls
        else:
            assert st in refusals, (cls, hex(st))
    assert _set(nt, P.ProcessBasicInformation, bytes(4)) == NtStatus.INVALID_INFO_CLASS
    assert _set(nt, P.ProcessVmCounters, bytes(4)) == NtStatus.INVALID_INFO_CLASS
    assert _set(nt, P.ProcessBreakOnTermination, bytes(4)) == NtStatus.PRIVILEGE_NOT_HELD
    assert _set(nt, P.ProcessMitigationPolicy, bytes(4)) == NtStatus.NOT_IMPLEMENTED
    assert _set(nt, 200, bytes(4)) == NtStatus.INVALID_INFO_CLASS


def test_settings_are_checked_and_read_back(nt: Nt) -> None:
    assert _set(nt, P.ProcessPriorityClass, bytes([0, 3])) == NtStatus.SUCCESS  # HIGH
    assert _query(nt, P.ProcessPriorityClass, 2) == (NtStatus.SUCCESS, bytes([0, 3]))
    assert _set(nt, P.ProcessPriorityClass, bytes([0, 4])) == NtStatus.PRIVILEGE_NOT_HELD
    assert _set(nt, P.ProcessPriorityClass, bytes([0, 7])) == NtStatus.INVALID_PARAMETER
    assert _set(nt, P.ProcessPriorityClass, bytes(4)) == NtStatus.INFO_LENGTH_MISMATCH
    assert _set(nt, P.ProcessDefaultHardErrorMode, struct.pack("<I", 3)) == 0
    assert _query(nt, P.ProcessDefaultHardErrorMode, 4)[1] == struct.pack("<I", 3)
    assert _set(nt, P.ProcessIoPriority, struct.pack("<I", 3)) == NtStatus.PRIVILEGE_NOT_HELD
    assert _set(nt, P.ProcessIoPriority, struct.pack("<I", 9)) == NtStatus.INVALID_PARAMETER
    assert _set(nt, P.ProcessPagePriority, struct.pack("<I", 8)) == NtStatus.INVALID_PARAMETER
    assert (
        _set(nt, P.ProcessExecuteFlags, struct.pack("<I", 1)) == NtStatus.ACCESS_DENIED
    )  # permanent
    mask = nt.proc.arch.pack_ptr
    assert _set(nt, P.ProcessAffinityMask, mask(1)) == NtStatus.SUCCESS
    for bad in (0, 2, 3):
        assert _set(nt, P.ProcessAffinityMask, mask(bad)) == NtStatus.INVALID_PARAMETER


def test_thread_stack_allocation(nt: Nt) -> None:
    """What RtlCreateUserStack asks: reserve ReserveSize under ZeroBits, write StackBase."""
    p = nt.proc
    n = p.arch.ptr_size
    info = b"".join(p.arch.pack_ptr(v) for v in (0x200000, 0, 0))
    assert _set(nt, P.ProcessThreadStackAllocation, info) == NtStatus.SUCCESS
    base = p.read_ptr(nt.buf + 2 * n)
    mbi = p.memory.query(base)
    assert (mbi.AllocationBase, mbi.State, mbi.RegionSize) == (base, MEM_RESERVE, 0x200000)
    assert p.memory.region_at(base).usage == "stack"
    low = b"".join(p.arch.pack_ptr(v) for v in (0x10000, 8, 0))  # ZeroBits 8: below 16 MiB
    assert _set(nt, P.ProcessThreadStackAllocation, low) == NtStatus.SUCCESS
    assert p.read_ptr(nt.buf + 2 * n) < 1 << 24
    bad = b"".join(p.arch.pack_ptr(v) for v in (0x10000, 22, 0))
    assert _set(nt, P.ProcessThreadStackAllocation, bad) == NtStatus.INVALID_PARAMETER_3
    ex = struct.pack("<4I", 0, 0, 0, 0) + info
    assert _set(nt, P.ProcessThreadStackAllocation, ex) == NtStatus.SUCCESS
    ex_bad = struct.pack("<4I", 0, 1, 0, 0) + info
    assert _set(nt, P.ProcessThreadStackAllocation, ex_bad) == NtStatus.INVALID_PARAMETER
    assert _set(nt, P.ProcessThreadStackAllocation, info[:-1]) == NtStatus.INFO_LENGTH_MISMATCH


def test_vm_counters(nt: Nt) -> None:
    p = nt.proc
    n = p.arch.ptr_size
    sizes = (0x58, 0x60, 0x70) if n == 8 else (0x2C, 0x30, 0x40)
    for size in sizes:
        st, _ = _query(nt, P.ProcessVmCounters, size)
        assert st == NtStatus.SUCCESS and p.read_u32(nt.psize) == size
    assert _query(nt, P.ProcessVmCounters, sizes[0] + 2)[0] == NtStatus.INFO_LENGTH_MISMATCH

    def counters() -> tuple[int, ...]:
        data = _query(nt, P.ProcessVmCounters, sizes[1])[1]
        f = "Q" if n == 8 else "I"
        pad = "4x" if n == 8 else ""
        return struct.unpack(f"<{f}{f}I{pad}{f * 9}", data)

    before = counters()
    assert before[1] == p.memory.reserved
    nt.alloc(0, 1 << 30, MEM_RESERVE)
    nt.alloc(0, 0x100000, MEM_RESERVE | MEM_COMMIT)
    after = counters()
    assert after[1] - before[1] == (1 << 30) + 0x100000  # VirtualSize
    assert after[4] - before[4] == 0x100000  # WorkingSetSize
    assert after[9] - before[9] == 0x100000  # PagefileUsage
    assert after[11] - before[11] == 0x100000  # PrivateUsage


def test_system_information(nt: Nt) -> None:
    p = nt.proc
    call = nt.NtQuerySystemInformation
    assert call(2, nt.buf, 0x100, nt.psize) == NtStatus.INFO_LENGTH_MISMATCH
    assert call(2, nt.buf, 0x138, nt.psize) == NtStatus.SUCCESS
    committed = p.read_u32(nt.buf + 0x30)
    assert p.read_u32(nt.buf + 0x34) == p.memory.commit_limit // 0x1000  # CommitLimit
    nt.alloc(0, 0x100000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert call(2, nt.buf, 0x200, nt.psize) == NtStatus.SUCCESS
    assert p.read_u32(nt.psize) == 0x158
    assert p.read_u32(nt.buf + 0x30) - committed == 0x100  # CommittedPages
    assert call(102, nt.buf, 0x1B0, 0) == NtStatus.SUCCESS  # SystemDynamicTimeZoneInformation
    assert p.read(nt.buf + 0xAC, 8) == "UTC".encode("utf-16-le") + b"\0\0"
    assert p.read_u32(nt.buf) == 0  # Bias
    assert call(44, nt.buf, 0xAC, 0) == NtStatus.SUCCESS  # SystemCurrentTimeZoneInformation
    assert call(1000, nt.buf, 0x100, 0) == NtStatus.SUCCESS  # SystemWineVersionInformation
    assert p.read(nt.buf, len(WINE_VERSION_BLOCK)) == WINE_VERSION_BLOCK


def test_shared_user_data_fields(proc: Process) -> None:
    def field(name: str, index: int = 0) -> int:
        return KUSER_SHARED_DATA.read(proc, proc.arch, KUSER_SHARED_DATA_ADDRESS, name, index)

    assert field("ActiveGroupCount") == 1 and field("ActiveProcessorCount") == 1
    for pf in (3, 6, 8, 10, 12, 13, 17):  # MMX, SSE, RDTSC, SSE2, NX, SSE3, XSAVE
        assert field("ProcessorFeatures", pf) == 1, pf
    assert field("ProcessorFeatures", 7) == 0  # no 3DNow!
    assert field("ProcessorFeatures", 39) == 0  # no AVX: Unicorn's CPU has none
    assert field("XStateEnabledFeatures") == 3 and field("XStateSize") == 0x240
    assert [field("XStateFeatures", i) for i in range(4)] == [0, 160, 160, 256]
    assert field("XStateAllFeatureSize") == 0x240
    assert field("ImageNumberLow") == (0x8664 if proc.arch.ptr_size == 8 else 0x14C)
    ticks = field("TickCount") * field("TickCountMultiplier") >> 24
    assert ticks == 3_600_000  # an hour since boot, in GetTickCount's milliseconds
    assert field("TickCountHigh2") == field("TickCount") >> 32


SYSINFO = {
    "pf-sse2": 1, "pf-nx": 1, "pf-rdtsc": 1, "pf-cx128": 1, "pf-3dnow": 0,
    "xstate": 3,  # GetEnabledXStateFeatures: x87 and SSE
    "processors": 1,
    "memory-status": 1, "total-phys-mib": 0x400, "total-pagefile-gib": 0x10,
    "avail-below-total": 1,
    "memory-info": 1, "pagefile-grew-kib": 0x400, "working-set-grew-kib": 0x400,
    "tz-bias": 0, "tz-utc": 1,
    "set-high": 1, "set-affinity-2": 0, "set-affinity-2-error": 87, "set-affinity-1": 1,
    "stack-status": 0, "stack-reserve": 0x200000, "stack-allocation-base": 1,
    "stack-top-state": MEM_COMMIT, "stack-top-protect": PAGE_READWRITE, "stack-freed": 0x10000,
}  # fmt: skip


def test_system_information_through_wine(arch: str) -> None:
    program = load_program(build("sysinfo.exe", arch), ["sysinfo.exe"])
    result = program.run()
    assert result.ok, result.error
    got = {k: int(v, 16) for k, v in (line.split(" ", 1) for line in result.text.splitlines())}
    wrong = {k: (hex(got.get(k, -1)), hex(v)) for k, v in SYSINFO.items() if got.get(k) != v}
    assert not wrong, f"(got, expected) per check: {wrong}"


@pytest.mark.wine
def test_the_clocks_a_program_reads_advance_with_the_kernels_clock(arch: str) -> None:
    """GetTickCount/GetTickCount64 and InterruptTime read KUSER_SHARED_DATA, which follows the
    kernel's deterministic clock (1 ms per system call, a sleep's worth when the only thread
    sleeps); QueryPerformanceCounter and GetSystemTimeAsFileTime ask the kernel; rdtsc counts
    the same clock at 3 GHz. Around
    Sleep(50) each advances by 50 ms and the few system calls between the reads; all agree
    on where the clock is, and a second run reads the same numbers."""
    runs = []
    for _ in range(2):
        result = load_program(build("clock.exe", arch), ["clock.exe"]).run(time_limit=60)
        assert result.exit_code == 0, result.error
        runs.append(result.text)
    assert runs[0] == runs[1]  # deterministic
    clocks = {name: (int(a), int(b)) for name, a, b in (s.split() for s in runs[0].splitlines())}
    assert list(clocks) == ["tick", "tick64", "qpc", "filetime", "interrupt", "tsc"]
    advanced = {name: b for name, (_, b) in clocks.items()}
    assert all(50 <= ms <= 60 for ms in advanced.values()), advanced
    assert len(set(advanced.values())) == 1, advanced  # one clock behind all of them
    # before the sleep: the milliseconds since boot (an hour at the process's start,
    # UPTIME_MS) as GetTickCount says them, and the others read a system call or two later
    boot_ms = clocks["tick"][0]
    assert 3_600_000 < boot_ms < 3_600_000 + 1_000 and clocks["tick64"][0] == boot_ms
    start = 133_000_000_000_000_000 // 10_000  # SYSTEM_TIME, in ms
    since_boot = {
        "qpc": clocks["qpc"][0] // 10_000 + 3_600_000,  # 10 MHz since the process started
        "filetime": clocks["filetime"][0] // 10_000 - start + 3_600_000,
        "interrupt": clocks["interrupt"][0] // 10_000,
        "tsc": clocks["tsc"][0] // 3_000_000,  # rdtsc: 3 GHz since boot
    }
    assert all(boot_ms <= ms <= boot_ms + 3 for ms in since_boot.values()), (boot_ms, since_boot)
