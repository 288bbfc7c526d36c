"""Memory faults with the fast CPU core (emu.cpu): accesses are decided on TLB misses, so code
that already touched a page must see every later change to it, in the same run (from a system
call or a Python callback) and in the next one; faults name the exact address and the faulting
instruction, never the start of its basic block; code written over code that already ran runs
anew. Every test runs on x86 and x64."""

from __future__ import annotations

from collections.abc import Callable

import keystone
import pytest
from asmutil import assemble

from emu import EmulationError, Process
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_MAPPED,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    NtStatus,
)


def _rw_page(proc: Process, *, type: int = 0) -> int:
    options = {"type": type} if type else {}
    base, _ = proc.memory.allocate(0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, **options)
    return base


def _touch_change_touch(
    proc: Process, page: int, change: Callable[[], object], *, write_first: bool = True
) -> int:
    """Code that touches ``page`` (writes and reads it, or only reads it: its translation is
    now cached), calls ``change`` through a Python callback (as a system call would change
    memory mid-run), then writes ``page`` + 4 and returns what it read."""
    cb = proc.register_callback(lambda p: change() and 0, 0, name="change")
    b, ax = ("rbx", "rax") if proc.arch.name == "x64" else ("ebx", "eax")
    first = f"mov dword ptr [{b}], 1" if write_first else "nop"
    touch = f"""
        mov {b}, {page:#x}
        {first}
        mov esi, dword ptr [{b}]
        mov {ax}, {cb:#x}
        call {ax}
        mov dword ptr [{b} + 4], 2
        mov eax, esi
    """
    if proc.arch.name == "x64":
        src = f"push rbx; push rsi; sub rsp, 0x28; {touch}; add rsp, 0x28; pop rsi; pop rbx; ret"
    else:
        src = f"push ebx; push esi; {touch}; pop esi; pop ebx; ret"
    return proc.call(assemble(proc, src.replace("\n", ";")))


def _second_store(proc: Process) -> str:
    return f"mov dword ptr [{'rbx' if proc.arch.name == 'x64' else 'ebx'} + 4], 2"


@pytest.mark.parametrize(
    ("change", "kind", "status"),
    [
        ("protect readonly", "protected write", NtStatus.ACCESS_VIOLATION),
        ("protect noaccess", "protected write", NtStatus.ACCESS_VIOLATION),
        ("protect guard", "guard page violation", NtStatus.GUARD_PAGE_VIOLATION),
        ("decommit", "unmapped write", NtStatus.ACCESS_VIOLATION),
        ("release", "unmapped write", NtStatus.ACCESS_VIOLATION),
        ("unmap view", "unmapped write", NtStatus.ACCESS_VIOLATION),
    ],
)
def test_a_live_page_changed_mid_run_faults_at_the_next_access(
    proc: Process, change: str, kind: str, status: int
) -> None:
    page = _rw_page(proc, type=MEM_MAPPED if change == "unmap view" else 0)
    mem = proc.memory
    changes: dict[str, Callable[[], object]] = {
        "protect readonly": lambda: mem.protect(page, 0x1000, PAGE_READONLY),
        "protect noaccess": lambda: mem.protect(page, 0x1000, PAGE_NOACCESS),
        "protect guard": lambda: mem.protect(page, 0x1000, PAGE_READWRITE | PAGE_GUARD),
        "decommit": lambda: mem.free(page, 0x1000, MEM_DECOMMIT),
        "release": lambda: mem.free(page, 0, MEM_RELEASE),
        "unmap view": lambda: mem.release_view(page),
    }
    with pytest.raises(EmulationError) as e:
        _touch_change_touch(proc, page, changes[change])
    err = e.value
    assert (err.kind, err.status, err.address, err.access) == (kind, status, page + 4, "write")
    assert err.instruction == _second_store(proc)
    assert err.registers[proc.arch.pc] == err.pc
    ok = assemble(proc, "mov eax, 9; ret")
    assert proc.call(ok) == 9


def test_a_page_made_writable_mid_run_takes_writes(proc: Process) -> None:
    page = _rw_page(proc)
    proc.write(page, (5).to_bytes(4, "little"))
    proc.memory.protect(page, 0x1000, PAGE_READONLY)
    with pytest.raises(EmulationError) as e:
        _touch_change_touch(proc, page, lambda: None, write_first=False)
    assert (e.value.kind, e.value.address) == ("protected write", page + 4)
    writable = _touch_change_touch(
        proc, page, lambda: proc.memory.protect(page, 0x1000, PAGE_READWRITE), write_first=False
    )
    assert writable == 5 and proc.read_u32(page + 4) == 2


def test_decommitted_pages_come_back_zero_filled(proc: Process) -> None:
    page = _rw_page(proc)
    read = assemble(proc, f"mov eax, dword ptr [{page:#x}]; ret")
    proc.write(page, b"\x11\x22\x33\x44")
    assert proc.call(read) == 0x44332211
    proc.memory.free(page, 0x1000, MEM_DECOMMIT)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", page)
    proc.memory.allocate(page, 0x1000, MEM_COMMIT, PAGE_READWRITE)
    assert proc.call(read) == 0


