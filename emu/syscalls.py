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
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import NtStatusError
from .ntdefs import NtStatus, status_name

if TYPE_CHECKING:
    from .process import Process

log = logging.getLogger("heapemu.syscalls")

# Windows argument types, as names the dispatcher understands. Values are the width: "ptr" is the
# architecture's pointer size. They are plain ints to Python code.
HANDLE: TypeAlias = int
PVOID: TypeAlias = int
PSIZE_T: TypeAlias = int
PULONG: TypeAlias = int
PHANDLE: TypeAlias = int
ULONG_PTR: TypeAlias = int
SIZE_T: TypeAlias = int
PCONTEXT: TypeAlias = int
ULONG: TypeAlias = int
ACCESS_MASK: TypeAlias = int
NTSTATUS: TypeAlias = int
LONG: TypeAlias = int
BOOLEAN: TypeAlias = int
MEMORY_INFORMATION_CLASS: TypeAlias = int
PEXCEPTION_RECORD: TypeAlias = int
_WIDTHS: dict[str, str | int] = {
    "HANDLE": "ptr",
    "PVOID": "ptr",
    "PSIZE_T": "ptr",
    "PULONG": "ptr",
    "PHANDLE": "ptr",
    "ULONG_PTR": "ptr",
    "SIZE_T": "ptr",
    "PCONTEXT": "ptr",
    "PEXCEPTION_RECORD": "ptr",
    "ULONG": 32,
    "ACCESS_MASK": 32,
    "NTSTATUS": 32,
    "LONG": 32,
    "MEMORY_INFORMATION_CLASS": 32,
    "BOOLEAN": 8,
}

NT_CURRENT_PROCESS = -1  # NtCurrentProcess() pseudo-handle


@dataclass
class SyscallHandler:
    name: str
    fn: Callable[..., int]
    params: tuple[str, ...]
    widths: tuple[str | int, ...]


_HANDLERS: dict[str, SyscallHandler] = {}


def syscall(fn: Callable[..., int]) -> Callable[..., int]:
    """Register ``fn`` as the handler of the Nt service of the same name."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]  # first parameter is the Kernel context
    widths: list[str | int] = []
    for p in params:
        ann = p.annotation if isinstance(p.annotation, str) else p.annotation.__name__
        if ann not in _WIDTHS:
            raise TypeError(f"{fn.__name__}: parameter {p.name} has unknown Windows type {ann}")
        widths.append(_WIDTHS[ann])
    _HANDLERS[fn.__name__] = SyscallHandler(
        fn.__name__, fn, tuple(p.name for p in params), tuple(widths)
    )
    return fn


def handlers() -> dict[str, SyscallHandler]:
    return dict(_HANDLERS)


@dataclass
class SyscallRecord:
    """One system call as the kernel saw it: ``proc.syscalls`` keeps them in order."""

    seq: int
    name: str
    number: int
    args: dict[str, int]
    status: int
    pc: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    def __str__(self) -> str:
        a = ", ".join(f"{k}=0x{v:x}" for k, v in self.args.items())
        d = "".join(
            f" {k}={v:#x}" if isinstance(v, int) else f" {k}={v}" for k, v in self.details.items()
        )
        return f"#{self.seq} {self.name}({a}) -> {self.status_name}{d}"


class Kernel:
    """What a handler sees: the process, and user-memory access that probes like the kernel
    (a bad pointer is STATUS_ACCESS_VIOLATION, never a Python crash)."""

    def __init__(self, proc: Process):
        self.proc = proc
        self.arch = proc.arch
        self.memory = proc.memory
        self.details: dict[str, Any] = {}

    def _probe(self, addr: int, size: int, write: bool) -> None:
        if not self.memory.is_accessible(addr, size, write=write):
            kind = "write" if write else "read"
            raise NtStatusError(NtStatus.ACCESS_VIOLATION, f"cannot {kind} 0x{addr:x}")

    def read(self, addr: int, size: int) -> bytes:
        self._probe(addr, size, False)
        return self.proc.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self._probe(addr, len(data), True)
        self.proc.write(addr, data)

    def read_ptr(self, addr: int) -> int:
        return self.arch.unpack_ptr(self.read(addr, self.arch.ptr_size))

    def write_ptr(self, addr: int, value: int) -> None:
        self.write(addr, self.arch.pack_ptr(value))

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def check_process_handle(self, handle: int, n: int = 1) -> None:
        if handle != (NT_CURRENT_PROCESS & self.arch.ptr_mask):
            raise NtStatusError(NtStatus.INVALID_HANDLE, f"process handle 0x{handle:x}")


class SyscallDispatcher:
    def __init__(self, proc: Process):
        self.proc = proc
        self._tables: list[tuple[int, int, dict[int, str]]] = []
        self.strict = False  # raise on unknown system calls instead of STATUS_NOT_IMPLEMENTED

    def register_table(self, begin: int, end: int, table: dict[int, str]) -> None:
        """Numbers used by the code in [begin, end)."""
        self._tables.append((begin, end, dict(table)))

    def name_of(self, number: int, pc: int) -> str | None:
        for begin, end, table in self._tables:
            if begin <= pc < end:
                return table.get(number)
        return None

    def dispatch(self, number: int, pc: int, arg: Callable[[int, str | int], int]) -> int:
        """Serve system call ``number`` issued at ``pc``; ``arg(i, width)`` fetches argument i."""
        proc = self.proc
        name = self.name_of(number, pc)
        handler = _HANDLERS.get(name) if name else None
        seq = len(proc.syscalls)
        if handler is None:
            raw = {f"arg{i}": arg(i, "ptr") for i in range(4)}
            label = name or f"syscall_0x{number:x}"
            rec = SyscallRecord(seq, label, number, raw, NtStatus.NOT_IMPLEMENTED, pc)
            proc.syscalls.append(rec)
            log.warning("unhandled system call %s at pc 0x%x: %s", label, pc, rec)
            if self.strict:
                raise NtStatusError(NtStatus.NOT_IMPLEMENTED, f"unhandled system call {label}")
            return int(NtStatus.NOT_IMPLEMENTED)
        args = [arg(i, w) for i, w in enumerate(handler.widths)]
        k = Kernel(proc)
        try:
            status = handler.fn(k, *args)
        except NtStatusError as e:
            status = e.status
            k.details.setdefault("error", str(e))
        proc.syscalls.append(
            SyscallRecord(
                seq,
                handler.name,
                number,
                dict(zip(handler.params, args, strict=True)),
                status,
                pc,
                k.details,
            )
        )
        return int(status) & 0xFFFFFFFF
