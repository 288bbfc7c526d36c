"""Synchronisation system calls: events, semaphores, mutants, keyed events and the waits.

The objects are ``emu.nt.sync``'s dispatcher objects; a wait that cannot be satisfied at once
blocks the calling thread (``emu.nt.threads``): the system call's record says STATUS_PENDING
and the thread's real status (STATUS_WAIT_n, STATUS_ABANDONED_WAIT_n, STATUS_TIMEOUT) is what
the call returns when the scheduler resumes it. With one thread and no timeout, nothing can
ever end the wait: the run ends with a deadlock error.

Timeouts are LARGE_INTEGERs as Windows reads them: NULL waits forever, 0 polls, a negative
value is relative (100 ns units), a positive one an absolute system time.
"""

from __future__ import annotations

import struct

from emu.errors import Fault, NtStatusError
from emu.nt.apc import deliver_apc
from emu.nt.exceptions import stepped_system_call
from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    LONG,
    PHANDLE,
    PVOID,
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import KernelObject, Status, object_name
from emu.nt.shared_data import SYSTEM_TIME
from emu.nt.sync import (
    MAXIMUM_WAIT_OBJECTS,
    Dispatcher,
    Event,
    KeyedEvent,
    Mutant,
    Semaphore,
    Wait,
)
from emu.nt.threads import STATUS_PENDING

NOTIFICATION_EVENT, SYNCHRONIZATION_EVENT = 0, 1  # EVENT_TYPE
WAIT_ALL, WAIT_ANY = 0, 1  # WAIT_TYPE


def _create(k: Kernel, handle_out: int, obj: KernelObject, ObjectAttributes: int) -> int:
    if ObjectAttributes:
        _, obj.name = object_name(k, ObjectAttributes)
    handle = k.proc.objects.insert(obj)
    k.write_ptr(handle_out, handle)
    k.details.update(handle=handle, name=obj.name)
    return Status.SUCCESS


_LARGE_INTEGER_MAX = 0x7FFF_FFFF_FFFF_FFFF


def deadline(k: Kernel, timeout: int) -> int | None:
    """The scheduler-clock time a PLARGE_INTEGER timeout ends at (None: never)."""
    if not timeout:
        return None
    (value,) = struct.unpack("<q", k.read(timeout, 8))
    now = k.proc.threads.clock()
    end = now - value if value <= 0 else max(now, value - SYSTEM_TIME)  # absolute: system time
    if SYSTEM_TIME + end > _LARGE_INTEGER_MAX:
        # past the last system time a LARGE_INTEGER holds: the timer never fires (the clock
        # jumping there made NtQuerySystemTime's answer overflow: tests/syscallfuzz.py)
        return None
    return end


def wait(k: Kernel, what: Wait) -> int:
    """Wait as the current thread: the status now, or STATUS_PENDING when it blocks."""
    sched = k.proc.threads
    status = sched.begin_wait(what)
    if status is None:
        k.proc.cpu.raise_fault(
            Fault(
                "deadlock: the only thread waits forever",
                pc=k.proc.cpu.pc,
                detail=f"thread 0x{sched.current.tid:x} waits for {what.describe()} and no "
                "other thread exists to end the wait",
            )
        )
        return Status.SUCCESS
    if status == STATUS_PENDING:
        k.details.update(blocked=True)
    elif sched.current.apc_pending:  # an alertable wait with user APCs queued: they run now
        k.details.update(apc=True)
        deliver_apc(k.proc, sched.current, status=status, stepped=stepped_system_call(k.proc))
    return status


def waitable(k: Kernel, handle: int) -> Dispatcher | None:
    """The dispatcher object behind ``handle`` (None: an object that is always signalled, as
    files are; STATUS_INVALID_HANDLE when there is none)."""
    mask = k.arch.ptr_mask
    if handle == -2 & mask:  # NtCurrentThread(): ends only when it has ended, i.e. never
        return k.proc.threads.current
    obj = k.proc.objects.get(handle, KernelObject)
    return obj if isinstance(obj, Dispatcher) else None


@syscall
def NtCreateEvent(
    k: Kernel,
    EventHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    EventType: ULONG,
    InitialState: BOOLEAN,
) -> int:
    if EventType not in (NOTIFICATION_EVENT, SYNCHRONIZATION_EVENT):
        raise NtStatusError(Status.INVALID_PARAMETER_4, f"EventType {EventType}")
    event = Event(
        "event", signaled=bool(InitialState), manual_reset=EventType == NOTIFICATION_EVENT
    )
    return _create(k, EventHandle, event, ObjectAttributes)


