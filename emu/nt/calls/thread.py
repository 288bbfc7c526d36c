"""Thread system calls: creation, suspension, termination, sleeping, yielding, alerts.

Wine 8.0's kernelbase!CreateRemoteThreadEx goes through ntdll!RtlCreateUserThread, which
calls NtCreateThreadEx with THREAD_CREATE_FLAGS_CREATE_SUSPENDED and then NtResumeThread.
Wine's critical sections, SRW locks and condition variables wait through RtlWaitOnAddress,
i.e. NtWaitForAlertByThreadId / NtAlertThreadByThreadId (and a semaphore for critical
sections without debug info). Keyed events are ``emu.nt.calls.sync``.
"""

from __future__ import annotations

import struct

from emu.errors import NtStatusError
from emu.nt.apc import apc_dispatcher, deliver_apc
from emu.nt.calls.sync import deadline, wait
from emu.nt.exceptions import (
    apply_context,
    capture_context,
    check_context_alignment,
    merge_context,
    stepped_system_call,
)
from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    NTSTATUS,
    PCONTEXT,
    PHANDLE,
    PROCESS_ID,
    PULONG,
    PVOID,
    SIZE_T,
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import Status
from emu.nt.stack import ThreadStack
from emu.nt.sync import Wait
from emu.nt.threads import Thread
from emu.win.layouts import CONTEXT, CONTEXT_ARCH_BIT

THREAD_CREATE_FLAGS_CREATE_SUSPENDED = 0x1
PS_ATTRIBUTE_CLIENT_ID, PS_ATTRIBUTE_TEB_ADDRESS = 0x10003, 0x10004
MAXIMUM_SUSPEND_COUNT = 127  # winnt.h


def thread_of(k: Kernel, handle: int) -> Thread:
    """The thread behind a handle or NtCurrentThread() (-2)."""
    if handle == -2 & k.arch.ptr_mask:
        return k.proc.threads.current
    return k.proc.objects.get(handle, Thread)


def _write_attributes(k: Kernel, attributes: int, thread: Thread) -> None:
    """PS_ATTRIBUTE_LIST {SIZE_T TotalLength; PS_ATTRIBUTE Attributes[]}, each attribute
    {ULONG_PTR Attribute; SIZE_T Size; PVOID ValuePtr; PSIZE_T ReturnLength}: the outputs
    asked for (the client id, the TEB address)."""
    n = k.arch.ptr_size
    total = k.read_ptr(attributes)
    if total < n or total > 0x1000:
        raise NtStatusError(Status.INVALID_PARAMETER, f"PS_ATTRIBUTE_LIST of {total} bytes")
    for entry in range(attributes + n, attributes + total - 4 * n + 1, 4 * n):
        kind, size, value, returned = (k.read_ptr(entry + i * n) for i in range(4))
        if kind == PS_ATTRIBUTE_CLIENT_ID:
            data = k.arch.pack_ptr(PROCESS_ID) + k.arch.pack_ptr(thread.tid)  # CLIENT_ID
        elif kind == PS_ATTRIBUTE_TEB_ADDRESS:
            data = k.arch.pack_ptr(thread.teb)
        else:
            continue  # inputs (stack sizes, image names...) that change nothing here
        k.write(value, data[:size])
        if returned:
            k.write_ptr(returned, min(size, len(data)))


