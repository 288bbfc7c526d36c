"""System-call dispatch: one decorated function per Nt service.

A handler is declared with the phnt parameter names and Windows types::

    @syscall
    def NtFreeVirtualMemory(k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID,
                            RegionSize: PSIZE_T, FreeType: ULONG) -> int: ...

The dispatcher reads the signature once: the argument count and each argument's width (ULONG
arguments are read as 32 bits: on x64 the upper half of a stack slot is garbage). Adding a system
call touches one function. Handlers return an NTSTATUS, or raise NtStatusError.

The number -> name table belongs to the code that issues the calls (real ntdll builds number
services differently), so tables are registered per code range and looked up by the pc of the
``syscall`` / ``int 0x2e`` / ``sysenter`` instruction.
"""

from __future__ import annotations

import inspect
import logging
import operator
import struct
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias, get_type_hints

from emu.errors import EmulationError, NtStatusError
from emu.nt.records import SyscallRecord  # defined there, imported from here too
from emu.win.ntdefs import PAGE_GUARD, PAGE_SIZE, NtStatus

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

log = logging.getLogger("heapemu.syscalls")

# Windows argument types: ``Annotated[int, width]``, the width being what the dispatcher reads
# ("ptr" is the architecture's pointer size; ULONG arguments are read as 32 bits because on x64
# the upper half of a stack slot is garbage). They are plain ints to Python code; a new Windows
# type is one line here.
HANDLE: TypeAlias = Annotated[int, "ptr"]
PVOID: TypeAlias = Annotated[int, "ptr"]
PSIZE_T: TypeAlias = Annotated[int, "ptr"]
PULONG: TypeAlias = Annotated[int, "ptr"]
PHANDLE: TypeAlias = Annotated[int, "ptr"]
ULONG_PTR: TypeAlias = Annotated[int, "ptr"]
SIZE_T: TypeAlias = Annotated[int, "ptr"]
PCONTEXT: TypeAlias = Annotated[int, "ptr"]
PEXCEPTION_RECORD: TypeAlias = Annotated[int, "ptr"]
ULONG: TypeAlias = Annotated[int, 32]
ACCESS_MASK: TypeAlias = Annotated[int, 32]
NTSTATUS: TypeAlias = Annotated[int, 32]
LONG: TypeAlias = Annotated[int, 32]
BOOLEAN: TypeAlias = Annotated[int, 8]

NT_CURRENT_PROCESS = -1  # NtCurrentProcess() pseudo-handle
PROCESS_ID, THREAD_ID = 0x1000, 0x1004  # the client ids of our one process and thread


@dataclass
class SyscallHandler:
    name: str
    fn: Callable[..., int]
    params: tuple[str, ...]
    widths: tuple[str | int, ...]
    # each argument's mask over the raw pointer-sized value (-1: the whole pointer)
    masks: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.masks = tuple(-1 if w == "ptr" else (1 << int(w)) - 1 for w in self.widths)


# How the dispatcher reads arguments: the first n, raw, as pointer-sized values (registers and
# stack slots by the kernel ABI; raises EmulationError when they cannot be read)
ArgReader = Callable[[int], list[int]]


_MARK = "__nt_syscall__"
_UNSEEN = "\0unseen"  # SyscallDispatcher._names: a call site not looked up yet


def syscall(fn: Callable[..., int]) -> Callable[..., int]:
    """Mark ``fn`` as the handler of the Nt service of the same name. Marking registers nothing:
    ``collect_handlers`` builds the table from an explicit list of modules (``emu.nt.calls``),
    so what a process serves never depends on what was imported first."""
    setattr(fn, _MARK, True)
    return fn


def handler_spec(fn: Callable[..., int]) -> SyscallHandler:
    """Argument names and widths, read once from the phnt-style signature."""
    hints = get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters)[1:]  # the first is the Kernel context
    widths: list[str | int] = []
    for name in params:
        meta = getattr(hints.get(name), "__metadata__", ())
        if not meta or not isinstance(meta[0], (str, int)):
            raise TypeError(f"{fn.__name__}: parameter {name} has no Windows type")
        widths.append(meta[0])
    return SyscallHandler(fn.__name__, fn, tuple(params), tuple(widths))


def collect_handlers(modules: Iterable[ModuleType]) -> dict[str, SyscallHandler]:
    """The system-call table: every ``@syscall`` function of ``modules``, by Nt name."""
    table: dict[str, SyscallHandler] = {}
    for module in modules:
        for fn in vars(module).values():
            if callable(fn) and getattr(fn, _MARK, False) and fn.__module__ == module.__name__:
                if fn.__name__ in table:
                    raise ValueError(f"system call {fn.__name__} is defined twice")
                table[fn.__name__] = handler_spec(fn)
    return table


