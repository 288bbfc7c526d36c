"""Range flushes of the CPU's TLB (emu.cpu.cpu.Cpu.flush_tlb_range, fastpath.c): a decommit or
a protection change drops the cached translations of its own pages only, one page at a time,
and none at all when no page of the range was filled since the last flush; the next access to
a changed page still asks the page-fault handler, and so faults. Both architectures. (And the
size of each engine's translated-code buffer, which decides how its code calls Unicorn.)"""

from __future__ import annotations

import pytest
from asmutil import assemble

from emu import EmulationError, Process
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_READONLY,
    PAGE_READWRITE,
)

FILLED_MAX = 512  # fastpath.c: the filled pages remembered since the last whole flush


@pytest.fixture
def proc(arch: str) -> Process:
    p = Process(arch, time_limit=10.0)
    if p.cpu.tlb_flushes() is None or p.cpu._tlb_state is None or not p.cpu._tlb_state.flush_page:
        pytest.skip("no native fast path or no page flush in this Unicorn: whole flushes only")
    return p


def _pages(proc: Process, count: int) -> int:
    base, _ = proc.memory.allocate(0, count * 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    return base


def _reader(proc: Process, page: int) -> int:
    return assemble(proc, f"mov eax, dword ptr [{page:#x}]; ret")


def _toucher(proc: Process, base: int, count: int) -> int:
    """Code writing the first dword of each of ``count`` pages from ``base``."""
    r = "rbx" if proc.arch.name == "x64" else "ebx"
    return assemble(
        proc,
        f"mov {r}, {base:#x}; mov ecx, {count}; top: mov dword ptr [{r}], ecx; "
        f"add {r}, 0x1000; dec ecx; jnz top; ret",
    )


def _counters(proc: Process) -> tuple[int, int, int, int]:
    """(whole flushes, pages flushed, ranges skipped, TLB fills) so far."""
    flushes = proc.cpu.tlb_flushes()
    fills = proc.cpu.tlb_counters()
    assert flushes is not None and fills is not None
    return (*flushes, fills[0])


def _delta(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(b - a for a, b in zip(before, after, strict=True))


def test_a_decommitted_page_in_the_tlb_is_flushed_alone_and_faults(proc: Process) -> None:
    base = _pages(proc, 2)
    gone, kept = base, base + 0x1000
    read_gone, read_kept = _reader(proc, gone), _reader(proc, kept)
    proc.write(kept, b"\x07\0\0\0")
    proc.call(read_gone)
    proc.call(read_kept)  # both pages (and the code's) are in the TLB now
    before = _counters(proc)
    proc.memory.free(gone, 0x1000, MEM_DECOMMIT)
    # one page flushed, nothing else: the other page reads without a TLB miss
    assert _delta(before, _counters(proc)) == (0, 1, 0, 0)
    assert proc.call(read_kept) == 7
    assert _delta(before, _counters(proc)) == (0, 1, 0, 0)
    with pytest.raises(EmulationError) as e:
        proc.call(read_gone)
    assert (e.value.kind, e.value.address) == ("unmapped read", gone)


def test_a_decommit_mid_run_faults_at_the_next_access(proc: Process) -> None:
    """The page is in the TLB from earlier in the same run; a system call (here a Python
    callback) decommits it; the very next store faults."""
    page = _pages(proc, 1)
    cb = proc.register_callback(
        lambda p: proc.memory.free(page, 0x1000, MEM_DECOMMIT) and 0, 0, name="decommit"
    )
    b, ax = ("rbx", "rax") if proc.arch.name == "x64" else ("ebx", "eax")
    body = f"mov {b}, {page:#x}; mov dword ptr [{b}], 1; mov {ax}, {cb:#x}; call {ax}; "
    body += f"mov dword ptr [{b} + 4], 2"
    if proc.arch.name == "x64":
        src = f"push rbx; sub rsp, 0x20; {body}; add rsp, 0x20; pop rbx; ret"
    else:
        src = f"push ebx; {body}; pop ebx; ret"
    code = assemble(proc, src)
    before = _counters(proc)
    with pytest.raises(EmulationError) as e:
        proc.call(code)
    assert (e.value.kind, e.value.address, e.value.access) == ("unmapped write", page + 4, "write")
    whole, pages, _, _ = _delta(before, _counters(proc))
    assert pages == 1
    assert whole <= 1  # (the fault's own flush at the end of the run)


def test_a_range_with_no_page_in_the_tlb_needs_no_flush(proc: Process) -> None:
    base = _pages(proc, 3)
    proc.cpu.flush_tlb()  # nothing filled since
    before = _counters(proc)
    proc.memory.free(base + 0x1000, 0x2000, MEM_DECOMMIT)  # never touched by code
    assert _delta(before, _counters(proc))[:3] == (0, 0, 1)
    with pytest.raises(EmulationError) as e:
        proc.call(_reader(proc, base + 0x2000))
    assert (e.value.kind, e.value.address) == ("unmapped read", base + 0x2000)


def test_a_protection_change_flushes_its_page_alone(proc: Process) -> None:
    page = _pages(proc, 1)
    write = assemble(proc, f"mov dword ptr [{page:#x}], 5; ret")
    proc.call(write)
    before = _counters(proc)
    proc.memory.protect(page, 0x1000, PAGE_READONLY)
    assert _delta(before, _counters(proc))[:2] == (0, 1)
    with pytest.raises(EmulationError) as e:
        proc.call(write)
    assert (e.value.kind, e.value.address) == ("protected write", page)
    assert proc.call(_reader(proc, page)) == 5


def test_a_release_larger_than_the_filled_set_finds_its_pages(proc: Process) -> None:
    """A range of more pages than the filled set has slots is matched by walking the set."""
    count = 4 * FILLED_MAX
    base = _pages(proc, count)
    touched = base + (count - 3) * 0x1000
    read = _reader(proc, touched)
    proc.call(read)
    before = _counters(proc)
    proc.memory.free(base, 0, MEM_RELEASE)
    assert _delta(before, _counters(proc))[:2] == (0, 1)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", touched)


def test_more_fills_than_remembered_flush_the_whole_tlb(proc: Process) -> None:
    count = FILLED_MAX + 64
    base = _pages(proc, count)
    proc.cpu.flush_tlb()
    proc.call(_toucher(proc, base, count))
    before = _counters(proc)
    proc.memory.free(base, 0x1000, MEM_DECOMMIT)
    assert _delta(before, _counters(proc))[:2] == (1, 0)
    with pytest.raises(EmulationError) as e:
        proc.call(_reader(proc, base))
    assert (e.value.kind, e.value.address) == ("unmapped read", base)
    # a whole flush starts the count again: the next decommit flushes one page
    proc.call(_reader(proc, base + 0x1000))
    before = _counters(proc)
    proc.memory.free(base + 0x1000, 0x1000, MEM_DECOMMIT)
    assert _delta(before, _counters(proc))[:2] == (0, 1)


def test_without_the_page_flush_a_range_flushes_everything(proc: Process) -> None:
    page = _pages(proc, 1)
    read = _reader(proc, page)
    proc.call(read)
    state = proc.cpu._tlb_state
    assert state is not None
    state.flush_page = None
    before = _counters(proc)
    proc.memory.free(page, 0x1000, MEM_DECOMMIT)
    assert _delta(before, _counters(proc))[:2] == (1, 0)
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", page)


def test_a_tlb_that_keeps_evicting_is_flushed_whole_so_it_can_grow(proc: Process) -> None:
    """QEMU resizes its TLB only on whole flushes: pages filled again and again since the
    last one (evicted by others) turn the next range flush into a whole one."""
    page = _pages(proc, 1)
    read = _reader(proc, page)
    proc.call(read)
    state = proc.cpu._tlb_state
    assert state is not None
    state.refills = 256  # fastpath.c's REFILLS_MAX: not more yet
    before = _counters(proc)
    proc.memory.protect(page, 0x1000, PAGE_READONLY)
    assert _delta(before, _counters(proc))[:2] == (0, 1)
    proc.call(read)
    state.refills = 257
    before = _counters(proc)
    proc.memory.free(page, 0x1000, MEM_DECOMMIT)
    assert _delta(before, _counters(proc))[:2] == (1, 0)
    assert state.refills == 0
    with pytest.raises(EmulationError) as e:
        proc.call(read)
    assert (e.value.kind, e.value.address) == ("unmapped read", page)


def test_a_page_the_fault_handler_changed_while_filling_it_is_flushed_later(
    proc: Process,
) -> None:
    """The first write to a write-watched page: the page-fault handler records it and changes
    the page's protection (a range flush of that very page) before the fill installs it;
    the page must still count as in the TLB, so that decommitting it later flushes it."""
    page, _ = proc.memory.allocate(
        0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, write_watch=True
    )
    write = assemble(proc, f"mov dword ptr [{page:#x}], 5; mov eax, 1; ret")
    assert proc.call(write) == 1
    assert proc.read_u32(page) == 5
    proc.memory.free(page, 0x1000, MEM_DECOMMIT)
    with pytest.raises(EmulationError) as e:
        proc.call(write)
    assert (e.value.kind, e.value.address) == ("unmapped write", page)


def test_the_translation_buffer_is_small_enough_to_stay_near_unicorn(arch: str) -> None:
    """Each engine's translated-code buffer is TCG_BUFFER_SIZE (Unicorn's 1 GiB default put
    a second engine's beyond a direct call's reach of Unicorn's helpers)."""
    from emu.cpu.cpu import TCG_BUFFER_SIZE

    first, second = Process(arch), Process("x64" if arch == "x86" else "x86")
    for p in (first, second):
        assert p.cpu.uc.ctl_get_tcg_buffer_size() == TCG_BUFFER_SIZE == 64 << 20