@syscall
def NtCreateThreadEx(
    k: Kernel,
    ThreadHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    ProcessHandle: HANDLE,
    StartRoutine: PVOID,
    Argument: PVOID,
    CreateFlags: ULONG,
    ZeroBits: SIZE_T,
    StackSize: SIZE_T,
    MaximumStackSize: SIZE_T,
    AttributeList: PVOID,
) -> int:
    """A thread of this process that will run ``StartRoutine(Argument)`` through ntdll's
    thread start (``emu.nt.threads``); a stack of MaximumStackSize reserved, StackSize
    committed (``emu.nt.stack.thread_stack_sizes``: 0 is the image's), under ZeroBits."""
    from emu.nt.calls.memory import zero_bits_limit

    k.check_process_handle(ProcessHandle)
    k.write_ptr(ThreadHandle, 0)  # probe the out-parameter before anything is made
    # ZeroBits bounds the stack as NtAllocateVirtualMemory's does (a mask on x86 is
    # STATUS_INVALID_PARAMETER_3: ntdll/tests virtual.c test_RtlCreateUserStack)
    highest = zero_bits_limit(k, ZeroBits, 3)
    sched = k.proc.threads
    thread = sched.create_thread(
        StartRoutine,
        Argument,
        suspended=bool(CreateFlags & THREAD_CREATE_FLAGS_CREATE_SUSPENDED),
        commit=StackSize,
        reserve=MaximumStackSize,
        highest=highest,
    )
    handle = k.proc.objects.insert(thread)
    k.write_ptr(ThreadHandle, handle)
    if AttributeList:
        _write_attributes(k, AttributeList, thread)
    k.details.update(handle=handle, tid=thread.tid, teb=thread.teb, start=StartRoutine)
    if thread.ready:
        sched.request_switch()  # a scheduling point: the new thread may run first
    return Status.SUCCESS


def _suspend_count(k: Kernel, out: int, value: int) -> None:
    if out:
        k.write_u32(out, value)


@syscall
def NtResumeThread(k: Kernel, ThreadHandle: HANDLE, PreviousSuspendCount: PULONG) -> int:
    thread = thread_of(k, ThreadHandle)
    _suspend_count(k, PreviousSuspendCount, thread.suspend_count)
    if thread.suspend_count:
        thread.suspend_count -= 1
        if thread.ready:
            k.proc.threads.request_switch()
    return Status.SUCCESS


@syscall
def NtSuspendThread(k: Kernel, ThreadHandle: HANDLE, PreviousSuspendCount: PULONG) -> int:
    thread = thread_of(k, ThreadHandle)
    if thread.terminated:
        raise NtStatusError(Status.THREAD_IS_TERMINATING, f"thread 0x{thread.tid:x} has ended")
    if thread.suspend_count >= MAXIMUM_SUSPEND_COUNT:
        raise NtStatusError(Status.SUSPEND_COUNT_EXCEEDED, f"thread 0x{thread.tid:x}")
    _suspend_count(k, PreviousSuspendCount, thread.suspend_count)
    thread.suspend_count += 1
    if thread is k.proc.threads.current:
        k.proc.threads.request_switch()
    return Status.SUCCESS


@syscall
def NtTerminateThread(k: Kernel, ThreadHandle: HANDLE, ExitStatus: NTSTATUS) -> int:
    """End a thread with ExitStatus. NULL means the calling thread unless it is the last one
    (Status.CANT_TERMINATE_SELF: it must end the process instead). When the last thread ends,
    the process ends with its status."""
    sched = k.proc.threads
    k.details.update(exit_status=ExitStatus)
    if ThreadHandle == 0:
        if len(sched.live()) == 1:
            raise NtStatusError(Status.CANT_TERMINATE_SELF, "the last thread")
        thread = sched.current
    else:
        thread = thread_of(k, ThreadHandle)
    k.details.update(tid=thread.tid)
    sched.terminate(thread, ExitStatus)
    if not sched.live():
        k.proc.exit_status = ExitStatus
        k.proc.cpu.stop("process terminated")
    return Status.SUCCESS


@syscall
def NtOpenThread(
    k: Kernel, ThreadHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    ClientId: PVOID,
) -> int:  # fmt: skip
    """A handle to a thread of this process by its id (CLIENT_ID.UniqueThread)."""
    if not ClientId:
        raise NtStatusError(Status.INVALID_PARAMETER, "no CLIENT_ID")
    tid = k.read_ptr(ClientId + k.arch.ptr_size)
    thread = k.proc.threads.by_tid(tid)
    if thread is None:
        raise NtStatusError(Status.INVALID_CID, f"no thread 0x{tid:x}")
    handle = k.proc.objects.insert(thread)
    k.write_ptr(ThreadHandle, handle)
    k.details.update(handle=handle, tid=tid)
    return Status.SUCCESS


@syscall
def NtYieldExecution(k: Kernel) -> int:
    """Let another ready thread run: Status.NO_YIELD_PERFORMED when there is none."""
    sched = k.proc.threads
    others = [t for t in sched.live() if t.ready and t is not sched.current]
    if not others:
        return Status.NO_YIELD_PERFORMED
    sched.request_switch(yielding=True)
    return Status.SUCCESS


