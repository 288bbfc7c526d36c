"""The CPU's native fast paths (emu/cpu/fastpath.c, built by emu.cpu.native): the same
answers as the Python callbacks they replace, and a clean fallback when they cannot be built.
Both architectures."""

from __future__ import annotations

from typing import Any

import pytest

from emu import Process
from emu.cpu import native
from emu.heap.allocator import Allocator


def _events(arch: str, *, checks: bool) -> tuple[list[dict[str, Any]], bool]:
    proc = Process(arch, time_limit=10.0)
    a = Allocator(proc, proc.load_allocator("builtin"))
    heap = a.create_heap()
    with proc.record(check_conventions=checks) as rec:
        blocks = [a.alloc(heap, n) for n in (0x10, 0x200, 0x3000, 0x40000)]
        blocks[1] = a.realloc(heap, blocks[1], 0x900)
        for p in blocks:
            a.size(heap, p)
            a.free(heap, p)
        a.validate(heap)
    return [ev.to_json() for ev in rec.all], proc.cpu._native is not None


@pytest.mark.parametrize("checks", [False, True])
def test_events_are_the_same_with_and_without_the_native_path(
    arch: str, checks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, was_native = _events(arch, checks=checks)
    assert was_native, "the native fast path did not build on this machine"
    monkeypatch.setenv("HEAPEMU_NATIVE", "0")
    slow, was_native = _events(arch, checks=checks)
    assert not was_native
    assert fast == slow
    names = [e["function"].split("!")[-1] for e in fast if e["depth"] == 0]
    assert (
        names
        == ["RtlAllocateHeap"] * 4
        + ["RtlReAllocateHeap"]
        + [
            "RtlSizeHeap",
            "RtlFreeHeap",
        ]
        * 4
    )
    assert all(e["instructions"] > 0 and e["blocks"] > 0 and e["finished"] for e in fast)


def test_tlb_refills_after_a_flush_stay_in_c(proc: Process) -> None:
    a = Allocator(proc, proc.load_allocator("builtin"))
    heap = a.create_heap()
    a.free(heap, a.alloc(heap, 0x100))
    proc.cpu.flush_tlb()
    counters = proc.cpu.tlb_counters()
    assert counters is not None
    fills, slow = counters
    a.free(heap, a.alloc(heap, 0x100))  # every page it touches was answered before
    new_fills, new_slow = proc.cpu.tlb_counters() or (0, 0)
    assert new_fills > fills
    assert new_slow == slow


def test_without_a_compiler_the_cpu_falls_back_to_python(
    arch: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEAPEMU_NATIVE_DIR", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false")
    assert native.library() is None
    proc = Process(arch, time_limit=10.0)
    assert proc.cpu._native is None and proc.cpu.tlb_counters() is None
    a = Allocator(proc, proc.load_allocator("builtin"))
    heap = a.create_heap()
    with proc.record() as rec:
        a.free(heap, a.alloc(heap, 0x100))
    assert [e.name for e in rec.all] == ["RtlAllocateHeap", "RtlFreeHeap"]
    assert rec.all[0].instructions > 0


@pytest.mark.parametrize("fast", [True, False])
def test_a_counting_block_counter_counts_every_instruction_once(
    arch: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BlockCounter with no records only counts: 1 + 3 * 1000 + 1 instructions of a loop, the
    run's end (the call gate's sentinel) not among them; the same without the native path."""
    from emu.cpu.cpu import BlockCounter

    if not fast:
        monkeypatch.setenv("HEAPEMU_NATIVE", "0")
    proc = Process(arch)
    assert (proc.cpu._native is not None) == fast
    f = proc.load_flat("f:\n mov ecx, 1000\nl:\n add eax, ecx\n dec ecx\n jnz l\n ret\n", "f")
    proc.call(f.exports["f"])
    counter = BlockCounter(proc.cpu).start()
    gate = counter.instructions
    proc.call(proc.load_flat("g:\n ret\n", "g").exports["g"])
    gate = counter.instructions - gate - 1  # the call gate's own instructions per call
    before = counter.instructions
    proc.call(f.exports["f"])
    assert counter.instructions - before - gate == 1 + 3 * 1000 + 1
    counter.stop()
