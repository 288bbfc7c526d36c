"""The structure declarations the views decode, for both allocators, from the walkers' sources.

The builtin heap's structures come from ``asm.layout(arch)`` (nested fields flattened with
dotted names), Wine's from ``emu.walkers.wine_layout`` (``Struct``/``Field``); this module turns
either into one list of ``FieldSpec`` (offset, name, type, size) so that ``dt`` and ``heap entry``
need no per-allocator code.
"""

from __future__ import annotations

from dataclasses import dataclass

import asm
from asm import StructLayout
from emu.arch import get_arch
from emu.heap.walkers.wine_layout import (
    WINE_BLOCK,
    WINE_FREE_ENTRY,
    WINE_HEAP,
    WINE_LARGE,
    WINE_PARAMS,
    WINE_SUBHEAP,
)
from emu.win.layouts import Struct

_SCALAR = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}


@dataclass(frozen=True)
class FieldSpec:
    """A field at ``offset`` from its structure's start; ``scalar`` False for nested structures
    and arrays (shown by type, not read as one number)."""

    offset: int
    name: str
    type: str
    size: int
    scalar: bool = True


def granularity(kind: str, arch: str) -> int:
    """Block size unit (WinDbg's "Granularity"): 8 on x86, 16 on x64, both allocators."""
    if kind == "builtin":
        return asm.layout(arch).alignment
    return WINE_PARAMS[arch].alignment


def large_list_head(kind: str, arch: str, heap: int) -> int:
    """The heap's list head of large blocks (WinDbg's "Virtual Alloc List")."""
    if kind == "builtin":
        return heap + asm.layout(arch).heap["large_list"]
    return heap + WINE_HEAP.offset(get_arch(arch), "large_list.next")


def heap_struct_name(kind: str) -> str:
    return "HEAP (heapemu builtin)" if kind == "builtin" else WINE_HEAP.name


# ---------------------------------------------------------------------------- builtin (asm)


def _struct_type(layout: asm.HeapLayout, children: set[str], size: int) -> str:
    """Name of the asm structure with exactly these member names (and size), else a size."""
    for name, s in layout.structs.items():
        if s.size == size and {n for n in s.fields if "." not in n} == children:
            return name
    return f"{size} bytes"


def _asm_specs(layout: asm.HeapLayout, struct_: StructLayout, base: int = 0) -> list[FieldSpec]:
    specs = []
    names = list(struct_.fields)
    for name in names:
        f = struct_.fields[name]
        prefix = name + "."
        children = {n[len(prefix) :].split(".")[0] for n in names if n.startswith(prefix)}
        if children:
            type_ = _struct_type(layout, children, f.size)
            specs.append(FieldSpec(base + f.offset, name, type_, f.size, scalar=False))
        elif f.count > 1:
            elem = f.size // f.count
            by_size = [n for n, s in layout.structs.items() if s.size == elem]
            type_ = by_size[0] if elem > 8 and len(by_size) == 1 else _SCALAR.get(elem, "?")
            specs.append(FieldSpec(base + f.offset, name, f"[{f.count}] {type_}", f.size, False))
        else:
            specs.append(FieldSpec(base + f.offset, name, _SCALAR[f.size], f.size))
    return specs


# ---------------------------------------------------------------------------- Wine (Struct)


def _struct_specs(struct_: Struct, arch: str, prefix: str = "", base: int = 0) -> list[FieldSpec]:
    a = get_arch(arch)
    return [
        FieldSpec(base + f.offset(a), prefix + f.name, f.kind, f.size(a))
        for f in sorted(struct_.fields.values(), key=lambda f: f.offset(a))
    ]


def _wine_heap_specs(arch: str) -> list[FieldSpec]:
    a = get_arch(arch)
    specs = []
    for spec in _struct_specs(WINE_HEAP, arch):
        if spec.name == "free_lists":
            lists = len(WINE_PARAMS[arch].bucket_bounds()) + 1
            type_ = f"[{lists}] {WINE_FREE_ENTRY.name}"
            size = lists * WINE_PARAMS[arch].free_list_stride
            specs.append(FieldSpec(spec.offset, spec.name, type_, size, scalar=False))
        elif spec.name == "subheap":
            size = WINE_SUBHEAP.size(a)
            specs.append(FieldSpec(spec.offset, spec.name, WINE_SUBHEAP.name, size, False))
            specs += _struct_specs(WINE_SUBHEAP, arch, "subheap.", spec.offset)
        else:
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------------- public


def heap_header_specs(kind: str, arch: str) -> list[FieldSpec]:
    """The heap header's fields in offset order (containers before their members)."""
    if kind == "builtin":
        layout = asm.layout(arch)
        specs = _asm_specs(layout, layout.heap)
        # Windows' segment signature sits in the builtin heap's reserved prefix: shown (as the
        # walker reads it) right after "reserved", in parentheses since no field declares it
        ps = layout.pointer_size
        specs.append(FieldSpec(2 * ps, "(segment_signature)", "u32", 4))
    else:
        specs = _wine_heap_specs(arch)
    return sorted(specs, key=lambda s: (s.offset, s.scalar))


def block_header_specs(kind: str, arch: str, free: bool) -> list[FieldSpec]:
    """A block header's fields (and a free block's list links) from the block's address."""
    if kind == "builtin":
        layout = asm.layout(arch)
        struct_ = layout.arena_free if free else layout.arena_inuse
        return [s for s in _asm_specs(layout, struct_) if s.scalar]
    specs = _struct_specs(WINE_BLOCK, arch)
    return specs + _struct_specs(WINE_FREE_ENTRY, arch) if free else specs


def large_header_specs(kind: str, arch: str) -> list[FieldSpec]:
    """A large block's header fields, from the region base."""
    if kind == "builtin":
        layout = asm.layout(arch)
        return [s for s in _asm_specs(layout, layout.arena_large) if s.scalar]
    return _struct_specs(WINE_LARGE, arch)
