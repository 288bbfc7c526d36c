"""Dispatcher objects: what a thread can wait on, and what a satisfied wait does to them.

As in NT's kernel, an object is signalled or not *for a given thread* (a mutant its thread owns
stays signalled for it: recursion), and satisfying a wait changes it: an auto-reset event is
reset, a semaphore's count drops by one, a mutant gets (or keeps) an owner. A mutant whose
owner ended while holding it is *abandoned*: the next thread that gets it learns so from
STATUS_ABANDONED_WAIT_n. Threads themselves (``emu.nt.threads.Thread``) are dispatcher objects,
signalled once they have ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.nt.objects import KernelObject
from emu.win.ntdefs import NtStatus

if TYPE_CHECKING:
    from emu.nt.threads import Thread

STATUS_WAIT_0 = NtStatus.WAIT_0
STATUS_ABANDONED_WAIT_0 = NtStatus.ABANDONED_WAIT_0
STATUS_ALERTED = NtStatus.ALERTED
STATUS_USER_APC = NtStatus.USER_APC
STATUS_TIMEOUT = NtStatus.TIMEOUT
MAXIMUM_WAIT_OBJECTS = 64  # NtWaitForMultipleObjects' limit (winnt.h)


@dataclass(eq=False)  # objects are compared by identity: two events with equal state differ
class Dispatcher(KernelObject):
    """Something a thread can wait on."""

    def signaled_for(self, thread: Thread) -> bool:
        raise NotImplementedError

    def satisfy(self, thread: Thread) -> bool:
        """``thread``'s wait on this object is satisfied: change the object's state. True when
        the object was an abandoned mutant."""
        return False

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else self.kind


@dataclass(eq=False)
class Event(Dispatcher):
    signaled: bool = False
    manual_reset: bool = False  # NotificationEvent; False: SynchronizationEvent (auto-reset)

    def signaled_for(self, thread: Thread) -> bool:
        return self.signaled

    def satisfy(self, thread: Thread) -> bool:
        if not self.manual_reset:
            self.signaled = False
        return False


@dataclass(eq=False)
class Semaphore(Dispatcher):
    count: int = 0
    maximum: int = 1

    def signaled_for(self, thread: Thread) -> bool:
        return self.count > 0

    def satisfy(self, thread: Thread) -> bool:
        self.count -= 1
        return False


@dataclass(eq=False)
class Mutant(Dispatcher):
    owner: Thread | None = None
    recursion: int = 0  # how often the owner acquired it (each release gives one back)
    abandoned: bool = False

    def signaled_for(self, thread: Thread) -> bool:
        return self.owner is None or self.owner is thread

    def satisfy(self, thread: Thread) -> bool:
        if self.owner is None:
            self.owner = thread
            thread.owned.append(self)
        self.recursion += 1
        abandoned, self.abandoned = self.abandoned, False
        return abandoned

    def release(self) -> None:
        """One release by its owner (the caller checked ownership)."""
        self.recursion -= 1
        if self.recursion == 0:
            self.disown()

    def disown(self, abandoned: bool = False) -> None:
        if self.owner is not None:
            self.owner.owned.remove(self)
        self.owner, self.recursion, self.abandoned = None, 0, abandoned

    def describe(self) -> str:
        owner = f" owned by thread 0x{self.owner.tid:x}" if self.owner is not None else ""
        return super().describe() + owner


@dataclass(eq=False)
class KeyedEvent(Dispatcher):
    """Never signalled: NtWaitForKeyedEvent and NtReleaseKeyedEvent meet on it by key (a
    ``Wait`` with ``keyed`` set), each blocking until the other side comes."""

    def signaled_for(self, thread: Thread) -> bool:
        return False


@dataclass(eq=False)
class Wait:
    """What a blocked thread waits for: any or all of ``objects``, an alert
    (NtWaitForAlertByThreadId), or nothing but time (NtDelayExecution); until ``deadline`` (in
    the scheduler's clock, None = forever)."""

    objects: list[Dispatcher] = field(default_factory=list)
    wait_all: bool = False
    deadline: int | None = None
    alert: bool = False  # woken by NtAlertThreadByThreadId
    # Alertable=TRUE: NtAlertThread ends it (STATUS_ALERTED), so does a user APC queued to
    # the thread (STATUS_USER_APC, the APCs run before the wait returns)
    alertable: bool = False
    timeout_status: int = NtStatus.TIMEOUT  # NtDelayExecution ends with STATUS_SUCCESS
    order: int = 0  # when the wait began: waiters are woken first come, first served
    # a keyed event's rendezvous: (the event, the key, True for the releasing side)
    keyed: tuple[KeyedEvent, int, bool] | None = None

    def describe(self) -> str:
        if self.keyed is not None:
            event, key, releasing = self.keyed
            side = "a waiter to release" if releasing else "a release"
            what = f"{side} on {event.describe()} with key 0x{key:x}"
        elif self.alert:
            what = "an alert (NtWaitForAlertByThreadId)"
        elif not self.objects:
            what = "time (NtDelayExecution)"
        else:
            names = ", ".join(o.describe() for o in self.objects)
            what = ("all of " if self.wait_all and len(self.objects) > 1 else "") + names
        alertable = ", alertable" if self.alertable else ""
        return what + ("" if self.deadline is None else " (with a timeout)") + alertable


def try_satisfy(wait: Wait, thread: Thread) -> int | None:
    """Satisfy ``wait`` for ``thread`` now if its objects allow (changing them), giving the
    status NtWaitFor*Object(s) returns; None if it must go on waiting."""
    objects = wait.objects
    if wait.wait_all:
        if not objects or not all(o.signaled_for(thread) for o in objects):
            return None
        abandoned = False
        for o in objects:
            abandoned |= o.satisfy(thread)
        return STATUS_ABANDONED_WAIT_0 if abandoned else STATUS_WAIT_0
    for i, o in enumerate(objects):
        if o.signaled_for(thread):
            return (STATUS_ABANDONED_WAIT_0 if o.satisfy(thread) else STATUS_WAIT_0) + i
    return None
