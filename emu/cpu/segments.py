"""Segments and privilege: a Windows-like GDT, user mode (CPL 3), and the TEB behind fs/gs.

Emulated code runs at CPL 3, as user mode does on Windows, so the CPU itself refuses privileged
instructions (``cli``, ``hlt``, ``mov cr0``, ``rdmsr``, ``lgdt``, ``in``/``out`` without an
I/O permission bitmap, ...) with a general-protection fault, which the process reports as
STATUS_PRIVILEGED_INSTRUCTION. The GDT holds Windows' selectors (KGDT_* / KGDT64_*): ring-0
code and data (used once, to enter user mode), ring-3 code and data, and the TEB's segment on
x86. No 32-bit code segment on x64: a far jump into compatibility mode faults instead of
running WOW64 code the 64-bit engine cannot decode. There is no IDT: Unicorn hands every
interrupt and exception to the interrupt hook, so system calls (``syscall``, ``sysenter``,
``int 0x2e``) work at CPL 3 unchanged.

User mode is entered once, at creation, by an ``iret`` from a ring-0 stub (Unicorn cannot load
a ring-3 SS through a register write at CPL 0: the CPU's own checks refuse it). The privilege
level lives in the CPU's hidden flags and survives every later run, context save and restore.

x86 (Unicorn's UC_MODE_32 ignores FS_BASE): FS is a data descriptor based at the TEB. SS, DS and
ES are loaded with flat 32-bit descriptors before FS: loading any selector recomputes the CPU's
flags from the SS descriptor cache, and Unicorn's reset SS cache is 16-bit, which would silently
turn the stack into a 16-bit SP (measured on Unicorn 2.1.4). x64: the GS base is the TEB.

``user_state`` is what every call starts from: the ABI's flags, x87 and SSE control words and
the selectors and bases above, whatever code left. The call gate resets part of it on every
call and checks the rest (emu.cpu.callgate); emu.process.core writes all of it in one batch
when a check failed, a run did not return cleanly or registers were written from outside.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as ux

from emu.cpu.cpu import Cpu
from emu.win.ntdefs import PAGE_EXECUTE_READ

# x86 selectors (KGDT_R0_CODE, KGDT_R0_DATA, KGDT_R3_CODE | 3, KGDT_R3_DATA | 3, KGDT_R3_TEB | 3)
SEL_CODE0, SEL_DATA0, SEL_CODE3, SEL_DATA3, SEL_TEB = 0x08, 0x10, 0x1B, 0x23, 0x3B
# x64 selectors (KGDT64_R0_CODE, KGDT64_R0_DATA, KGDT64_R3_DATA | 3, KGDT64_R3_CODE | 3,
# KGDT64_R3_CMTEB | 3)
SEL64_CODE0, SEL64_DATA0, SEL64_DATA3, SEL64_CODE3, SEL64_FS = 0x10, 0x18, 0x2B, 0x33, 0x53

# The flags every call starts with: IF and the reserved bit 1; DF, TF, AC, NT, IOPL clear
USER_EFLAGS = 0x202
# Windows' floating-point state at a function's entry: x87 control word 0x27F (53-bit
# precision, all exceptions masked), empty register stack, MXCSR 0x1F80 (all masked, round
# to nearest); see "x64 calling convention: MXCSR / x87 FPU" in Microsoft's ABI documentation
USER_FPCW, USER_MXCSR = 0x27F, 0x1F80
_EFLAGS_IF = 0x200

# The GDT fills the first of its two pages (512 descriptors: on x86 every thread's fs has one,
# from slot 1 on after the 8 fixed ones); the second holds the iret frame and stub that enter
# user mode (offsets from the GDT's base)
_GDT, _FRAME, _STUB, _USER_ENTRY = 0x000, 0x1100, 0x1200, 0x1280
_GDT_LIMIT = 0xFFF
MAX_TEB_SLOTS = 0x1000 // 8 - 8


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """An 8-byte segment descriptor (Intel SDM vol. 3, 3.4.5)."""
    d = limit & 0xFFFF
    d |= (base & 0xFFFFFF) << 16
    d |= (access & 0xFF) << 40
    d |= ((limit >> 16) & 0xF) << 48
    d |= (flags & 0xF) << 52
    d |= ((base >> 24) & 0xFF) << 56
    return d


def _gdt(ptr_size: int, teb: int, teb_size: int) -> list[int]:
    # access: 0x9B/0xFB code ring 0/3 (present, readable, accessed), 0x93/0xF3 data (writable);
    # flags: 0xC = 4 KiB granular, 32-bit; 0xA = 4 KiB granular, 64-bit code (L); 0x4 = bytes
    gdt = [0] * 16
    if ptr_size == 8:
        gdt[SEL64_CODE0 >> 3] = descriptor(0, 0xFFFFF, 0x9B, 0xA)
        gdt[SEL64_DATA0 >> 3] = descriptor(0, 0xFFFFF, 0x93, 0xC)
        gdt[SEL64_DATA3 >> 3] = descriptor(0, 0xFFFFF, 0xF3, 0xC)
        gdt[SEL64_CODE3 >> 3] = descriptor(0, 0xFFFFF, 0xFB, 0xA)
        gdt[SEL64_FS >> 3] = descriptor(0, 0xFFF, 0xF3, 0x4)  # WOW64's TEB32 segment: unused
    else:
        gdt[SEL_CODE0 >> 3] = descriptor(0, 0xFFFFF, 0x9B, 0xC)
        gdt[SEL_DATA0 >> 3] = descriptor(0, 0xFFFFF, 0x93, 0xC)  # B=1: a 32-bit stack
        gdt[SEL_CODE3 >> 3] = descriptor(0, 0xFFFFF, 0xFB, 0xC)
        gdt[SEL_DATA3 >> 3] = descriptor(0, 0xFFFFF, 0xF3, 0xC)
        gdt[SEL_TEB >> 3] = descriptor(teb, teb_size - 1, 0xF3, 0x4)
    return gdt


def user_state(cpu: Cpu, teb: int) -> list[tuple[int, int]]:
    """(Unicorn register id, value) pairs every call starts from, in the order to write them:
    selectors before the GS base they reload; flags; the x87 and SSE control state."""
    if cpu.arch.ptr_size == 8:
        segs = [(ux.UC_X86_REG_SS, SEL64_DATA3), (ux.UC_X86_REG_DS, SEL64_DATA3)]
        segs += [(ux.UC_X86_REG_ES, SEL64_DATA3), (ux.UC_X86_REG_FS, SEL64_FS)]
        segs += [(ux.UC_X86_REG_GS, SEL64_DATA3), (ux.UC_X86_REG_GS_BASE, teb)]
        segs += [(ux.UC_X86_REG_FS_BASE, 0)]
        flags = ux.UC_X86_REG_RFLAGS
    else:
        segs = [(ux.UC_X86_REG_SS, SEL_DATA3), (ux.UC_X86_REG_DS, SEL_DATA3)]
        segs += [(ux.UC_X86_REG_ES, SEL_DATA3), (ux.UC_X86_REG_FS, SEL_TEB)]
        segs += [(ux.UC_X86_REG_GS, 0)]
        flags = ux.UC_X86_REG_EFLAGS
    fpu = [(ux.UC_X86_REG_FPCW, USER_FPCW), (ux.UC_X86_REG_FPSW, 0)]
    fpu += [(ux.UC_X86_REG_FPTAG, 0xFFFF), (ux.UC_X86_REG_MXCSR, USER_MXCSR)]
    return [*segs, (flags, USER_EFLAGS), *fpu]


def setup_segments(cpu: Cpu, teb: int, teb_size: int, gdt_base: int) -> None:
    """Build the GDT in a page at ``gdt_base`` (outside the process's address space) and enter
    user mode; the segment registers then hold the process's user selectors."""
    x64 = cpu.arch.ptr_size == 8
    ps = cpu.arch.ptr_size
    gdt = _gdt(ps, teb, teb_size)
    page = bytearray(0x2000)
    page[_GDT : _GDT + 8 * len(gdt)] = b"".join(struct.pack("<Q", d) for d in gdt)
    code3, data3 = (SEL64_CODE3, SEL64_DATA3) if x64 else (SEL_CODE3, SEL_DATA3)
    # the iret frame: pc, cs, flags, sp, ss (read-only is enough: iret only reads it)
    frame = (gdt_base + _USER_ENTRY, code3, USER_EFLAGS, gdt_base + _FRAME, data3)
    page[_FRAME : _FRAME + 5 * ps] = struct.pack(f"<5{'Q' if x64 else 'I'}", *frame)
    if x64:  # movabs rsp, frame; iretq
        stub = b"\x48\xbc" + struct.pack("<Q", gdt_base + _FRAME) + b"\x48\xcf"
    else:  # mov esp, frame; iretd
        stub = b"\xbc" + struct.pack("<I", gdt_base + _FRAME) + b"\xcf"
    page[_STUB : _STUB + len(stub)] = stub
    # Unicorn does not check privilege levels on memory: user code could reach this page, so
    # it is read-only (every descriptor is already marked accessed, the CPU never writes it)
    cpu.map_system(gdt_base, 0x2000, PAGE_EXECUTE_READ)
    cpu.write(gdt_base, bytes(page))
    uc = cpu.uc
    uc.reg_write(ux.UC_X86_REG_GDTR, (0, gdt_base, _GDT_LIMIT, 0))
    if not x64:
        uc.reg_write(ux.UC_X86_REG_SS, SEL_DATA0)
        uc.reg_write(ux.UC_X86_REG_CS, SEL_CODE0)
    cpu.run(gdt_base + _STUB, gdt_base + _USER_ENTRY)
    if cpu.fault is not None or cpu.pc != gdt_base + _USER_ENTRY or cpu.cpl != 3:
        raise RuntimeError(f"entering user mode failed: {cpu.fault} at 0x{cpu.pc:x}")
    cpu.write_registers(user_state(cpu, teb))
    # Unicorn's exit for every later run (Cpu.run): inside the GDT, a supervisor page of
    # descriptors no code runs from (and whose bytes before it no block holds)
    cpu.run_exit = gdt_base + _GDT + 0x800


def teb_selector(slot: int) -> int:
    """x86: the fs selector of the thread with TEB descriptor ``slot`` (0: the main thread)."""
    return ((SEL_TEB >> 3 if slot == 0 else 7 + slot) << 3) | 3


def set_thread_teb(cpu: Cpu, teb: int, teb_size: int, slot: int) -> None:
    """Point the current thread's fs (x86) / gs base (x64) at ``teb``. On x86 each thread has a
    descriptor of its own (``slot``, 0 = the main thread's SEL_TEB), so a saved CPU context
    keeps a selector that still means its own TEB if code reloads fs."""
    if cpu.arch.ptr_size == 8:
        cpu.uc.reg_write(ux.UC_X86_REG_GS_BASE, teb)
        return
    if not 0 <= slot <= MAX_TEB_SLOTS:
        raise ValueError(f"TEB descriptor slot {slot} is outside the GDT (0..{MAX_TEB_SLOTS})")
    _, gdt_base, _, _ = cpu.uc.reg_read(ux.UC_X86_REG_GDTR)
    selector = teb_selector(slot)
    cpu.write(
        gdt_base + (selector & ~7), struct.pack("<Q", descriptor(teb, teb_size - 1, 0xF3, 0x4))
    )
    cpu.uc.reg_write(ux.UC_X86_REG_FS, selector)
