"""Call stacks like WinDbg's ``k``.

Per frame, the best information available is used:

- x64 PE code with .pdata: the function's UNWIND_INFO codes are undone (PUSH_NONVOL, ALLOC_*,
  SET_FPREG, SAVE_NONVOL…, chained entries), as RtlVirtualUnwind does; a pc sitting in an
  epilogue (``add esp/rsp, N``, ``pop``s, ``ret``) is unwound by simulating the epilogue forward; a
  function without .pdata is a leaf (return address at [rsp]).
- Code without unwind data (flat code, x86): the function's prologue is read from its symbol
  (or export) up to pc — pushes, ``sub esp/rsp``, ``mov ebp, esp`` — which gives the frame size
  at pc; with an EBP frame the chain ``[ebp] / [ebp+4]`` is followed.
- When those fail to produce a plausible return address (one right after a ``call`` in mapped
  code), the stack is scanned upward for one (WinDbg's heuristic fallback).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.cpu.disasm import Disassembler
from emu.errors import EmulationError

if TYPE_CHECKING:
    from emu.modules import Module
    from emu.process.core import ProcessCore

_X64_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
UNW_FLAG_CHAININFO = 0x4
MAX_FRAMES = 64


@dataclass(frozen=True)
class Frame:
    index: int
    pc: int
    sp: int  # the frame's stack pointer (Child-SP in WinDbg)
    return_address: int
    symbol: str
    method: str  # how this frame's return address was found

    def __str__(self) -> str:
        return f"{self.index:02x} {self.sp:016x} {self.return_address:016x} {self.symbol}"


class StackWalker:
    def __init__(self, proc: ProcessCore):
        self.proc = proc
        self.arch = proc.arch
        self.disasm = Disassembler(self.arch)
        self._starts: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ helpers
    def _ptr(self, addr: int) -> int | None:
        try:
            return self.proc.read_ptr(addr)
        except Exception:
            return None

    def _plausible_return(self, addr: int) -> bool:
        """Mapped code right after a call instruction (or our call gate's return point)."""
        proc = self.proc
        if addr == proc.call_gate.return_address:
            return True
        if proc.modules.containing(addr) is None:
            return False
        for back in (2, 3, 5, 6, 7):
            try:
                code = proc.read(addr - back, back)
            except Exception:
                continue
            for insn in self.disasm.disasm(code, addr - back):
                if insn.mnemonic == "call" and insn.address + insn.size == addr:
                    return True
                break
        return False

    def _function_start(self, module: Module, pc: int) -> int:
        starts = self._starts.get(module.name)
        if starts is None:
            addrs = set(module.symbols.values()) | set(module.exports.values())
            starts = self._starts[module.name] = sorted(a for a in addrs if module.contains(a))
        i = bisect.bisect_right(starts, pc) - 1
        return starts[i] if i >= 0 else module.base

    # ------------------------------------------------------------------ x64 unwind data
    def _runtime_function(self, module: Module, pc: int) -> tuple[int, int, int] | None:
        funcs = getattr(module.image, "runtime_functions", None)
        if not funcs:
            return None
        rva = pc - module.base
        begins = getattr(module, "_rf_begins", None)
        if begins is None:
            begins = [f.begin for f in funcs]
            module._rf_begins = begins  # type: ignore[attr-defined]
        i = bisect.bisect_right(begins, rva) - 1
        if i >= 0 and funcs[i].begin <= rva < funcs[i].end:
            f = funcs[i]
            return f.begin, f.end, f.unwind_info
        return None

    def _unwind_x64(self, module: Module, rf: tuple[int, int, int], regs: dict[str, int],
                    pc: int) -> bool:  # fmt: skip
        """Undo the prolog of the function containing pc; regs are updated in place."""
        offset = pc - (module.base + rf[0])
        info_rva = rf[2]
        for _ in range(8):  # chained entries
            hdr = self.proc.read(module.base + info_rva, 4)
            flags, prolog, count = hdr[0] >> 3, hdr[1], hdr[2]
            frame_reg, frame_off = hdr[3] & 0xF, hdr[3] >> 4
            codes = self.proc.read(module.base + info_rva + 4, 2 * count + 12)
            slots = [struct.unpack_from("<H", codes, 2 * i)[0] for i in range(count)]
            i = 0
            while i < count:
                code_off, op = slots[i] & 0xFF, slots[i] >> 8
                uop, info = op & 0xF, op >> 4
                applies = offset >= prolog or code_off <= offset
                n = 1
                if uop == 0:  # UWOP_PUSH_NONVOL
                    if applies:
                        regs[_X64_REGS[info]] = self.proc.read_ptr(regs["rsp"])
                        regs["rsp"] += 8
                elif uop == 1:  # UWOP_ALLOC_LARGE
                    if info == 0:
                        size, n = slots[i + 1] * 8, 2
                    else:
                        size, n = slots[i + 1] | (slots[i + 2] << 16), 3
                    if applies:
                        regs["rsp"] += size
                elif uop == 2:  # UWOP_ALLOC_SMALL
                    if applies:
                        regs["rsp"] += info * 8 + 8
                elif uop == 3:  # UWOP_SET_FPREG
                    if applies:
                        regs["rsp"] = regs[_X64_REGS[frame_reg]] - frame_off * 16
                elif uop == 4:  # UWOP_SAVE_NONVOL
                    n = 2
                    if applies:
                        regs[_X64_REGS[info]] = self.proc.read_ptr(regs["rsp"] + slots[i + 1] * 8)
                elif uop == 5:  # UWOP_SAVE_NONVOL_FAR
                    n = 3
                    if applies:
                        off = slots[i + 1] | (slots[i + 2] << 16)
                        regs[_X64_REGS[info]] = self.proc.read_ptr(regs["rsp"] + off)
                elif uop in (6, 8):  # UWOP_EPILOG (v2) / UWOP_SAVE_XMM128
                    n = 2
                elif uop == 9:  # UWOP_SAVE_XMM128_FAR
                    n = 3
                elif uop == 10:  # UWOP_PUSH_MACHFRAME: an interrupt frame, not a call
                    return False
                i += n
            if not flags & UNW_FLAG_CHAININFO:
                return True
            chained = module.base + info_rva + 4 + 2 * (count + (count & 1))
            _, _, info_rva = struct.unpack("<III", self.proc.read(chained, 12))
            offset = 1 << 30  # a chained (parent) prolog has fully run
        return False

    def _epilogue(self, pc: int, regs: dict[str, int]) -> bool:
        """If pc is in an epilogue (add rsp, pops, ret), simulate it up to the ret."""
        try:
            code = self.proc.read(pc, 32)
        except Exception:
            return False
        sp = regs[self.arch.sp]
        ps = self.arch.ptr_size
        pops: list[str] = []
        for insn in self.disasm.disasm(code, pc):
            m, ops = insn.mnemonic, insn.op_str
            if m == "ret":
                for r in pops:
                    regs[r] = self.proc.read_ptr(sp)
                    sp += ps
                regs[self.arch.sp] = sp
                return True
            if m == "pop":
                pops.append(ops)
            elif m == "add" and ops.startswith(("rsp, ", "esp, ")) and not pops:
                sp += int(ops.split(", ")[1], 0)
            else:
                return False
        return False

    # ------------------------------------------------------------------ prologue reading
    def _prologue_frame(self, module: Module, pc: int, regs: dict[str, int]) -> str | None:
        """Frame size from the function's prologue up to pc; updates sp (and ebp/rbp).
        None when pc's function is not known (its symbol is not its start)."""
        start = self._function_start(module, pc)
        if pc - start > 0x4000:
            return None
        try:
            code = self.proc.read(start, pc - start)
        except Exception:
            return None
        ps, sp_name, fp = self.arch.ptr_size, self.arch.sp, self.arch.fp
        delta = 0  # bytes pushed/allocated by the prologue
        fp_at: int | None = None  # delta when `mov ebp, esp` ran
        in_prologue = True
        for insn in self.disasm.disasm(code, start):
            m, ops = insn.mnemonic, insn.op_str
            if m in ("ret", "int3"):
                # a function ends between the symbol and pc: the symbol is not pc's function
                # (an unexported function follows an export), so the prologue is unknown
                return None
            if not in_prologue:
                continue
            if m == "push":
                delta += ps
            elif m == "sub" and ops.startswith(f"{sp_name}, "):
                try:
                    delta += int(ops.split(", ")[1], 0)
                except ValueError:
                    return None
            elif m == "mov" and ops == f"{fp}, {sp_name}":
                fp_at = delta
            elif m == "call" or m.startswith("j") or (m == "and" and sp_name in ops):
                in_prologue = False
        if fp_at is not None and self.arch.ptr_size == 4:
            # EBP frame: [ebp] = caller's ebp, [ebp+4] = return address
            return self._ebp_chain(regs)
        regs[sp_name] += delta
        return "prologue"

    def _ebp_chain(self, regs: dict[str, int]) -> str | None:
        """x86: trust EBP if it points at a frame above the stack pointer whose return slot
        holds a plausible return address."""
        ebp, sp = regs["ebp"], regs["esp"]
        if not sp <= ebp < self.proc.current_stack.top - 8:
            return None
        ret, saved = self._ptr(ebp + 4), self._ptr(ebp)
        if ret is None or saved is None or not self._plausible_return(ret):
            return None
        regs["esp"], regs["ebp"] = ebp + 4, saved
        return "ebp"

    def _scan(self, sp: int, limit: int = 0x400) -> int | None:
        ps = self.arch.ptr_size
        top = self.proc.current_stack.top
        for addr in range(sp, min(sp + limit, top - ps + 1), ps):
            value = self._ptr(addr)
            if value is not None and self._plausible_return(value):
                return addr
        return None

    def _frame_method(self, module: Module, pc: int, regs: dict[str, int]) -> str | None:
        """Unwind one frame with the best information: updates regs, names the method."""
        arch = self.arch
        rf = self._runtime_function(module, pc) if arch.ptr_size == 8 else None
        if self._epilogue(pc, regs):
            return "epilogue"
        if rf is not None:
            return "unwind" if self._unwind_x64(module, rf, regs, pc) else None
        if arch.ptr_size == 8 and module.kind == "pe":
            return "leaf"
        method = self._prologue_frame(module, pc, regs)
        if method is None and arch.ptr_size == 4:
            method = self._ebp_chain(regs)
        return method

    # ------------------------------------------------------------------ the walk
    def walk(
        self, pc: int | None = None, regs: dict[str, int] | None = None, max_frames: int = 0
    ) -> list[Frame]:
        """The frames from ``pc`` (default: the CPU's) outward, at most ``max_frames``
        (default ``MAX_FRAMES``)."""
        proc, arch = self.proc, self.arch
        limit = min(max_frames, MAX_FRAMES) if max_frames > 0 else MAX_FRAMES
        cpu = proc.cpu
        names = _X64_REGS if arch.ptr_size == 8 else ("ebx", "esp", "ebp", "esi", "edi")
        regs = dict(regs) if regs else {r: cpu.reg(r) for r in names}
        pc = cpu.pc if pc is None else pc
        frames: list[Frame] = []
        sp_name = arch.sp
        stack = proc.current_stack
        while len(frames) < limit:
            sp = regs[sp_name]
            if pc == proc.call_gate.return_address or not stack.base <= sp < stack.top:
                break
            module = proc.modules.containing(pc)
            method = None
            if module is not None:
                try:
                    method = self._frame_method(module, pc, regs)
                except EmulationError:  # unreadable unwind data or stack: scan instead
                    method = None
            ret = self._ptr(regs[sp_name]) if method else None
            if ret is None or not self._plausible_return(ret):
                regs[sp_name] = sp
                slot = self._scan(sp)
                if slot is None:
                    frames.append(Frame(len(frames), pc, sp, 0, proc.symbolize(pc), "end"))
                    break
                regs[sp_name], method = slot, "scan"
                ret = self._ptr(slot) or 0
            frames.append(Frame(len(frames), pc, sp, ret, proc.symbolize(pc), method or "scan"))
            regs[sp_name] += arch.ptr_size
            pc = ret
        return frames


def walk_stack(proc: ProcessCore) -> list[Frame]:
    return StackWalker(proc).walk()
