"""User-mode exception dispatch, as Windows' kernel hands exceptions to a process.

A fault in emulated code (or NtRaiseException with FirstChance=TRUE) becomes an EXCEPTION_RECORD
and a CONTEXT written onto the current thread's stack, and the thread continues at ntdll's
``KiUserExceptionDispatcher`` (the process's ``exception_dispatcher``), which runs the vectored
handlers and the frame-based ones (x86: the fs:[0] chain; x64: .pdata unwinding) and then either
NtContinue()s with the (possibly changed) CONTEXT or calls NtRaiseException(FirstChance=FALSE):
the second chance, which ends the process with the exception code.

The frame is the one Windows' kernel builds (KiDispatchException), and the one Wine's
dispatcher reads (checked by disassembling both ntdlls' KiUserExceptionDispatcher):

    x64: rsp -> CONTEXT (0x4D0, 16-aligned), CONTEXT_EX (0x20), EXCEPTION_RECORD (0x98, padded
         to 0xA0), MACHINE_FRAME (Rip, SegCs, EFlags, Rsp, SegSs; padded to 0x30); the
         dispatcher reads the record at rsp+0x4F0 and compares CONTEXT.SegCs with cs
    x86: esp -> [EXCEPTION_RECORD*, CONTEXT*], the record (its unused ExceptionInformation
         slots left out), then the CONTEXT just below the faulting esp (rounded down to 4)

The CONTEXT carries everything (CONTEXT_ALL); NtContinue and NtRaiseException apply what its
ContextFlags select, sanitising EFLAGS as the kernel does. Segment selectors are the ones
Windows reports. x64: constants (WRK KeContextFromKframes: SegDs = SegEs = SegGs =
KGDT64_R3_DATA | 3 = 0x2B, SegFs = KGDT64_R3_CMTEB | 3 = 0x53; SegCs = 0x33 and SegSs = 0x2B
from the trap frame of 64-bit user code), whatever code loaded into them. x86: the CPU's
own (cs 0x1B, ss/ds/es 0x23, gs 0), except fs, which is KGDT_R3_TEB | 3 = 0x3B on every thread
of Windows, while heapemu gives each thread a TEB descriptor of its own (emu.cpu.segments): a
CONTEXT shows 0x3B and NtContinue takes 0x3B as the thread's own. The kernel never takes cs/ss
from a CONTEXT, and on x64 not ds/es/fs/gs either.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.cpu.segments import SEL64_CODE3, SEL64_DATA3, SEL64_FS, SEL_DATA3, SEL_TEB, teb_selector
from emu.errors import CpuState, Fault, NtStatusError
from emu.nt.stack import touch_guard
from emu.win.layouts import (
    CONTEXT,
    CONTEXT_ARCH_BIT,
    CONTEXT_CONTROL,
    CONTEXT_DEBUG_REGISTERS,
    CONTEXT_EX_SIZE,
    CONTEXT_EXTENDED_REGISTERS,
    CONTEXT_FLOATING_POINT,
    CONTEXT_INTEGER,
    CONTEXT_SEGMENTS,
    EXCEPTION_RECORD,
)
from emu.win.ntdefs import PAGE_GUARD, PAGE_SIZE, NtStatus, status_name

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

# Exceptions a CPU fault is dispatched as (anything else, such as a budget or a wait that can
# never end, is heapemu's own stop and ends the run)
DISPATCHED = frozenset(
    {
        NtStatus.ACCESS_VIOLATION,
        NtStatus.GUARD_PAGE_VIOLATION,
        NtStatus.STACK_OVERFLOW,
        NtStatus.INTEGER_DIVIDE_BY_ZERO,
        NtStatus.INTEGER_OVERFLOW,
        NtStatus.ARRAY_BOUNDS_EXCEEDED,
        NtStatus.ILLEGAL_INSTRUCTION,
        NtStatus.PRIVILEGED_INSTRUCTION,
        NtStatus.BREAKPOINT,
        NtStatus.SINGLE_STEP,
    }
)
# ExceptionInformation[0] of an access violation / in-page fault (winnt.h)
_ACCESS_CODE = {"read": 0, "write": 1, "fetch": 8}
EXCEPTION_MAXIMUM_PARAMETERS = 15

_INTEGER = {
    "x86": ("edi", "esi", "ebx", "edx", "ecx", "eax"),
    "x64": ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
}  # fmt: skip
_CONTROL = {"x86": ("ebp", "eip", "esp"), "x64": ("rsp", "rip")}
_DATA_SEGMENTS = ("ds", "es", "fs", "gs")
_DEBUG = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
# EFLAGS a user CONTEXT may set (the kernel's EFLAGS_USER_SANITIZE; IF is forced on). x64:
# CF PF AF ZF SF TF DF OF AC. x86: the same plus VIF, VIP, ID (0x3E0DD7 without VM: heapemu has
# no virtual-8086 mode).
_EFLAGS_USER = {"x86": 0x3F4DD7 & ~0x20000, "x64": 0x40DD5}
_EFLAGS_IF, _EFLAGS_TF, _EFLAGS_DF, _EFLAGS_RESERVED = 0x200, 0x100, 0x400, 0x2
# MXCSR bits a CONTEXT may set: the processor's MXCSR_MASK (the kernel reads it from FXSAVE;
# 0xFFFF, DAZ included, as Cpu.fx_state reports it)
_MXCSR_USER = 0xFFFF
_X86_SEGMENT_SELECTORS = frozenset({0x0, SEL_DATA3, SEL_TEB})  # null, flat user data, TEB
# x64: what every CONTEXT shows (see the module docstring)
_X64_SELECTORS = {
    "cs": SEL64_CODE3,
    "ss": SEL64_DATA3,
    "ds": SEL64_DATA3,
    "es": SEL64_DATA3,
    "fs": SEL64_FS,
    "gs": SEL64_DATA3,
}


@dataclass
class ExceptionEvent:
    """One exception dispatched to the program (``proc.exceptions`` keeps them in order)."""

    code: int
    address: int  # ExceptionAddress
    params: tuple[int, ...] = ()
    flags: int = 0
    first_chance: bool = True
    fault: Fault | None = None  # the CPU fault it came from (None: raised by software)
    state: CpuState | None = None  # registers and instruction where it happened
    report: Fault | None = None  # what ended the run when nothing handled it
    details: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return status_name(self.code)

    def describe(self) -> str:
        text = f"{self.name} at 0x{self.address:x}"
        if self.state is not None and self.state.symbol:
            text += f" [{self.state.symbol}]"
        if self.code == NtStatus.ACCESS_VIOLATION and len(self.params) >= 2:
            access = {v: k for k, v in _ACCESS_CODE.items()}.get(self.params[0], "access")
            text += f" ({access} of 0x{self.params[1]:x})"
        return text


def event_for_fault(fault: Fault) -> ExceptionEvent | None:
    """The exception Windows raises for a CPU fault, or None when the fault is not one."""
    if fault.status not in DISPATCHED or fault.dispatched:
        return None
    params: tuple[int, ...] = ()
    if fault.status in (
        NtStatus.ACCESS_VIOLATION,
        NtStatus.GUARD_PAGE_VIOLATION,
        NtStatus.STACK_OVERFLOW,
    ):
        # a fault without an address (a general-protection fault) reports -1, as Windows does
        address = -1 if fault.address is None else fault.address
        params = (_ACCESS_CODE.get(fault.access or "read", 0), address)
    elif fault.status == NtStatus.BREAKPOINT:
        params = (0,)  # BREAKPOINT_BREAK
    return ExceptionEvent(fault.status, fault.pc, params, fault=fault)


def _put(at: tuple[ProcessCore, bytearray], name: str, value: int) -> None:
    """Store CONTEXT field ``name`` into the buffer (``at``: the process, for its arch)."""
    proc, buf = at
    f = CONTEXT.fields[name]
    mask = (1 << (8 * f.size(proc.arch))) - 1
    struct.pack_into(f.fmt(proc.arch), buf, f.offset(proc.arch), value & mask)


def _get(proc: ProcessCore, buf: bytes, name: str) -> int:
    f = CONTEXT.fields[name]
    return int(struct.unpack_from(f.fmt(proc.arch), buf, f.offset(proc.arch))[0])


def _fsave_from_fx(fx: bytes) -> bytes:
    """x86 FLOATING_SAVE_AREA (FSAVE's 108-byte form + Cr0NpxState) from an FXSAVE image."""
    fcw, fsw, ftw = struct.unpack_from("<HHB", fx, 0)
    tag = sum((0 if (ftw >> i) & 1 else 3) << (2 * i) for i in range(8))  # valid / empty
    fip, fdp = struct.unpack_from("<I4xI", fx, 8)
    out = bytearray(112)
    struct.pack_into("<IIIIIII", out, 0, fcw, fsw, tag, fip, 0, fdp, 0)
    for i in range(8):  # RegisterArea: ST(0)..ST(7), 10 bytes each
        out[28 + 10 * i : 38 + 10 * i] = fx[32 + 16 * i : 42 + 16 * i]
    return bytes(out)


def _fx_with_fsave(fx: bytes, fsave: bytes) -> bytes:
    """An FXSAVE image whose x87 part comes from a FLOATING_SAVE_AREA."""
    out = bytearray(fx)
    fcw, fsw, tag = struct.unpack_from("<III", fsave, 0)
    ftw = sum(1 << i for i in range(8) if (tag >> (2 * i)) & 3 != 3)
    # the save area's words are DWORDs of which FRSTOR reads the low half (a CONTEXT of
    # random bytes made the pack raise: tests/syscallfuzz.py)
    struct.pack_into("<HHB", out, 0, fcw & 0xFFFF, fsw & 0xFFFF, ftw)
    for i in range(8):
        out[32 + 16 * i : 48 + 16 * i] = fsave[28 + 10 * i : 38 + 10 * i] + bytes(6)
    return bytes(out)


def capture_context(proc: ProcessCore) -> bytes:
    """The current thread's registers as a CONTEXT with every part (CONTEXT_ALL)."""
    arch, cpu = proc.arch, proc.cpu
    name, x86 = arch.name, arch.ptr_size == 4
    buf = bytearray(CONTEXT.size(arch))
    at = (proc, buf)
    flags = CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_SEGMENTS | CONTEXT_FLOATING_POINT
    flags |= CONTEXT_DEBUG_REGISTERS | (CONTEXT_EXTENDED_REGISTERS if x86 else 0)
    _put(at, "ContextFlags", CONTEXT_ARCH_BIT[name] | flags)
    for reg in _INTEGER[name] + _CONTROL[name]:
        _put(at, reg.capitalize(), cpu.reg(reg))
    _put(at, "EFlags", cpu.reg("eflags"))
    for seg in ("cs", "ss", *_DATA_SEGMENTS):
        value = _X64_SELECTORS[seg] if not x86 else cpu.reg(seg)
        if x86 and seg == "fs" and value == teb_selector(proc.threads.current.slot):
            value = SEL_TEB  # the thread's own TEB descriptor, as Windows numbers it
        _put(at, f"Seg{seg.capitalize()}", value)
    for dr in _DEBUG:
        _put(at, dr.capitalize(), cpu.reg(dr))
    fx = cpu.fx_state()
    off = CONTEXT.offset(arch, "FxSave")
    buf[off : off + 512] = fx
    _put(at, "MxCsr", cpu.reg("mxcsr"))
    if x86:
        off = CONTEXT.offset(arch, "FloatSave")
        buf[off : off + 112] = _fsave_from_fx(fx)
    return bytes(buf)


def context_fields(arch_name: str, flags: int) -> list[str]:
    """The CONTEXT fields ContextFlags ``flags`` select (what NtGetContextThread fills in)."""
    x86 = arch_name == "x86"
    names: list[str] = []
    if flags & CONTEXT_CONTROL:
        names += [r.capitalize() for r in _CONTROL[arch_name]] + ["EFlags", "SegCs", "SegSs"]
    if flags & CONTEXT_INTEGER:
        names += [r.capitalize() for r in _INTEGER[arch_name]]
    if flags & CONTEXT_SEGMENTS:
        names += [f"Seg{seg.capitalize()}" for seg in _DATA_SEGMENTS]
    if flags & CONTEXT_FLOATING_POINT:
        names += ["FloatSave"] if x86 else ["FxSave", "MxCsr"]
    if flags & CONTEXT_DEBUG_REGISTERS:
        names += [dr.capitalize() for dr in _DEBUG]
    if x86 and flags & CONTEXT_EXTENDED_REGISTERS:
        names.append("FxSave")  # ExtendedRegisters
    return names


def merge_context(proc: ProcessCore, into: bytearray, source: bytes, flags: int) -> None:
    """Copy the parts of CONTEXT ``source`` that ContextFlags ``flags`` select into ``into``."""
    arch = proc.arch
    for name in context_fields(arch.name, flags):
        f = CONTEXT.fields[name]
        off, size = f.offset(arch), f.size(arch) * f.count
        into[off : off + size] = source[off : off + size]


# CONTEXT_ALIGN: the alignment NtContinue / NtRaiseException probe a CONTEXT with (WRK:
# sizeof(ULONG) on x86, 16 on x64); a misaligned one is STATUS_DATATYPE_MISALIGNMENT
CONTEXT_ALIGN = {"x86": 4, "x64": 16}


def check_context_alignment(arch_name: str, address: int) -> None:
    """The kernel's ProbeForRead of a user CONTEXT: refused when it is not CONTEXT_ALIGN'ed."""
    if address % CONTEXT_ALIGN[arch_name]:
        raise NtStatusError(NtStatus.DATATYPE_MISALIGNMENT, f"CONTEXT at 0x{address:x}")


def sanitize_eflags(arch_name: str, eflags: int) -> int:
    """EFLAGS as the kernel lets a user CONTEXT set them (IOPL, VM and the like never)."""
    return eflags & _EFLAGS_USER[arch_name] | _EFLAGS_IF | _EFLAGS_RESERVED


def apply_context(proc: ProcessCore, ctx: bytes, *, stepped: bool = False) -> int:
    """Load the parts of CONTEXT ``ctx`` its ContextFlags select into the CPU, as NtContinue
    does; returns the pc execution resumes at. ``stepped``: called from the hook of a
    ``syscall``/``sysenter`` after which Unicorn advances pc by 2 (aimed 2 bytes short)."""
    arch, cpu = proc.arch, proc.cpu
    name, x86 = arch.name, arch.ptr_size == 4
    flags = _get(proc, ctx, "ContextFlags")
    if flags & CONTEXT_INTEGER:
        for reg in _INTEGER[name]:
            cpu.set_reg(reg, _get(proc, ctx, reg.capitalize()))
    if flags & CONTEXT_SEGMENTS and x86:
        for seg in _DATA_SEGMENTS:
            selector = _get(proc, ctx, f"Seg{seg.capitalize()}") | 3  # user RPL, as Windows
            selector = 0 if selector == 3 else selector
            # a selector naming no user data descriptor would fault on the way back to user
            # mode; heapemu keeps the current one instead
            if selector not in _X86_SEGMENT_SELECTORS:
                continue
            if seg == "fs" and selector == SEL_TEB:  # this thread's TEB (see capture_context)
                selector = teb_selector(proc.threads.current.slot)
            if selector != cpu.reg(seg):
                cpu.set_reg(seg, selector)
    if flags & CONTEXT_FLOATING_POINT or (x86 and flags & CONTEXT_EXTENDED_REGISTERS):
        fx = bytearray(cpu.fx_state())
        off = CONTEXT.offset(arch, "FxSave")
        given = ctx[off : off + 512]
        if x86 and flags & CONTEXT_FLOATING_POINT:
            fsave_at = CONTEXT.offset(arch, "FloatSave")
            fx[:] = _fx_with_fsave(bytes(fx), ctx[fsave_at : fsave_at + 112])
        if not x86 or flags & CONTEXT_EXTENDED_REGISTERS:
            # x64 FLOATING_POINT: the whole FXSAVE image; x86 EXTENDED_REGISTERS: its SSE part
            lo, hi = (160, 288) if x86 else (0, 512)
            fx[lo:hi] = given[lo:hi]
            mxcsr = _get(proc, ctx, "MxCsr") & _MXCSR_USER
            struct.pack_into("<I", fx, 24, mxcsr)
        cpu.set_fx_state(bytes(fx))
    if flags & CONTEXT_DEBUG_REGISTERS:
        for dr in _DEBUG:
            cpu.set_reg(dr, _get(proc, ctx, dr.capitalize()))
    pc = cpu.pc + 2 if stepped else cpu.pc
    if flags & CONTEXT_CONTROL:
        for reg in _CONTROL[name]:
            if reg != arch.pc:
                cpu.set_reg(reg, _get(proc, ctx, reg.capitalize()))
        cpu.set_reg("eflags", sanitize_eflags(name, _get(proc, ctx, "EFlags")))
        pc = _get(proc, ctx, arch.pc.capitalize())
    cpu.pc = pc - 2 if stepped else pc
    return pc


def record_bytes(proc: ProcessCore, event: ExceptionEvent) -> bytes:
    """The EXCEPTION_RECORD of ``event`` (no nested record)."""
    arch = proc.arch
    values = {
        "ExceptionCode": event.code,
        "ExceptionFlags": event.flags,
        "ExceptionAddress": event.address,
        "NumberParameters": len(event.params),
    }
    buf = bytearray(EXCEPTION_RECORD.pack(arch, values))
    for i, value in enumerate(event.params):
        at = EXCEPTION_RECORD.address(arch, 0, "ExceptionInformation", i)
        struct.pack_into(arch.ptr_fmt, buf, at, value & arch.ptr_mask)
    return bytes(buf)


def read_record(proc: ProcessCore, read: Callable[[int, int], bytes], addr: int) -> ExceptionEvent:
    """An EXCEPTION_RECORD in emulated memory (``read`` probes like the kernel)."""
    arch = proc.arch
    raw = read(addr, EXCEPTION_RECORD.size(arch))
    code, flags = struct.unpack_from("<II", raw, 0)
    where = arch.unpack_ptr(raw, EXCEPTION_RECORD.offset(arch, "ExceptionAddress"))
    n = struct.unpack_from("<I", raw, EXCEPTION_RECORD.offset(arch, "NumberParameters"))[0]
    if n > EXCEPTION_MAXIMUM_PARAMETERS:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"{n} exception parameters")
    info = EXCEPTION_RECORD.offset(arch, "ExceptionInformation")
    params = tuple(arch.unpack_ptr(raw, info + i * arch.ptr_size) for i in range(n))
    return ExceptionEvent(code, where, params, flags, details={"record": addr})


