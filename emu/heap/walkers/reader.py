"""Reading emulated memory for a walker: every failure becomes one exception, ``UnreadableError``.

A walker follows pointers it does not trust, so an address may be negative, past the top of the
address space or in free/reserved memory; ``proc.read`` raises ``EmulationError`` for the last
ones and Unicorn can raise other errors for the first ones. The walkers catch ``UnreadableError``
and report a corruption instead of crashing.
"""

from __future__ import annotations

import struct

from emu.errors import EmulationError
from emu.process.core import ProcessCore
from emu.win.layouts import Struct

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_KIND_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i32": 4}


class UnreadableError(Exception):
    """``size`` bytes at ``address`` could not be read."""

    def __init__(self, address: int, size: int):
        super().__init__(f"cannot read {size} bytes at 0x{address:x}")
        self.address = address
        self.size = size


class MemoryReader:
    """Little-endian scalar reads from a process, raising only ``UnreadableError``."""

    def __init__(self, proc: ProcessCore):
        self.proc = proc
        self.arch = proc.arch
        self.ptr_size = proc.arch.ptr_size
        self._top = 1 << (8 * self.ptr_size)

    def read(self, address: int, size: int) -> bytes:
        if address < 0 or size < 0 or address + size > self._top:
            raise UnreadableError(address, size)
        try:
            return self.proc.read(address, size)
        except (EmulationError, OverflowError, ValueError):
            raise UnreadableError(address, size) from None

    def uint(self, address: int, size: int) -> int:
        return int(struct.unpack(_FMT[size], self.read(address, size))[0])

    def u8(self, address: int) -> int:
        return self.uint(address, 1)

    def u16(self, address: int) -> int:
        return self.uint(address, 2)

    def u32(self, address: int) -> int:
        return self.uint(address, 4)

    def ptr(self, address: int) -> int:
        return self.uint(address, self.ptr_size)

    def readable(self, address: int, size: int) -> bool:
        try:
            self.read(address, size)
        except UnreadableError:
            return False
        return True

    def field(self, struct_: Struct, base: int, name: str) -> int:
        """One field of an ``emu.win.layouts.Struct`` (``i32`` fields come back signed)."""
        f = struct_.fields[name]
        size = self.ptr_size if f.kind == "ptr" else _KIND_SIZE[f.kind]
        value = self.uint(base + f.offset(self.arch), size)
        if f.kind == "i32" and value & 0x80000000:
            value -= 1 << 32
        return value
