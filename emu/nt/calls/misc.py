"""Handles, synchronisation objects, NtContinue and process exit, for a one-thread process.

With one thread nobody else can signal an object, so a wait on an unsignalled object with no
timeout would block forever: it ends the run with an EmulationError that says so. A wait with
a timeout times out at once (STATUS_TIMEOUT).

"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.errors import Fault, NtStatusError
from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    LONG,
    NTSTATUS,
    PCONTEXT,
    PHANDLE,
    PVOID,
    SIZE_T,
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import KernelObject, Status

STATUS_TIMEOUT = 0x102
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


@dataclass
class SyncObject(KernelObject):
    """An event, semaphore, mutant or keyed event."""

    signaled: int = 0  # events: 0/1; semaphores: the count; mutants: 1 when free
    auto_reset: bool = True
    maximum: int = 1


def _create(k: Kernel, handle_out: int, obj: SyncObject, ObjectAttributes: int) -> int:
    from emu.nt.objects import object_name

    if ObjectAttributes:
        _, obj.name = object_name(k, ObjectAttributes)
    handle = k.proc.objects.insert(obj)
    k.write_ptr(handle_out, handle)
    k.details.update(handle=handle, name=obj.name)
    return Status.SUCCESS


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
        kind = "process" if SourceHandle == -1 & mask else "thread"
        new = objects.insert(KernelObject(kind, "<current>"))
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
def NtCreateEvent(
    k: Kernel,
    EventHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    EventType: ULONG,
    InitialState: BOOLEAN,
) -> int:
    event = SyncObject("event", signaled=int(bool(InitialState)), auto_reset=EventType == 1)
    return _create(k, EventHandle, event, ObjectAttributes)


@syscall
def NtCreateKeyedEvent(
    k: Kernel, KeyedEventHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    Flags: ULONG,
) -> int:  # fmt: skip
    return _create(k, KeyedEventHandle, SyncObject("keyed event"), ObjectAttributes)


@syscall
def NtCreateMutant(
    k: Kernel, MutantHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    InitialOwner: BOOLEAN,
) -> int:  # fmt: skip
    return _create(
        k, MutantHandle, SyncObject("mutant", signaled=int(not InitialOwner)), ObjectAttributes
    )


@syscall
def NtCreateSemaphore(
    k: Kernel,
    SemaphoreHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    InitialCount: LONG,
    MaximumCount: LONG,
) -> int:
    semaphore = SyncObject("semaphore", signaled=InitialCount, maximum=MaximumCount)
    return _create(k, SemaphoreHandle, semaphore, ObjectAttributes)


def _previous(k: Kernel, out: int, value: int) -> None:
    if out:
        k.write_u32(out, value)


@syscall
def NtSetEvent(k: Kernel, EventHandle: HANDLE, PreviousState: PVOID) -> int:
    event = k.proc.objects.get(EventHandle, SyncObject)
    _previous(k, PreviousState, event.signaled)
    event.signaled = 1
    return Status.SUCCESS


@syscall
def NtResetEvent(k: Kernel, EventHandle: HANDLE, PreviousState: PVOID) -> int:
    event = k.proc.objects.get(EventHandle, SyncObject)
    _previous(k, PreviousState, event.signaled)
    event.signaled = 0
    return Status.SUCCESS


@syscall
def NtClearEvent(k: Kernel, EventHandle: HANDLE) -> int:
    k.proc.objects.get(EventHandle, SyncObject).signaled = 0
    return Status.SUCCESS


@syscall
def NtReleaseSemaphore(
    k: Kernel, SemaphoreHandle: HANDLE, ReleaseCount: LONG, PreviousCount: PVOID
) -> int:
    semaphore = k.proc.objects.get(SemaphoreHandle, SyncObject)
    if semaphore.signaled + ReleaseCount > semaphore.maximum:
        raise NtStatusError(0xC0000047, "semaphore limit exceeded")  # SEMAPHORE_LIMIT_EXCEEDED
    _previous(k, PreviousCount, semaphore.signaled)
    semaphore.signaled += ReleaseCount
    return Status.SUCCESS


@syscall
def NtReleaseMutant(k: Kernel, MutantHandle: HANDLE, PreviousCount: PVOID) -> int:
    mutant = k.proc.objects.get(MutantHandle, SyncObject)
    _previous(k, PreviousCount, mutant.signaled)
    mutant.signaled = 1
    return Status.SUCCESS


@syscall
def NtWaitForSingleObject(k: Kernel, Handle: HANDLE, Alertable: BOOLEAN, Timeout: PVOID) -> int:
    obj = k.proc.objects.get(Handle, KernelObject)
    k.details.update(kind=obj.kind, name=obj.name)
    if not isinstance(obj, SyncObject):
        return Status.SUCCESS  # files, tokens, ...: signalled
    if obj.signaled:
        if obj.kind in ("semaphore", "mutant") or obj.auto_reset:
            obj.signaled -= 1 if obj.kind == "semaphore" else obj.signaled
        return Status.SUCCESS
    if Timeout:
        return STATUS_TIMEOUT
    k.proc.cpu.raise_fault(
        Fault(
            "wait that can never end",
            pc=k.proc.cpu.pc,
            detail=f"the only thread waits without a timeout on an unsignalled {obj.kind}",
        )
    )
    return Status.SUCCESS


@syscall
def NtYieldExecution(k: Kernel) -> int:
    return Status.SUCCESS


@syscall
def NtDelayExecution(k: Kernel, Alertable: BOOLEAN, DelayInterval: PVOID) -> int:
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


# The flags user mode may set through a CONTEXT (SANITIZE_EFLAGS / Ke386SanitizeFlags): x64
# EFLAGS_USER_SANITIZE 0x40DD5 (CF PF AF ZF SF TF DF OF AC); x86 0x3F4DD7 (also NT, RF, ID, VIF,
# VIP; VM only for a VDM, which this process is not). IF is forced on; IOPL stays 0.
_EFLAGS_USER = {8: 0x40DD5, 4: 0x3F4DD7 & ~0x20000}
_EFLAGS_IF, _EFLAGS_RESERVED = 0x200, 0x2


def _sanitize_eflags(eflags: int, ptr_size: int) -> int:
    return (eflags & _EFLAGS_USER[ptr_size]) | _EFLAGS_IF | _EFLAGS_RESERVED


@syscall
def NtContinue(k: Kernel, ContextRecord: PCONTEXT, TestAlert: BOOLEAN) -> int:
    """Resume at the CONTEXT's registers (integer registers, stack, pc, flags as the kernel
    sanitises them: only what user mode may set). The service
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
    cpu.set_reg("eflags" if ps == 4 else "rflags", _sanitize_eflags(eflags, ps))
    target = values[pc_name]
    k.details.update(pc=target, sp=values[k.arch.sp], target=k.proc.symbolize(target))
    return values[ret_name]


@syscall
def NtTerminateThread(k: Kernel, ThreadHandle: HANDLE, ExitStatus: NTSTATUS) -> int:
    """NULL: every other thread (there is none). The current thread: as it is the only one,
    the process ends with its status."""
    k.details.update(exit_status=ExitStatus)
    if ThreadHandle == 0:
        return Status.SUCCESS
    k.proc.exit_status = ExitStatus
    k.proc.cpu.stop("process terminated")
    return Status.SUCCESS
