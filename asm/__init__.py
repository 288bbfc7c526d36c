"""heapemu's embedded default allocator: a Wine-style NT heap as flat x86/x64 code.

The allocator is freestanding C (``asm/src/ntheap.c``, ``asm/src/ntheap.h``), compiled by the
pinned ``zig cc`` into the checked-in ``asm/ntheap_x86.s`` / ``asm/ntheap_x64.s`` by
``asm/generate.py``; its only way out is three system calls made by the hand-written stubs in
``asm/syscalls_x86.s`` / ``asm/syscalls_x64.s``. Running it needs keystone only:
``flat_source(arch)`` is one keystone-ready unit (stubs first, then the compiled code) and
``assemble(arch, address)`` turns it into bytes plus the offset of every function label.

Calling conventions: x64 exports use the Microsoft x64 ABI; x86 exports are stdcall (the callee
pops 4 bytes per argument of the prototypes in ``emu.win.prototypes``). BOOLEAN-like results
(RtlFreeHeap, RtlValidateHeap, RtlLockHeap, RtlUnlockHeap) are full 32-bit 0/1 values. The
stubs expect the kernel to handle ``syscall`` (x64: number in eax, arguments r10, rdx, r8, r9,
then the stack from rsp+0x28) or ``int 0x2e`` (x86: number in eax, edx points at the stdcall
arguments), see SYSCALL_NUMBERS.
The PEB is read from gs:[0x60] (x64) / fs:[0x30] (x86); a NULL PEB disables the process-heap
list. NtRaiseException gets a NULL context and FirstChance=TRUE.

Memory layout (``HEAP_LAYOUTS[arch]`` has every offset; A = ``alignment``, 8 on x86, 16 on x64)::

    first subheap region (reserved by RtlCreateHeap, default 0x110000, 64 KiB granular)
    +--------------------------------------------+ base == HEAP handle
    | HEAP: reserved[0x40|0x70] (segment signature 0xffeeffee at 2*ptr), flags, force_flags,
    |       SUBHEAP subheap, subheap_list, large_list, grow_size, magic 'HEAP', lock_count,
    |       internal_flags, free_lists[HEAP_NB_FREE_LISTS] (sentinel ARENA_FREEs)
    +--------------------------------------------+ base + subheap.header_size (first arena)
    | blocks ...                                  | arenas at ARENA_OFFSET mod A: data A-aligned
    +--------------------------------------------+ base + commit_size (on-demand commit)
    | uncommitted (part of the last free block)   |
    +--------------------------------------------+ base + size - ARENA_OFFSET (subheap end)

    in-use block:  u32 size|PREV_FREE, u8 unused, u8 tag, u16 magic 'US' | data ... | slack
                   (unused = block size - requested size, header included: RtlSizeHeap)
    free block:    u32 size|FREE, u8 0, u8 0, u16 magic 'FE', LIST entry | body ... | back ptr
                   (the back pointer, just below the next block, points at this free block
                    and the next block has PREV_FREE; the last block of a subheap has none)
    large block:   own region: LIST entry, data_size, block_size, [u64 pad on x64],
                   ARENA_INUSE{size 0, magic 'LG'} | data (growable heaps, >= 0x7f000 bytes)
    more subheaps: SUBHEAP at the region base, blocks from base + header_size.

Block sizes include the 8-byte header, are multiples of A and at least ``min_block_size``. All
free lists form one ring through the sentinels free_lists[0..39]; list i holds sizes in
``[bucket_bounds[i], bucket_bounds[i+1])`` (16-byte steps below 0x200, then powers of two).
Fill patterns when the heap has the checking flags: new data 0xBAADF00D (TAIL or FREE
checking, unless HEAP_ZERO_MEMORY), slack after the requested size 0xAB (TAIL checking), free
bodies 0xFEEEFEEE (FREE checking).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = [
    "ARCHS",
    "CONSTANTS",
    "HEAP_LAYOUTS",
    "SYSCALL_NUMBERS",
    "UNITS",
    "Assembled",
    "FieldLayout",
    "HeapLayout",
    "StructLayout",
    "assemble",
    "flat_source",
    "function_labels",
    "layout",
]

HERE = Path(__file__).resolve().parent

ARCHS: tuple[str, ...] = ("x86", "x64")

#: System-call number -> Nt name, as the stubs in asm/syscalls_*.s use them (Windows 10 x64).
SYSCALL_NUMBERS: dict[int, str] = {
    0x18: "NtAllocateVirtualMemory",
    0x1E: "NtFreeVirtualMemory",
    0x2A: "NtRaiseException",
}

#: Constants shared by the C source and Python (checked against ntheap.h by the tests).
CONSTANTS: dict[str, int] = {
    "HEAP_NO_SERIALIZE": 0x1,
    "HEAP_GROWABLE": 0x2,
    "HEAP_GENERATE_EXCEPTIONS": 0x4,
    "HEAP_ZERO_MEMORY": 0x8,
    "HEAP_REALLOC_IN_PLACE_ONLY": 0x10,
    "HEAP_TAIL_CHECKING_ENABLED": 0x20,
    "HEAP_FREE_CHECKING_ENABLED": 0x40,
    "HEAP_CREATE_ENABLE_EXECUTE": 0x40000,
    "STATUS_NO_MORE_ENTRIES": 0x8000001A,
    "STATUS_ACCESS_VIOLATION": 0xC0000005,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_NO_MEMORY": 0xC0000017,
    "MEM_COMMIT": 0x1000,
    "MEM_RESERVE": 0x2000,
    "MEM_DECOMMIT": 0x4000,
    "MEM_RELEASE": 0x8000,
    "PAGE_READWRITE": 0x04,
    "PAGE_EXECUTE_READWRITE": 0x40,
    "RTL_HEAP_ENTRY_BUSY": 0x1,
    "RTL_HEAP_ENTRY_REGION": 0x2,
    "RTL_HEAP_ENTRY_BLOCK": 0x10,
    "RTL_HEAP_ENTRY_UNCOMMITTED": 0x1000,
    "RTL_HEAP_ENTRY_COMMITTED": 0x4000,
    "HEAP_PAGE_SIZE": 0x1000,
    "HEAP_REGION_ALIGN": 0x10000,
    "HEAP_DEF_SIZE": 0x110000,
    "HEAP_MIN_LARGE_BLOCK_SIZE": 0x7F000,
    "HEAP_MAX_SUBHEAP_SIZE": 0xFFFF0000,
    "HEAP_MAX_GROW_SIZE": 0x8000000,
    "HEAP_NB_FREE_LISTS": 40,
    "HEAP_SMALL_LIST_LIMIT": 0x200,
    "HEAP_SEGMENT_SIGNATURE": 0xFFEEFFEE,
    "HEAP_MAGIC": 0x50414548,
    "SUBHEAP_MAGIC": 0x42555348,
    "ARENA_INUSE_MAGIC": 0x5355,
    "ARENA_FREE_MAGIC": 0x4546,
    "ARENA_LARGE_MAGIC": 0x474C,
    "ARENA_FLAG_FREE": 0x1,
    "ARENA_FLAG_PREV_FREE": 0x2,
    "HEAP_INTERNAL_USER_BASE": 0x1,
    "HEAP_FILL_NEW": 0xBAADF00D,
    "HEAP_FILL_TAIL": 0xABABABAB,
    "HEAP_FILL_FREE": 0xFEEEFEEE,
}


# ---------------------------------------------------------------------------- flat code


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {ARCHS})")


#: The C heaps compiled to flat code (``asm/src/<unit>.c`` -> ``asm/<unit>_<arch>.s``).
UNITS: tuple[str, ...] = ("ntheap", "segheap", "win7heap")


@cache
def flat_source(arch: str, unit: str = "ntheap") -> str:
    """The complete keystone-ready source of one heap for "x86" or "x64": syscall stubs +
    the compiled C.

    heap names the compiled source (``asm/<heap>_<arch>.s``, see ``generate.HEAPS``):
    "ntheap" (this module's allocator) or "win7heap" (the Windows 7 heap + LFH, same stubs).

    Every export has its plain name as a label (``RtlAllocateHeap``); so do the stubs
    (``NtAllocateVirtualMemory``, ...), ``ntheap_get_peb`` and the internal functions.
    Assemble it with ``keystone.Ks(KS_ARCH_X86, KS_MODE_32 / KS_MODE_64)`` without setting
    ``syntax`` or ``sym_resolver`` (either switches keystone to radix 16).
    """
    _check_arch(arch)
    if unit not in UNITS:
        raise ValueError(f"unknown heap unit {unit!r} (expected one of {UNITS})")
    stubs = (HERE / f"syscalls_{arch}.s").read_text()
    code = (HERE / f"{unit}_{arch}.s").read_text()
    return stubs + code


_LABEL_RE = re.compile(r"(?m)^([A-Za-z_]\w*):")


@cache
def function_labels(arch: str, unit: str = "ntheap") -> tuple[str, ...]:
    """Every function label of ``flat_source(arch, unit)`` in source order (no
    assembler-local ones, which the generator prefixes with ``<unit>_L``)."""
    local = f"{unit}_L"
    return tuple(n for n in _LABEL_RE.findall(flat_source(arch, unit)) if not n.startswith(local))


@dataclass(frozen=True)
class Assembled:
    """Flat code assembled at ``address``; ``labels`` maps function labels to offsets."""

    arch: str
    address: int
    code: bytes
    labels: Mapping[str, int]

    def address_of(self, name: str) -> int:
        return self.address + self.labels[name]


@cache
def assemble(arch: str, address: int = 0, unit: str = "ntheap") -> Assembled:
    """Assemble ``flat_source(arch, unit)`` with keystone (``asm.assembler``) at ``address``;
    the code is position-independent (no absolute relocations, no data)."""
    from asm.assembler import assemble_unit

    image = assemble_unit(flat_source(arch, unit), arch, address, f"{unit}_{arch}")
    labels = {n: image.symbols[n] for n in function_labels(arch, unit)}
    return Assembled(arch, address, image.code[: image.text_size], labels)


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class FieldLayout:
    """One field: byte offset in its structure, total size, element count (arrays > 1)."""

    name: str
    offset: int
    size: int
    count: int = 1


@dataclass(frozen=True)
class StructLayout:
    """A structure for one architecture. Nested structure fields are flattened with dotted
    names (``subheap.commit_size``) next to the containing field (``subheap``)."""

    name: str
    size: int
    fields: Mapping[str, FieldLayout]
    alignment: int

    def offset(self, name: str) -> int:
        return self.fields[name].offset

    def __getitem__(self, name: str) -> int:
        return self.fields[name].offset


@dataclass(frozen=True)
class HeapLayout:
    """Everything a heap walker needs to read this allocator's memory for one architecture."""

    arch: str
    pointer_size: int
    alignment: int  # block granularity: 8 on x86, 16 on x64
    arena_offset: int  # arenas start at this offset modulo alignment
    min_block_size: int
    structs: Mapping[str, StructLayout]
    bucket_bounds: tuple[int, ...]  # lower size bound of each free list
    constants: Mapping[str, int] = field(default_factory=lambda: dict(CONSTANTS))

    @property
    def heap(self) -> StructLayout:
        return self.structs["HEAP"]

    @property
    def subheap(self) -> StructLayout:
        return self.structs["SUBHEAP"]

    @property
    def arena_inuse(self) -> StructLayout:
        return self.structs["ARENA_INUSE"]

    @property
    def arena_free(self) -> StructLayout:
        return self.structs["ARENA_FREE"]

    @property
    def arena_large(self) -> StructLayout:
        return self.structs["ARENA_LARGE"]

    @property
    def heap_walk_entry(self) -> StructLayout:
        return self.structs["RTL_HEAP_WALK_ENTRY"]

    def bucket_of(self, block_size: int) -> int:
        """Free list index of a free block of block_size bytes (as the C code's bucket_of)."""
        index = 0
        for i, bound in enumerate(self.bucket_bounds):
            if block_size >= bound:
                index = i
        return index

    def first_arena_offset(self, header_size: int) -> int:
        """Offset of the first arena after a header of header_size bytes at a region base."""
        inuse = self.arena_inuse.size
        return _round_up(header_size + inuse, self.alignment) - inuse


# Declarations, once for both architectures; they must match asm/src/ntheap.h (the tests check
# it by compiling static assertions for both targets). A type is "u8", "u16", "u32", "u64",
# "ptr" (pointer-sized) or an earlier structure's name; a count is an int or an (x86, x64) pair
# (0 leaves the field out).
_Count = int | tuple[int, int]
_Decl = tuple[str, str, _Count]


@dataclass(frozen=True)
class _Union:
    """An anonymous union of named structure members: ((member, fields), ...)."""

    members: tuple[tuple[str, tuple[_Decl, ...]], ...]


_DECLARATIONS: dict[str, tuple[_Decl | _Union, ...]] = {
    "LIST": (("next", "ptr", 1), ("prev", "ptr", 1)),
    "ARENA_INUSE": (
        ("size", "u32", 1),
        ("unused", "u8", 1),
        ("tag", "u8", 1),
        ("magic", "u16", 1),
    ),
    "ARENA_FREE": (
        ("size", "u32", 1),
        ("unused", "u8", 1),
        ("tag", "u8", 1),
        ("magic", "u16", 1),
        ("entry", "LIST", 1),
    ),
    "ARENA_LARGE": (
        ("entry", "LIST", 1),
        ("data_size", "ptr", 1),
        ("block_size", "ptr", 1),
        ("pad", "u64", (0, 1)),
        ("arena", "ARENA_INUSE", 1),
    ),
    "SUBHEAP": (
        ("base", "ptr", 1),
        ("size", "ptr", 1),
        ("commit_size", "ptr", 1),
        ("entry", "LIST", 1),
        ("heap", "ptr", 1),
        ("header_size", "u32", 1),
        ("magic", "u32", 1),
    ),
    "HEAP": (
        ("reserved", "u8", (0x40, 0x70)),
        ("flags", "u32", 1),
        ("force_flags", "u32", 1),
        ("subheap", "SUBHEAP", 1),
        ("subheap_list", "LIST", 1),
        ("large_list", "LIST", 1),
        ("grow_size", "ptr", 1),
        ("magic", "u32", 1),
        ("lock_count", "u32", 1),
        ("internal_flags", "u32", 1),
        ("reserved2", "u32", 1),
        ("free_lists", "ARENA_FREE", CONSTANTS["HEAP_NB_FREE_LISTS"]),
    ),
    "EXCEPTION_RECORD": (
        ("ExceptionCode", "u32", 1),
        ("ExceptionFlags", "u32", 1),
        ("ExceptionRecord", "ptr", 1),
        ("ExceptionAddress", "ptr", 1),
        ("NumberParameters", "u32", 1),
        ("ExceptionInformation", "ptr", 15),
    ),
    "RTL_HEAP_WALK_ENTRY": (
        ("DataAddress", "ptr", 1),
        ("DataSize", "ptr", 1),
        ("OverheadBytes", "u8", 1),
        ("SegmentIndex", "u8", 1),
        ("Flags", "u16", 1),
        _Union(
            (
                (
                    "Block",
                    (
                        ("Settable", "ptr", 1),
                        ("TagIndex", "u16", 1),
                        ("AllocatorBackTraceIndex", "u16", 1),
                        ("Reserved", "u32", 2),
                    ),
                ),
                (
                    "Segment",
                    (
                        ("CommittedSize", "u32", 1),
                        ("UnCommittedSize", "u32", 1),
                        ("FirstEntry", "ptr", 1),
                        ("LastEntry", "ptr", 1),
                    ),
                ),
            )
        ),
    ),
}

_SCALARS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _layout_struct(
    name: str, decls: tuple[_Decl | _Union, ...], ptr: int, known: Mapping[str, StructLayout]
) -> StructLayout:
    """C layout rules: each member at its alignment, the size a multiple of the largest."""
    fields: dict[str, FieldLayout] = {}
    pos = 0
    alignment = 1

    def put(fname: str, offset: int, size: int, count: int, inner: StructLayout | None) -> None:
        fields[fname] = FieldLayout(fname, offset, size, count)
        if inner is not None and count == 1:
            for f in inner.fields.values():
                dotted = f"{fname}.{f.name}"
                fields[dotted] = FieldLayout(dotted, offset + f.offset, f.size, f.count)

    for decl in decls:
        if isinstance(decl, _Union):
            members = [(m, _layout_struct(m, d, ptr, known)) for m, d in decl.members]
            union_align = max(s.alignment for _, s in members)
            pos = _round_up(pos, union_align)
            for member, sub in members:
                put(member, pos, sub.size, 1, sub)
            pos += _round_up(max(s.size for _, s in members), union_align)
            alignment = max(alignment, union_align)
            continue
        fname, ftype, count = decl
        n = count if isinstance(count, int) else count[ptr == 8]
        if n == 0:
            continue
        inner = known.get(ftype)
        if inner is not None:
            size, align = inner.size, inner.alignment
        else:
            size = align = ptr if ftype == "ptr" else _SCALARS[ftype]
        pos = _round_up(pos, align)
        put(fname, pos, size * n, n, inner)
        pos += size * n
        alignment = max(alignment, align)
    return StructLayout(name, _round_up(pos, alignment), fields, alignment)


def _bucket_bounds() -> tuple[int, ...]:
    small = CONSTANTS["HEAP_SMALL_LIST_LIMIT"]
    bounds = [16 * i for i in range(small // 16)]
    while len(bounds) < CONSTANTS["HEAP_NB_FREE_LISTS"]:
        bounds.append(small << (len(bounds) - small // 16))
    return tuple(bounds)


def _compute_layout(arch: str) -> HeapLayout:
    ptr = 4 if arch == "x86" else 8
    structs: dict[str, StructLayout] = {}
    for name, decls in _DECLARATIONS.items():
        structs[name] = _layout_struct(name, decls, ptr, structs)
    alignment = 2 * ptr
    return HeapLayout(
        arch=arch,
        pointer_size=ptr,
        alignment=alignment,
        arena_offset=alignment - structs["ARENA_INUSE"].size,
        min_block_size=_round_up(structs["ARENA_FREE"].size + ptr, alignment),
        structs=structs,
        bucket_bounds=_bucket_bounds(),
    )


#: The heap's memory layout for "x86" and "x64".
HEAP_LAYOUTS: dict[str, HeapLayout] = {arch: _compute_layout(arch) for arch in ARCHS}


def layout(arch: str) -> HeapLayout:
    """The heap's memory layout for "x86" or "x64" (same object as ``HEAP_LAYOUTS[arch]``)."""
    _check_arch(arch)
    return HEAP_LAYOUTS[arch]
