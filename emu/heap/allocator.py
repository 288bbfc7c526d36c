"""A typed wrapper around an allocator's Rtl*Heap entry points, for any module that exports them:
the builtin heap (``asm/``) and Wine's ntdll.dll alike. Every method is one ``proc.call`` with
the Windows prototype; nothing here looks inside the heap (the walkers in ``emu.heap.walkers`` do).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from emu.errors import NtStatusError
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.layouts import Field, Struct
from emu.win.ntdefs import (
    HEAP_GROWABLE,
    NtStatus,
    heap_flag_names,
)
from emu.win.prototypes import ENTRY_POINTS, OPTIONAL_ENTRY_POINTS

if TYPE_CHECKING:
    from emu.heap.replay.run import ReplayResult
    from emu.heap.replay.tape import Tape
    from emu.heap.replay.workload import OpLike

# RTL_HEAP_WALK_ENTRY.Flags as ntdll's RtlWalkHeap sets them (kernel32's HeapWalk translates
# them into PROCESS_HEAP_ENTRY_BUSY / PROCESS_HEAP_REGION / PROCESS_HEAP_UNCOMMITTED_RANGE).
RTL_HEAP_ENTRY_BUSY = 0x0001
RTL_HEAP_ENTRY_REGION = 0x0002
RTL_HEAP_ENTRY_BLOCK = 0x0010
RTL_HEAP_ENTRY_UNCOMMITTED = 0x1000
RTL_HEAP_ENTRY_COMMITTED = 0x4000
RTL_HEAP_ENTRY_LFH = 0x8000

RTL_HEAP_WALK_ENTRY = Struct(
    "RTL_HEAP_WALK_ENTRY",
    0x1C,
    0x30,
    [
        Field("DataAddress", 0x00, 0x00),
        Field("DataSize", 0x04, 0x08),
        Field("OverheadBytes", 0x08, 0x10, "u8"),
        Field("SegmentIndex", 0x09, 0x11, "u8"),
        Field("Flags", 0x0A, 0x12, "u16"),
        # union: Segment {CommittedSize, UnCommittedSize, FirstEntry, LastEntry} for regions
        Field("CommittedSize", 0x0C, 0x18, "u32"),
        Field("UnCommittedSize", 0x10, 0x1C, "u32"),
        Field("FirstEntry", 0x14, 0x20),
        Field("LastEntry", 0x18, 0x28),
    ],
)


class HeapError(Exception):
    """The allocator refused an operation that has no failure value (e.g. RtlCreateHeap)."""


@dataclass(frozen=True)
class HeapWalkEntry:
    """One RtlWalkHeap record."""

    address: int
    size: int
    overhead: int
    region_index: int
    flags: int
    committed_size: int = 0  # regions only
    uncommitted_size: int = 0
    first_entry: int = 0
    last_entry: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.flags & RTL_HEAP_ENTRY_BUSY)

    @property
    def region(self) -> bool:
        return bool(self.flags & RTL_HEAP_ENTRY_REGION)

    @property
    def uncommitted(self) -> bool:
        return bool(self.flags & RTL_HEAP_ENTRY_UNCOMMITTED)

    @property
    def kind(self) -> str:
        if self.region:
            return "region"
        if self.uncommitted:
            return "uncommitted"
        return "busy" if self.busy else "free"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


class Allocator:
    """``Allocator(proc, module)``: the module's RtlCreateHeap family as Python methods."""

    def __init__(self, proc: ProcessCore, module: Module, name: str | None = None):
        self.proc = proc
        self.module = module
        self.name = name or module.name
        missing = [n for n in ENTRY_POINTS if n not in module.exports]
        if missing:
            raise KeyError(f"{module.name} does not export {', '.join(missing)}")
        self.entry = {n: module.exports[n] for n in ENTRY_POINTS + OPTIONAL_ENTRY_POINTS
                      if n in module.exports}  # fmt: skip

    def _call(self, name: str, *args: int) -> int:
        return self.proc.call(self.entry[name], *args)

    def scratch(self) -> int:
        """heapemu's page for out-parameters (walk entries, heap arrays): ``proc.scratch``, in
        heapemu's own reservation, so walking a heap never takes address space."""
        return self.proc.scratch

    # ------------------------------------------------------------------ the Rtl* API
    def create_heap(
        self,
        flags: int = HEAP_GROWABLE,
        reserve: int = 0,
        commit: int = 0,
        base: int = 0,
        lock: int = 0,
        params: int = 0,
    ) -> int:
        """RtlCreateHeap(Flags, HeapBase, ReserveSize, CommitSize, Lock, Parameters)."""
        h = self._call("RtlCreateHeap", flags, base, reserve, commit, lock, params)
        if not h:
            raise HeapError(
                f"{self.name}: RtlCreateHeap(flags={heap_flag_names(flags)}, base=0x{base:x}, "
                f"reserve=0x{reserve:x}, commit=0x{commit:x}) returned NULL"
            )
        return h

    def alloc(self, heap: int, size: int, flags: int = 0) -> int:
        """RtlAllocateHeap: the block's address, 0 on failure."""
        return self._call("RtlAllocateHeap", heap, flags, size)

    def free(self, heap: int, ptr: int, flags: int = 0) -> bool:
        """RtlFreeHeap: BOOLEAN (only the low byte is defined)."""
        return bool(self._call("RtlFreeHeap", heap, flags, ptr) & 0xFF)

    def realloc(self, heap: int, ptr: int, size: int, flags: int = 0) -> int:
        """RtlReAllocateHeap: the (possibly moved) block, 0 on failure."""
        return self._call("RtlReAllocateHeap", heap, flags, ptr, size)

    def size(self, heap: int, ptr: int, flags: int = 0) -> int:
        """RtlSizeHeap: the requested size of the block, -1 for (SIZE_T)-1 (failure)."""
        n = self._call("RtlSizeHeap", heap, flags, ptr)
        return -1 if n == self.proc.arch.ptr_mask else n

    def validate(self, heap: int, ptr: int = 0, flags: int = 0) -> bool:
        """RtlValidateHeap(Heap, Flags, Block): the whole heap when ``ptr`` is 0."""
        return bool(self._call("RtlValidateHeap", heap, flags, ptr) & 0xFF)

    def destroy(self, heap: int) -> bool:
        """RtlDestroyHeap: returns NULL on success."""
        return self._call("RtlDestroyHeap", heap) == 0

    def set_user_value(self, heap: int, ptr: int, value: int, flags: int = 0) -> bool:
        """RtlSetUserValueHeap: FALSE unless the block was allocated HEAP_SETTABLE_USER_VALUE."""
        return bool(self._call("RtlSetUserValueHeap", heap, flags, ptr, value) & 0xFF)

    def set_user_flags(self, heap: int, ptr: int, reset: int, set: int, flags: int = 0) -> bool:
        """RtlSetUserFlagsHeap: clear ``reset``, then set ``set`` (HEAP_SETTABLE_USER_FLAGS)."""
        return bool(self._call("RtlSetUserFlagsHeap", heap, flags, ptr, reset, set) & 0xFF)

    def user_info(self, heap: int, ptr: int, flags: int = 0) -> tuple[int, int] | None:
        """RtlGetUserInfoHeap: (user value, user flags) of a busy block, None for anything
        else; the value is 0 for a block without one (the out-parameter starts at 0)."""
        ps = self.proc.arch.ptr_size
        out = self.scratch() + 0x800
        self.proc.write(out, bytes(ps + 4))
        if not self._call("RtlGetUserInfoHeap", heap, flags, ptr, out, out + ps) & 0xFF:
            return None
        return self.proc.read_ptr(out), int.from_bytes(self.proc.read(out + ps, 4), "little")

    def compact(self, heap: int, flags: int = 0) -> int:
        """RtlCompactHeap: the size of the largest free committed block."""
        return self._call("RtlCompactHeap", heap, flags)

    def compatibility(self, heap: int) -> int:
        """RtlQueryHeapInformation(HeapCompatibilityInformation): 2 while a low-fragmentation
        front end serves the heap, else 0."""
        out = self.scratch() + 0x800
        self.proc.write(out, bytes(4))
        status = self._call("RtlQueryHeapInformation", heap, 0, out, 4, 0) & 0xFFFFFFFF
        if status != NtStatus.SUCCESS:
            raise NtStatusError(status, f"{self.name}: RtlQueryHeapInformation(0x{heap:x})")
        return int.from_bytes(self.proc.read(out, 4), "little")

    def set_compatibility(self, heap: int, value: int) -> int:
        """RtlSetHeapInformation(HeapCompatibilityInformation, value): its NTSTATUS."""
        out = self.scratch() + 0x800
        self.proc.write(out, value.to_bytes(4, "little"))
        return self._call("RtlSetHeapInformation", heap, 0, out, 4) & 0xFFFFFFFF

    def lock(self, heap: int) -> bool:
        return bool(self._call("RtlLockHeap", heap) & 0xFF)

    def unlock(self, heap: int) -> bool:
        return bool(self._call("RtlUnlockHeap", heap) & 0xFF)

    def process_heaps(self) -> list[int]:
        """RtlGetProcessHeaps(count, array)."""
        ps = self.proc.arch.ptr_size
        buf = self.scratch() + 0x400
        cap = 0x400 // ps
        n = self._call("RtlGetProcessHeaps", cap, buf) & 0xFFFFFFFF
        return [self.proc.read_ptr(buf + i * ps) for i in range(min(n, cap))]

    def walk(self, heap: int, limit: int = 1_000_000) -> list[HeapWalkEntry]:
        """Every entry RtlWalkHeap reports, in its order (regions, blocks, uncommitted ranges)."""
        proc, arch = self.proc, self.proc.arch
        entry = self.scratch()
        proc.write(entry, bytes(RTL_HEAP_WALK_ENTRY.size(arch)))
        out: list[HeapWalkEntry] = []
        while len(out) < limit:
            status = self._call("RtlWalkHeap", heap, entry) & 0xFFFFFFFF
            if status == NtStatus.NO_MORE_ENTRIES:
                return out
            if status != NtStatus.SUCCESS:
                raise NtStatusError(status, f"{self.name}: RtlWalkHeap(0x{heap:x})")

            def f(name: str) -> int:
                return RTL_HEAP_WALK_ENTRY.read(proc, arch, entry, name)

            flags = f("Flags")
            region = bool(flags & RTL_HEAP_ENTRY_REGION)
            out.append(
                HeapWalkEntry(
                    address=f("DataAddress"),
                    size=f("DataSize"),
                    overhead=f("OverheadBytes"),
                    region_index=f("SegmentIndex"),
                    flags=flags,
                    committed_size=f("CommittedSize") if region else 0,
                    uncommitted_size=f("UnCommittedSize") if region else 0,
                    first_entry=f("FirstEntry") if region else 0,
                    last_entry=f("LastEntry") if region else 0,
                )
            )
        raise HeapError(f"{self.name}: RtlWalkHeap(0x{heap:x}) did not end after {limit} entries")

    def replay(
        self, ops: Iterable[OpLike] | Tape, heap: int | None = None, **options: Any
    ) -> ReplayResult:
        """Run a whole list of operations inside the emulator (``emu.heap.replay.run.replay``)."""
        from emu.heap.replay.run import replay

        return replay(self, ops, heap, **options)
