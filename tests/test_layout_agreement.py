"""The builtin heap's C declarations (checked against the compiler by tests/test_asm_layout.py)
and heapemu's own Windows declarations describe the same structures and constants: one truth."""

from __future__ import annotations

import pytest

import asm
from emu.arch import get_arch
from emu.heap import allocator as emu_heap
from emu.heap.allocator import RTL_HEAP_WALK_ENTRY
from emu.win import ntdefs
from emu.win.layouts import EXCEPTION_RECORD


def test_constants_agree() -> None:
    shared = 0
    for name, value in asm.CONSTANTS.items():
        ours = (
            getattr(ntdefs, name, None)
            if not name.startswith("STATUS_")
            else getattr(ntdefs.NtStatus, name[len("STATUS_") :], None)
        )
        ours = ours if ours is not None else getattr(emu_heap, name, None)
        if ours is not None:
            assert int(ours) == value, name
            shared += 1
    assert shared >= 20  # heap flags, statuses, MEM_/PAGE_ values, RTL_HEAP_ENTRY_ flags


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_structures_agree(arch: str) -> None:
    a = get_arch(arch)
    lay = asm.layout(arch)
    walk = lay.heap_walk_entry
    assert walk.size == RTL_HEAP_WALK_ENTRY.size(a)
    for name in ("DataAddress", "DataSize", "OverheadBytes", "SegmentIndex", "Flags"):
        assert walk.fields[name].offset == RTL_HEAP_WALK_ENTRY.offset(a, name), name
    for name in ("CommittedSize", "UnCommittedSize", "FirstEntry", "LastEntry"):
        assert walk.fields[f"Segment.{name}"].offset == RTL_HEAP_WALK_ENTRY.offset(a, name)
    record = lay.structs["EXCEPTION_RECORD"]
    assert record.size == EXCEPTION_RECORD.size(a)
    for name in EXCEPTION_RECORD.fields:
        assert record.fields[name].offset == EXCEPTION_RECORD.offset(a, name), name
