"""Allocation replay speed: every figure a ratio of two measurements taken in the same run.

For each architecture and allocator, one synthetic tape (``typical`` sizes) is replayed with
``emu.heap.replay.run`` and compared with:

* the same builtin heap C compiled natively, replaying the same tape (benchmarks/native_replay:
  the physical limit; builtin only, Wine's ntdll cannot run natively here);
* heapemu as it was before the fast core (the baseline commit, ``HEAPEMU_BENCH_BASELINE``,
  exported once under ~/.cache/heapemu/baseline/ and run in a subprocess), the same tape,
  rounds alternating with the current code; both must produce the same results (allocators
  the baseline does not have, win7 and segment, are measured without it);
* the bare engine: a load/store loop on Unicorn with nothing installed (``UC_TLB_VIRTUAL``, no
  hooks), in instructions per second (the replay's instructions are counted in a separate run
  with a block hook, its time taken from runs without hooks);
* the same operations issued one ``proc.call`` at a time from Python.

The builtin row also carries ``cpu_slowdown``, the same ratio in CPU time (the replayed part
on both sides). Each row also carries the CPU's counters for one replay: TLB misses per
operation and how many of them Python answered (the rest the native fast path did).

Timed figures are the best of ``ROUNDS`` runs on fresh heaps, after a warm-up replay (so the
translation cache is warm). Against the baseline, each row also carries ``cpu_ratio``: the
same comparison in CPU time (``time.thread_time`` of whole rounds, heap creation and
destruction included, on both sides), which a loaded machine disturbs far less than wall time.

    python -m benchmarks replay               (~4 minutes; the native build ~1 minute once)

``HEAPEMU_BENCH_ALLOCATORS=builtin,wine`` measures only those allocators (its results file is
``replay.builtin-wine.json``, next to the full run's), ``HEAPEMU_BENCH_ROUNDS`` the rounds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import unicorn
from unicorn import x86_const as ux

from emu import Process
from emu.cpu.cpu import TCG_BUFFER_SIZE
from emu.heap.allocator import Allocator
from emu.heap.replay.run import ReplayResult, replay, replay_python
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import OpKind, synthetic

from . import native_replay
from .bench_peer import _KS_MODES
from .bench_search import BENCH_ALLOCATORS

OPS = int(os.environ.get("HEAPEMU_BENCH_REPLAY_OPS", 100_000))
WARMUP = 20_000
PYTHON_OPS = 10_000  # one proc.call per op is slow: a prefix of the tape
ROUNDS = int(os.environ.get("HEAPEMU_BENCH_ROUNDS", 3))
LOOP_ITERATIONS = 4_000_000  # 5 instructions each
# the last commit before the fast core (UC_TLB_VIRTUAL + TLB-fill hook, the call gate)
BASELINE = os.environ.get("HEAPEMU_BENCH_BASELINE", "8e6374ea8cceacb0b15a8e1d6af56f1a65b4b7e7")
REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "heapemu" / "baseline"


def _load(arch: str, kind: str) -> Allocator:
    proc = Process(arch, time_limit=0)
    module = proc.load_allocator(kind)
    return Allocator(proc, module, name=kind)


def _fresh_replay(a: Allocator, tape: Tape, **options: Any) -> ReplayResult:
    """Replay on a new heap, then destroy it (so every round starts from the same state)."""
    heap = a.create_heap()
    r = replay(a, tape, heap, time_limit=0, **options)
    a.destroy(heap)
    return r


def _digest(r: ReplayResult) -> str:
    return hashlib.sha256(r.values.tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------- the baseline
def baseline_tree() -> Path | None:
    """The baseline commit's files (exported with ``git archive`` once), or None without git."""
    target = CACHE / BASELINE
    if (target / "emu").is_dir():
        return target
    try:
        data = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", BASELINE],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    partial = target.with_suffix(".partial")
    partial.mkdir(parents=True, exist_ok=True)
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(partial, filter="data")
    partial.rename(target)
    return target


