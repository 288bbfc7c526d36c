"""``proc.snapshot()`` / ``proc.restore()`` (issue 15): a snapshot taken mid-scenario, restored,
gives the same results and the same heap images when the rest is replayed, on both
architectures and every allocator; registers, handles, the address space and the records of
system calls come back too, and a snapshot can be restored again and again."""

from __future__ import annotations

import random
from typing import Any

import pytest

from emu import EmulationError, Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES
from emu.nt.objects import FileObject
from emu.views import build_entries


def memory_image(proc: Process) -> dict[int, bytes]:
    """Every committed page's bytes, by address (the whole process memory)."""
    return {addr: data for addr, _, data in proc.cpu.save_memory(proc.memory.committed_runs())}


def layout(proc: Process) -> list[tuple[int, int, str, int]]:
    return [(r.base, r.size, r.usage, r.committed_bytes) for r in proc.memory.regions()]


def heap_images(proc: Process, a: Allocator, heaps: list[int]) -> list[Any]:
    return [build_entries(proc, h, allocator=a).to_json() for h in heaps]


def the_rest(a: Allocator, heap: int, live: list[int], seed: int) -> list[Any]:
    """The second half of the scenario: allocations, frees, reallocations, a large block
    (its own region), a new heap and its destruction; every result."""
    rng = random.Random(seed)
    out: list[Any] = []
    live = list(live)
    for i in range(300):
        op = rng.random()
        if op < 0.5 or not live:
            p = a.alloc(heap, rng.choice((0x10, 0x28, 0x100, 0x400, 0x3000)))
            live.append(p)
            out.append(("alloc", p))
        elif op < 0.8:
            p = live.pop(rng.randrange(len(live)))
            out.append(("free", p, a.free(heap, p)))
        else:
            j = rng.randrange(len(live))
            live[j] = a.realloc(heap, live[j], rng.choice((0x18, 0x800, 0x9000)))
            out.append(("realloc", live[j]))
        if i == 150:
            out.append(("big", a.alloc(heap, 0x100000)))
            h2 = a.create_heap()
            out.append(("heap", h2, a.alloc(h2, 0x40), a.destroy(h2)))
    out.append(("validate", a.validate(heap)))
    return out


@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_restore_mid_scenario_replays_identically(arch: str, kind: str) -> None:
    proc = Process(arch)
    a = Allocator(proc, proc.load_allocator(kind))
    heap = a.create_heap()
    rng = random.Random(1)
    live = [a.alloc(heap, rng.choice((0x20, 0x100, 0x1000))) for _ in range(200)]
    for p in live[::3]:
        a.free(heap, p)
    live = [p for i, p in enumerate(live) if i % 3]
    heaps = [proc.process_heaps[0] if proc.process_heaps else heap, heap]

    snap = proc.snapshot()
    before = (memory_image(proc), layout(proc), heap_images(proc, a, heaps), len(proc.syscalls))

    first = the_rest(a, heap, live, seed=7)
    after_first = (memory_image(proc), layout(proc), heap_images(proc, a, heaps))
    calls_first = [(r.name, r.status) for r in proc.syscalls[before[3] :]]
    assert memory_image(proc) != before[0]  # the rest changed the process

    for _ in range(2):  # a snapshot restores as often as wanted
        proc.restore(snap)
        now = (memory_image(proc), layout(proc), heap_images(proc, a, heaps), len(proc.syscalls))
        assert now == before
        assert the_rest(a, heap, live, seed=7) == first
        assert (memory_image(proc), layout(proc), heap_images(proc, a, heaps)) == after_first
        assert [(r.name, r.status) for r in proc.syscalls[before[3] :]] == calls_first

    proc.restore(snap)  # and another sequence from the same point
    assert the_rest(a, heap, live, seed=8) != first


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_registers_handles_and_callbacks_come_back(arch: str) -> None:
    proc = Process(arch)
    proc.load_builtin_heap()
    reg = "rbx" if arch == "x64" else "ebx"
    proc.regs[reg] = 0x1234
    handle = proc.objects.insert(FileObject("file", "<before>"))
    snap = proc.snapshot()

    proc.regs[reg] = 0x5678
    later = proc.objects.insert(FileObject("file", "<after>"))
    stub = proc.register_callback(lambda p, x: x + 1, 1, name="plus_one")
    proc.load_flat("f: mov eax, 7\n ret\n", "later")

    proc.restore(snap)
    assert proc.regs[reg] == 0x1234
    assert proc.objects.get(handle, FileObject).name == "<before>"
    assert later not in proc.objects.handles()
    assert stub not in proc.callbacks and "later" not in [m.name for m in proc.modules]
    assert proc.memory.region_at(stub) is not None  # the trap page itself is heapemu's
    with pytest.raises(KeyError):
        proc.resolve("later!f")


def test_no_snapshot_while_emulated_code_runs() -> None:
    proc = Process("x64")
    m = proc.load_flat("f: call rcx\n ret\n", "m")
    stub = proc.register_callback(lambda p: p.snapshot() and 0, 0, name="snap")
    with pytest.raises(EmulationError, match="cannot take a snapshot while emulated code runs"):
        proc.call(m.exports["f"], stub)
