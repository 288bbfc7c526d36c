"""Wine's ntdll with its heap taken over: every ``ntdll!Rtl*Heap`` entry point jumps to another
allocator's export of the same name (``heapemu exec --allocator``).

Wine's kernel32, kernelbase and msvcrt reach the heap only through ntdll's exports, and ntdll
calls its own exports directly, so the entry points themselves are rewritten (a jump in their
first bytes) rather than the export table: a call from anywhere, including Wine's own start-up
creating the process heap, lands in the routed allocator. The routing is installed before the
first instruction of ``LdrInitializeThunk`` runs, so no block ever comes from Wine's heap.

An entry point the allocator does not export jumps to a trap that stops the run with an
``EmulationError`` naming it: no routed call is answered by a success that did nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.errors import EmulationError, Fault
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.ntdefs import NtStatus
from loader.errors import LoaderError

# ntdll's heap entry points (Wine 8.0 exports every one of them): all are routed, whether the
# allocator serves them or they trap.
ROUTED_ENTRY_POINTS = (
    "RtlAllocateHeap",
    "RtlCompactHeap",
    "RtlCreateHeap",
    "RtlCreateTagHeap",
    "RtlDestroyHeap",
    "RtlEnumProcessHeaps",
    "RtlExtendHeap",
    "RtlFreeHeap",
    "RtlGetProcessHeaps",
    "RtlGetUserInfoHeap",
    "RtlLockHeap",
    "RtlProtectHeap",
    "RtlQueryHeapInformation",
    "RtlQueryProcessHeapInformation",
    "RtlQueryTagHeap",
    "RtlReAllocateHeap",
    "RtlSetHeapInformation",
    "RtlSetUserFlagsHeap",
    "RtlSetUserValueHeap",
    "RtlSizeHeap",
    "RtlUnlockHeap",
    "RtlUsageHeap",
    "RtlValidateHeap",
    "RtlValidateProcessHeaps",
    "RtlWalkHeap",
    "RtlZeroHeap",
)


@dataclass
class HeapRoute:
    """Where each routed ntdll entry point now goes."""

    ntdll: Module
    allocator: Module
    served: dict[str, int] = field(default_factory=dict)  # name -> the allocator's export
    trapped: dict[str, int] = field(default_factory=dict)  # name -> its trap


def _jump(arch_bits: int, at: int, target: int) -> bytes:
    if arch_bits == 64:
        return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target)  # jmp [rip+0]; dq target
    return b"\xe9" + struct.pack("<I", (target - (at + 5)) & 0xFFFFFFFF)  # jmp rel32


def _room(module: Module, entry: int) -> int:
    """Bytes from ``entry`` to the next symbol of ``module`` (its end when none follows)."""
    later = [a for a in module.symbols.values() if a > entry]
    later += [a for a in module.exports.values() if a > entry]
    return min(later, default=module.end) - entry


def _unserved_trap(name: str, allocator: str):  # type: ignore[no-untyped-def]
    def trap(proc: ProcessCore, *args: int) -> int:
        raise EmulationError(
            Fault(
                f"ntdll!{name} is routed to {allocator}, which does not implement it",
                pc=proc.cpu.pc,
                status=NtStatus.NOT_IMPLEMENTED,
                detail=f"{allocator} exports no {name}",
            ),
            proc.cpu.state(),
        )

    return trap


def route_heap(proc: ProcessCore, ntdll: Module, allocator: Module) -> HeapRoute:
    """Rewrite the first bytes of each of ntdll's ``ROUTED_ENTRY_POINTS`` into a jump to
    ``allocator``'s export of that name, or to a trap when it has none. Call it before any of
    ntdll's code runs."""
    bits = proc.arch.ptr_size * 8
    route = HeapRoute(ntdll, allocator)
    for name in ROUTED_ENTRY_POINTS:
        entry = ntdll.exports.get(name)
        if entry is None:
            continue  # not exported by this ntdll: nothing can call it by name
        target = allocator.exports.get(name)
        if target is not None:
            route.served[name] = target
        else:
            # argc 0: the trap stops the run before any return, the stack never matters
            target = proc.register_callback(
                _unserved_trap(name, allocator.name), 0, name=f"unserved_{name}"
            )
            route.trapped[name] = target
        code = _jump(bits, entry, target)
        if _room(ntdll, entry) < len(code):
            raise LoaderError(f"{ntdll.name}!{name} is too short to hold a {len(code)}-byte jump")
        proc.write(entry, code)
        proc.routed_entries[entry] = target
    return route
