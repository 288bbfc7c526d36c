"""Handles (closing, duplicating), the instruction cache and NtContinue.

The synchronisation objects and waits are ``emu.nt.calls.sync``, threads ``emu.nt.calls.thread``.
"""

from __future__ import annotations

import struct

from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    PCONTEXT,
    PHANDLE,
    PVOID,
    SIZE_T,
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import KernelObject, Status

DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS = 0x1, 0x2

# CONTEXT: offsets of the integer registers, the stack pointer and the program counter
_CONTEXT_REGS = {
    "x64": {
        "rax": 0x78, "rcx": 0x80, "rdx": 0x88, "rbx": 0x90, "rsp": 0x98, "rbp": 0xA0,
        "rsi": 0xA8, "rdi": 0xB0, "r8": 0xB8, "r9": 0xC0, "r10": 0xC8, "r11": 0xD0,
        "r12": 0xD8, "r13": 0xE0, "r14": 0xE8, "r15": 0xF0, "rip": 0xF8,
    },
    "x86": {
        "edi": 0x9C, "esi": 0xA0, "ebx": 0xA4, "edx": 0xA8, "ecx": 0xAC, "eax": 0xB0,
        "ebp": 0xB4, "eip": 0xB8, "esp": 0xC4,
    },
}  # fmt: skip
_CONTEXT_EFLAGS = {"x64": 0x44, "x86": 0xC0}
_STEPPED_INSTRUCTIONS = (b"\x0f\x05", b"\x0f\x34")  # syscall / sysenter: Unicorn steps past


@syscall
def NtClose(k: Kernel, Handle: HANDLE) -> int:
    obj = k.proc.objects.close(Handle)
    k.details.update(kind=obj.kind, name=obj.name)
    return Status.SUCCESS


@syscall
def NtDuplicateObject(
    k: Kernel,
    SourceProcessHandle: HANDLE,
    SourceHandle: HANDLE,
    TargetProcessHandle: HANDLE,
    TargetHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    HandleAttributes: ULONG,
    Options: ULONG,
) -> int:
    k.check_process_handle(SourceProcessHandle)
    objects = k.proc.objects
    mask = k.arch.ptr_mask
    if SourceHandle in (-1 & mask, -2 & mask):  # NtCurrentProcess() / NtCurrentThread()
        current: KernelObject = (
            KernelObject("process", "<current>")
            if SourceHandle == -1 & mask
            else k.proc.threads.current
        )
        new = objects.insert(current)
    else:
        # DUPLICATE_SAME_ACCESS keeps the rights, otherwise the new handle gets DesiredAccess
        access = None if Options & DUPLICATE_SAME_ACCESS else DesiredAccess
        new = objects.duplicate(SourceHandle, access)
        if Options & DUPLICATE_CLOSE_SOURCE:
            objects.close(SourceHandle)
    if TargetHandle:
        k.write_ptr(TargetHandle, new)
    k.details.update(handle=new)
    return Status.SUCCESS


@syscall
def NtFlushInstructionCache(k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID,
                            Length: SIZE_T) -> int:  # fmt: skip
    """The range is probed like any user buffer (ProbeForRead): one outside user space is
    STATUS_ACCESS_VIOLATION; a NULL BaseAddress flushes everything."""
    k.check_process_handle(ProcessHandle)
    if not BaseAddress:
        k.proc.cpu.flush_translations()
    elif Length:
        k.probe_range(BaseAddress, Length)
        k.proc.cpu.invalidate_code(BaseAddress, Length)
    return Status.SUCCESS


@syscall
def NtContinue(k: Kernel, ContextRecord: PCONTEXT, TestAlert: BOOLEAN) -> int:
    """Resume at the CONTEXT's registers (integer registers, stack, pc, flags). The service
    returns the context's eax/rax (its low 32 bits: the dispatcher stores an NTSTATUS)."""
    arch = k.arch.name
    offsets = _CONTEXT_REGS[arch]
    ps = k.arch.ptr_size
    values = {r: k.read_ptr(ContextRecord + off) for r, off in offsets.items()}
    (eflags,) = struct.unpack("<I", k.read(ContextRecord + _CONTEXT_EFLAGS[arch], 4))
    cpu = k.proc.cpu
    pc_name, ret_name = k.arch.pc, k.arch.ret
    # Unicorn steps past a `syscall`/`sysenter` after its hook; int 0x2e has already been
    # stepped: aim so that execution resumes exactly at the context's pc
    stepped = cpu.read(cpu.pc, 2) in _STEPPED_INSTRUCTIONS
    for reg, value in values.items():
        if reg == pc_name:
            cpu.pc = value - 2 if stepped else value
        elif reg != ret_name:
            cpu.set_reg(reg, value)
    cpu.set_reg("eflags" if ps == 4 else "rflags", eflags | 0x2)
    target = values[pc_name]
    k.details.update(pc=target, sp=values[k.arch.sp], target=k.proc.symbolize(target))
    return values[ret_name]