@syscall
def NtCreateKeyedEvent(
    k: Kernel, KeyedEventHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    Flags: ULONG,
) -> int:  # fmt: skip
    return _create(k, KeyedEventHandle, KeyedEvent("keyed event"), ObjectAttributes)


@syscall
def NtCreateMutant(
    k: Kernel, MutantHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID,
    InitialOwner: BOOLEAN,
) -> int:  # fmt: skip
    mutant = Mutant("mutant")
    if InitialOwner:
        mutant.satisfy(k.proc.threads.current)
    return _create(k, MutantHandle, mutant, ObjectAttributes)


@syscall
def NtCreateSemaphore(
    k: Kernel,
    SemaphoreHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    InitialCount: LONG,
    MaximumCount: LONG,
) -> int:
    initial, maximum = _signed(InitialCount), _signed(MaximumCount)
    if maximum <= 0:
        raise NtStatusError(Status.INVALID_PARAMETER_5, f"MaximumCount {maximum}")
    if not 0 <= initial <= maximum:
        raise NtStatusError(Status.INVALID_PARAMETER_4, f"InitialCount {initial}")
    semaphore = Semaphore("semaphore", count=initial, maximum=maximum)
    return _create(k, SemaphoreHandle, semaphore, ObjectAttributes)


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _previous(k: Kernel, out: int, value: int) -> None:
    if out:
        k.write_u32(out, value)


def _event(k: Kernel, handle: int) -> Event:
    return k.proc.objects.get(handle, Event)


@syscall
def NtSetEvent(k: Kernel, EventHandle: HANDLE, PreviousState: PVOID) -> int:
    event = _event(k, EventHandle)
    _previous(k, PreviousState, event.signaled)
    event.signaled = True
    k.proc.threads.notify()
    return Status.SUCCESS


@syscall
def NtResetEvent(k: Kernel, EventHandle: HANDLE, PreviousState: PVOID) -> int:
    event = _event(k, EventHandle)
    _previous(k, PreviousState, event.signaled)
    event.signaled = False
    return Status.SUCCESS


@syscall
def NtClearEvent(k: Kernel, EventHandle: HANDLE) -> int:
    _event(k, EventHandle).signaled = False
    return Status.SUCCESS


@syscall
def NtPulseEvent(k: Kernel, EventHandle: HANDLE, PreviousState: PVOID) -> int:
    """Signal, wake what that wakes (every waiter of a notification event, one of a
    synchronization event), and reset: with no waiter it changes nothing."""
    event = _event(k, EventHandle)
    _previous(k, PreviousState, event.signaled)
    event.signaled = True
    k.proc.threads.notify()
    event.signaled = False
    return Status.SUCCESS


@syscall
def NtReleaseSemaphore(
    k: Kernel, SemaphoreHandle: HANDLE, ReleaseCount: LONG, PreviousCount: PVOID
) -> int:
    semaphore = k.proc.objects.get(SemaphoreHandle, Semaphore)
    count = _signed(ReleaseCount)
    if count <= 0:
        raise NtStatusError(Status.INVALID_PARAMETER_2, f"ReleaseCount {count}")
    if semaphore.count + count > semaphore.maximum:
        raise NtStatusError(Status.SEMAPHORE_LIMIT_EXCEEDED, "semaphore limit exceeded")
    _previous(k, PreviousCount, semaphore.count)
    semaphore.count += count
    k.proc.threads.notify()
    return Status.SUCCESS


@syscall
def NtReleaseMutant(k: Kernel, MutantHandle: HANDLE, PreviousCount: PVOID) -> int:
    """Only the owner releases (Status.MUTANT_NOT_OWNED otherwise); PreviousCount is the
    mutant's signal state before: 1 free, 0 owned once, -n owned n+1 times (as NT counts)."""
    mutant = k.proc.objects.get(MutantHandle, Mutant)
    if mutant.owner is not k.proc.threads.current:
        raise NtStatusError(Status.MUTANT_NOT_OWNED, "the caller does not own the mutant")
    _previous(k, PreviousCount, 1 - mutant.recursion)
    mutant.release()
    k.proc.threads.notify()
    return Status.SUCCESS


