"""heapemu's emulated Windows process: ``Process``, ``EmulationError`` and Windows constants."""

from .arch import X64, X86, Arch, get_arch
from .errors import EmulationError, NtStatusError
from .modules import Module
from .ntdefs import NtStatus
from .process import Process

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
