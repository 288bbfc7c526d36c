"""One disassembler for every part of heapemu that reads machine code (faults, traces, stack
walks, instruction counts, Wine's import thunks): capstone, configured per architecture here
and nowhere else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeAlias

import capstone

from emu.arch import Arch

_CS_MODES = {"x86": capstone.CS_MODE_32, "x64": capstone.CS_MODE_64}

Instruction: TypeAlias = Any  # capstone.CsInsn (capstone ships no type hints)


class Disassembler:
    """Disassembly for one architecture. ``detail=True`` fills operands and the registers an
    instruction reads and writes (slower: only where they are used)."""

    def __init__(self, arch: Arch, *, detail: bool = False):
        self.arch = arch
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, _CS_MODES[arch.name])
        self._cs.detail = detail

    def disasm(self, code: bytes, address: int, count: int = 0) -> Iterator[Instruction]:
        """Instructions decoded from ``code`` at ``address`` (stops at undecodable bytes)."""
        return self._cs.disasm(code, address, count)

    def lite(self, code: bytes, address: int) -> Iterator[tuple[int, int, str, str]]:
        """(address, size, mnemonic, operands): cheaper when no detail is needed."""
        return self._cs.disasm_lite(code, address)

    def count(self, code: bytes, address: int) -> int:
        """How many instructions ``code`` decodes to."""
        return sum(1 for _ in self._cs.disasm_lite(code, address))

    def first_text(self, code: bytes, address: int) -> tuple[str, int] | None:
        """("mnemonic operands", size) of the first instruction, or None if undecodable."""
        for insn in self._cs.disasm(code, address, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip(), insn.size
        return None

    def memory_operand_target(self, insn: Instruction) -> int | None:
        """The absolute address a ``[rip+disp]`` or ``[disp32]`` operand reads (detail=True),
        or None when the operand is not such a memory reference."""
        for op in insn.operands:
            if op.type != capstone.CS_OP_MEM:
                continue
            mem = op.mem
            if mem.base == capstone.x86.X86_REG_RIP:
                return int(insn.address + insn.size + mem.disp)
            if mem.base == 0 and mem.index == 0:
                return int(mem.disp) & 0xFFFFFFFF
        return None
