"""Allocation replay speed: every figure a ratio of two measurements taken in the same run.

For each architecture and allocator, one synthetic tape (``typical`` sizes) is replayed with
``emu.heap.replay.run`` and compared with:

* the same builtin heap C compiled natively, replaying the same tape (benchmarks/native_replay:
  the physical limit; builtin only, Wine's ntdll cannot run natively here);
* the emulator's own speed: a plain load/store loop in the same process, in instructions per
  second (the replay's instructions are counted in a separate run with a block hook, its time
  taken from runs without hooks);
* the same process in UC_TLB_VIRTUAL mode (``Process(arch, tlb="virtual")``);
* the same operations issued one ``proc.call`` at a time from Python.

Timed figures are the best of ``ROUNDS`` runs on fresh heaps, after a warm-up replay (so the
translation cache is warm); configurations are interleaved round by round, which evens out a
noisy shared host. ``run_tlb_proposal`` measures a what-if for the per-call path (see its doc).

    python -m benchmarks replay               (~3 minutes; the native build ~1 minute once)
    python -m benchmarks replay_tlb_proposal
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import unicorn
import unicorn.unicorn_py3.unicorn as ucpy

from emu import Process
from emu.cpu.cpu import uc_perms
from emu.heap.allocator import Allocator
from emu.heap.replay.run import ReplayResult, replay, replay_python
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import OpKind, synthetic

from . import native_replay

OPS = int(os.environ.get("HEAPEMU_BENCH_REPLAY_OPS", 100_000))
WARMUP = 20_000
PYTHON_OPS = 10_000  # one proc.call per op is slow: a prefix of the tape
ROUNDS = 3
LOOP_ITERATIONS = 2_000_000  # 5 instructions each


def loop_source(proc: Process) -> str:
    """A plain load/store loop: load, add, store, decrement, branch (5 instructions)."""
    body = [
        "mov eax, dword ptr [{r}]",
        "add eax, ecx",
        "mov dword ptr [{r}], eax",
        "dec ecx",
        "jnz bench_loop_top",
    ]
    if proc.arch.ptr_size == 8:
        head, reg, ret = ["lea rdx, [rip + bench_loop_data]"], "rdx", "ret"
    else:
        head, reg, ret = (
            ["mov ecx, dword ptr [esp + 4]", "lea edx, [bench_loop_data]"],
            "edx",
            "ret 4",
        )
    lines = [".globl bench_loop", "bench_loop:", *head, "bench_loop_top:"]
    lines += [b.format(r=reg) for b in body] + [ret, ".data", "bench_loop_data: .long 0"]
    return "\n".join(lines) + "\n"


def _load(
    arch: str, kind: str, tlb: str = "cpu", patch: Callable[[Process], object] | None = None
) -> Allocator:
    proc = Process(arch, tlb=tlb, time_limit=0)
    if patch is not None:
        patch(proc)
    module = proc.load_allocator(kind)
    return Allocator(proc, module, name=kind)


def _fresh_replay(a: Allocator, tape: Tape, **options: Any) -> ReplayResult:
    """Replay on a new heap, then destroy it (so every round starts from the same state)."""
    heap = a.create_heap()
    r = replay(a, tape, heap, time_limit=0, **options)
    a.destroy(heap)
    return r


class _Setup:
    """A process with the allocator, the loop, and a warm translation cache."""

    def __init__(
        self,
        arch: str,
        kind: str,
        tlb: str,
        tape: Tape,
        patch: Callable[[Process], object] | None = None,
    ):
        self.a = _load(arch, kind, tlb, patch)
        self.loop = self.a.proc.load_flat(loop_source(self.a.proc), "bench_loop").exports
        _fresh_replay(self.a, tape.head(WARMUP))
        self.a.proc.call(self.loop["bench_loop"], 1000)
        self.replay_best = float("inf")
        self.loop_best = float("inf")

    def round(self, tape: Tape) -> ReplayResult:
        t0 = time.perf_counter()
        self.a.proc.call(self.loop["bench_loop"], LOOP_ITERATIONS, time_limit=0)
        self.loop_best = min(self.loop_best, time.perf_counter() - t0)
        r = _fresh_replay(self.a, tape)
        self.replay_best = min(self.replay_best, r.seconds)
        return r

    @property
    def loop_ips(self) -> float:
        return 5 * LOOP_ITERATIONS / self.loop_best


def _row(
    name: str, arch: str, value: float, unit: str, ref: float, ref_name: str, **extra: object
) -> dict[str, object]:
    digits = 1 if value >= 100 else 3
    return {
        "benchmark": name,
        "arch": arch,
        "value": round(value, digits),
        "unit": unit,
        "reference": round(ref, digits),
        "reference_name": ref_name,
        "ratio": round(value / ref, 3) if ref else None,
        **extra,
    }


def _scalar_results_agree(tape: Tape, emulated: list[int], native: list[int]) -> bool:
    """Native addresses differ (mmap); everything else must be equal: which allocations
    failed, every free/validate BOOLEAN and every size."""
    for code, e, n in zip(tape.kinds(), emulated, native, strict=True):
        if code in (OpKind.ALLOC, OpKind.REALLOC):
            if bool(e) != bool(n):
                return False
        elif e != n:
            return False
    return True


def measure(arch: str, kind: str, tape: Tape) -> list[dict[str, object]]:
    setups = {tlb: _Setup(arch, kind, tlb, tape) for tlb in ("cpu", "virtual")}
    results: dict[str, ReplayResult] = {}
    for _ in range(ROUNDS):
        for tlb, s in setups.items():
            results[tlb] = s.round(tape)
    cpu, virt = setups["cpu"], setups["virtual"]
    counted = _fresh_replay(cpu.a, tape, count_instructions=True)
    instructions = counted.instructions or 0
    ops_s = len(tape) / cpu.replay_best
    ips = instructions / cpu.replay_best
    head = tape.head(PYTHON_OPS)
    heap = cpu.a.create_heap()
    t0 = time.perf_counter()
    replay_python(cpu.a, head, heap)
    python_ops_s = len(head) / (time.perf_counter() - t0)
    common = {
        "ops": len(tape),
        "instructions_per_op": round(instructions / len(tape), 1),
        "syscalls_per_replay": results["cpu"].syscalls,
        # the counted run executes the same code as the timed ones iff it gives the same results
        "counted_run_same_results": list(counted.values) == list(results["cpu"].values),
    }
    rows = [
        _row(
            f"replay {kind}: emulated instr/s vs load/store loop",
            arch,
            ips / 1e6,
            "M instr/s",
            cpu.loop_ips / 1e6,
            "load/store loop, same process",
            target=">= 0.5",
            **common,
        ),
        _row(
            f"replay {kind}: tlb=virtual vs tlb=cpu",
            arch,
            len(tape) / virt.replay_best,
            "ops/s",
            ops_s,
            "tlb=cpu replay",
            loop_virtual_vs_cpu=round(virt.loop_ips / cpu.loop_ips, 3),
            same_results=list(results["virtual"].values) == list(results["cpu"].values),
        ),
        _row(
            f"replay {kind}: vs one proc.call per op",
            arch,
            ops_s,
            "ops/s",
            python_ops_s,
            f"Allocator methods from Python ({len(head)} ops)",
        ),
    ]
    if kind == "builtin":
        native = native_replay.run(arch, bytes(tape.data), rounds=5)
        agree = _scalar_results_agree(tape, list(results["cpu"].values), list(native.results))
        rows.insert(
            0,
            _row(
                "replay builtin: emulated vs native C",
                arch,
                ops_s,
                "ops/s",
                native.ops_per_second,
                "same C compiled natively (zig cc -O2)",
                slowdown=round(native.ops_per_second / ops_s, 1),
                target="slowdown <= 30",
                native_results_agree=agree,
                native_vm_calls=native.vm_calls,
                **common,
            ),
        )
    return rows


def run() -> list[dict[str, object]]:
    tape = Tape.from_ops(synthetic(ops=OPS, seed=1, sizes="typical"))
    rows: list[dict[str, object]] = []
    for kind in ("builtin", "wine"):
        for arch in ("x86", "x64"):
            rows += measure(arch, kind, tape)
    return rows


# ---------------------------------------------------------------------- what-if: TLB fill
def tlb_fill_prototype(proc: Process) -> Callable[[], int]:
    """What-if for emu/cpu.py (not used by heapemu): UC_TLB_VIRTUAL with a UC_HOOK_TLB_FILL
    hook that maps pages 1:1 with their real protections (RW data pages without X, so stores
    stay on the fast path) and finds guard pages itself, and WITHOUT the
    UC_HOOK_MEM_UNMAPPED|UC_HOOK_MEM_PROT hook: any such hook forces every access in virtual
    TLB mode onto the slow path. Faults then surface as UC_ERR_MMU_* without an address (a
    real implementation would record the Fault in the fill hook). Returns a fill counter."""
    uc = proc.cpu.uc
    for handle, fptr in list(uc._callbacks.items()):
        if type(fptr) is ucpy.HOOK_MEM_INVALID_CFUNC:
            uc.hook_del(handle)
    mem = proc.memory
    need = {unicorn.UC_MEM_READ: 1, unicorn.UC_MEM_WRITE: 2, unicorn.UC_MEM_FETCH: 4}
    fills = [0]

    def fill(uc_: object, vaddr: int, access: int, entry: Any, _: object) -> bool:
        fills[0] += 1
        state = mem.page_state(vaddr)
        if state and state & 0x100:  # PAGE_GUARD: the stack grows as with the memory hook
            proc._on_bad_access("protected", "read", vaddr, 1)
            state = mem.page_state(vaddr)
        if not state or state & 0x100:
            return False
        perms = uc_perms(state)
        entry.paddr = vaddr
        entry.perms = perms | 4 if access == unicorn.UC_MEM_FETCH else perms & 3
        return bool(entry.perms & need[access])

    uc.hook_add(unicorn.UC_HOOK_TLB_FILL, fill)
    uc.ctl_flush_tb()  # type: ignore[attr-defined]
    return lambda: fills[0]


def run_tlb_proposal() -> list[dict[str, object]]:
    tape = Tape.from_ops(synthetic(ops=OPS, seed=1, sizes="typical"))
    rows: list[dict[str, object]] = []
    for kind in ("builtin", "wine"):
        for arch in ("x86", "x64"):
            name = f"what-if {kind}: virtual TLB + fill hook vs tlb=cpu"
            base = _Setup(arch, kind, "cpu", tape)
            fills: list[Callable[[], int]] = []
            try:
                what_if = _Setup(
                    arch, kind, "virtual", tape, lambda p, f=fills: f.append(tlb_fill_prototype(p))
                )
                for _ in range(ROUNDS):
                    expected = base.round(tape)
                    n0 = fills[0]()
                    got = what_if.round(tape)
                    n1 = fills[0]()
                rows.append(
                    _row(
                        name,
                        arch,
                        len(tape) / what_if.replay_best,
                        "ops/s",
                        len(tape) / base.replay_best,
                        "tlb=cpu replay",
                        same_results=list(got.values) == list(expected.values),
                        fills_per_op=round((n1 - n0) / len(tape), 3),
                        loop_ratio=round(what_if.loop_ips / base.loop_ips, 2),
                    )
                )
            except Exception as e:  # a what-if: report, do not stop the suite
                rows.append(
                    _row(
                        name,
                        arch,
                        0.0,
                        "ops/s",
                        len(tape) / base.replay_best,
                        "tlb=cpu replay",
                        error=f"{type(e).__name__}: {e}"[:300],
                    )
                )
    return rows