def make_stack_room(proc: ProcessCore, low: int, high: int) -> tuple[bool, int | None]:
    """Commit the stack pages of [low, high) as the kernel's writes would (a guard page grows
    the stack). Returns whether the frame can be written there, and the page whose guard
    raised STATUS_STACK_OVERFLOW on the way (None: none did)."""
    overflow = None
    page = (high - 1) & ~(PAGE_SIZE - 1)
    while page >= low & ~(PAGE_SIZE - 1):
        state = proc.memory.page_state(page)
        if state and state & PAGE_GUARD:
            if touch_guard(proc, page)[1] is not None:
                overflow = page if overflow is None else overflow
            state = proc.memory.page_state(page)
        if not state or state & PAGE_GUARD or not proc.memory.is_accessible(page, 1, write=True):
            return False, overflow
        page -= PAGE_SIZE
    return True, overflow


def _as_stack_overflow(proc: ProcessCore, record: bytes, page: int) -> bytes:
    """The record of the STATUS_STACK_OVERFLOW the kernel's own write of a frame raised: as
    KiDispatchException does when copying the frame faults with it, the overflow is
    dispatched instead, at the original exception's address (WRK, KiDispatchException)."""
    arch = proc.arch
    address = arch.unpack_ptr(record, EXCEPTION_RECORD.offset(arch, "ExceptionAddress"))
    event = ExceptionEvent(NtStatus.STACK_OVERFLOW, address, (_ACCESS_CODE["write"], page))
    return record_bytes(proc, event)


