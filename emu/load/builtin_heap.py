"""The embedded default allocator: our Wine-style NT heap (``asm/``), assembled and mapped.

It runs with nothing downloaded: keystone assembles the checked-in compiler output, the module's
own system-call numbers (``asm.SYSCALL_NUMBERS``) are registered for its code range, and, as on
Windows, a process heap is created before any user heap.
"""

from __future__ import annotations

from emu.load.flat import load_flat
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.prototypes import ALLOCATOR_PROTOTYPES
from loader.errors import LoaderError

MODULE_NAME = "ntheap"


def load_builtin_heap(
    proc: ProcessCore, name: str = MODULE_NAME, *, create_process_heap: bool = True
) -> Module:
    from asm import SYSCALL_NUMBERS, flat_source

    module = load_flat(proc, flat_source(proc.arch.name), name)
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