def test_protection_changes_between_calls_are_seen(proc: Process) -> None:
    page = _rw_page(proc)
    write = assemble(proc, f"mov dword ptr [{page:#x}], 3; mov eax, dword ptr [{page:#x}]; ret")
    assert proc.call(write) == 3
    for protect, kind in ((PAGE_READONLY, "protected write"), (PAGE_NOACCESS, "protected write")):
        proc.memory.protect(page, 0x1000, protect)
        with pytest.raises(EmulationError) as e:
            proc.call(write)
        assert (e.value.kind, e.value.address) == (kind, page)
    proc.memory.protect(page, 0x1000, PAGE_READWRITE)
    assert proc.call(write) == 3


def test_noaccess_pages_fault_on_read_write_and_execute(proc: Process) -> None:
    page = _rw_page(proc)
    proc.memory.protect(page, 0x1000, PAGE_NOACCESS)
    for code, kind in (
        (f"mov eax, dword ptr [{page + 8:#x}]; ret", "protected read"),
        (f"mov dword ptr [{page + 8:#x}], 1; ret", "protected write"),
    ):
        with pytest.raises(EmulationError) as e:
            proc.call(assemble(proc, code))
        assert (e.value.kind, e.value.address, e.value.status) == (
            kind,
            page + 8,
            NtStatus.ACCESS_VIOLATION,
        )
    with pytest.raises(EmulationError) as e:
        proc.call(page)
    assert (e.value.kind, e.value.address, e.value.pc) == ("protected fetch", page, page)


def test_code_that_ran_stops_running_when_its_page_loses_execute(proc: Process) -> None:
    f = assemble(proc, "mov eax, 4; ret")
    assert proc.call(f) == 4
    proc.memory.protect(f, 0x1000, PAGE_READWRITE)
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert (e.value.kind, e.value.address) == ("protected fetch", f)
    proc.memory.protect(f, 0x1000, PAGE_EXECUTE_READ)
    assert proc.call(f) == 4


def test_faults_name_the_instruction_not_its_block(proc: Process) -> None:
    cx = "rcx" if proc.arch.name == "x64" else "ecx"
    f = assemble(
        proc, f"nop; xor eax, eax; add eax, 1; mov ecx, 0x10; mov edx, dword ptr [{cx}]; ret"
    )
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    err = e.value
    assert (err.kind, err.address, err.access, err.fault.size) == ("unmapped read", 0x10, "read", 4)
    assert err.pc == f + 1 + 2 + 3 + 5
    assert err.instruction == f"mov edx, dword ptr [{cx}]"
    assert err.registers[proc.arch.ret] == 1  # the instructions before it in the block did run


def test_a_wild_pointer_keeps_its_whole_address(proc: Process) -> None:
    wild = 0x4141414141414148 if proc.arch.name == "x64" else 0xC1414148
    reg = "rax" if proc.arch.name == "x64" else "eax"
    f = assemble(proc, f"mov {reg}, {wild:#x}; mov dword ptr [{reg} + 4], 1; ret")
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert (e.value.kind, e.value.address) == ("unmapped write", wild + 4)


def test_an_access_across_a_page_boundary_faults_on_the_second_page(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x2000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)
    f = assemble(proc, f"mov eax, dword ptr [{base + 0xFFE:#x}]; ret")
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert e.value.kind == "unmapped read" and e.value.address == base + 0x1000


def _asm(proc: Process, text: str, at: int) -> bytes:
    code, _ = keystone.Ks(keystone.KS_ARCH_X86, proc.arch.ks_mode).asm(text, at)
    return bytes(code)


def test_code_written_from_python_over_code_that_ran_takes_effect(proc: Process) -> None:
    f = assemble(proc, "mov eax, 1; ret")
    assert proc.call(f) == 1
    proc.write(f, _asm(proc, "mov eax, 2; ret", f))
    assert proc.call(f) == 2
    # a page that was never executable before: written, then made executable
    data = _rw_page(proc)
    proc.write(data, _asm(proc, "mov eax, 3; ret", data))
    proc.memory.protect(data, 0x1000, PAGE_EXECUTE_READ)
    assert proc.call(data) == 3
    proc.memory.protect(data, 0x1000, PAGE_EXECUTE_READWRITE)
    proc.write(data, _asm(proc, "mov eax, 4; ret", data))
    assert proc.call(data) == 4


def test_code_that_rewrites_itself(proc: Process) -> None:
    """Each call increments the immediate of an instruction further down its own block."""
    where = "rip + target + 1" if proc.arch.name == "x64" else "target + 1"
    f = assemble(proc, f"inc dword ptr [{where}]; target: mov eax, 0x100; ret")
    assert [proc.call(f) for _ in range(3)] == [0x101, 0x102, 0x103]
