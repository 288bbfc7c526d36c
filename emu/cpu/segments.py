"""Segment registers: the TEB behind fs (x86) and gs (x64).

x64: the GS base register is written directly. x86 (Unicorn's UC_MODE_32 ignores FS_BASE): a GDT
with flat code/data descriptors and a data descriptor whose base is the TEB. SS, DS and ES must be
loaded with the flat 32-bit data descriptor before FS: loading any selector recomputes the CPU's
flags from the SS descriptor cache, and Unicorn's reset SS cache is 16-bit, which would silently
turn the stack into a 16-bit SP (measured on Unicorn 2.1.4). Code runs at CPL 0, so SS uses a
ring-0 descriptor; DS, ES and FS carry Windows' user selectors 0x23 and 0x3B.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as ux

from emu.cpu.cpu import Cpu
from emu.win.ntdefs import PAGE_READONLY

# In x86 kernel space (above MmHighestUserAddress): invisible to the process's address space.
GDT_BASE = 0x80000000
SEL_CODE0, SEL_DATA0, SEL_CODE3, SEL_DATA3, SEL_TEB = 0x08, 0x10, 0x1B, 0x23, 0x3B


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """An 8-byte segment descriptor (Intel SDM vol. 3, 3.4.5)."""
    d = limit & 0xFFFF
    d |= (base & 0xFFFFFF) << 16
    d |= (access & 0xFF) << 40
    d |= ((limit >> 16) & 0xF) << 48
    d |= (flags & 0xF) << 52
    d |= ((base >> 24) & 0xFF) << 56
    return d


def setup_segments(cpu: Cpu, teb: int, teb_size: int) -> None:
    if cpu.arch.ptr_size == 8:
        cpu.uc.reg_write(ux.UC_X86_REG_GS_BASE, teb)
        return
    gdt = [0] * 8
    gdt[SEL_CODE0 >> 3] = descriptor(0, 0xFFFFF, 0x9B, 0xC)  # flat 4 GiB code, 32-bit, 4K gran
    gdt[SEL_DATA0 >> 3] = descriptor(0, 0xFFFFF, 0x93, 0xC)  # flat data, B=1 (32-bit stack)
    gdt[SEL_CODE3 >> 3] = descriptor(0, 0xFFFFF, 0xFB, 0xC)
    gdt[SEL_DATA3 >> 3] = descriptor(0, 0xFFFFF, 0xF3, 0xC)
    gdt[SEL_TEB >> 3] = descriptor(teb, teb_size - 1, 0xF3, 0x4)  # byte granular, 32-bit
    # Unicorn does not check privilege levels on memory: user code could reach this page, so
    # it is read-only (every descriptor is already marked accessed, the CPU never writes it)
    cpu.map_system(GDT_BASE, 0x1000, PAGE_READONLY)
    cpu.write(GDT_BASE, b"".join(struct.pack("<Q", d) for d in gdt))
    cpu.uc.reg_write(ux.UC_X86_REG_GDTR, (0, GDT_BASE, len(gdt) * 8 - 1, 0))
    cpu.uc.reg_write(ux.UC_X86_REG_SS, SEL_DATA0)
    cpu.uc.reg_write(ux.UC_X86_REG_DS, SEL_DATA3)
    cpu.uc.reg_write(ux.UC_X86_REG_ES, SEL_DATA3)
    cpu.uc.reg_write(ux.UC_X86_REG_CS, SEL_CODE0)
    cpu.uc.reg_write(ux.UC_X86_REG_FS, SEL_TEB)


# x86: the main thread's fs is SEL_TEB; other threads get a GDT entry each from slot 1 on (the
# GDT page holds 512 entries, the first 8 are the fixed ones above)
MAX_TEB_SLOTS = 0x1000 // 8 - 8


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
    index = teb_selector(slot) >> 3
    cpu.write(GDT_BASE + 8 * index, struct.pack("<Q", descriptor(teb, teb_size - 1, 0xF3, 0x4)))
    cpu.uc.reg_write(ux.UC_X86_REG_GDTR, (0, GDT_BASE, 0xFFF, 0))
    cpu.uc.reg_write(ux.UC_X86_REG_FS, teb_selector(slot))
