"""heapemu's emulated Windows process: ``Process``, ``EmulationError`` and Windows constants."""

from emu import _shadowing  # noqa: F401  (first: says which file shadows loader/asm)
from emu.arch import X64, X86, Arch, get_arch
from emu.errors import EmulationError, NtStatusError
from emu.facade import Process
from emu.modules import Module
from emu.win.ntdefs import NtStatus

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

__all__ = [
    "X64",
    "X86",
    "Arch",
    "EmulationError",
    "Module",
    "NtStatus",
    "NtStatusError",
    "Process",
    "__version__",
    "get_arch",
]
