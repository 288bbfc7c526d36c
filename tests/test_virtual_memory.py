"""Nt*VirtualMemory through real system calls from emulated code (syscall / int 0x2e / sysenter),
with Windows' rounding and NTSTATUS codes."""

from __future__ import annotations

import struct

import pytest
from asmutil import assemble, syscall_stubs

from emu import EmulationError, Process
from emu.win.layouts import MEMORY_BASIC_INFORMATION
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_EXECUTE_READ,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    NtStatus,
)

CURRENT = -1


class Nt:
    """Calls the services through emulated stubs; pointers live in a scratch page."""

    def __init__(self, proc: Process, x86_path: str = "int2e"):
        self.proc = proc
        self.stubs = syscall_stubs(proc, x86_path)
        self.scratch, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        self.pbase, self.psize, self.pold = self.scratch, self.scratch + 8, self.scratch + 16
        self.buf = self.scratch + 0x100

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args: self.proc.call(self.stubs[name], *args)

    def alloc(
        self, base: int, size: int, typ: int, prot: int = PAGE_READWRITE
    ) -> tuple[int, int, int]:
        p = self.proc
        p.write_ptr(self.pbase, base)
        p.write_ptr(self.psize, size)
        st = self.NtAllocateVirtualMemory(CURRENT, self.pbase, 0, self.psize, typ, prot)
        return st, p.read_ptr(self.pbase), p.read_ptr(self.psize)

    def free(self, base: int, size: int, typ: int) -> tuple[int, int, int]:
        p = self.proc
        p.write_ptr(self.pbase, base)
        p.write_ptr(self.psize, size)
        st = self.NtFreeVirtualMemory(CURRENT, self.pbase, self.psize, typ)
        return st, p.read_ptr(self.pbase), p.read_ptr(self.psize)

    def protect(self, base: int, size: int, prot: int) -> tuple[int, int]:
        p = self.proc
        p.write_ptr(self.pbase, base)
        p.write_ptr(self.psize, size)
        st = self.NtProtectVirtualMemory(CURRENT, self.pbase, self.psize, prot, self.pold)
        return st, p.read_u32(self.pold)

    def query(self, addr: int) -> tuple[int, dict[str, int]]:
        a = self.proc.arch
        st = self.NtQueryVirtualMemory(CURRENT, addr, 0, self.buf, 0x30, self.psize)
        mbi = {
            n: MEMORY_BASIC_INFORMATION.read(self.proc, a, self.buf, n)
            for n in MEMORY_BASIC_INFORMATION.fields
        }
        return st, mbi


@pytest.fixture(params=["x64", "x86-int2e", "x86-sysenter"])
def nt(request: pytest.FixtureRequest) -> Nt:
    arch, _, path = str(request.param).partition("-")
    return Nt(Process(arch), path or "int2e")


def test_reserve_rounds_to_allocation_granularity_and_writes_back(nt: Nt) -> None:
    st, base, size = nt.alloc(0, 0x12345, MEM_RESERVE)
    assert st == NtStatus.SUCCESS
    assert base % 0x10000 == 0 and size == 0x13000
    # a caller-chosen unaligned base is rounded down to 64 KiB, the end up to a page
    want = base + 0x100000 + 0x1234
    st, b2, s2 = nt.alloc(want, 0x100, MEM_RESERVE)
    assert st == NtStatus.SUCCESS
    assert b2 == base + 0x100000 and s2 == 0x2000  # [b2, want+0x100) rounded to pages
    rec = nt.proc.syscalls[-1]
    assert rec.name == "NtAllocateVirtualMemory" and rec.details["base"] == b2


