"""The system calls the emulated kernel serves, one module per Windows concept.

``HANDLER_MODULES`` is the explicit list; ``HANDLERS`` is the table built from it once. Every
process serves exactly this set, whatever was imported before it. A new system call is one
``@syscall`` function in the module of its concept (a new module also goes into the list).
"""

from __future__ import annotations

from emu.nt.calls import (
    directory,
    file,
    info,
    memory,
    misc,
    process,
    registry,
    section,
    sync,
    thread,
    wine,
)
from emu.nt.kernel import SyscallHandler, collect_handlers

HANDLER_MODULES = (
    memory, process, thread, sync, file, section, directory, info, registry, misc, wine,
)  # fmt: skip

HANDLERS: dict[str, SyscallHandler] = collect_handlers(HANDLER_MODULES)

__all__ = ["HANDLERS", "HANDLER_MODULES"]
