"""The Rtl*Heap entry points, declared once: parameter names (as in the Windows headers), how
to show each value, and which ones every allocator must export. ``Allocator`` calls them, the
event recorder decodes them, the builtin heap's loader exports them, x86 stdcall pops
``4 * argc`` bytes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from emu.win.ntdefs import heap_flag_names


@dataclass(frozen=True)
class Prototype:
    name: str
    params: tuple[str, ...]
    returns: str = "ptr"  # "ptr", "bool" (BOOLEAN/BOOL: low byte), "status" (NTSTATUS), "size"
    required: bool = True  # every allocator exports it (Allocator refuses a module without)

    @property
    def argc(self) -> int:
        return len(self.params)

    def decode(self, values: Sequence[int]) -> dict[str, int]:
        """The arguments by name (as many as ``values`` has, at most ``argc``)."""
        if len(values) >= len(self.params):
            return self._decoder(values)
        return dict(zip(self.params, values, strict=False))

    @cached_property
    def _decoder(self) -> Callable[[Sequence[int]], dict[str, int]]:
        # a dict display with the names as constants: a third of what dict(zip()) costs, and
        # the event recorder decodes every call it sees
        body = ", ".join(f"{name!r}: v[{i}]" for i, name in enumerate(self.params))
        decoder: Callable[[Sequence[int]], dict[str, int]] = eval(f"lambda v: {{{body}}}")
        return decoder

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
        # what Wine's kernel32/kernelbase call besides (GlobalAlloc/LocalAlloc, HeapCompact,
        # HeapQueryInformation/HeapSetInformation): every C heap has them (load_c_heap checks,
        # asm/src/userinfo.h); a module wrapping only the core family may lack them
        Prototype(
            "RtlSetUserValueHeap",
            ("HeapHandle", "Flags", "BaseAddress", "UserValue"),
            "bool",
            required=False,
        ),
        Prototype(
            "RtlSetUserFlagsHeap",
            ("HeapHandle", "Flags", "BaseAddress", "UserFlagsReset", "UserFlagsSet"),
            "bool",
            required=False,
        ),
        Prototype(
            "RtlGetUserInfoHeap",
            ("HeapHandle", "Flags", "BaseAddress", "UserValue", "UserFlags"),
            "bool",
            required=False,
        ),
        Prototype("RtlCompactHeap", ("HeapHandle", "Flags"), "size", required=False),
        Prototype(
            "RtlQueryHeapInformation",
            (
                "HeapHandle",
                "HeapInformationClass",
                "HeapInformation",
                "HeapInformationLength",
                "ReturnLength",
            ),
            "status",
            required=False,
        ),
        Prototype(
            "RtlSetHeapInformation",
            ("HeapHandle", "HeapInformationClass", "HeapInformation", "HeapInformationLength"),
            "status",
            required=False,
        ),
        Prototype("RtlLockHeap", ("HeapHandle",), "bool", required=False),
        Prototype("RtlUnlockHeap", ("HeapHandle",), "bool", required=False),
        Prototype("RtlGetProcessHeaps", ("NumberOfHeaps", "ProcessHeaps"), "size", required=False),
    )
}
ENTRY_POINTS = tuple(n for n, p in ALLOCATOR_PROTOTYPES.items() if p.required)
OPTIONAL_ENTRY_POINTS = tuple(n for n, p in ALLOCATOR_PROTOTYPES.items() if not p.required)

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
