"""Thread system calls: creation, suspension, termination, sleeping, yielding, alerts.

Wine 8.0's kernelbase!CreateRemoteThreadEx goes through ntdll!RtlCreateUserThread, which
calls NtCreateThreadEx with THREAD_CREATE_FLAGS_CREATE_SUSPENDED and then NtResumeThread.
Wine's critical sections, SRW locks and condition variables wait through RtlWaitOnAddress,
i.e. NtWaitForAlertByThreadId / NtAlertThreadByThreadId (and a semaphore for critical
sections without debug info). Keyed events are ``emu.nt.calls.sync``.
"""

from __future__ import annotations

from emu.errors import NtStatusError
from emu.nt.calls.sync import deadline, wait
from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    NTSTATUS,
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
from emu.nt.sync import Wait
from emu.nt.threads import Thread

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
    thread start (``emu.nt.threads``); a stack of MaximumStackSize (at least the image's),
    StackSize committed (at least what Wine's thread start clears)."""
    k.check_process_handle(ProcessHandle)
    k.write_ptr(ThreadHandle, 0)  # probe the out-parameter before anything is made
    sched = k.proc.threads
    thread = sched.create_thread(
        StartRoutine,
        Argument,
        suspended=bool(CreateFlags & THREAD_CREATE_FLAGS_CREATE_SUSPENDED),
        commit=StackSize,
        reserve=MaximumStackSize,
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
    """Sleep on the scheduler's clock; a zero interval yields (Sleep(0))."""
    sched = k.proc.threads
    until = deadline(k, DelayInterval)
    if until is None:  # Sleep(INFINITE) is a relative -1... a NULL interval is invalid
        raise NtStatusError(Status.ACCESS_VIOLATION, "NULL DelayInterval")
    if until <= sched.clock():
        if any(t.ready and t is not sched.current for t in sched.threads):
            sched.request_switch(yielding=True)
        return Status.SUCCESS
    return wait(k, Wait(deadline=until, timeout_status=Status.SUCCESS))


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
