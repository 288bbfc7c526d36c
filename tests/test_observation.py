"""Observation on both allocators and architectures: allocation events, breakpoints, call
stacks (seed 003), exports, and calling-convention checks on deliberately broken code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Heaps, make_heaps
from pebuild import build

from emu import Process
from emu.errors import BreakpointStop
from emu.heap.allocator import Allocator
from emu.load.builtin_heap import load_builtin_heap
from emu.observe.breakpoints import BreakContext
from emu.observe.events import EventRecorder
from emu.observe.export import events_table, perfetto_trace, write_jsonl, write_perfetto
from emu.win.layouts import PEB
from emu.win.ntdefs import HEAP_ZERO_MEMORY


def seed003(arch: str, kind: str) -> Process:
    """Seed 003's program (allocate.dll) over the builtin heap or Wine's ntdll."""
    proc = Process(arch)
    if kind == "wine":
        proc.load_wine_ntdll()
    else:
        load_builtin_heap(proc, "ntdll.dll")  # the program imports ntdll.dll!RtlAllocateHeap
    proc.load_pe(str(build("allocate.dll", arch)))
    return proc


def names(frames: list) -> list[str]:  # type: ignore[type-arg]
    return [f.symbol.split("+")[0] for f in frames]


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


def test_seed003_breakpoint_arguments_and_call_stacks(arch: str, allocator_kind: str) -> None:
    proc = seed003(arch, allocator_kind)
    hits: list[tuple[list[int], list[str]]] = []

    def on_alloc(ctx: BreakContext) -> None:
        if proc.symbolize(ctx.return_address).startswith("allocate!"):
            regs = [ctx.regs[r] for r in ("rcx", "rdx", "r8")] if arch == "x64" else []
            args = ctx.args(3)
            if regs:
                assert regs == args  # x64: rcx = heap, rdx = flags, r8 = size
            hits.append((args, names(ctx.stack())))

    proc.breakpoint("ntdll!RtlAllocateHeap", on_alloc)
    assert proc.call("allocate!main_") == 3
    assert len(hits) == 3
    (m_args, m_stack), (n_args, n_stack), (h_args, h_stack) = hits
    process_heap = PEB.read(proc, proc.arch, proc.peb, "ProcessHeap")
    crt_heap = m_args[0]
    assert m_args == [crt_heap, 0, 8] and n_args == [crt_heap, 0, 8]
    assert crt_heap != process_heap  # malloc and new use the CRT's own heap (seed 001)
    assert h_args == [process_heap, 0, 8]  # HeapAlloc(GetProcessHeap(), 0, 8)
    chain = ["ntdll!RtlAllocateHeap", "allocate!_malloc_base", "allocate!malloc"]
    assert m_stack[0] == "ntdll!RtlAllocateHeap"
    assert is_subsequence([*chain, "allocate!alloc_malloc", "allocate!main_"], m_stack)
    assert is_subsequence([*chain, "allocate!operator_new", "allocate!alloc_new"], n_stack)
    assert h_stack[:3] == ["ntdll!RtlAllocateHeap", "allocate!alloc_heap", "allocate!main_"]


def test_breakpoint_actions(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    target = heaps.module.exports["RtlAllocateHeap"]

    def bigger(ctx: BreakContext) -> None:
        ctx.set_arg(2, 0x300)  # Size

    bp = proc.breakpoint(target, bigger)
    p = a.alloc(heap, 0x10)
    assert a.size(heap, p) == 0x300 and bp.hits == 1
    bp.remove()

    bp = proc.breakpoint(target, lambda ctx: ctx.skip(0x1234), argc=3)
    assert a.alloc(heap, 0x10) == 0x1234  # returned at once, stack balanced
    bp.remove()

    bp = proc.breakpoint(target, lambda ctx: ctx.stop())
    with pytest.raises(BreakpointStop, match="breakpoint"):
        a.alloc(heap, 0x10)
    bp.remove()
    assert a.alloc(heap, 0x10, HEAP_ZERO_MEMORY)  # the process goes on


def test_events_record_calls_syscalls_and_pages(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    with proc.record() as rec:
        heap = a.create_heap()
        p = a.alloc(heap, 0x100)
        big = a.alloc(heap, 0x100000)
        q = a.realloc(heap, p, 0x3000)
        a.size(heap, q)
        a.free(heap, big)
        a.free(heap, q)
    top = [e.name for e in rec.events]
    assert top == ["RtlCreateHeap", "RtlAllocateHeap", "RtlAllocateHeap", "RtlReAllocateHeap",
                   "RtlSizeHeap", "RtlFreeHeap", "RtlFreeHeap"]  # fmt: skip
    assert all(e.finished and e.instructions > 10 and e.blocks > 1 for e in rec.events)
    create, alloc, big_ev = rec.events[:3]
    assert create.ret == heap and create.args["ReserveSize"] == 0
    assert alloc.args == {"HeapHandle": heap, "Flags": 0, "Size": 0x100} and alloc.ret == p
    assert alloc.caller.startswith("heapemu!call_gate")
    assert any(s.name == "NtAllocateVirtualMemory" for s in big_ev.syscalls)
    assert big_ev.committed and big_ev.committed[-1][1] >= 0x100000
    free_big = rec.events[5]
    assert free_big.ret == 1 and free_big.released and free_big.released[0][2] == "release"
    assert [e.seq for e in rec.all] == list(range(len(rec.all)))


def test_nested_events_and_user_named_exports(arch: str, allocator_kind: str) -> None:
    proc = seed003(arch, allocator_kind)
    with proc.record(["allocate!malloc", "allocate!operator_new", "ntdll!RtlAllocateHeap"],
                     argc={"malloc": 1, "operator_new": 1}) as rec:  # fmt: skip
        proc.call("allocate!alloc_new")
    new = rec.events[0]
    assert new.name == "operator_new" and new.args == {"arg0": 8}
    (malloc,) = new.children
    assert malloc.name == "malloc" and malloc.depth == 1
    alloc = [c for c in malloc.children if c.name == "RtlAllocateHeap"][-1]
    assert alloc.args["Size"] == 8 and alloc.ret == malloc.ret == new.ret
    assert new.instructions > malloc.instructions > alloc.instructions > 0


def test_events_export_jsonl_perfetto_and_table(tmp_path: Path) -> None:
    h = make_heaps("x64", "builtin")
    with h.proc.record() as rec:
        heap = h.allocator.create_heap()
        h.allocator.alloc(heap, 0x100000)
    n = write_jsonl(rec.events, tmp_path / "events.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert n == len(lines) == 2 and lines[1]["function"] == "ntheap!RtlAllocateHeap"
    write_perfetto(rec.events, tmp_path / "trace.json")
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    slices = [t for t in trace if t["ph"] == "X"]
    instants = [t for t in trace if t["ph"] == "i"]
    assert [s["name"] for s in slices] == ["RtlCreateHeap", "RtlAllocateHeap"]
    assert slices[1]["ts"] >= slices[0]["ts"] + slices[0]["dur"]
    assert {i["name"] for i in instants} == {"NtAllocateVirtualMemory"}
    assert all(slices[1]["ts"] <= i["ts"] <= slices[1]["ts"] + slices[1]["dur"]
               for i in instants[2:])  # fmt: skip
    assert perfetto_trace(rec.events)["traceEvents"] == trace  # deterministic
    assert events_table(rec.events).row_count == 2


def test_fault_inside_a_call_leaves_an_unfinished_event(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    with proc.record() as rec:
        with pytest.raises(Exception):  # noqa: B017 (any EmulationError kind)
            a.free(0x1000, 0x20)  # a heap handle in unmapped memory faults, as on Windows
        a.alloc(heap, 0x10)
    assert not rec.events[0].finished and rec.events[0].ret is None
    assert rec.events[1].finished and rec.events[1].depth == 0


# Deliberately broken functions for the convention checker. Each is called through a wrapper
# that tolerates the breakage, so the run completes and only the checker complains.
X64_FUNCS = """
good:       push rbx
            mov rbx, 5
            pop rbx
            mov eax, 1
            ret
