"""``proc.snapshot()`` / ``proc.restore(snapshot)``: the whole process, put back as it was.

A snapshot holds

- the CPU's whole state, saved by the engine (``Cpu.save_context``: every register, flags,
  segment state, FPU/SSE, MSRs);
- the memory: the bytes of every run of committed pages (``MemoryManager.committed_runs``,
  guard pages included), which host memory backs what (``Cpu.backing``: everything else backed
  reads zero after a restore), and the memory manager's bookkeeping (regions, page states);
- the sections' shared memory (``emu.cpu.shared``): the bytes of every section the process
  holds (by a handle or a view), and which ranges show them (``Cpu.shares``; the committed
  runs leave these ranges out: their bytes are the sections'). A restore puts the sections'
  bytes back, then the shared ranges, then the committed runs, so all views of a section
  agree with one another and with the section;
- the kernel's objects (handles, the sandbox's names, captured output), the thread stack's
  state, the system-call tables, the module list, PEB.Ldr's bookkeeping, the Python callbacks
  and the records of system calls and debug output.

The heaps live in that memory, so restoring a snapshot restores them; the next calls give the
results they gave the first time. What watches the process (breakpoints, recorders, traces,
their hooks) is not the process and stays as it is. A snapshot can be restored any number of
times ("restore and try the next sequence").

Bookkeeping is copied with ``copy.deepcopy`` in one pass (so objects the memory manager and
the object manager share stay shared in the copy); what never changes after loading is shared
instead of copied: the CPU, the architecture, the process itself, modules and their images.
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emu.errors import EmulationError, Fault
from emu.nt.objects import SectionObject
from emu.nt.records import SyscallLog

if TYPE_CHECKING:
    from emu.cpu.shared import SharedMemory
    from emu.process.core import ProcessCore

# objects whose attributes are the process's state (restored in place: others may hold them)
_COMPONENTS = ("memory", "objects", "thread_stack", "threads", "syscall_dispatcher", "modules")
# ProcessCore attributes: lists and dicts of records that never change once made (copied one
# level), and values
_RECORDS = ("syscalls", "debug_output", "callbacks", "export_hooks", "trap_names", "exceptions")
_VALUES = ("exit_status", "unhandled_exception", "_trap_committed", "_trap_code_next",
           "_trap_next", "_ldr", "_tsc")  # fmt: skip


@dataclass
class Snapshot:
    """A process's state at one moment (see the module docstring); ``proc.restore(snapshot)``."""

    arch: str
    context: object
    memory: list[tuple[int, int, bytes]]  # (address, size, bytes) of the committed runs
    state: dict[str, Any]
    records: dict[str, Any] = field(default_factory=dict)
    backing: list[int] = field(default_factory=list)  # the windows Cpu.backing() listed
    shares: list[tuple[int, int, SharedMemory, int]] = field(default_factory=list)
    sections: list[tuple[SharedMemory, list[tuple[int, bytes]]]] = field(default_factory=list)

    @property
    def memory_bytes(self) -> int:
        """Bytes of memory the snapshot holds: committed runs and sections' bytes."""
        sections = sum(len(data) for _, parts in self.sections for _, data in parts)
        return sum(size for _, size, _ in self.memory) + sections


def _shared(proc: ProcessCore) -> dict[int, Any]:
    """deepcopy's memo: objects shared between the process and its snapshots, never copied."""
    # the main thread's stack is a component (restored in place): its scheduler entry must
    # keep naming that object, not a copy
    keep: list[Any] = [proc, proc.cpu, proc.arch, proc.regs, proc.thread_stack]
    keep.append(getattr(proc.syscall_dispatcher, "handlers", None))  # the table of handlers
    for module in proc.modules:
        keep += [module, module.image]
    main = getattr(proc.objects, "main_image", None)
    if main is not None:
        keep.append(main.image)
    return {id(obj): obj for obj in keep if obj is not None}


