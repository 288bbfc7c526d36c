"""Our C heaps (``asm/``), assembled and mapped: the builtin Wine-style NT heap and any other
unit of ``asm.UNITS``.

They run with nothing downloaded: keystone assembles the checked-in compiler output, the
module's own system-call numbers (``asm.SYSCALL_NUMBERS``) are registered for its code range,
its exports are the Rtl* entry points of ``emu.win.prototypes``, and, as on Windows, a process
heap is created before any user heap.
"""

from __future__ import annotations

from asm import SYSCALL_NUMBERS, flat_source
from emu.load.flat import load_flat
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.prototypes import ALLOCATOR_PROTOTYPES
from loader.errors import LoaderError

MODULE_NAME = "ntheap"


def load_c_heap(
    proc: ProcessCore, unit: str, name: str | None = None, *, create_process_heap: bool = True
) -> Module:
    """Map ``asm.flat_source(arch, unit)`` as module ``name`` (default: the unit's name)."""
    name = name or unit
    module = load_flat(proc, flat_source(proc.arch.name, unit), name)
    missing = [e for e in ALLOCATOR_PROTOTYPES if e not in module.symbols]
    if missing:
        raise LoaderError(f"{name}: the assembled heap lacks {', '.join(missing)}")
    # its exports are the Rtl* entry points (every other label stays a symbol)
    module.exports = {e: module.symbols[e] for e in ALLOCATOR_PROTOTYPES}
    proc.modules.invalidate()
    proc.register_syscall_table(module.base, module.end, SYSCALL_NUMBERS)
    if create_process_heap:
        proc.create_process_heap(module)
    return module


def load_builtin_heap(
    proc: ProcessCore, name: str = MODULE_NAME, *, create_process_heap: bool = True
) -> Module:
    """heapemu's own Wine-style NT heap (``asm/src/ntheap.c``)."""
    return load_c_heap(proc, "ntheap", name, create_process_heap=create_process_heap)
