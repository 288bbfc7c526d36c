"""Prototypes of the allocator entry points heapemu watches: parameter names (as in the
Windows headers) and how to show each value."""

from __future__ import annotations

from dataclasses import dataclass

from emu.win.ntdefs import heap_flag_names


@dataclass(frozen=True)
class Prototype:
    name: str
    params: tuple[str, ...]
    returns: str = "ptr"  # "ptr", "bool" (BOOLEAN/BOOL: low byte), "status" (NTSTATUS), "size"

    def decode(self, values: list[int]) -> dict[str, int]:
        return dict(zip(self.params, values, strict=False))

    def show(self, param: str, value: int) -> str:
        if param == "Flags":
            return heap_flag_names(value)
        return f"0x{value:x}"


ALLOCATOR_PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in (
        Prototype(
            "RtlCreateHeap",
            ("Flags", "HeapBase", "ReserveSize", "CommitSize", "Lock", "Parameters"),
        ),
        Prototype("RtlDestroyHeap", ("HeapHandle",)),
        Prototype("RtlAllocateHeap", ("HeapHandle", "Flags", "Size")),
        Prototype("RtlFreeHeap", ("HeapHandle", "Flags", "BaseAddress"), "bool"),
        Prototype("RtlReAllocateHeap", ("HeapHandle", "Flags", "BaseAddress", "Size")),
        Prototype("RtlSizeHeap", ("HeapHandle", "Flags", "BaseAddress"), "size"),
        Prototype("RtlValidateHeap", ("HeapHandle", "Flags", "BaseAddress"), "bool"),
        Prototype("RtlWalkHeap", ("HeapHandle", "Entry"), "status"),
        Prototype("RtlLockHeap", ("HeapHandle",), "bool"),
        Prototype("RtlUnlockHeap", ("HeapHandle",), "bool"),
        Prototype("RtlGetProcessHeaps", ("NumberOfHeaps", "ProcessHeaps"), "size"),
    )
}

# Entry points watched by default: the ones the issue names
DEFAULT_WATCHED = (
    "RtlCreateHeap",
    "RtlAllocateHeap",
    "RtlFreeHeap",
    "RtlReAllocateHeap",
    "RtlSizeHeap",
    "RtlDestroyHeap",
)


def prototype_for(name: str, argc: int | None = None) -> Prototype:
    """The known prototype, or a generic one with ``argc`` (default 4) raw arguments."""
    short = name.split("!")[-1]
    if short in ALLOCATOR_PROTOTYPES:
        return ALLOCATOR_PROTOTYPES[short]
    n = 4 if argc is None else argc
    return Prototype(short, tuple(f"arg{i}" for i in range(n)))