def test_reserved_memory_faults_until_committed_and_reads_zero(nt: Nt) -> None:
    p = nt.proc
    st, base, _ = nt.alloc(0, 0x10000, MEM_RESERVE)
    reader = assemble(p, "mov eax, [ecx]; ret" if p.arch.name == "x86" else "mov eax, [rcx]; ret")
    with pytest.raises(EmulationError) as e:
        p.call(reader, base + 0x2000, convention="fastcall" if p.arch.name == "x86" else None)
    assert e.value.kind == "unmapped read" and e.value.address == base + 0x2000
    st, cb, cs = nt.alloc(base + 0x2010, 0x10, MEM_COMMIT)  # misaligned: page-rounded
    assert (st, cb, cs) == (NtStatus.SUCCESS, base + 0x2000, 0x1000)
    conv = "fastcall" if p.arch.name == "x86" else None
    assert p.call(reader, base + 0x2FFC, convention=conv) == 0
    p.write(base + 0x2000, b"\xaa" * 16)
    # decommit then recommit: contents are gone (zero), as Windows guarantees
    assert nt.free(base + 0x2000, 0x1000, MEM_DECOMMIT)[0] == NtStatus.SUCCESS
    assert nt.alloc(base + 0x2000, 0x1000, MEM_COMMIT)[0] == NtStatus.SUCCESS
    assert p.read(base + 0x2000, 16) == bytes(16)


def test_overlapping_reservation_conflicts(nt: Nt) -> None:
    st, base, _ = nt.alloc(0, 0x20000, MEM_RESERVE)
    st, b, s = nt.alloc(base + 0x10000, 0x1000, MEM_RESERVE)
    assert st == NtStatus.CONFLICTING_ADDRESSES
    assert (b, s) == (base + 0x10000, 0x1000)  # not written back on failure
    # committing where nothing is reserved
    free_spot = base + 0x200000
    assert nt.alloc(free_spot, 0x1000, MEM_COMMIT)[0] == NtStatus.CONFLICTING_ADDRESSES
    # a commit that runs past its reservation
    assert nt.alloc(base + 0x1F000, 0x2000, MEM_COMMIT)[0] == NtStatus.CONFLICTING_ADDRESSES


def test_top_down_and_commit_alone(nt: Nt) -> None:
    st, low, _ = nt.alloc(0, 0x1000, MEM_RESERVE)
    st, high, _ = nt.alloc(0, 0x1000, MEM_RESERVE | MEM_TOP_DOWN)
    assert st == NtStatus.SUCCESS and high > low
    assert high <= nt.proc.arch.user_max
    st, b, s = nt.alloc(0, 0x1800, MEM_COMMIT)  # MEM_COMMIT at NULL base reserves as well
    assert st == NtStatus.SUCCESS and s == 0x2000
    assert nt.query(b)[1]["State"] == MEM_COMMIT


def test_parameter_errors(nt: Nt) -> None:
    p = nt.proc
    assert nt.alloc(0, 0, MEM_RESERVE)[0] == NtStatus.INVALID_PARAMETER_4
    assert nt.alloc(0, 0x1000, 0)[0] == NtStatus.INVALID_PARAMETER_5
    assert nt.alloc(0, 0x1000, MEM_RESERVE, 0x3)[0] == NtStatus.INVALID_PAGE_PROTECTION
    assert nt.alloc(0, 0x1000, MEM_RESERVE, PAGE_NOACCESS | PAGE_GUARD)[0] == (
        NtStatus.INVALID_PAGE_PROTECTION
    )
    assert nt.alloc(0x1000, 0x1000, MEM_RESERVE)[0] == NtStatus.INVALID_PARAMETER_2  # below 64K
    big = p.arch.user_max + 1 - 0x10000
    assert nt.alloc(big, 0x20000, MEM_RESERVE)[0] == NtStatus.INVALID_PARAMETER_4
    huge = p.arch.user_max + 0x10000
    assert nt.alloc(0, huge, MEM_RESERVE)[0] == NtStatus.NO_MEMORY
    # a handle that is not NtCurrentProcess()
    p.write_ptr(nt.pbase, 0)
    p.write_ptr(nt.psize, 0x1000)
    st = nt.NtAllocateVirtualMemory(0x44, nt.pbase, 0, nt.psize, MEM_RESERVE, PAGE_READWRITE)
    assert st == NtStatus.INVALID_HANDLE
    st = nt.NtAllocateVirtualMemory(CURRENT, nt.pbase, 30, nt.psize, MEM_RESERVE, PAGE_READWRITE)
    assert st == NtStatus.INVALID_PARAMETER_3