class Kernel:
    """What a handler sees: the process, and user-memory access that probes like the kernel
    (a bad pointer is STATUS_ACCESS_VIOLATION, never a Python crash)."""

    __slots__ = ("arch", "details", "memory", "proc", "return_value")

    def __init__(self, proc: ProcessCore):
        self.proc = proc
        self.arch = proc.arch
        self.memory = proc.memory
        self.details: dict[str, Any] = {}
        # what the service leaves in rax/eax when that is not its NTSTATUS: NtContinue and a
        # first-chance NtRaiseException resume with the CONTEXT's whole rax
        self.return_value: int | None = None

    def _probe(self, addr: int, size: int, write: bool) -> None:
        if not self.memory.is_accessible(addr, size, write=write):
            if self._grow_stack(addr, size) and self.memory.is_accessible(addr, size, write=write):
                return
            kind = "write" if write else "read"
            raise NtStatusError(NtStatus.ACCESS_VIOLATION, f"cannot {kind} 0x{addr:x}")

    def _grow_stack(self, addr: int, size: int) -> bool:
        """The kernel's own access to a thread stack's guard page grows the stack as a user
        access would (MmAccessFault checks the stack for any access to a user address; Wine's
        msvcrt _resetstkoflw relies on it: it makes the page under its own local a guard page
        through VirtualProtect, whose out-parameters are on that page). True when a guard page
        was touched; STATUS_STACK_OVERFLOW when that left no room for another one."""
        from emu.nt.stack import running_stack, touch_guard

        grew = False
        _, low, high = running_stack(self.proc)  # the calling thread's stack, as its TEB says
        # only the pages of [addr, addr + size) on the stack (a probe may be huge)
        page = max(addr, low) & ~(PAGE_SIZE - 1)
        while page < min(addr + size, high):
            state = self.memory.page_state(page)
            if state and state & PAGE_GUARD:
                if touch_guard(self.proc, page)[1] is not None:
                    raise NtStatusError(NtStatus.STACK_OVERFLOW, f"guard page 0x{page:x}")
                grew = True
            page += PAGE_SIZE
        return grew

    def probe(self, addr: int, size: int, write: bool = False) -> None:
        """STATUS_ACCESS_VIOLATION unless all of [addr, addr+size) is readable (writable)."""
        self._probe(addr, size, write)

    def read(self, addr: int, size: int) -> bytes:
        self._probe(addr, size, False)
        # probed: committed and no guard page, so the CPU's backing has it
        return self.proc.cpu.read(addr, size) if size > 0 else b""

    def write(self, addr: int, data: bytes) -> None:
        if self.memory.plain_access(addr, len(data), write=True):  # the common case
            self.proc.cpu.write(addr, data)
            return
        self._probe(addr, len(data), True)
        if data:
            self.proc.cpu.write(addr, data)
        self.memory.note_write(addr, len(data))  # write watches and copy-on-write see it

    def read_ptr(self, addr: int) -> int:
        return self.arch.unpack_ptr(self.read(addr, self.arch.ptr_size))

    def write_ptr(self, addr: int, value: int) -> None:
        self.write(addr, self.arch.pack_ptr(value))

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def check_process_handle(self, handle: int, n: int = 1) -> None:
        if handle != (NT_CURRENT_PROCESS & self.arch.ptr_mask):
            raise NtStatusError(NtStatus.INVALID_HANDLE, f"process handle 0x{handle:x}")

    def probe_range(self, addr: int, size: int) -> None:
        """ProbeForRead/ProbeForWrite's range check: a buffer that does not lie wholly in user
        space (or wraps) is STATUS_ACCESS_VIOLATION before anything is read or written. An
        empty buffer is never probed, as on Windows."""
        if size and (addr < self.arch.user_min or addr + size - 1 > self.arch.user_max):
            raise NtStatusError(
                NtStatus.ACCESS_VIOLATION, f"0x{size:x} bytes at 0x{addr:x} are not user memory"
            )


def describe_warning(w: dict[str, Any]) -> str:
    """One line for an entry of ``SyscallDispatcher.warnings()``."""
    calls = f"{w['calls']} call{'s' if w['calls'] > 1 else ''}"
    return f"{w['kind']}: {w['name']} ({calls}, first at pc 0x{w['pc']:x}): {w['message']}"


