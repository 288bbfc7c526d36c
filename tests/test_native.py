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
    monkeypatch.setattr(native, "_loaded_direct", {})
    monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false")
    assert native.library() is None and native.direct() is None
    proc = Process(arch, time_limit=10.0)
    assert proc.cpu._native is None and proc.cpu.tlb_counters() is None
    assert proc.cpu._direct is None
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


def _cpu_answers(proc: Process) -> dict[str, Any]:
    """What the CPU's C-API calls answer: registers of every width, reads and writes inside
    and outside backed memory, unreadable ranges, a call's result."""
    import ctypes

    from emu.cpu.cpu import CpuError

    cpu = proc.cpu
    wide = proc.arch.ptr_size == 8
    acc = "rax" if wide else "eax"
    cpu.set_reg(acc, 0x1122334455667788 if wide else 0x55667788)
    out: dict[str, Any] = {r: cpu.reg(r) for r in (acc, "ax", "al", "ah", "cs", "ss", "eflags")}
    cpu.set_reg("ax", 0xBEEF)
    out["after_ax"] = cpu.reg(acc)
    base = proc.memory.allocate(0, 0x2000, 0x3000, 0x04)[0]  # MEM_COMMIT|RESERVE, RW
    cpu.write(base + 0xFFE, b"\x01\x02\x03\x04")
    out["read"] = cpu.read(base + 0xFFE, 4)
    out["gate"] = cpu.read(proc.call_gate.return_address, 8)  # outside backed memory
    buf = ctypes.create_string_buffer(16)
    out["into"] = cpu.read_into(base, buf, 16), buf.raw
    out["into_unmapped"] = cpu.read_into(0x10, buf, 16)
    for name, op in (
        ("read_unmapped", lambda: cpu.read(0x10, 4)),
        ("write_unmapped", lambda: cpu.write(0x10, b"x")),
    ):
        try:
            op()
            out[name] = "no error"
        except CpuError as e:
            out[name] = f"CpuError: {e}"
    f = proc.load_flat("f:\n lea eax, [ecx + edx]\n ret\n", "f").exports["f"]
    out["call"] = proc.call(f, 40, 2, convention="fastcall" if not wide else None)
    out["pc"] = cpu.pc != 0
    return out


def test_direct_calls_answer_as_ctypes_does(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """emu/cpu/direct.c (Unicorn's C API without ctypes) gives the CPU the same answers as
    ctypes: registers zero-extended at every width, reads, writes and their errors."""
    fast = Process(arch, time_limit=10.0)
    assert fast.cpu._direct is not None, "the direct module did not build on this machine"
    direct = _cpu_answers(fast)
    monkeypatch.setenv("HEAPEMU_NATIVE", "0")
    slow = Process(arch, time_limit=10.0)
    assert slow.cpu._direct is None
    assert direct == _cpu_answers(slow)
    assert direct["al"] == 0x88 and direct["ah"] == 0x77 and direct["call"] == 42
    assert direct["into_unmapped"] is False and "UNMAPPED" in direct["read_unmapped"]


def test_without_python_headers_calls_go_through_ctypes(
    arch: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python without its headers (no python3-dev): the direct module is not built and the
    CPU calls Unicorn through ctypes (the C fast paths, which need no headers, stay)."""
    monkeypatch.setenv("HEAPEMU_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_loaded_direct", {})
    real = native.sysconfig.get_paths
    monkeypatch.setattr(
        native.sysconfig, "get_paths", lambda: {**real(), "include": str(tmp_path / "none")}
    )
    assert native.direct() is None
    assert not list(tmp_path.glob("direct-*"))
    proc = Process(arch, time_limit=10.0)
    assert proc.cpu._direct is None and proc.cpu._native is not None
    a = Allocator(proc, proc.load_allocator("builtin"))
    heap = a.create_heap()
    p = a.alloc(heap, 0x100)
    assert p and a.free(heap, p)


@pytest.mark.parametrize("fast", [True, False])
def test_the_native_hook_checks_returns_python_only_those_it_could_not(
    arch: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With convention checks the native hook pairs each return with its entry's record and
    marks the ones that left everything as found (RECORD_KEPT): Python compares none of those.
    Without the native path Python compares every one. The same events either way."""
    from emu.observe.events import EventRecorder

    compared: list[str] = []
    kept = EventRecorder._kept_convention

    def counting(self: EventRecorder, ev: Any, rec: Any) -> bool:
        compared.append(ev.name)
        return kept(self, ev, rec)

    monkeypatch.setattr(EventRecorder, "_kept_convention", counting)
    if not fast:
        monkeypatch.setenv("HEAPEMU_NATIVE", "0")
    proc = Process(arch, time_limit=10.0)
    a = Allocator(proc, proc.load_allocator("builtin"))
    heap = a.create_heap()
    with proc.record(check_conventions=True) as rec:
        for _ in range(50):
            a.free(heap, a.alloc(heap, 0x40))
    assert len(rec.all) == 100 and not rec.violations
    assert all(e.finished and e.ret is not None for e in rec.all)
    assert len(compared) == (0 if fast else 100), compared[:4]