def deliver(
    proc: ProcessCore,
    record: bytes,
    ctx: bytes,
    *,
    stepped: bool = False,
    event: ExceptionEvent | None = None,
) -> bool:
    """Write ``record`` and ``ctx`` onto the stack below the CONTEXT's stack pointer as the
    kernel does and point the CPU at KiUserExceptionDispatcher. False when the stack has no
    room for the frame (the exception cannot be delivered). When writing the frame ran into
    the stack's guaranteed area, STATUS_STACK_OVERFLOW is delivered instead (``event``, when
    given, is changed to it)."""
    arch, cpu = proc.arch, proc.cpu
    dispatcher = proc.exception_dispatcher
    assert dispatcher is not None
    sp = _get(proc, ctx, arch.sp.capitalize())
    if arch.ptr_size == 8:
        er_at = CONTEXT.size(arch) + CONTEXT_EX_SIZE
        frame_at = er_at + 0xA0  # the record, padded to 16 bytes
        new_sp = (sp - (frame_at + 0x30)) & ~0xF
        room, overflow = make_stack_room(proc, new_sp, sp)
        if not room:
            return False
        if overflow is not None:
            record = _as_stack_overflow(proc, record, overflow)
        context_ex = struct.pack("<iIiIiI", -0x4D0, 0x4F0, -0x4D0, 0x4D0, CONTEXT_EX_SIZE, 0)
        machine_frame = struct.pack(
            "<5Q",
            _get(proc, ctx, "Rip"),
            _get(proc, ctx, "SegCs"),
            _get(proc, ctx, "EFlags"),
            sp,
            _get(proc, ctx, "SegSs"),
        )
        frame = bytearray(frame_at + 0x30)
        frame[: len(ctx)] = ctx
        frame[len(ctx) : er_at] = context_ex
        frame[er_at : er_at + len(record)] = record
        frame[frame_at : frame_at + len(machine_frame)] = machine_frame
        proc.write(new_sp, bytes(frame))
    else:
        # only the ExceptionInformation slots in use are copied (an overflow has two, as the
        # faults it can replace)
        n = struct.unpack_from("<I", record, EXCEPTION_RECORD.offset(arch, "NumberParameters"))[0]
        used = EXCEPTION_RECORD.offset(arch, "ExceptionInformation") + 4 * min(n, 15)
        ctx_at = (sp & ~3) - len(ctx)
        er_at = ctx_at - used
        new_sp = er_at - 8
        room, overflow = make_stack_room(proc, new_sp, sp)
        if not room:
            return False
        if overflow is not None:
            record = _as_stack_overflow(proc, record, overflow)
            used = EXCEPTION_RECORD.offset(arch, "ExceptionInformation") + 4 * 2
            er_at = ctx_at - used
            new_sp = er_at - 8
            if not make_stack_room(proc, new_sp, sp)[0]:
                return False
        proc.write(new_sp, struct.pack("<II", er_at, ctx_at) + record[:used] + bytes(ctx))
    if overflow is not None and event is not None:
        event.code, event.params = NtStatus.STACK_OVERFLOW, (_ACCESS_CODE["write"], overflow)
    proc.memory.note_write(new_sp, sp - new_sp)  # write watches see the kernel's writes
    cpu.sp = new_sp
    # the kernel enters the dispatcher with TF and DF clear
    cpu.set_reg("eflags", cpu.reg("eflags") & ~(_EFLAGS_TF | _EFLAGS_DF) | _EFLAGS_RESERVED)
    cpu.pc = dispatcher - 2 if stepped else dispatcher
    return True


_STEPPED_INSTRUCTIONS = (b"\x0f\x05", b"\x0f\x34")  # syscall / sysenter


def stepped_system_call(proc: ProcessCore) -> bool:
    """Is a system call hook running for ``syscall``/``sysenter`` (Unicorn steps pc past it
    after the hook, 2 bytes), rather than ``int 0x2e`` (already stepped)?"""
    return proc.cpu.read(proc.cpu.pc, 2) in _STEPPED_INSTRUCTIONS
