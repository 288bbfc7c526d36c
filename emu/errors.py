"""Typed errors. An EmulationError carries everything needed to understand a fault."""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.win.ntdefs import status_name


class NtStatusError(Exception):
    """A kernel-side failure with the NTSTATUS Windows would return."""

    def __init__(self, status: int, message: str = ""):
        self.status = status
        super().__init__(f"{status_name(status)}{': ' + message if message else ''}")


@dataclass
class Fault:
    """What stopped emulated code: filled in by the CPU layer, read by EmulationError."""

    kind: str  # "unmapped read", "protected write", "invalid instruction", "divide error", ...
    pc: int = 0
    address: int | None = None  # faulting data address, when there is one
    access: str | None = None  # "read", "write", "fetch"
    size: int = 0
    status: int | None = None  # the NTSTATUS Windows would raise (ACCESS_VIOLATION, ...)
    detail: str = ""
    # the exception has been through the program's exception dispatcher already (its second
    # chance), or the kernel raised it to end the run: it is never dispatched (again)
    dispatched: bool = False


@dataclass
class CpuState:
    pc: int
    instruction: str  # disassembly, "<unreadable>" when pc is not mapped
    symbol: str
    registers: dict[str, int] = field(default_factory=dict)


class EmulationError(Exception):
    """Emulated code faulted, ran out of budget or time, or raised an exception.

    Attributes: ``kind``, ``pc``, ``instruction`` (disassembled), ``symbol``, ``registers``,
    ``address`` (faulting address), ``access`` ("read"/"write"/"fetch"), ``status`` (NTSTATUS).
    """

    def __init__(self, fault: Fault, state: CpuState | None = None, context: str = ""):
        self.fault = fault
        self.kind = fault.kind
        self.status = fault.status
        self.address = fault.address
        self.access = fault.access
        self.pc = state.pc if state else fault.pc
        self.instruction = state.instruction if state else ""
        self.symbol = state.symbol if state else ""
        self.registers = dict(state.registers) if state else {}
        self.context = context
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.kind}"
        if self.address is not None:
            head += f" at address 0x{self.address:x}"
        if self.fault.size and self.access:
            head += f" ({self.fault.size}-byte {self.access})"
        where = f"pc=0x{self.pc:x}"
        if self.symbol:
            where += f" [{self.symbol}]"
        if self.instruction:
            where += f": {self.instruction}"
        lines = [f"{head}; {where}"]
        if self.context:
            lines.insert(0, self.context)
        if self.status is not None:
            lines.append(f"status: {status_name(self.status)}")
        if self.fault.detail:
            lines.append(self.fault.detail)
        if self.registers:
            regs = "  ".join(f"{k}={v:x}" for k, v in self.registers.items())
            lines.append(f"registers: {regs}")
        return "\n".join(lines)


class BreakpointStop(EmulationError):  # noqa: N818 (a stop, not an error)
    """A breakpoint callback stopped the run (``ctx.stop()``, ``emu.observe.breakpoints``)."""