class SyscallDispatcher:
    """Serves system calls. A handler never lets a Python exception escape into the run: an
    NtStatusError is its answer, and any other exception is a heapemu bug, answered
    STATUS_INTERNAL_ERROR, logged and recorded (``details["kernel_error"]``) so the emulated
    program sees a clean error. With ``raise_internal_errors`` (the project's tests set
    ``default_raise_internal_errors`` for every process) the bug is raised instead, so tests
    fail loudly.

    Unhandled system calls and handler bugs are the run's warnings (``warnings()``), which the
    front ends put in their reports; they are logged at DEBUG level only, so they never mix
    with the program's own stderr."""

    default_raise_internal_errors: ClassVar[bool] = False  # for every new dispatcher

    def __init__(self, proc: ProcessCore, handlers: dict[str, SyscallHandler]):
        self.proc = proc
        self.handlers = handlers
        self._tables: list[tuple[int, int, dict[int, str]]] = []
        # (pc, number) -> name, as the tables answer (a call site issues the same few
        # services again and again)
        self._names: dict[tuple[int, int], str | None] = {}
        # the numbering of the process's own ntdll: what a system call issued from code in no
        # registered range means (Windows looks every number up in its one service table, so a
        # copy of an ntdll stub anywhere works: Wine's ntdll virtual.c test_syscalls)
        self.system_table: dict[int, str] = {}
        self.strict = False  # raise on unknown system calls instead of STATUS_NOT_IMPLEMENTED
        self.raise_internal_errors = type(self).default_raise_internal_errors
        self.internal_errors = 0  # handler bugs answered STATUS_INTERNAL_ERROR so far
        # the run's warnings, one entry per kind and service: (kind, label) -> [calls, first pc,
        # first message]; bounded by the number of services, however long the run
        self._warnings: dict[tuple[str, str], list[Any]] = {}

    def register_table(
        self, begin: int, end: int, table: dict[int, str], *, system: bool = False
    ) -> None:
        """Numbers used by the code in [begin, end); ``system``: also by code in no range."""
        self._tables.append((begin, end, dict(table)))
        self._names.clear()
        if system:
            self.system_table = dict(table)

    def _warn(self, kind: str, label: str, pc: int, message: str) -> None:
        entry = self._warnings.get((kind, label))
        if entry is None:
            self._warnings[(kind, label)] = [1, pc, message]
        else:
            entry[0] += 1

    def warnings(self) -> list[dict[str, Any]]:
        """What went wrong in the kernel so far, one entry per kind ("unhandled system call",
        "kernel error") and service: calls, the first one's pc and message."""
        return [
            {"kind": kind, "name": label, "calls": calls, "pc": pc, "message": message}
            for (kind, label), (calls, pc, message) in self._warnings.items()
        ]

    def name_of(self, number: int, pc: int) -> str | None:
        for begin, end, table in self._tables:
            if begin <= pc < end:
                return table.get(number)
        return self.system_table.get(number)

    def dispatch(self, number: int, pc: int, args: ArgReader) -> int:
        """Serve system call ``number`` issued at ``pc``; ``args(n)`` reads the first n
        arguments (raw pointer-sized values: each handler parameter's width masks its own)."""
        proc = self.proc
        key = (pc, number)
        name = self._names.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = self.name_of(number, pc)
            if len(self._names) < 4096:  # garbage numbers from hostile code stay bounded
                self._names[key] = name
        handler = self.handlers.get(name) if name else None
        seq = len(proc.syscalls)
        if handler is None:
            raw = {f"arg{i}": v for i, v in enumerate(args(4))}
            label = name or f"syscall_0x{number:x}"
            rec = SyscallRecord(seq, label, number, raw, NtStatus.NOT_IMPLEMENTED, pc)
            proc.syscalls.append(rec)
            self._warn("unhandled system call", label, pc, str(rec))
            log.debug("unhandled system call %s at pc 0x%x: %s", label, pc, rec)
            if self.strict:
                raise NtStatusError(NtStatus.NOT_IMPLEMENTED, f"unhandled system call {label}")
            return int(NtStatus.NOT_IMPLEMENTED)
        # args(n) gives exactly n values: each masked to its parameter's width
        values = list(map(operator.and_, args(len(handler.masks)), handler.masks))
        k = Kernel(proc)
        try:
            status = handler.fn(k, *values)
        except NtStatusError as e:
            status = e.status
            k.details.setdefault("error", str(e))
        except EmulationError as e:  # user memory the probe let through is unreadable after all
            status = NtStatus.ACCESS_VIOLATION
            k.details.setdefault("error", e.kind)
        except Exception as e:
            # a bug in the handler, not an answer: the program gets a clean error
            if self.raise_internal_errors:
                raise
            self.internal_errors += 1
            status = NtStatus.INTERNAL_ERROR
            k.details["kernel_error"] = "".join(traceback.format_exception_only(e)).strip()
            self._warn("kernel error", handler.name, pc, k.details["kernel_error"])
            log.debug("heapemu kernel error in %s at pc 0x%x", handler.name, pc, exc_info=True)
        proc.syscalls.append(
            SyscallRecord(
                seq,
                handler.name,
                number,
                dict(zip(handler.params, values, strict=True)),
                status,
                pc,
                k.details,
            )
        )
        if k.return_value is not None:
            return k.return_value
        return int(status) & 0xFFFFFFFF
