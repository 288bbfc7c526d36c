"""``dt``: a heap structure dumped field by field with the architecture's offsets (WinDbg's ``dt``).

The fields come from the allocator's declaration (builtin: ``asm.layout(arch)``; Wine:
``emu.heap.walkers.wine_layout``; win7: ``win7_layout``; segment heap: ``segment_layout``), the
values from process memory. By default the heap header; ``struct=`` names another structure the
allocator declares (``struct_names``: win7's ``_LFH_HEAP``, ``_HEAP_SUBSEGMENT``, ...; the segment
heap's ``_HEAP_PAGE_SEGMENT``, ``_HEAP_VS_CHUNK_HEADER``, ...). Nested structures and arrays are
shown by type, with their members after them under dotted names (as ``dt -r`` would).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.heap.registry import walk_heap
from emu.process.core import ProcessCore
from emu.views.common import JsonView, ascii_magic, heap_kind, hexp
from emu.views.layout import heap_struct_name, struct_addresses, struct_specs
from emu.win.ntdefs import heap_flag_names

HEAP_CLASS_1 = 0x1000


@dataclass
class DtRow:
    offset: int
    name: str
    type: str  # u8/u16/u32/u64/ptr/i32, a structure's name, or "[n] element"
    size: int
    value: int | None  # None for structures and arrays
    note: str = ""  # a flag decoding or a magic's text


@dataclass
class DtView(JsonView):
    struct: str
    address: int
    kind: str
    arch: str
    rows: list[DtRow] = field(default_factory=list)


def _note(name: str, value: int, size: int, heap_header: bool) -> str:
    leaf = name.rsplit(".", 1)[-1].lower()  # builtin/wine "flags", Windows' "Flags"
    if heap_header and leaf in ("flags", "force_flags", "forceflags") and "." not in name:
        if not value:
            return ""
        # 0x1000 is Windows' HEAP_CLASS_1 (a private heap), which Wine sets too
        names = heap_flag_names(value & ~HEAP_CLASS_1) if value & ~HEAP_CLASS_1 else ""
        return "|".join(n for n in (names, "HEAP_CLASS_1" if value & HEAP_CLASS_1 else "") if n)
    if "magic" in leaf or "signature" in leaf:
        text = ascii_magic(value, size)
        return f"'{text}'" if text else ""
    return ""


def build_dt(
    proc: ProcessCore, address: int, kind: str | None = None, struct: str | None = None
) -> DtView:
    """The structure ``struct`` (default: the heap header) at ``address`` (``kind`` defaults to
    the loaded allocator); ValueError for a structure the allocator does not declare."""
    kind = kind or heap_kind(proc)
    arch = proc.arch.name
    name = struct or heap_struct_name(kind)
    header = name == heap_struct_name(kind)
    rows = []
    for spec in struct_specs(kind, name, arch):
        value = None
        if spec.scalar:
            value = int.from_bytes(proc.read(address + spec.offset, spec.size), "little")
            if spec.type == "i32" and value & 0x80000000:
                value -= 1 << 32
        note = _note(spec.name, value, spec.size, header) if value is not None else ""
        rows.append(DtRow(spec.offset, spec.name, spec.type, spec.size, value, note))
    return DtView(name, address, kind, arch, rows)


def dt_address(proc: ProcessCore, heap: int, struct: str | None = None) -> int:
    """Where ``heap`` has a ``struct`` (default: its header; of many, the first the walker
    finds); ValueError when it has none."""
    if struct is None:
        return heap
    report = walk_heap(proc, heap)
    found = struct_addresses(report)
    if struct not in found:
        struct_specs(report.kind, struct, proc.arch.name)  # ValueError for an unknown name
        have = ", ".join(found)
        raise ValueError(f"heap 0x{heap:x} has no {struct} to show: give --address (it has {have})")
    return found[struct]


def render_dt(view: DtView) -> str:
    width = max(len(r.name) for r in view.rows)
    lines = [f"{view.struct} at {hexp(view.address, view.arch)} ({view.arch})"]
    for r in view.rows:
        if r.value is None:
            shown = r.type
        elif r.value < 0:
            shown = str(r.value)
        else:
            shown = f"{r.value:#x}"
        note = f"  {r.note}" if r.note else ""
        lines.append(f"   +{r.offset:#05x} {r.name:<{width}} : {shown}{note}")
    return "\n".join(lines)