def test_bad_pointers_are_access_violations_and_change_nothing(nt: Nt) -> None:
    p = nt.proc
    before = len(p.memory.regions())
    # BaseAddress pointer into unallocated memory / RegionSize pointer into a read-only page
    st = nt.NtAllocateVirtualMemory(CURRENT, 0x10, 0, nt.psize, MEM_RESERVE, PAGE_READWRITE)
    assert st == NtStatus.ACCESS_VIOLATION
    ro = 0x7FFE0000  # KUSER_SHARED_DATA is read-only
    p.write_ptr(nt.pbase, 0)
    st = nt.NtAllocateVirtualMemory(CURRENT, nt.pbase, 0, ro, MEM_RESERVE, PAGE_READWRITE)
    assert st == NtStatus.ACCESS_VIOLATION
    assert len(p.memory.regions()) == before
    assert nt.NtFreeVirtualMemory(CURRENT, 0, nt.psize, MEM_RELEASE) == NtStatus.ACCESS_VIOLATION
    assert nt.NtQueryVirtualMemory(CURRENT, 0x10000, 0, ro, 0x30, 0) == NtStatus.ACCESS_VIOLATION
    st, base, _ = nt.alloc(0, 0x1000, MEM_COMMIT)
    p.write_ptr(nt.pbase, base)
    p.write_ptr(nt.psize, 0x1000)
    st = nt.NtProtectVirtualMemory(CURRENT, nt.pbase, nt.psize, PAGE_READONLY, 0)
    assert st == NtStatus.ACCESS_VIOLATION  # OldProtect is required
    assert nt.query(base)[1]["Protect"] == PAGE_READWRITE  # unchanged


def test_free_semantics(nt: Nt) -> None:
    st, base, _ = nt.alloc(0, 0x30000, MEM_RESERVE)
    nt.alloc(base, 0x30000, MEM_COMMIT)
    assert nt.free(base + 0x1000, 0, MEM_RELEASE)[0] == NtStatus.FREE_VM_NOT_AT_BASE
    assert nt.free(base, 0x1000, MEM_DECOMMIT | MEM_RELEASE)[0] == NtStatus.INVALID_PARAMETER_4
    assert nt.free(base, 0x1000, 0)[0] == NtStatus.INVALID_PARAMETER_4
    # decommit a page in the middle: the region splits into three runs
    st, b, s = nt.free(base + 0x10800, 0x10, MEM_DECOMMIT)
    assert (st, b, s) == (NtStatus.SUCCESS, base + 0x10000, 0x1000)
    assert nt.query(base + 0x10000)[1]["State"] == MEM_RESERVE
    assert nt.query(base)[1]["RegionSize"] == 0x10000
    st, b, s = nt.free(base + 0x20000, 0x10000, MEM_DECOMMIT)
    assert (st, b, s) == (NtStatus.SUCCESS, base + 0x20000, 0x10000)
    assert nt.free(base, 0x40000, MEM_DECOMMIT)[0] == NtStatus.UNABLE_TO_FREE_VM
    st, b, s = nt.free(base, 0, MEM_RELEASE)
    assert (st, b, s) == (NtStatus.SUCCESS, base, 0x30000)
    assert nt.free(base, 0, MEM_RELEASE)[0] == NtStatus.MEMORY_NOT_ALLOCATED
    st, mbi = nt.query(base)
    assert mbi["State"] == MEM_FREE and mbi["AllocationBase"] == 0


def test_free_rounding_and_base_rules(nt: Nt) -> None:
    """Windows 10 (Wine's ntdll virtual tests): the base is rounded down to its page; with a
    size of 0 that page must be the allocation's first, and MEM_DECOMMIT answers size 0."""
    _, base, _ = nt.alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT)
    assert nt.free(base + 0x1FFF, 2, MEM_DECOMMIT) == (NtStatus.SUCCESS, base + 0x1000, 0x2000)
    assert nt.free(base + 0x1001, 0, MEM_DECOMMIT) == (
        NtStatus.FREE_VM_NOT_AT_BASE,
        base + 0x1001,
        0,
    )  # nothing written back on failure
    assert nt.free(base + 0xFFE, 0, MEM_DECOMMIT) == (NtStatus.SUCCESS, base, 0)
    assert nt.query(base)[1]["State"] == MEM_RESERVE
    assert nt.free(base + 0x1001, 0, MEM_RELEASE)[0] == NtStatus.FREE_VM_NOT_AT_BASE
    assert nt.free(base + 0xFFF, 0, MEM_RELEASE) == (NtStatus.SUCCESS, base, 0x10000)


