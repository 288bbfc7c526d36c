"""The structure declarations the views decode, asked of the allocator's walker.

Each walker describes its own structures (``HeapWalker.heap_header_specs`` and friends: the
builtin heap's from ``asm.layout(arch)``, Wine's from ``wine_layout``) as one list of
``FieldSpec`` (offset, name, type, size), so ``dt`` and ``heap entry`` need no per-allocator code.
"""

from __future__ import annotations

from emu.heap.registry import allocator_kind
from emu.heap.walkers.model import Block, FieldSpec, HeapReport, NestedRegion

__all__ = [
    "FieldSpec",
    "block_flag_names",
    "block_header_specs",
    "block_specs",
    "component_titles",
    "describe_field",
    "granularity",
    "heap_header_specs",
    "heap_struct_name",
    "internal_block",
    "large_header_specs",
    "large_list_head",
    "nested_regions",
    "struct_addresses",
    "struct_names",
    "struct_specs",
    "subsegment_of",
]


def granularity(kind: str, arch: str) -> int:
    """Block size unit (WinDbg's "Granularity"): 8 on x86, 16 on x64."""
    return allocator_kind(kind).walker.granularity(arch)


def large_list_head(kind: str, arch: str, heap: int) -> int:
    """The heap's list head of large blocks (WinDbg's "Virtual Alloc List")."""
    return allocator_kind(kind).walker.large_list_head(arch, heap)


def heap_struct_name(kind: str) -> str:
    return allocator_kind(kind).walker.heap_struct_name


def heap_header_specs(kind: str, arch: str) -> list[FieldSpec]:
    """The heap header's fields in offset order (containers before their members)."""
    return allocator_kind(kind).walker.heap_header_specs(arch)


def block_header_specs(kind: str, arch: str, free: bool) -> list[FieldSpec]:
    """A block header's fields (and a free block's list links) from the block's address."""
    return allocator_kind(kind).walker.block_header_specs(arch, free)


def block_specs(kind: str, arch: str, block: Block) -> list[FieldSpec]:
    """The header fields of this block (the segment heap's differ by component)."""
    return allocator_kind(kind).walker.block_specs(arch, block)


def large_header_specs(kind: str, arch: str) -> list[FieldSpec]:
    """A large block's header fields, from the region base."""
    return allocator_kind(kind).walker.large_header_specs(arch)


def describe_field(kind: str, name: str, value: int, free: bool, unit: int) -> str | None:
    """The allocator's own reading of a block-header field, if it has one."""
    return allocator_kind(kind).walker.describe_field(name, value, free, unit)


def internal_block(kind: str, block: Block) -> bool:
    """A busy block the heap uses for itself (win7: LFH data, sentinels, lookups)."""
    return allocator_kind(kind).walker.internal(block)


def block_flag_names(kind: str, block: Block) -> list[str]:
    """The names of a block's header flags, as its allocator reads them."""
    return allocator_kind(kind).walker.block_flag_names(block)


def struct_names(kind: str) -> tuple[str, ...]:
    """The structures ``dt`` can show for this allocator (the heap header first)."""
    return allocator_kind(kind).walker.struct_names()


def struct_specs(kind: str, name: str, arch: str) -> list[FieldSpec]:
    """Structure ``name``'s fields; ValueError naming the ones there are if it is unknown."""
    walker = allocator_kind(kind).walker
    try:
        return walker.struct_specs(name, arch)
    except KeyError:
        names = ", ".join(walker.struct_names())
        raise ValueError(f"{kind} has no structure {name!r} (it has: {names})") from None


def nested_regions(report: HeapReport) -> list[NestedRegion]:
    """The front end's data regions inside back-end blocks (win7: LFH UserBlocks)."""
    return allocator_kind(report.kind).walker.nested_regions(report)


def component_titles(kind: str) -> dict[str, str]:
    """``Block.component`` values and their titles (empty: the heap has one component)."""
    return allocator_kind(kind).walker.component_titles()


def subsegment_of(report: HeapReport, block: Block) -> int | None:
    """The front-end subsegment serving ``block`` (None: the back end)."""
    return allocator_kind(report.kind).walker.subsegment_of(report, block)


def struct_addresses(report: HeapReport) -> dict[str, int]:
    """Where the walked heap has one of each structure ``dt`` can show."""
    return allocator_kind(report.kind).walker.struct_addresses(report)
