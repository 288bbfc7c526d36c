"""Instruction-level traces, fast by design.

A Python callback per instruction runs at ~2 M instructions/s before it does anything. The
tracer instead hooks basic blocks (UC_HOOK_BLOCK, ~0.5 µs each): the first time a block runs it
is disassembled once and its text — one line per instruction: address, symbol, bytes,
disassembly — is cached; every later execution of the block queues the cached text, written in
batches (and whenever a run ends, so the file is complete up to any stop). Register
values are available on request only (``registers=True`` adds a per-instruction hook, which is
much slower, and logs the registers each instruction reads and writes).

With ``registers=True`` every instruction line is followed by the values of the registers it
reads (before it runs) and writes (after it ran).

Scope: everything, an address range, a function (``"mod!Name"``, while calls of it are open),
or one call (the N-th call of a function). Output is a text file flushed as it goes and on any
stop, so a trace of a run that faulted ends at the faulting block, complete up to there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from emu.cpu.disasm import Disassembler

if TYPE_CHECKING:
    from emu.process.core import ProcessCore


class Tracer:
    def __init__(
        self,
        proc: ProcessCore,
        out: TextIO,
        *,
        begin: int = 1,
        end: int = 0,
        function: str | int | None = None,
        call: int | None = None,
        registers: bool = False,
    ):
        self.proc = proc
        self.out = out
        self.instructions = 0
        self.blocks = 0
        self._cache: dict[int, tuple[str, int]] = {}
        self.disasm = Disassembler(proc.arch, detail=registers)
        self.registers = registers
        self._func = proc.resolve(function) if isinstance(function, str) else function
        self._call = call  # 1-based call number of `function` to trace (None = every call)
        self._calls = 0
        self._active = self._func is None
        self._return: tuple[int, int] | None = None  # (return address, entry sp)
        self._written: list[str] = []  # registers the last traced instruction writes
        self._pending: list[tuple[str | bytes, int]] = []  # blocks traced, not yet written
        self._encoded: dict[int, tuple[str | bytes, int]] = {}  # _cache, as _drain writes it
        buffer = getattr(out, "buffer", None)
        encoding = (getattr(out, "encoding", None) or "").lower()
        self._binary = buffer if encoding in ("utf-8", "utf8") else None
        if self._func is None and not registers:
            # the common case, the hottest path: one closure per block, output in batches
            self._hooks = [proc.cpu.hook_block_direct(self._block_writer(), begin, end)]
        else:
            self._hooks = [proc.cpu.hook_block(self._on_block, begin, end)]
        if registers:
            self._hooks.append(proc.cpu.hook_code(self._on_insn, begin, end))
        proc.run_observers.append(self._on_run_end)

    def _sp(self) -> int:
        return self.proc.cpu.sp

    def _text(self, address: int, size: int) -> tuple[str, int]:
        proc = self.proc
        try:
            code = proc.cpu.read(address, size)
        except Exception:
            return f"{address:016x} <unreadable block of {size} bytes>\n", 1
        lines = []
        for insn in self.disasm.disasm(code, address):
            sym = proc.symbolize(insn.address)
            text = f"{insn.mnemonic} {insn.op_str}".strip()
            lines.append(f"{insn.address:016x} {sym:<40} {insn.bytes.hex():<24} {text}\n")
        return "".join(lines), max(len(lines), 1)

    def _block_writer(self) -> Callable[[int, int, int, int], None]:
        """The hook of the common case. Traces are large (~100 bytes per instruction): each
        block's text is cached encoded, and queued blocks are written as one join, straight to
        the file's byte buffer when it has one."""
        cache, pending, fail = self._encoded, self._pending, self.proc.cpu.fail
        append, drain, text = pending.append, self._drain, self._text
        encode = self._binary is not None

        def on_block(uc: int, address: int, size: int, user: int) -> None:
            try:
                entry = cache.get(address)
                if entry is None:
                    s, n = text(address, size)
                    entry = cache[address] = (s.encode() if encode else s, n)
                append(entry)
                if len(pending) >= 4096:
                    drain()
            except BaseException as e:  # re-raised when the run ends
                fail(e)

        return on_block

    def _drain(self) -> None:
        """Write the blocks traced since the last drain and count them."""
        pending = self._pending
        if pending:
            if self._binary is not None:
                self.out.flush()  # text written directly (run-end lines) goes first
                self._binary.write(b"".join([e[0] for e in pending]))  # type: ignore[misc]
            else:
                self.out.write("".join([e[0] for e in pending]))  # type: ignore[misc]
            self.instructions += sum([e[1] for e in pending])
            self.blocks += len(pending)
            pending.clear()

    def _on_block(self, address: int, size: int) -> None:
        if self._func is not None:
            ret = self._return
            if ret is not None and address == ret[0] and self._sp() > ret[1]:
                self._active = False
                self._return = None
                self.out.flush()
            if address == self._func and self._return is None:
                self._calls += 1
                if self._call is None or self._calls == self._call:
                    sp = self._sp()
                    self._return = (self.proc.read_ptr(sp), sp)
                    self._active = True
            if not self._active:
                return
        entry = self._cache.get(address)
        if entry is None:
            entry = self._cache[address] = self._text(address, size)
        self.blocks += 1
        if self.registers:
            return  # the instruction hook writes each line with its registers
        self.out.write(entry[0])
        self.instructions += entry[1]

    def _on_insn(self, address: int, size: int) -> None:
        """Registers mode: the hook runs before each instruction, so the values written by
        the previous instruction are known now; they are printed under that instruction,
        then this instruction's line with the values it is about to read."""
        cpu = self.proc.cpu
        if self._written:
            values = " ".join(f"{n}=0x{cpu.reg(n):x}" for n in self._written)
            self.out.write(f"{'':16}   wrote {values}\n")
            self._written = []
        if not self._active:
            return
        try:
            insn = next(self.disasm.disasm(cpu.read(address, size), address))
        except Exception:
            return
        sym = self.proc.symbolize(address)
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        self.out.write(f"{address:016x} {sym:<40} {insn.bytes.hex():<24} {text}\n")
        self.instructions += 1
        read, written = insn.regs_access()
        names = [insn.reg_name(r) for r in read]
        reads = " ".join(f"{n}=0x{cpu.reg(n):x}" for n in names if n in cpu.reg_ids)
        if reads:
            self.out.write(f"{'':16}   read  {reads}\n")
        self._written = [n for n in (insn.reg_name(r) for r in written) if n in cpu.reg_ids]

    def _on_run_end(self, ok: bool) -> None:
        self._drain()
        if self._return is not None and self._return[0] == self.proc.call_gate.return_address:
            self._active, self._return = False, None  # the traced call was the run itself
        if not ok:
            # blocks are written whole when they start: say where execution really stopped
            cpu = self.proc.cpu
            why = cpu.fault.kind if cpu.fault else (cpu.stop_reason or "stopped")
            pc = cpu.fault.pc if cpu.fault else cpu.pc
            self.out.write(f"# emulation stopped: {why} at {pc:016x} {self.proc.symbolize(pc)}\n")
        self.out.flush()

    def close(self) -> None:
        for h in self._hooks:
            self.proc.cpu.unhook(h)
        self._hooks = []
        self._drain()
        if self._binary is not None:
            self._binary.flush()
        if self._on_run_end in self.proc.run_observers:
            self.proc.run_observers.remove(self._on_run_end)
        self.out.flush()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryWatch:
    """Who wrote a watched range: pc, symbol, instruction, old and new value, per write.

    A memory hook slows all code ~1.5x even where it never fires, so a watch exists only
    while it is open (``with proc.watch_memory(addr, size) as w: ...``)."""

    def __init__(self, proc: ProcessCore, address: int, size: int):
        if size <= 0:
            # Unicorn reads an empty range (end < begin) as "all memory"
            raise ValueError(f"a memory watch needs a size > 0, not {size}")
        self.proc = proc
        self.address = address
        self.size = size
        self.writes: list[dict[str, object]] = []
        self._hook = proc.cpu.hook_mem_write(self._on_write, address, address + size - 1)

    def _on_write(self, address: int, size: int, value: int) -> None:
        proc = self.proc
        pc = proc.cpu.pc
        try:
            old = int.from_bytes(proc.read(address, size), "little")
        except Exception:
            old = 0
        self.writes.append(
            {
                "pc": pc,
                "symbol": proc.symbolize(pc),
                "instruction": proc.cpu.disassemble_one(pc)[0],
                "address": address,
                "size": size,
                "old": old,
                "new": value & ((1 << (8 * size)) - 1),
            }
        )

    def close(self) -> None:
        if self._hook is not None:
            self.proc.cpu.unhook(self._hook)
            self._hook = None  # type: ignore[assignment]

    def __enter__(self) -> MemoryWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