@syscall
def NtWaitForSingleObject(k: Kernel, Handle: HANDLE, Alertable: BOOLEAN, Timeout: PVOID) -> int:
    obj = waitable(k, Handle)
    k.details.update(kind=obj.kind if obj else "always signalled", name=obj.name if obj else "")
    if obj is None:
        return Status.SUCCESS  # files, tokens, ...: signalled
    return wait(k, Wait([obj], deadline=deadline(k, Timeout), alertable=bool(Alertable)))


@syscall
def NtWaitForMultipleObjects(
    k: Kernel, Count: ULONG, Handles: PVOID, WaitType: ULONG, Alertable: BOOLEAN, Timeout: PVOID
) -> int:
    """WaitAny: the lowest index signalled (STATUS_WAIT_0 + i); WaitAll: all at once, each
    satisfied together. An object twice in a WaitAll is STATUS_INVALID_PARAMETER_MIX."""
    if not 0 < Count <= MAXIMUM_WAIT_OBJECTS:
        raise NtStatusError(Status.INVALID_PARAMETER_1, f"Count {Count}")
    if WaitType not in (WAIT_ALL, WAIT_ANY):
        raise NtStatusError(Status.INVALID_PARAMETER_3, f"WaitType {WaitType}")
    n = k.arch.ptr_size
    raw = k.read(Handles, Count * n)
    handles = [k.arch.unpack_ptr(raw[i : i + n]) for i in range(0, len(raw), n)]
    objects: list[Dispatcher] = []
    for handle in handles:
        obj = waitable(k, handle)
        objects.append(obj if obj is not None else Event("always signalled", signaled=True))
    k.details.update(kinds=",".join(o.kind for o in objects), wait_all=WaitType == WAIT_ALL)
    if WaitType == WAIT_ALL and len({id(o) for o in objects}) != len(objects):
        raise NtStatusError(Status.INVALID_PARAMETER_MIX, "an object appears twice")
    alertable = bool(Alertable)
    return wait(k, Wait(objects, WaitType == WAIT_ALL, deadline(k, Timeout), alertable=alertable))


@syscall
def NtSignalAndWaitForSingleObject(
    k: Kernel, SignalHandle: HANDLE, WaitHandle: HANDLE, Alertable: BOOLEAN, Timeout: PVOID
) -> int:
    """Signal one object (set an event, release a semaphore once or a mutant), then wait."""
    target = waitable(k, WaitHandle)
    signal = k.proc.objects.get(SignalHandle, Dispatcher)
    if isinstance(signal, Event):
        signal.signaled = True
    elif isinstance(signal, Semaphore):
        if signal.count >= signal.maximum:
            raise NtStatusError(Status.SEMAPHORE_LIMIT_EXCEEDED, "semaphore limit exceeded")
        signal.count += 1
    elif isinstance(signal, Mutant):
        if signal.owner is not k.proc.threads.current:
            raise NtStatusError(Status.MUTANT_NOT_OWNED, "the caller does not own the mutant")
        signal.release()
    else:
        raise NtStatusError(Status.OBJECT_TYPE_MISMATCH, f"cannot signal a {signal.kind}")
    k.proc.threads.notify()
    if target is None:
        return Status.SUCCESS
    return wait(k, Wait([target], deadline=deadline(k, Timeout), alertable=bool(Alertable)))


def _keyed(k: Kernel, handle: int, key: int, releasing: bool, timeout: int, alertable: bool) -> int:
    if handle:
        event = k.proc.objects.get(handle, KeyedEvent)
    else:  # NULL: the system's keyed event (CritSecOutOfMemoryEvent)
        event = k.proc.threads.default_keyed_event
    k.details.update(key=key)
    until = deadline(k, timeout)
    return wait(k, Wait(deadline=until, keyed=(event, key, releasing), alertable=alertable))


@syscall
def NtWaitForKeyedEvent(
    k: Kernel, KeyedEventHandle: HANDLE, KeyValue: PVOID, Alertable: BOOLEAN, Timeout: PVOID
) -> int:
    """Block until a NtReleaseKeyedEvent with the same key (at once if one waits already)."""
    return _keyed(k, KeyedEventHandle, KeyValue, False, Timeout, bool(Alertable))


@syscall
def NtReleaseKeyedEvent(
    k: Kernel, KeyedEventHandle: HANDLE, KeyValue: PVOID, Alertable: BOOLEAN, Timeout: PVOID
) -> int:
    """Wake one thread waiting with the key; block until one comes if none waits."""
    return _keyed(k, KeyedEventHandle, KeyValue, True, Timeout, bool(Alertable))
