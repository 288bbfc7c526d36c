"""The CPU's backing of the address space (issue 14): host memory in aligned windows, each
mapped into Unicorn once, so commits, decommits and releases never map or unmap. What must not
change: pages that are not committed fault (emulated code) and refuse Python's reads and writes,
decommitted and released pages read zero when committed again, guard pages keep their
contents, snapshots restore memory outside what they saved as zero. Both architectures."""

from __future__ import annotations

import pytest
from asmutil import assemble

from emu import EmulationError, Process
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_GUARD,
    PAGE_READONLY,
    PAGE_READWRITE,
)


def _reader(proc: Process, page: int) -> int:
    return assemble(proc, f"mov eax, dword ptr [{page:#x}]; ret")


def test_commit_decommit_and_release_churn_maps_nothing_new(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x100000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)
    windows = proc.cpu.backing()
    for i in range(50):
        page = base + 0x1000 * (1 + i % 200)
        proc.memory.allocate(page, 0x3000, MEM_COMMIT, PAGE_READWRITE)
        proc.write(page, b"x" * 0x3000)
        proc.memory.free(page, 0x3000, MEM_DECOMMIT)
        other, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        proc.memory.free(other, 0, MEM_RELEASE)
    assert proc.cpu.backing() == windows


def test_released_pages_fault_and_come_back_zero(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    read = _reader(proc, base + 0x2000)
    proc.write(base + 0x2000, b"\x78\x56\x34\x12")
    assert proc.call(read) == 0x12345678
    proc.memory.free(base, 0, MEM_RELEASE)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", base + 0x2000)
    again, _ = proc.memory.allocate(base, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert again == base
    assert proc.call(read) == 0


def test_python_cannot_touch_backed_pages_that_are_not_committed(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)  # the window is backed now
    proc.write(base, b"ok")
    for addr, size in ((base + 0x1000, 4), (base + 0xFFE, 4)):
        with pytest.raises(EmulationError, match="reserved"):
            proc.read(addr, size)
        with pytest.raises(EmulationError, match="reserved"):
            proc.write(addr, b"\0" * size)
    proc.memory.free(base, 0x1000, MEM_DECOMMIT)
    with pytest.raises(EmulationError, match="reserved"):
        proc.read(base, 2)


def test_guard_pages_keep_their_contents(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    proc.write(base, b"\xaa\xbb\xcc\xdd")
    proc.memory.protect(base, 0x1000, PAGE_READWRITE | PAGE_GUARD)
    with pytest.raises(EmulationError, match="guard"):
        proc.read(base, 4)
    with pytest.raises(EmulationError) as e:
        proc.call(_reader(proc, base))
    assert e.value.kind == "guard page violation"
    assert proc.call(_reader(proc, base)) == 0xDDCCBBAA  # one-shot, contents kept


def test_a_snapshot_restores_memory_it_did_not_save_as_zero(proc: Process) -> None:
    snap = proc.snapshot()
    # far from everything so far: a window of its own is backed after the snapshot
    high = 0x60000000 if proc.arch.name == "x86" else 0x7F0000000000
    base, _ = proc.memory.allocate(high, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    proc.write(base, b"\x01\x02\x03\x04")
    assert proc.cpu.backing() != snap.backing
    proc.restore(snap)
    assert proc.memory.region_at(base) is None
    proc.memory.allocate(base, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert proc.read(base, 4) == bytes(4)
    assert proc.call(_reader(proc, base)) == 0


@pytest.mark.parametrize("size", [0x3000, 0x80000])  # zeroed in place / handed back to the host
def test_decommitted_ranges_read_zero_when_committed_again(proc: Process, size: int) -> None:
    base, _ = proc.memory.allocate(0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    proc.write(base, b"\xff" * size)
    proc.memory.free(base, size, MEM_DECOMMIT)
    proc.memory.allocate(base, size, MEM_COMMIT, PAGE_READWRITE)
    assert proc.read(base, size) == bytes(size)
    assert proc.call(_reader(proc, base + size - 4)) == 0


def test_a_jump_into_reserved_memory_is_reported_unreadable(proc: Process) -> None:
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)  # the window is backed
    target = base + 0x2000
    ax = "rax" if proc.arch.name == "x64" else "eax"
    with pytest.raises(EmulationError) as e:
        proc.call(assemble(proc, f"mov {ax}, {target:#x}; call {ax}; ret"))
    assert (e.value.kind, e.value.pc) == ("unmapped fetch", target)
    assert e.value.instruction == "<unreadable>"


def _faults_asked(proc: Process) -> list[int]:
    """The pages the CPU asks the page-fault handler about from now on."""
    asked: list[int] = []
    handler = proc.cpu.page_fault_handler
    assert handler is not None

    def recording(page: int, access: str) -> object:
        asked.append(page)
        return handler(page, access)

    proc.cpu.page_fault_handler = recording  # type: ignore[assignment]
    return asked


def test_committed_private_pages_need_no_page_fault_on_first_access(proc: Process) -> None:
    """A commit of plain private memory caches the answer the page-fault handler would give
    (Cpu.prime): the first accesses to those pages cost no Python. What must not change: a
    protection change or a decommit still reaches the handler and faults as before."""
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base + 0x2000, 0x4000, MEM_COMMIT, PAGE_READWRITE)
    page = base + 0x3000
    write = assemble(proc, f"mov dword ptr [{page:#x}], 0x11223344; ret")
    read = _reader(proc, page)
    asked = _faults_asked(proc)
    proc.call(write)
    assert proc.call(read) == 0x11223344
    assert page not in asked  # primed by the commit
    proc.memory.protect(base + 0x2000, 0x4000, PAGE_READONLY)
    with pytest.raises(EmulationError) as e:
        proc.call(write)
    assert (e.value.kind, e.value.address) == ("protected write", page)
    assert page in asked
    proc.memory.free(page, 0x1000, MEM_DECOMMIT)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", page)


def test_priming_leaves_guard_and_write_watch_pages_to_the_handler(proc: Process) -> None:
    """Pages whose first access Windows acts on are not primed: a guard page still raises
    STATUS_GUARD_PAGE_VIOLATION once, a write-watched page still records its first write."""
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    proc.memory.allocate(base, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)
    read = _reader(proc, base)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert e.value.kind == "guard page violation"
    assert proc.call(read) == 0  # one-shot
    watched, _ = proc.memory.allocate(
        0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, write_watch=True
    )
    region = proc.memory.region_at(watched)
    assert region is not None
    proc.call(assemble(proc, f"mov dword ptr [{watched + 0x2000:#x}], 1; ret"))
    assert proc.memory.write_watch_pages(region, 0, region.pages.count) == [2]