UNKNOWN_KIND = "unknown allocator"  # replay_rounds.py's answer for a kind it does not have


class BaselineLacksKindError(LookupError):
    """The baseline commit predates this allocator: nothing to compare it with."""


class Baseline:
    """The baseline heapemu replaying the tape in a subprocess, one round per request."""

    def __init__(self, tree: Path, arch: str, kind: str):
        script = Path(__file__).parent / "baseline" / "replay_rounds.py"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.p = subprocess.Popen(
            [sys.executable, str(script), arch, kind, str(OPS), str(WARMUP)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tree,
        )
        assert self.p.stdout is not None
        first = self.p.stdout.readline().strip()
        if first == UNKNOWN_KIND:
            self.close()
            raise BaselineLacksKindError(kind)
        if first != "ready":
            raise RuntimeError("the baseline replay did not start")

    def round(self) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return dict(json.loads(self.p.stdout.readline()))

    def close(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        self.p.wait(timeout=60)


# ---------------------------------------------------------------------- the bare engine
def bare_loop_ips(arch: str) -> float:
    """Instructions/s of a load/store loop (load, add, store, dec, jnz) on a bare Unicorn in
    UC_TLB_VIRTUAL mode with an identity TLB fill (without one, Unicorn's default fill grants
    only the access that missed: a load and a store to one page evict each other) and nothing
    else: the engine's speed."""
    import keystone

    r = "rdx" if arch == "x64" else "edx"
    src = (
        f"mov ecx, {LOOP_ITERATIONS:#x}; top: mov eax, dword ptr [{r}]; add eax, ecx; "
        f"mov dword ptr [{r}], eax; dec ecx; jnz top; nop"
    )
    code = bytes(keystone.Ks(keystone.KS_ARCH_X86, _KS_MODES[arch]).asm(src, 0x10000)[0])
    uc = unicorn.Uc(
        unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if arch == "x64" else unicorn.UC_MODE_32
    )
    # heapemu's own translation buffer size (emu.cpu.cpu.TCG_BUFFER_SIZE): Unicorn's 1 GiB
    # default, left in the address space until collected, pushed the next architecture's
    # engine out of a direct call's reach of Unicorn's helpers
    uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)  # type: ignore[attr-defined]
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)  # type: ignore[attr-defined]

    def fill(uc_: object, vaddr: int, access: int, entry: Any, user: object) -> bool:
        # (the binding passes the entry itself) executable only where the code is: stores to
        # a page the TLB holds executable always take Unicorn's self-modifying-code path
        code_page = vaddr == 0x10000
        entry.paddr, entry.perms = vaddr, unicorn.UC_PROT_ALL if code_page else 3
        return True

    uc.hook_add(unicorn.UC_HOOK_TLB_FILL, fill)
    uc.mem_map(0x10000, 0x1000, unicorn.UC_PROT_ALL)
    uc.mem_map(0x20000, 0x1000, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
    uc.mem_write(0x10000, code)
    uc.reg_write(ux.UC_X86_REG_RDX if arch == "x64" else ux.UC_X86_REG_EDX, 0x20000)
    best = float("inf")
    for _ in range(ROUNDS + 1):
        t0 = time.perf_counter()
        uc.emu_start(0x10000, 0x10000 + len(code) - 1)
        best = min(best, time.perf_counter() - t0)
    return 5 * LOOP_ITERATIONS / best


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


def measure(arch: str, kind: str, tape: Tape, tree: Path | None) -> list[dict[str, object]]:
    a = _load(arch, kind)
    _fresh_replay(a, tape.head(WARMUP))
    try:
        base = Baseline(tree, arch, kind) if tree is not None else None
    except BaselineLacksKindError:
        base = None
    best, base_best = float("inf"), float("inf")
    cpu_best, base_cpu_best, replay_cpu_best = float("inf"), float("inf"), float("inf")
    result: ReplayResult | None = None
    base_digest = ""
    try:
        for _ in range(ROUNDS):
            c0 = time.thread_time()
            result = _fresh_replay(a, tape)
            cpu_best = min(cpu_best, time.thread_time() - c0)
            replay_cpu_best = min(replay_cpu_best, result.cpu_seconds)
            best = min(best, result.seconds)
            if base is not None:
                got = base.round()
                base_best = min(base_best, got["seconds"])
                base_cpu_best = min(base_cpu_best, got["cpu"])
                base_digest = got["results"]
    finally:
        if base is not None:
            base.close()
    assert result is not None
    # the CPU's own counters over one more timed-path replay: TLB misses per operation, and
    # how many of them Python answered (None without the native fast path)
    before = a.proc.cpu.tlb_counters()
    _fresh_replay(a, tape)
    after = a.proc.cpu.tlb_counters()
    tlb = (
        {
            "tlb_fills_per_op": round((after[0] - before[0]) / len(tape), 4),
            "tlb_python_fills_per_op": round((after[1] - before[1]) / len(tape), 4),
        }
        if before is not None and after is not None
        else {}
    )
    counted = _fresh_replay(a, tape, count_instructions=True)
    instructions = counted.instructions or 0
    ops_s = len(tape) / best
    head = tape.head(PYTHON_OPS)
    heap = a.create_heap()
    t0 = time.perf_counter()
    replay_python(a, head, heap)
    python_ops_s = len(head) / (time.perf_counter() - t0)
    common = {
        "ops": len(tape),
        "instructions_per_op": round(instructions / len(tape), 1),
        "syscalls_per_replay": result.syscalls,
        # the counted run executes the same code as the timed ones iff it gives the same results
        "counted_run_same_results": list(counted.values) == list(result.values),
        **tlb,
    }
    rows = []
    if kind == "builtin":
        native = native_replay.run(arch, bytes(tape.data), rounds=5)
        agree = _scalar_results_agree(tape, list(result.values), list(native.results))
        rows.append(
            _row(
                "replay builtin: emulated vs native C",
                arch,
                ops_s,
                "ops/s",
                native.ops_per_second,
                "same C compiled natively (zig cc -O2)",
                slowdown=round(native.ops_per_second / ops_s, 1),
                target="slowdown <= 15",
                # the same in CPU time (the replayed part on both sides)
                cpu_slowdown=round(replay_cpu_best / native.best_cpu_seconds, 1)
                if native.best_cpu_seconds
                else None,
                native_results_agree=agree,
                native_vm_calls=native.vm_calls,
                **common,
            )
        )
    if base is not None:
        rows.append(
            _row(
                f"replay {kind}: fast core vs before it",
                arch,
                ops_s,
                "ops/s",
                len(tape) / base_best,
                f"heapemu {BASELINE[:9]} (alternating rounds)",
                same_results=base_digest == _digest(result),
                cpu_seconds=round(cpu_best, 4),
                baseline_cpu_seconds=round(base_cpu_best, 4),
                cpu_ratio=round(base_cpu_best / cpu_best, 3),
                **({"target": ">= 3"} if kind == "wine" else {}),
            )
        )
    bare = bare_loop_ips(arch)
    rows += [
        _row(
            f"replay {kind}: emulated instr/s vs bare engine",
            arch,
            instructions / best / 1e6,
            "M instr/s",
            bare / 1e6,
            f"load/store loop, bare Unicorn {unicorn.__version__} (UC_TLB_VIRTUAL, identity fill)",
            **common,
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
    return rows


def run() -> list[dict[str, object]]:
    tape = Tape.from_ops(synthetic(ops=OPS, seed=1, sizes="typical"))
    tree = baseline_tree()
    rows: list[dict[str, object]] = []
    for kind in BENCH_ALLOCATORS:
        for arch in ("x86", "x64"):
            rows += measure(arch, kind, tape, tree)
    return rows