@syscall
def NtDelayExecution(k: Kernel, Alertable: BOOLEAN, DelayInterval: PVOID) -> int:
    """Sleep on the scheduler's clock; a zero interval yields (Sleep(0)). Alertable: queued
    user APCs run first and end the sleep (STATUS_USER_APC), as does NtAlertThread
    (STATUS_ALERTED); one queued while it sleeps wakes it."""
    sched = k.proc.threads
    # NULL sleeps forever: Wine's kernelbase!SleepEx passes NULL for INFINITE (Wine's
    # NtDelayExecution waits forever then; Windows' SleepEx passes a pointer to a huge value)
    until = deadline(k, DelayInterval)
    if until is not None and until <= sched.clock():
        if Alertable:  # Sleep(0) alertable (SleepEx(0, TRUE)): the APCs run, if any
            status = wait(k, Wait(deadline=until, timeout_status=Status.SUCCESS, alertable=True))
            if status != Status.SUCCESS:
                return status
        if any(t.ready and t is not sched.current for t in sched.threads):
            sched.request_switch(yielding=True)
        return Status.SUCCESS
    return wait(k, Wait(deadline=until, timeout_status=Status.SUCCESS, alertable=bool(Alertable)))


@syscall
def NtWaitForAlertByThreadId(k: Kernel, Address: PVOID, Timeout: PVOID) -> int:
    """Block until NtAlertThreadByThreadId names this thread (STATUS_ALERTED; at once if it
    already did) or the timeout ends (STATUS_TIMEOUT). Address is only a hint."""
    k.details.update(address=Address)
    return wait(k, Wait(alert=True, deadline=deadline(k, Timeout)))


@syscall
def NtAlertThreadByThreadId(k: Kernel, ThreadId: HANDLE) -> int:
    thread = k.proc.threads.by_tid(ThreadId)
    if thread is None:
        raise NtStatusError(Status.INVALID_CID, f"no thread 0x{ThreadId:x}")
    k.details.update(tid=ThreadId)
    k.proc.threads.alert(thread)
    return Status.SUCCESS


# ---------------------------------------------------------------------- user APCs and alerts
def _queue_apc(k: Kernel, handle: int, routine: int, args: tuple[int, int, int]) -> int:
    thread = thread_of(k, handle)
    if apc_dispatcher(k.proc) is None:
        raise NtStatusError(Status.NOT_SUPPORTED, "APCs run through Wine's ntdll, not loaded")
    if thread.terminated:  # KeInsertQueueApc refuses a thread that has ended
        raise NtStatusError(Status.UNSUCCESSFUL, f"thread 0x{thread.tid:x} has ended")
    k.details.update(tid=thread.tid, routine=routine)
    k.proc.threads.queue_apc(thread, (routine, *args))
    return Status.SUCCESS


@syscall
def NtQueueApcThread(
    k: Kernel, ThreadHandle: HANDLE, ApcRoutine: PVOID, ApcArgument1: PVOID,
    ApcArgument2: PVOID, ApcArgument3: PVOID,
) -> int:  # fmt: skip
    """Queue a user APC ``ApcRoutine(ApcArgument1, 2, 3)`` to a thread (``emu.nt.apc``): it
    runs when the thread next waits alertably or calls NtTestAlert. (Wine's QueueUserAPC
    queues kernelbase's call_user_apc with the program's routine and data as arguments 1
    and 2.)"""
    return _queue_apc(k, ThreadHandle, ApcRoutine, (ApcArgument1, ApcArgument2, ApcArgument3))


@syscall
def NtQueueApcThreadEx(
    k: Kernel, ThreadHandle: HANDLE, ReserveHandle: HANDLE, ApcRoutine: PVOID,
    ApcArgument1: PVOID, ApcArgument2: PVOID, ApcArgument3: PVOID,
) -> int:  # fmt: skip
    """NtQueueApcThread with a reserve object (NtAllocateReserveObject) for the APC: with
    none (NULL) it is NtQueueApcThread. heapemu makes no reserve objects, so any other value
    names no object of that type (Wine 8.0's ntdll neither exports nor calls this service)."""
    if ReserveHandle:
        raise NtStatusError(Status.INVALID_HANDLE, f"reserve handle 0x{ReserveHandle:x}")
    return _queue_apc(k, ThreadHandle, ApcRoutine, (ApcArgument1, ApcArgument2, ApcArgument3))