def _section_memories(proc: ProcessCore) -> list[SharedMemory]:
    """The shared memory of every section the process holds: by a handle, or by a view."""
    found: dict[int, SharedMemory] = {}
    for obj in proc.objects.handles().values():
        if isinstance(obj, SectionObject) and obj.memory is not None:
            found.setdefault(id(obj.memory), obj.memory)
    for _, _, memory, _ in proc.cpu.shares():
        found.setdefault(id(memory), memory)
    for region in proc.memory.regions():  # copy-on-write views of a section without handles
        section = region.view.section if region.view is not None else None
        if isinstance(section, SectionObject) and section.memory is not None:
            found.setdefault(id(section.memory), section.memory)
    return list(found.values())


def _unshared(
    runs: list[tuple[int, int]], shares: list[tuple[int, int, SharedMemory, int]]
) -> list[tuple[int, int]]:
    """``runs`` (address, size, in address order) without the shared ranges (in address
    order, disjoint): their bytes are the sections', saved once with each section."""
    cuts = [(start, start + size) for start, size, _, _ in shares]
    if not cuts:
        return runs
    out = []
    for addr, size in runs:
        pos, end = addr, addr + size
        for lo, hi in cuts[max(bisect.bisect_right(cuts, (pos, pos)) - 1, 0) :]:
            if lo >= end:
                break
            if hi <= pos:
                continue
            if lo > pos:
                out.append((pos, lo - pos))
            pos = max(pos, hi)
        if pos < end:
            out.append((pos, end - pos))
    return out


def _one_level(value: Any) -> Any:
    if isinstance(value, list | dict | set | bytearray):
        return copy.copy(value)
    if hasattr(value, "copy") and callable(value.copy):  # deque and friends
        return value.copy()
    return value


def _check_idle(proc: ProcessCore, what: str) -> None:
    if proc.cpu._running:
        raise EmulationError(
            Fault(
                f"cannot {what} while emulated code runs",
                detail="take or restore snapshots between calls, not from a callback",
            )
        )


def take_snapshot(proc: ProcessCore) -> Snapshot:
    """The process's state now (between calls)."""
    _check_idle(proc, "take a snapshot")
    if len(proc.threads.live()) > 1:
        raise EmulationError(
            Fault(
                "cannot take a snapshot of several live threads",
                detail="a snapshot holds one CPU state: take it before threads start or after "
                "they end",
            )
        )
    state = {name: vars(getattr(proc, name)) for name in _COMPONENTS}
    state["process"] = {name: getattr(proc, name) for name in _VALUES}
    shares = proc.cpu.shares()
    return Snapshot(
        arch=proc.arch.name,
        context=proc.cpu.save_context(),
        memory=proc.cpu.save_memory(_unshared(proc.memory.committed_runs(), shares)),
        backing=proc.cpu.backing(),
        shares=shares,
        sections=[(memory, memory.save()) for memory in _section_memories(proc)],
        state=copy.deepcopy(state, _shared(proc)),
        records={name: _one_level(getattr(proc, name)) for name in _RECORDS},
    )


def restore_snapshot(proc: ProcessCore, snapshot: Snapshot) -> None:
    """Put ``proc`` back in the state ``snapshot`` saw (between calls)."""
    _check_idle(proc, "restore a snapshot")
    if snapshot.arch != proc.arch.name:
        raise ValueError(
            f"a snapshot of an {snapshot.arch} process cannot restore an {proc.arch.name} one"
        )
    state = copy.deepcopy(snapshot.state, _shared(proc))  # the snapshot stays as it was
    for memory, contents in snapshot.sections:
        memory.load(contents)
    proc.cpu.restore_memory(snapshot.memory, snapshot.backing, snapshot.shares)
    proc.cpu.restore_context(snapshot.context)
    for name in _COMPONENTS:
        vars(getattr(proc, name)).update(state[name])
    for name, value in state["process"].items():
        setattr(proc, name, value)
    for name, value in snapshot.records.items():
        _restore_records(proc, name, value)


def _restore_records(proc: ProcessCore, name: str, saved: Any) -> None:
    current = getattr(proc, name)
    if isinstance(current, SyscallLog) and isinstance(saved, SyscallLog):
        current.assign(saved)  # in place, as the lists below
    elif isinstance(current, list) and isinstance(saved, list):
        current[:] = saved  # in place: observers may hold the list
    elif isinstance(current, dict) and isinstance(saved, dict):
        current.clear()
        current.update(saved)
    else:
        setattr(proc, name, _one_level(saved))