def test_partial_release_splits_the_reservation(nt: Nt) -> None:
    """Releasing part of an allocation leaves allocations of their own on each side, released
    piece by piece; a range never crosses from one allocation into the next."""
    p = nt.proc
    _, a, _ = nt.alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT)
    assert nt.free(a, 0x11000, MEM_RELEASE)[0] == NtStatus.UNABLE_TO_FREE_VM
    assert nt.free(a + 0x1001, 0xFFFF, MEM_RELEASE) == (
        NtStatus.UNABLE_TO_FREE_VM,
        a + 0x1001,
        0xFFFF,
    )
    assert nt.free(a + 0x1001, 0xFFF, MEM_RELEASE) == (NtStatus.SUCCESS, a + 0x1000, 0x1000)
    p.write(a, b"\1")  # both sides are still committed
    p.write(a + 0x2000, b"\1")
    assert nt.free(a + 1, 0xFFF, MEM_RELEASE) == (NtStatus.SUCCESS, a, 0x1000)
    _, mbi = nt.query(a + 0x2000)
    assert mbi["AllocationBase"] == a + 0x2000 and mbi["RegionSize"] == 0xE000
    # the first granule is free again: a new allocation fits there
    assert nt.alloc(a, 0x1000, MEM_RESERVE | MEM_COMMIT) == (NtStatus.SUCCESS, a, 0x1000)
    assert nt.free(a, 0x10000, MEM_DECOMMIT)[0] == NtStatus.UNABLE_TO_FREE_VM
    assert nt.free(a, 0x10000, MEM_RELEASE)[0] == NtStatus.UNABLE_TO_FREE_VM
    assert nt.free(a + 0x1000, 0, MEM_RELEASE)[0] == NtStatus.MEMORY_NOT_ALLOCATED
    assert nt.free(a + 0x1000, 0x1000, MEM_DECOMMIT)[0] == NtStatus.MEMORY_NOT_ALLOCATED
    assert nt.free(a + 0x2000, 0, MEM_RELEASE) == (NtStatus.SUCCESS, a + 0x2000, 0xE000)
    assert nt.free(a, 0x1000, MEM_RELEASE) == (NtStatus.SUCCESS, a, 0x1000)
    assert nt.query(a)[1]["State"] == MEM_FREE
    assert nt.NtFreeVirtualMemory(0, nt.pbase, nt.psize, MEM_RELEASE) == NtStatus.INVALID_HANDLE