@syscall
def NtTestAlert(k: Kernel) -> int:
    """STATUS_ALERTED when NtAlertThread alerted this thread (the alert is consumed, no APC
    runs); else the queued user APCs run before the call returns STATUS_SUCCESS."""
    sched = k.proc.threads
    thread = sched.current
    status = sched.test_alert(thread)
    if status == Status.ALERTED:
        return status
    if thread.apc_pending:
        stepped = stepped_system_call(k.proc)
        k.details.update(apc=deliver_apc(k.proc, thread, status=Status.SUCCESS, stepped=stepped))
    return Status.SUCCESS


@syscall
def NtAlertThread(k: Kernel, ThreadHandle: HANDLE) -> int:
    """Alert a thread: its alertable wait ends with STATUS_ALERTED, or its next one (or
    NtTestAlert) does."""
    thread = thread_of(k, ThreadHandle)
    k.details.update(tid=thread.tid)
    k.proc.threads.alert_thread(thread)
    return Status.SUCCESS


@syscall
def NtAlertResumeThread(k: Kernel, ThreadHandle: HANDLE, PreviousSuspendCount: PULONG) -> int:
    """NtAlertThread, then NtResumeThread (the previous suspend count returned)."""
    thread = thread_of(k, ThreadHandle)
    k.proc.threads.alert_thread(thread)
    return NtResumeThread(k, ThreadHandle, PreviousSuspendCount)


# ---------------------------------------------------------------------- thread contexts
def _context_of(k: Kernel, thread: Thread) -> bytes:
    """The thread's whole CONTEXT: the CPU's state for the calling thread (at the return from
    this call), the saved state of a switched-out thread, the start CONTEXT of one that never
    ran (Windows shows RtlUserThreadStart with the start routine and its argument in
    rcx/rdx, eax/ebx: what LdrInitializeThunk will continue into)."""
    proc, sched = k.proc, k.proc.threads
    if thread is sched.current:
        ctx = bytearray(capture_context(proc))
        if stepped_system_call(proc):  # the hook sees pc on `syscall`/`sysenter`
            f = CONTEXT.fields[k.arch.pc.capitalize()]
            struct.pack_into(f.fmt(k.arch), ctx, f.offset(k.arch), proc.cpu.pc + 2)
        return bytes(ctx)
    if thread.start_registers is not None:
        return k.read(thread.start_context, CONTEXT.size(k.arch))
    if thread.context is None:  # it has ended: no state left to read
        raise NtStatusError(Status.UNSUCCESSFUL, f"thread 0x{thread.tid:x} has ended")
    return sched.on_cpu(thread, lambda: capture_context(proc))


def _selected(k: Kernel, flags: int) -> int:
    """The ContextFlags the kernel acts on: winnt.h's CONTEXT_CONTROL etc. include the
    architecture's bit (CONTEXT_i386 / CONTEXT_AMD64) and KeContextFromKframes /
    KeContextToKframes test ``(flags & CONTEXT_X) == CONTEXT_X``, so without that bit no part
    is selected."""
    return flags if flags & CONTEXT_ARCH_BIT[k.arch.name] else 0


@syscall
def NtGetContextThread(k: Kernel, ThreadHandle: HANDLE, ThreadContext: PCONTEXT) -> int:
    """Fill the parts of the CONTEXT its ContextFlags select with the thread's registers."""
    check_context_alignment(k.arch.name, ThreadContext)
    size = CONTEXT.size(k.arch)
    out = bytearray(k.read(ThreadContext, size))
    k.probe(ThreadContext, size, write=True)
    flags = _selected(k, struct.unpack_from("<I", out, CONTEXT.offset(k.arch, "ContextFlags"))[0])
    thread = thread_of(k, ThreadHandle)
    merge_context(k.proc, out, _context_of(k, thread), flags)
    k.write(ThreadContext, bytes(out))
    k.details.update(tid=thread.tid, flags=flags)
    return Status.SUCCESS


