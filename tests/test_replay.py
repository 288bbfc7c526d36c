"""Replay inside the emulator (emu/replay.py) against the allocator called from Python one
operation at a time: the same results, operation for operation, on both architectures and both
allocators; faults and convention errors name the operation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Heaps, make_heaps

from emu import EmulationError, Process
from emu.cli.replay import main as replay_main
from emu.heap.allocator import Allocator
from emu.heap.replay.driver import driver_source
from emu.heap.replay.run import DEFAULT_CHUNK, ReplayError, load_driver, replay, replay_python
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import (
    Op,
    Workload,
    alloc,
    format_trace,
    free,
    parse_trace,
    realloc,
    size,
    synthetic,
    validate,
)

# small and medium blocks, a few above the large-block threshold (own regions: system calls),
# reallocs, size queries and whole-heap validation
WORKLOAD = Workload(ops=2500, seed=11, sizes="mixed", lifetime=150, realloc=0.1,
                    size_queries=0.05, validate_every=400)  # fmt: skip


def edges(arch: str) -> list[Op]:
    """Requests that fail or are odd: zero size, freeing NULL, double free, a size no address
    space can hold, zeroed and in-place-only flags. (RtlSizeHeap(NULL) faults in Wine.)"""
    huge = 0xC0000000 if arch == "x86" else 1 << 47
    return [alloc(0, 0), size(0), free(0), free(0), alloc(huge, 1), realloc(1, 8, 2),
            alloc(0x10, 3, flags=0x8), realloc(3, 0x10000, 3, flags=0x10), size(3), free(3),
            realloc(5, huge, 6), validate()]  # fmt: skip


def _syscalls(proc: Process, since: int) -> list[tuple[str, int]]:
    return [(r.name, r.status) for r in proc.syscalls[since:]]


def test_replay_equals_calls_from_python(heaps: Heaps) -> None:
    """Every result (addresses, BOOLEANs, sizes), every system call and the final heap walk are
    those of the same operations issued one proc.call at a time in an identical process."""
    ops = [*synthetic(WORKLOAD), *edges(heaps.arch)]
    reference = make_heaps(heaps.arch, heaps.kind)
    for h in (heaps, reference):
        h.proc.time_limit = 0
    heap = heaps.allocator.create_heap()
    ref_heap = reference.allocator.create_heap()
    assert heap == ref_heap
    n0, r0 = len(heaps.proc.syscalls), len(reference.proc.syscalls)
    result = heaps.allocator.replay(ops, heap, chunk=1000)  # three driver calls
    expected = replay_python(reference.allocator, ops, ref_heap)
    assert result.driver_calls == 3
    pairs = enumerate(zip(result.values, expected, strict=True))
    mismatches = [(i, ops[i], hex(v), hex(e)) for i, (v, e) in pairs if v != e]
    assert not mismatches, mismatches[:5]
    assert _syscalls(heaps.proc, n0) == _syscalls(reference.proc, r0)
    assert result.syscalls == len(heaps.proc.syscalls) - n0 > 0
    assert heaps.allocator.walk(heap) == reference.allocator.walk(ref_heap)
    summary = result.summary()
    assert summary["total"] == len(ops)
    assert summary["alloc"]["failed"] == 1  # the huge request
    assert summary["validate"]["failed"] == 0


def test_chunking_and_instruction_count() -> None:
    ops = list(synthetic(ops=600, seed=2))
    runs = []
    for chunk, count in ((1 << 16, False), (7, False), (50, True)):
        h = make_heaps("x64", "builtin")
        runs.append(h.allocator.replay(ops, chunk=chunk, count_instructions=count))
    assert list(runs[0].values) == list(runs[1].values) == list(runs[2].values)
    assert runs[1].driver_calls == 86
    n = runs[2].instructions
    assert n is not None and 100 * len(ops) < n < 2000 * len(ops)


def test_text_trace_replays_like_ops(tmp_path: Path) -> None:
    ops = list(synthetic(ops=800, seed=4, sizes="small"))
    text = "".join(format_trace(ops))
    assert parse_trace(text) == ops
    a = make_heaps("x86", "builtin").allocator
    b = make_heaps("x86", "builtin").allocator
    assert list(a.replay(parse_trace(text)).values) == list(b.replay(ops).values)


def test_ids_move_with_realloc() -> None:
    """The slot table: realloc moves the block to the new ID and empties the old one; a failed
    realloc leaves both as they were; free empties the slot (a second free passes NULL)."""
    h = make_heaps("x64", "builtin")
    ops = [alloc(0x20, 0), realloc(0, 0x4000, 5), size(5), size(0), free(0),
           realloc(5, 1 << 47, 6), size(5), size(6), free(5), free(5)]  # fmt: skip
    r = h.allocator.replay(ops)
    mask = h.proc.arch.ptr_mask
    assert r[1] != 0 and r[2] == 0x4000 and r[3] == mask  # size(NULL) fails
    assert r[4] == 1  # RtlFreeHeap(NULL) succeeds, as on Windows
    assert r[5] == 0 and r[6] == 0x4000 and r[7] == mask
    assert r[8] == 1 and r[9] == 1


def _fake_allocator(proc: Process) -> Allocator:
    """Rtl* look-alikes: blocks are fake addresses in free memory (RtlSizeHeap reads them, so
    it faults) and RtlValidateHeap returns with the wrong stack pointer."""
    if proc.arch.ptr_size == 8:
        src = """
        RtlCreateHeap: mov eax, 0x1000
        ret
        RtlAllocateHeap: lea rax, [r8 + 0x60000000]
        ret
        RtlFreeHeap: mov eax, 0x101
        ret
        RtlReAllocateHeap: mov rax, r9
        ret
        RtlSizeHeap: mov rax, qword ptr [r8]
        ret
        RtlValidateHeap: pop rcx
        push 0
        push 0
        jmp rcx
        RtlWalkHeap: xor eax, eax
        ret
        RtlDestroyHeap: xor eax, eax
        ret
        """
    else:
        src = """
        RtlCreateHeap: mov eax, 0x1000
        ret 24
        RtlAllocateHeap: mov eax, dword ptr [esp + 12]
        add eax, 0x60000000
        ret 12
        RtlFreeHeap: mov eax, 0x101
        ret 12
        RtlReAllocateHeap: mov eax, dword ptr [esp + 16]
        ret 16
        RtlSizeHeap: mov eax, dword ptr [esp + 12]
        mov eax, dword ptr [eax]
        ret 12
        RtlValidateHeap: mov eax, 1
        ret
        RtlWalkHeap: xor eax, eax
        ret 8
        RtlDestroyHeap: xor eax, eax
        ret 4
        """
    return Allocator(proc, proc.load_flat(src, "fakeheap"))


def test_fault_names_the_operation(proc: Process) -> None:
    a = _fake_allocator(proc)
    ops = [alloc(0x10, 0), alloc(0x20, 1), free(1), size(0), alloc(0x30, 2)]
    with pytest.raises(ReplayError) as e:
        a.replay(ops, heap=0x1000)
    err = e.value
    assert isinstance(err, EmulationError)
    assert err.op_index == 3 and err.op == size(0)
    assert list(err.results) == [0x60000010, 0x60000020, 1]  # BOOLEAN: low byte only
    assert err.kind == "unmapped read" and err.address == 0x60000010
    assert "replay stopped at op #3 (size 0) of 5" in str(err)
    assert "fakeheap!RtlSizeHeap" in str(err)
    # the process is usable afterwards
    assert list(a.replay(ops[:2], heap=0x1000).values) == [0x60000010, 0x60000020]


def test_wrong_convention_is_a_stack_imbalance(proc: Process) -> None:
    a = _fake_allocator(proc)
    with pytest.raises(ReplayError) as e:
        a.replay([alloc(8, 0), validate(), alloc(8, 1)], heap=0x1000)
    assert e.value.kind == "stack imbalance" and e.value.op_index == 1
    off = -16 if proc.arch.ptr_size == 8 else -12  # x64: two pushes, ret address popped
    assert f"returned with {proc.arch.sp} off by {off:+d} bytes" in str(e.value)


def test_bad_inputs(proc: Process) -> None:
    a = Allocator(proc, proc.load_builtin_heap())
    with pytest.raises(ValueError, match="renumber the trace"):
        a.replay([alloc(8, 1 << 24)])
    if proc.arch.ptr_size == 4:
        with pytest.raises(ValueError, match=r"op #1 \(alloc 0x100000000 -> 1\): size does not"):
            a.replay([alloc(8, 0), alloc(1 << 32, 1)])
    empty = a.replay([])
    assert len(empty) == 0 and empty.driver_calls == 0


def test_driver_is_shared_and_top_down(proc: Process) -> None:
    a = Allocator(proc, proc.load_builtin_heap())
    m = load_driver(proc)
    assert load_driver(proc) is m
    assert m.base > 0x10000000  # top-down, away from the heap's reservations
    assert list(m.exports) == ["heapemu_replay"]
    a.replay([alloc(8, 0)])
    regions = [r.usage for r in proc.memory.regions()]
    assert "heapemu replay tape" not in regions  # buffers are released after the replay
    for arch in ("x86", "x64"):  # direct branches only: no block lookup per op
        source = driver_source(Process(arch).arch)
        assert "heapemu_replay_alloc:" in source and "jmp dword ptr" not in source
        assert "jmp qword ptr" not in source


def test_default_chunks_reuse_their_buffers(arch: str) -> None:
    """A long tape is replayed DEFAULT_CHUNK records per driver call (4096: the tape and
    results buffers stay small and hot), with the results of one big chunk."""
    ops = list(synthetic(ops=2 * DEFAULT_CHUNK + 100, seed=5))
    by_default = make_heaps(arch, "builtin").allocator.replay(ops)
    one_chunk = make_heaps(arch, "builtin").allocator.replay(ops, chunk=len(ops))
    assert DEFAULT_CHUNK == 4096 and by_default.driver_calls == 3 and one_chunk.driver_calls == 1
    assert list(by_default.values) == list(one_chunk.values)
    assert by_default.cpu_seconds > 0 and by_default.seconds > 0


def test_replay_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("".join(format_trace(synthetic(ops=300, seed=1))))
    assert replay_main([str(trace), "--arch", "x86", "--json", "--warmup", "50", "--count"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ops"] == 300 and report["arch"] == "x86" and report["count_matches"]
    assert report["instructions_per_op"] > 50
    assert report["results"]["total"] == 300
    assert replay_main([str(trace), "--no-count"]) == 0
    assert "300 operations on the builtin heap, x64" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("alloc 8 -> 0\nfree 1\n")
    assert replay_main([str(bad)]) == 2
    assert "bad.txt:2: free: id 1 is not live" in capsys.readouterr().err


def test_tape_is_reused_across_processes() -> None:
    tape = Tape.from_ops(synthetic(ops=200, seed=8))
    a = make_heaps("x86", "builtin").allocator
    b = make_heaps("x86", "builtin").allocator
    assert list(replay(a, tape).values) == list(replay(b, tape).values)
