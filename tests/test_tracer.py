"""Instruction traces and memory watches on both allocators and architectures."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import Heaps

from emu import EmulationError


def test_trace_of_one_call(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    entry = heaps.module.exports["RtlAllocateHeap"]
    out = io.StringIO()
    with proc.record() as rec, proc.trace(out, function=entry, call=2) as tracer:
        for _ in range(3):
            a.alloc(heap, 0x100)
    lines = out.getvalue().splitlines()
    second = rec.events[1]
    assert tracer.instructions == len(lines) == second.instructions  # exactly that call
    assert tracer.blocks == second.blocks
    first = lines[0].split()
    assert int(first[0], 16) == entry and first[1].endswith("!RtlAllocateHeap")
    assert lines[-1].split()[-1] == "ret" or lines[-1].split()[-2] == "ret"  # `ret` or `ret N`
    # address, symbol, bytes, disassembly on every line
    assert all(len(line.split(maxsplit=3)) == 4 for line in lines)


def test_trace_with_registers(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    out = io.StringIO()
    with proc.trace(out, function=heaps.module.exports["RtlSizeHeap"], registers=True):
        p = a.alloc(heap, 0x40)
        a.size(heap, p)
    lines = out.getvalue().splitlines()
    sp = proc.arch.sp
    assert lines[0].split()[1].endswith("!RtlSizeHeap")
    # the first push: sp as it reads it, then as it wrote it (one pointer lower)
    i = next(i for i, ln in enumerate(lines) if ln.split()[-2:-1] == ["push"] or " push " in ln)
    reads = lines[i + 1]
    wrote = next(ln for ln in lines[i + 1 : i + 4] if ln.strip().startswith("wrote"))
    before = int(reads.split(f"{sp}=")[1].split()[0], 16)
    after = int(wrote.split(f"{sp}=")[1].split()[0], 16)
    assert reads.strip().startswith("read") and after == before - proc.arch.ptr_size


def test_trace_file_is_complete_up_to_a_fault(arch: str, tmp_path: Path) -> None:
    from emu import Process

    proc = Process(arch)
    m = proc.load_flat("f:\n mov eax, 1\n mov ecx, 2\n mov eax, dword ptr [0x10]\n ret", "crash")
    path = tmp_path / "trace.txt"
    with open(path, "w") as f, proc.trace(f):
        with pytest.raises(EmulationError):
            proc.call(m.exports["f"])
        text = path.read_text()  # readable while the tracer is still open
    lines = text.splitlines()
    ours = [ln.split()[1] for ln in lines if "crash!" in ln and not ln.startswith("#")]
    assert ours[:3] == ["crash!f", "crash!f+0x5", "crash!f+0xa"]  # the faulting block, whole
    assert lines[-1].startswith("# emulation stopped: unmapped read at ")
    assert lines[-1].endswith("crash!f+0xa")


def test_memory_watch_reports_who_wrote(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    p = a.alloc(heap, 0x20)
    q = a.alloc(heap, 0x20)
    header = q - 8  # the block header both allocators keep just below the user pointer
    with proc.watch_memory(header, 8) as watch:
        a.free(heap, q)
    assert watch.writes, "freeing a block rewrites its header"
    w = watch.writes[0]
    assert heaps.module.short_name in str(w["symbol"]) and w["instruction"]
    assert header <= int(w["address"]) < header + 8  # type: ignore[call-overload]
    assert w["old"] != w["new"]
    assert a.free(heap, p)