@syscall
def NtSetContextThread(k: Kernel, ThreadHandle: HANDLE, ThreadContext: PCONTEXT) -> int:
    """Load the parts of the CONTEXT its ContextFlags select into the thread, as NtContinue
    does (EFLAGS sanitised); the calling thread returns from this call into it."""
    check_context_alignment(k.arch.name, ThreadContext)
    proc, sched = k.proc, k.proc.threads
    given = k.read(ThreadContext, CONTEXT.size(k.arch))
    flags_at = CONTEXT.offset(k.arch, "ContextFlags")
    flags = _selected(k, struct.unpack_from("<I", given, flags_at)[0])
    thread = thread_of(k, ThreadHandle)
    k.details.update(tid=thread.tid, flags=flags)
    if not flags:
        return Status.SUCCESS
    if thread is sched.current:
        apply_context(proc, given, stepped=stepped_system_call(proc))
    elif thread.start_registers is not None:  # not started: its start CONTEXT changes
        start = bytearray(_context_of(k, thread))
        merge_context(proc, start, given, flags)
        merged = struct.unpack_from("<I", start, flags_at)[0] | flags & 0x3F
        struct.pack_into("<I", start, flags_at, merged | CONTEXT_ARCH_BIT[k.arch.name])
        k.write(thread.start_context, bytes(start))
    elif thread.context is None:
        raise NtStatusError(Status.UNSUCCESSFUL, f"thread 0x{thread.tid:x} has ended")
    else:
        sched.on_cpu(thread, lambda: apply_context(proc, given), keep=True)
    return Status.SUCCESS


@syscall
def NtCreateThread(
    k: Kernel, ThreadHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    ProcessHandle: HANDLE, ClientId: PVOID, ThreadContext: PCONTEXT, InitialTeb: PVOID,
    CreateSuspended: BOOLEAN,
) -> int:  # fmt: skip
    """The old thread creation: the caller gives the stack (INITIAL_TEB {OldStackBase,
    OldStackLimit, StackBase, StackLimit, StackAllocationBase}; with StackBase and StackLimit
    NULL the old fixed stack) and the initial CONTEXT; the thread runs LdrInitializeThunk and
    continues into the CONTEXT (``Scheduler.create_thread``). The stack stays its creator's.
    Wine 8.0's kernelbase never calls it (its ntdll's own NtCreateThread is a stub)."""
    k.check_process_handle(ProcessHandle)
    if not ThreadContext or not InitialTeb:
        raise NtStatusError(Status.INVALID_PARAMETER, "no CONTEXT or no INITIAL_TEB")
    check_context_alignment(k.arch.name, ThreadContext)
    k.write_ptr(ThreadHandle, 0)  # probe the out-parameter before anything is made
    ctx = k.read(ThreadContext, CONTEXT.size(k.arch))
    n = k.arch.ptr_size
    old_base, old_limit, base, limit, bottom = (k.read_ptr(InitialTeb + i * n) for i in range(5))
    if not base and not limit:  # a fixed stack: only its old-style bounds
        base, limit, bottom = old_base, old_limit, old_limit
    if not (k.arch.user_min <= bottom <= limit < base <= k.arch.user_max + 1):
        raise NtStatusError(Status.INVALID_PARAMETER, f"stack 0x{bottom:x}-0x{base:x}")
    sched = k.proc.threads
    pc = struct.unpack_from(k.arch.ptr_fmt, ctx, CONTEXT.offset(k.arch, k.arch.pc.capitalize()))[0]
    thread = sched.create_thread(
        pc, 0, suspended=bool(CreateSuspended),
        stack=ThreadStack.existing(k.proc, bottom, base, limit), context=ctx,
    )  # fmt: skip
    handle = k.proc.objects.insert(thread)
    k.write_ptr(ThreadHandle, handle)
    if ClientId:
        k.write(ClientId, k.arch.pack_ptr(PROCESS_ID) + k.arch.pack_ptr(thread.tid))
    k.details.update(handle=handle, tid=thread.tid, teb=thread.teb, start=pc)
    if thread.ready:
        sched.request_switch()
    return Status.SUCCESS