clobber:    mov rbx, 0x1234
            ret
clobber_x:  pcmpeqd xmm6, xmm6
            ret
df_set:     std
            ret
frame_write:
            mov qword ptr [rsp + 0x28], 7
            ret
call_misaligned:
            push rbx
            mov rbx, [rsp + 0x38]
            sub rsp, 0x28
            call rcx
            add rsp, 0x28
            cld
            pop rbx
            ret
call_aligned:
            push rbx
            sub rsp, 0x20
            call rcx
            add rsp, 0x20
            cld
            pop rbx
            ret
"""

X86_FUNCS = """
good:       push esi
            mov esi, 5
            pop esi
            mov eax, 1
            ret 4
clobber:    mov esi, 0x1234
            ret 4
unbalanced: ret
df_set:     std
            ret 4
call_it:    push ebx
            push esi
            push edi
            push ebp
            mov ebp, esp
            push 0
            call dword ptr [ebp + 20]
            mov esp, ebp
            cld
            pop ebp
            pop edi
            pop esi
            pop ebx
            ret 4
"""


def test_convention_checker_reports_each_violation(arch: str) -> None:
    proc = Process(arch)
    m = proc.load_flat(X64_FUNCS if arch == "x64" else X86_FUNCS, "conv")
    if arch == "x64":
        cases = {
            "good": [],
            "clobber": ["rbx not preserved"],
            "clobber_x": ["xmm6 not preserved"],
            "df_set": ["direction flag left set"],
            "frame_write": ["wrote into the caller's frame"],
        }
    else:
        cases = {
            "good": [],
            "clobber": ["esi not preserved"],
            "unbalanced": ["stdcall stack imbalance"],
            "df_set": ["direction flag left set"],
        }
    watched = [f"conv!{n}" for n in cases]
    with proc.record(watched, check_conventions=True, argc={n: 1 for n in cases}) as rec:
        for name in cases:
            if arch == "x64":
                proc.call("conv!call_aligned", m.exports[name])
            else:
                proc.call("conv!call_it", m.exports[name])
        if arch == "x64":
            proc.call("conv!call_misaligned", m.exports["good"])
    by_name: dict[str, list[str]] = {}
    for ev in rec.all:
        by_name.setdefault(ev.name, []).extend(ev.violations)
    for name, expected in cases.items():
        got = by_name[name]
        if name == "good" and arch == "x64":
            got = got[: len(got) // 2]  # the misaligned call of `good` comes second
        assert len(got) == len(expected), (name, got)
        for want, have in zip(expected, got, strict=True):
            assert want in have, (name, have)
    if arch == "x64":
        misaligned = [e for e in rec.all if e.name == "good"][1]
        assert any("misaligned stack" in v for v in misaligned.violations)
    assert len(rec.violations) == sum(len(v) for v in cases.values()) + (arch == "x64")


def test_allocators_run_clean_under_the_checker(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    with proc.record(check_conventions=True) as rec:
        heap = a.create_heap()
        blocks = [a.alloc(heap, n) for n in (1, 0x100, 0x5000, 0x100000)]
        for b in blocks:
            a.realloc(heap, b, 0x200)
        a.destroy(heap)
    assert rec.all and not rec.violations, rec.violations


def test_recorder_needs_functions_when_no_heap_is_loaded() -> None:
    with pytest.raises(ValueError, match="name them"):
        EventRecorder(Process("x64"))
    assert Allocator  # the wrapper is importable alongside


def test_watched_functions_that_jump_into_one_another_close_together(heaps: Heaps) -> None:
    """A watched function that jumps (not calls) into another watched one, as a routed
    ntdll!RtlAllocateHeap does (``heapemu exec --allocator``): both events end at their one
    return, so the next call is top-level again."""
    proc, a = heaps.proc, heaps.allocator
    target = a.entry["RtlAllocateHeap"]
    reg = "rax" if heaps.arch == "x64" else "eax"
    proc.load_flat(f"forward:\n    mov {reg}, {target:#x}\n    jmp {reg}\n", "jumps")
    heap = a.create_heap()
    inner = f"{heaps.module.short_name}!RtlAllocateHeap"
    with proc.record(["jumps!forward", inner], argc={"forward": 3}) as rec:
        first = proc.call("jumps!forward", heap, 0, 0x20)
        second = proc.call("jumps!forward", heap, 0, 0x30)
    assert first and second and first != second
    assert [(e.name, e.ret, e.finished) for e in rec.events] == [
        ("forward", first, True), ("forward", second, True)
    ]  # fmt: skip
    for event, ret in zip(rec.events, (first, second), strict=True):
        (child,) = event.children
        assert child.function == inner and child.ret == ret and child.finished
        assert child.return_address == event.return_address


# The counter logs entries and returns in C and the recorder reads the log in batches (when
# it is full, at a system call, a thread switch, the end of a run) and makes events when they
# are read: the same events as one record at a time.
def _event_facts(rec: EventRecorder) -> list[tuple[object, ...]]:
    return [
        (e.seq, e.name, tuple(e.args.items()), e.ret, e.depth, e.entry_sp, e.start, e.end,
         e.instructions, e.blocks, e.finished, len(e.syscalls), e.caller, len(e.children))
        for e in rec.all
    ]  # fmt: skip


def test_batched_records_give_the_events_of_one_record_at_a_time(heaps: Heaps) -> None:
    """One in-emulator replay: ~3,000 calls in one run fill the log (256 KiB: 1,400-2,700
    records) more than once; a recorder walking stacks reads each record as it comes. Same
    events, same counts."""
    from emu.heap.replay.run import replay
    from emu.heap.replay.workload import synthetic

    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    ops = list(synthetic(ops=1500, seed=3, sizes="small"))
    facts = []
    snap = proc.snapshot()
    for stacks in (0, 1):  # 0: batches; 1: one record at a time (a stack walk per entry)
        proc.restore(snap)
        with EventRecorder(proc, stacks=stacks) as rec:
            replay(a, ops, heap, chunk=len(ops))
        facts.append(_event_facts(rec))
        assert len(rec.all) >= len(ops) and all(e.finished for e in rec.all)
    assert facts[0] == facts[1]


def test_events_read_during_a_call_finish_when_it_returns(arch: str) -> None:
    """A breakpoint inside the allocator reads the events: the call under way is there,
    unfinished; it is the same object, finished, after the call returned."""
    heaps = make_heaps(arch, "builtin")
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    seen = []
    with proc.record() as rec:
        bp = proc.breakpoint(
            heaps.module.exports["RtlAllocateHeap"],
            lambda ctx: seen.append([(e, e.finished, e.ret) for e in rec.all]),
        )
        p = a.alloc(heap, 0x40)
        bp.remove()
    ((event, finished, ret),) = seen[0]
    assert len(seen) == 1 and not finished and ret is None
    assert rec.all == [event] and event.finished and event.ret == p