def test_protect_and_query(nt: Nt) -> None:
    p = nt.proc
    st, base, _ = nt.alloc(0, 0x4000, MEM_RESERVE | MEM_COMMIT)
    st, old = nt.protect(base + 0x1000, 0x1000, PAGE_READONLY)
    assert (st, old) == (NtStatus.SUCCESS, PAGE_READWRITE)
    st, mbi = nt.query(base + 0x1234)
    assert st == NtStatus.SUCCESS
    assert mbi == {
        "BaseAddress": base + 0x1000,
        "AllocationBase": base,
        "AllocationProtect": PAGE_READWRITE,
        "RegionSize": 0x1000,
        "State": MEM_COMMIT,
        "Protect": PAGE_READONLY,
        "Type": MEM_PRIVATE,
    }
    assert p.read_ptr(nt.psize) == MEMORY_BASIC_INFORMATION.size(p.arch)
    writer = assemble(
        p, "mov dword ptr [ecx], 1; ret" if p.arch.name == "x86" else "mov dword ptr [rcx], 1; ret"
    )
    conv = "fastcall" if p.arch.name == "x86" else None
    with pytest.raises(EmulationError) as e:
        p.call(writer, base + 0x1000, convention=conv)
    assert e.value.kind == "protected write" and e.value.status == NtStatus.ACCESS_VIOLATION
    p.call(writer, base + 0x2000, convention=conv)  # neighbours keep PAGE_READWRITE
    st, old = nt.protect(base, 0x4000, PAGE_EXECUTE_READ)
    assert (st, old) == (NtStatus.SUCCESS, PAGE_READWRITE)
    nt.free(base + 0x3000, 0x1000, MEM_DECOMMIT)
    assert nt.protect(base, 0x4000, PAGE_READWRITE)[0] == NtStatus.NOT_COMMITTED
    assert nt.protect(base, 0x1000, 0x1234)[0] == NtStatus.INVALID_PAGE_PROTECTION
    # free address space (the rest of the 64 KiB granule): MEM_FREE / PAGE_NOACCESS, up to the
    # next region
    st, mbi = nt.query(base + 0x8000)
    assert mbi["State"] == MEM_FREE and mbi["Protect"] == PAGE_NOACCESS
    assert mbi["BaseAddress"] == base + 0x8000 and mbi["RegionSize"] >= 0x8000
    assert nt.NtQueryVirtualMemory(CURRENT, base, 0, nt.buf, 4, 0) == NtStatus.INFO_LENGTH_MISMATCH
    assert nt.NtQueryVirtualMemory(CURRENT, base, 7, nt.buf, 0x30, 0) == NtStatus.INVALID_INFO_CLASS
    st = nt.NtQueryVirtualMemory(CURRENT, p.arch.user_max + 1, 0, nt.buf, 0x30, 0)
    assert st == NtStatus.INVALID_PARAMETER_2


def test_x64_ulong_arguments_ignore_garbage_upper_halves() -> None:
    # 32-bit arguments passed on the x64 stack carry garbage above bit 31
    nt = Nt(Process("x64"))
    p = nt.proc
    p.write_ptr(nt.pbase, 0)
    p.write_ptr(nt.psize, 0x1000)
    st = nt.NtAllocateVirtualMemory(
        CURRENT,
        nt.pbase,
        0,
        nt.psize,
        (0xDEAD << 32) | MEM_RESERVE,
        (0xBEEF << 32) | PAGE_READWRITE,
    )
    assert st == NtStatus.SUCCESS


def test_every_syscall_is_recorded(nt: Nt) -> None:
    p = nt.proc
    nt.alloc(0, 0x1000, MEM_RESERVE)
    nt.alloc(0, 0, MEM_RESERVE)
    names = [(r.name, r.status) for r in p.syscalls]
    assert names == [
        ("NtAllocateVirtualMemory", NtStatus.SUCCESS),
        ("NtAllocateVirtualMemory", NtStatus.INVALID_PARAMETER_4),
    ]
    assert p.syscalls[0].args["AllocationType"] == MEM_RESERVE
    assert "STATUS_INVALID_PARAMETER_4" in str(p.syscalls[1])


def test_unknown_syscall_answers_not_implemented_or_raises(proc: Process) -> None:
    if proc.arch.name == "x64":
        f = assemble(proc, "mov r10, rcx; mov eax, 0x777; syscall; ret")
    else:
        f = assemble(proc, "mov eax, 0x777; lea edx, [esp+4]; int 0x2e; ret")
    proc.register_syscall_table(f, f + 0x100, {})
    assert proc.call(f, convention="cdecl") == NtStatus.NOT_IMPLEMENTED
    assert proc.syscalls[-1].name == "syscall_0x777"
    proc.syscall_dispatcher.strict = True
    with pytest.raises(EmulationError) as e:
        proc.call(f, convention="cdecl")
    assert e.value.kind == "unknown system call"


def test_memory_manager_direct_use(proc: Process) -> None:
    mem = proc.memory
    base, _ = mem.allocate(0, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, usage="test")
    assert mem.region_at(base + 0x2FFF).usage == "test"
    proc.write(base, struct.pack("<I", 7))
    assert proc.read_u32(base) == 7
    mem.free(base, 0, MEM_RELEASE)
    with pytest.raises(EmulationError):
        proc.read(base, 4)
