"""heapemu's emulated Windows process: ``Process``, ``EmulationError`` and Windows constants."""

from emu.arch import X64, X86, Arch, get_arch
from emu.errors import EmulationError, NtStatusError
from emu.facade import Process
from emu.modules import Module
from emu.win.ntdefs import NtStatus

__all__ = [
    "X64",
    "X86",
    "Arch",
    "EmulationError",
    "Module",
    "NtStatus",
    "NtStatusError",
    "Process",
    "get_arch",
]
