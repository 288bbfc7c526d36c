"""Allocation replay at emulator speed: a whole tape of heap operations per ``proc.call``.

``replay(allocator, ops)`` encodes the operations as a :class:`~emu.heap.replay.tape.Tape`, writes
it
(a chunk at a time) into emulated memory and calls the driver of ``emu.heap.replay.driver`` once per
chunk: the driver calls the allocator's Rtl* entry points for every record, keeps the ID ->
block table in emulated memory and stores one pointer-sized result per operation. Python is
entered only by system calls (served by the process's hooks without stopping the run) and once
per chunk to write the next records and read the results, so a million operations cost ~250
Python round trips, not a million.

Results, one per op, as raw pointer-sized values: alloc/realloc the block address (0 on
failure), free and validate the BOOLEAN's low byte, size the SIZE_T ((SIZE_T)-1 on failure).
:func:`replay_python` computes the same list one ``proc.call`` at a time (the reference the
tests compare against).

Everything the replay maps is placed top-down, so the allocator's own reservations (bottom-up)
land where they would without it: a replay and a call-by-call run give the same addresses.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emu.arch import Arch
from emu.errors import CpuState, EmulationError, Fault
from emu.heap.replay.driver import (
    CTL,
    ENTRIES,
    ENTRY_NAME,
    RECORD_SIZE,
    STATUS_BAD_OP,
    STATUS_DONE,
    STATUS_IMBALANCE,
    ctl_offset,
    driver_source,
)
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import KIND_NAMES, OpKind, OpLike, as_ops
from emu.load.flat import load_flat
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_READWRITE,
    PAGE_SIZE,
)

if TYPE_CHECKING:
    from emu.heap.allocator import Allocator

DRIVER_MODULE = "heapemu_replay"
# records per driver call: 96 KiB of tape and 16-32 KiB of results, a few µs of Python each.
# Small enough that every chunk reuses the same host pages, still in the host's caches (chunks
# of 1.5 MiB cost a fresh host page fault every 4 KiB and ~7% of a builtin replay's time;
# measured with benchmarks/bench_replay.py's tape, Unicorn 2.1.4)
DEFAULT_CHUNK = 1 << 12
MAX_SLOTS = 1 << 24  # IDs the slot table can hold (renumber sparse traces: workload.renumber)


class ReplayError(EmulationError):
    """A replay stopped early: ``op_index`` and ``op`` say where (None if not inside an op);
    ``results`` holds the results of the operations completed before it."""

    def __init__(
        self,
        fault: Fault,
        state: CpuState | None,
        context: str,
        op_index: int | None,
        tape: Tape,
        results: array[int],
    ):
        super().__init__(fault, state, context)
        self.op_index = op_index
        self.op = tape.op(op_index) if op_index is not None and op_index < len(tape) else None
        self.results = results


@dataclass
class ReplayResult:
    """What a replay produced: ``values[i]`` is op i's raw result (see the module doc)."""

    tape: Tape
    values: array[int]
    heap: int
    arch: Arch
    seconds: float  # wall time of the emulated part (writes, driver calls, result reads)
    driver_calls: int
    syscalls: int  # system calls the allocator made during the replay
    instructions: int | None = None  # when counted (count_instructions=True)
    cpu_seconds: float = 0.0  # the thread's CPU time over the same part as ``seconds``
    extra: dict[str, Any] = field(default_factory=dict)
    # the slot table at the end (live IDs -> block pointers): pass it as ``slots=`` to a later
    # replay that goes on with the same blocks
    slots: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> int:
        return self.values[i]

    @property
    def ops_per_second(self) -> float:
        return len(self.values) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts per operation kind with failures (NULL, FALSE, (SIZE_T)-1)."""
        fail_value = {
            OpKind.ALLOC: 0,
            OpKind.FREE: 0,
            OpKind.REALLOC: 0,
            OpKind.SIZE: self.arch.ptr_mask,
            OpKind.VALIDATE: 0,
        }
        counts = {k: [0, 0] for k in OpKind}
        for code, value in zip(self.tape.kinds(), self.values, strict=False):
            kind = OpKind(code)
            c = counts[kind]
            c[0] += 1
            if value == fail_value[kind]:
                c[1] += 1
        out: dict[str, Any] = {
            KIND_NAMES[k]: {"count": n, "failed": bad} for k, (n, bad) in counts.items() if n
        }
        out["total"] = len(self.values)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch.name,
            "ops": len(self.values),
            "seconds": self.seconds,
            "ops_per_second": self.ops_per_second,
            "instructions": self.instructions,
            "instructions_per_op": self.instructions / len(self.values)
            if self.instructions and len(self.values)
            else None,
            "driver_calls": self.driver_calls,
            "syscalls": self.syscalls,
            "heap": self.heap,
            "results": self.summary(),
            **self.extra,
        }


def load_driver(proc: ProcessCore) -> Module:
    """The driver module in ``proc`` (assembled and mapped top-down on first use)."""
    module = proc.modules.get(DRIVER_MODULE)
    if module is not None:
        return module
    # find a free range at the top of the address space, then map the code there
    base, _ = proc.memory.allocate(
        0, 0x10000, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE, usage="heapemu replay probe"
    )
    proc.memory.free(base, 0, MEM_RELEASE)
    return load_flat(proc, driver_source(proc.arch), DRIVER_MODULE, base)


def _round_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class _Buffers:
    """One top-down region: control block, a tape chunk, a results chunk, the slot table."""

    def __init__(self, proc: ProcessCore, chunk: int, slots: int):
        ps = proc.arch.ptr_size
        self.ctl_size = _round_up(len(CTL) * ps)
        self.tape_size = _round_up(chunk * RECORD_SIZE)
        self.results_size = _round_up(chunk * ps)
        total = self.ctl_size + self.tape_size + self.results_size + _round_up(max(slots, 1) * ps)
        self.base, _ = proc.memory.allocate(
            0,
            total,
            MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN,
            PAGE_READWRITE,
            usage="heapemu replay tape",
        )
        self.ctl = self.base
        self.tape = self.ctl + self.ctl_size
        self.results = self.tape + self.tape_size
        self.table = self.results + self.results_size


def replay(
    allocator: Allocator,
    ops: Iterable[OpLike] | Tape,
    heap: int | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    count_instructions: bool = False,
    time_limit: float | None = None,
    max_instructions: int | None = None,
    slots: dict[int, int] | None = None,
) -> ReplayResult:
    """Run ``ops`` on ``heap`` (a new growable heap if None) inside the emulator.

    ``chunk``: records per driver call; ``time_limit`` / ``max_instructions``: per driver
    call, as for ``proc.call`` (``time_limit=0``: none). ``count_instructions`` adds a block
    hook (much slower; use a separate run for timing). ``slots``: the slot table to start from
    (ID -> block pointer, e.g. an earlier replay's ``result.slots``), so a tape can free or
    resize blocks an earlier tape allocated. Raises ReplayError naming the op."""
    proc, arch = allocator.proc, allocator.proc.arch
    tape = Tape.from_ops(ops)
    if tape.max_id >= MAX_SLOTS:
        raise ValueError(
            f"id {tape.max_id} needs a table of more than {MAX_SLOTS} slots: "
            "renumber the trace (emu.heap.replay.workload.renumber)"
        )
    if arch.ptr_size == 4 and tape.max_size > arch.ptr_mask:
        i = tape.first_size_over(arch.ptr_mask)
        raise ValueError(f"{tape.describe(i)}: size does not fit x86's 32-bit SIZE_T")
    if heap is None:
        heap = allocator.create_heap()
    chunk = max(1, min(chunk, tape.count or 1))
    driver = load_driver(proc).exports[ENTRY_NAME]
    n_slots = max(tape.max_id, max(slots or (), default=-1)) + 1
    if n_slots > MAX_SLOTS:
        raise ValueError(f"slot {n_slots - 1} is beyond the table's {MAX_SLOTS} slots")
    buf = _Buffers(proc, chunk, n_slots)
    ps = arch.ptr_size
    if slots:
        table: array[int] = array("Q" if ps == 8 else "I", bytes(n_slots * ps))
        for i, ptr in slots.items():
            table[i] = ptr
        proc.write(buf.table, table.tobytes())
    ctl_values = {
        "heap": heap,
        "tape": buf.tape,
        "table": buf.table,
        "results": buf.results,
        **{name: allocator.entry[name] for name in ENTRIES},
    }
    # sized once: appending chunk by chunk would copy the array as it grows (1M ops: 8 MiB)
    values: array[int] = array("Q" if ps == 8 else "I", bytes(tape.count * ps))
    out = memoryview(values).cast("B")
    counter = InstructionCounter(proc) if count_instructions else None
    syscalls_before = len(proc.syscalls)
    calls = 0
    elapsed = cpu = 0.0
    try:
        if counter:
            counter.start()
        for start in range(0, tape.count, chunk):
            n = min(chunk, tape.count - start)
            t0, c0 = time.perf_counter(), time.thread_time()
            proc.write(buf.tape, bytes(tape.data[start * RECORD_SIZE : (start + n) * RECORD_SIZE]))
            ctl = [ctl_values.get(name, 0) for name in CTL]
            ctl[CTL.index("end")] = buf.tape + n * RECORD_SIZE
            proc.write(buf.ctl, b"".join(arch.pack_ptr(v) for v in ctl))
            try:
                status = proc.call(
                    driver, buf.ctl, time_limit=time_limit, max_instructions=max_instructions
                )
            except EmulationError as e:
                raise _stopped(proc, buf, tape, start, values, e) from e
            calls += 1
            if status != STATUS_DONE:
                raise _stopped(proc, buf, tape, start, values, None, status)
            out[start * ps : (start + n) * ps] = proc.read(buf.results, n * ps)
            elapsed += time.perf_counter() - t0
            cpu += time.thread_time() - c0
        final: array[int] = array("Q" if ps == 8 else "I", proc.read(buf.table, n_slots * ps))
        live = {i: p for i, p in enumerate(final) if p}
    finally:
        out.release()
        if counter:
            counter.stop()
        proc.memory.free(buf.base, 0, MEM_RELEASE)
    return ReplayResult(
        tape=tape,
        values=values,
        heap=heap,
        arch=arch,
        seconds=elapsed,
        cpu_seconds=cpu,
        driver_calls=calls,
        syscalls=len(proc.syscalls) - syscalls_before,
        instructions=counter.total() if counter else None,
        slots=live,
    )


def _stopped(
    proc: ProcessCore,
    buf: _Buffers,
    tape: Tape,
    start: int,
    values: array[int],
    error: EmulationError | None,
    status: int = STATUS_DONE,
) -> ReplayError:
    """A ReplayError naming the op the driver was running, with the results completed."""
    cursor = proc.read_ptr(buf.ctl + ctl_offset("cursor", proc.arch))
    index: int | None = None
    done = values[:start]
    if buf.tape <= cursor < buf.tape + buf.tape_size:
        index = start + (cursor - buf.tape) // RECORD_SIZE
        done.frombytes(proc.read(buf.results, (index - start) * proc.arch.ptr_size))
    where = tape.describe(index) if index is not None else "before the first op of a chunk"
    if error is not None:
        state = CpuState(error.pc, error.instruction, error.symbol, error.registers)
        context = f"replay stopped at {where} of {tape.count}"
        if error.context:
            context += f", {error.context}"
        return ReplayError(error.fault, state, context, index, tape, done)
    if status == STATUS_IMBALANCE:
        sp = proc.read_ptr(buf.ctl + ctl_offset("bad_sp", proc.arch))
        saved = proc.read_ptr(buf.ctl + ctl_offset("saved_sp", proc.arch))
        entry = tape.op(index).kind.name.lower() if index is not None else "?"
        fault = Fault(
            "stack imbalance",
            detail=f"the {entry} entry point returned with {proc.arch.sp} off by "
            f"{sp - saved:+d} bytes (wrong calling convention?)",
        )
    elif status == STATUS_BAD_OP:
        fault = Fault("bad opcode in the replay tape")
    else:
        fault = Fault(f"replay driver returned status {status}")
    return ReplayError(fault, None, f"replay stopped at {where}", index, tape, done)


def replay_python(allocator: Allocator, ops: Iterable[OpLike] | Tape, heap: int) -> list[int]:
    """The same operations one ``proc.call`` at a time through the Allocator's methods, with
    the replay's table semantics; returns the raw results the replay would."""
    table: dict[int, int] = {}
    mask = allocator.proc.arch.ptr_mask
    out: list[int] = []
    for op in ops if isinstance(ops, Tape) else as_ops(ops):
        k = op.kind
        if k == OpKind.ALLOC:
            r = allocator.alloc(heap, op.size, op.flags)
            table[op.id] = r
        elif k == OpKind.FREE:
            r = int(allocator.free(heap, table.get(op.id, 0), op.flags))
            table[op.id] = 0
        elif k == OpKind.REALLOC:
            r = allocator.realloc(heap, table.get(op.id, 0), op.size, op.flags)
            if r:
                table[op.id] = 0
                table[op.new_id] = r
        elif k == OpKind.SIZE:
            r = allocator.size(heap, table.get(op.id, 0), op.flags) & mask
        else:
            r = int(allocator.validate(heap, 0, op.flags))
        out.append(r)
    return out


class InstructionCounter:
    """Counts the instructions emulated while started: a block hook tallies (address, size)
    pairs and each distinct block is disassembled once at the end. About 0.5 µs per block
    (UNICORN-FACTS), so count in a separate run from the one you time."""

    def __init__(self, proc: ProcessCore):
        self.proc = proc
        self.blocks: dict[int, int] = {}  # address << 16 | size -> times entered
        self._hook: int | None = None

    def _on_block(self, address: int, size: int) -> None:
        key = address << 16 | size
        self.blocks[key] = self.blocks.get(key, 0) + 1

    def start(self) -> None:
        self._hook = self.proc.cpu.hook_block(self._on_block)
        # blocks translated before the hook existed would not call it
        self.proc.cpu.flush_translations()

    def stop(self) -> None:
        if self._hook is not None:
            self.proc.cpu.unhook(self._hook)
            self.proc.cpu.flush_translations()
            self._hook = None

    def __enter__(self) -> InstructionCounter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def total(self) -> int:
        disasm = self.proc.cpu.disasm
        n = 0
        for key, times in self.blocks.items():
            address, size = key >> 16, key & 0xFFFF
            n += times * disasm.count(self.proc.read(address, size), address)
        return n
