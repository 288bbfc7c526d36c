"""Handles (closing, duplicating), the instruction cache and NtContinue.

The synchronisation objects and waits are ``emu.nt.calls.sync``, threads ``emu.nt.calls.thread``.
"""

from __future__ import annotations

from emu.nt.apc import deliver_apc
from emu.nt.exceptions import apply_context, check_context_alignment, stepped_system_call
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
from emu.win.layouts import CONTEXT

DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS = 0x1, 0x2


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
    """Resume at the CONTEXT: the parts its ContextFlags select (control, integer, segments,
    floating point and SSE, debug registers), EFLAGS sanitised as the kernel does. The service
    returns the context's eax/rax (the dispatcher stores an NTSTATUS there)."""
    arch = k.arch
    check_context_alignment(arch.name, ContextRecord)
    ctx = k.read(ContextRecord, CONTEXT.size(arch))
    stepped = stepped_system_call(k.proc)
    pc = apply_context(k.proc, ctx, stepped=stepped)
    k.details.update(pc=pc, sp=k.proc.cpu.sp, target=k.proc.symbolize(pc))
    k.return_value = k.proc.cpu.reg(arch.ret)
    thread = k.proc.threads.current
    if thread.settle_stack and ContextRecord == thread.start_context and thread.stack:
        # Wine's thread start has cleared its stack and goes to the thread's code
        thread.settle_stack = False
        thread.stack.settle()
    if TestAlert and k.proc.threads.test_alert(thread) is not None and thread.apc_pending:
        # KeTestAlertThread: the next queued user APC runs before the context resumes
        k.details.update(apc=deliver_apc(k.proc, thread, stepped=stepped))
    return k.return_value & 0xFFFFFFFF
