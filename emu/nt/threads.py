"""Threads on one emulated CPU: their TEBs and stacks, waits, a deterministic scheduler.

Only one thread runs at a time. A thread is switched out at *scheduling points*: when it
blocks in a wait, ends, yields, creates or resumes a thread, and every ``quantum``
instructions (the CPU's instruction count, ``emu.process.threads`` drives the runs). Which
ready thread runs next is drawn from a ``random.Random(seed)``: the same seed gives the same
interleaving, instruction for instruction; another seed another one.

Time is the scheduler's clock (100 ns units, never the host's): 1 ms per system call (the
clock ``NtQuerySystemTime`` has always shown), plus 1 ns per instruction run while threads
share the CPU (``emu.process.threads`` counts them), plus the time skipped when every thread
sleeps (the clock jumps to the first deadline). If every thread waits without a deadline, the
run ends with a deadlock error naming the waits.

User APCs and alerts (``emu.nt.apc``): each thread has a queue of user APCs, an Alerted flag
(NtAlertThread) and a pending-delivery flag; an alertable wait checks them after its objects
and before blocking, and an APC queued to a thread blocked alertably wakes it.

A new thread starts as Wine's kernel starts one: a CONTEXT for ``ntdll!RtlUserThreadStart(
start, argument)`` at the top of its stack, and ``ntdll!LdrInitializeThunk(context)`` run on
that stack. Wine's loader then allocates the thread's TLS, calls the DLLs' DLL_THREAD_ATTACH
and TLS callbacks and NtContinue()s into the context.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from emu.cpu.segments import MAX_TEB_SLOTS, teb_selector
from emu.errors import EmulationError, Fault, NtStatusError
from emu.nt.kernel import PROCESS_ID
from emu.nt.memory import align_down
from emu.nt.stack import WINE_START_COMMIT, ThreadStack, thread_stack_sizes
from emu.nt.sync import (
    STATUS_ALERTED,
    STATUS_USER_APC,
    Dispatcher,
    KeyedEvent,
    Mutant,
    Wait,
    try_satisfy,
)
from emu.win.layouts import TEB, UNICODE_STRING
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_READWRITE,
    NtStatus,
)

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

STATUS_PENDING = NtStatus.PENDING  # ExitStatus while it runs (GetExitCodeThread: STILL_ACTIVE)
DEFAULT_QUANTUM = 100_000  # instructions between forced switches
TEB_REGION_SIZE = 0x10000  # TEB plus room past it (Wine keeps per-thread data there)
# Wine's signal_start_thread zeroes the 0xf0000 bytes below the initial CONTEXT's page before
# NtContinue: the whole range must be committed.
STACK_COMMIT = 0x100000
STACK_RESERVE_MIN = 0x200000
CONTEXT_SIZE = {"x86": 0x2CC, "x64": 0x4D0}
STATIC_UNICODE_BUFFER = 261 * 2  # TEB.StaticUnicodeBuffer: MAX_PATH + 1 characters
# TEB.StaticUnicodeString and TEB.StaticUnicodeBuffer (kernelbase's ANSI path conversions)
STATIC_UNICODE = {"x64": (0x1258, 0x1268), "x86": (0xBF8, 0xC00)}
_NS_PER_TICK = 100
T = TypeVar("T")


@dataclass(eq=False)
class Thread(Dispatcher):
    """A thread: its kernel object (signalled once it has ended) and its scheduling state."""

    tid: int = 0
    teb: int = 0
    stack: ThreadStack | None = None
    start: int = 0  # the thread's start routine (ThreadQuerySetWin32StartAddress)
    slot: int = 0  # x86: the GDT entry behind its fs (emu.cpu.segments)
    exit_status: int = STATUS_PENDING
    terminated: bool = False
    suspend_count: int = 0
    wait: Wait | None = None
    wake_status: int | None = None  # what its blocking system call returns when it resumes
    alerted: bool = False  # NtAlertThreadByThreadId came before its wait
    # NtAlertThread's flag (KTHREAD.Alerted[UserMode]): the next alertable wait or NtTestAlert
    # returns STATUS_ALERTED and clears it
    user_alerted: bool = False
    # user APCs queued (NtQueueApcThread): (routine, argument 1, 2, 3), delivered in order
    apcs: list[tuple[int, int, int, int]] = field(default_factory=list)
    # KTHREAD.UserApcPending: the first queued APC runs when the thread next returns to user
    # mode (emu.nt.apc: at the end of its system call, or when the scheduler resumes it)
    apc_pending: bool = False
    start_context: int = 0  # its start CONTEXT (what Get/SetContextThread see before it runs)
    context: object | None = None  # its CPU state while it is switched out
    start_registers: dict[str, int] | None = None  # before it first runs
    owned: list[Mutant] = field(default_factory=list)
    released: bool = False  # its TEB and stack are freed
    owns_stack: bool = True  # False: its creator's (NtCreateThread), never freed with it
    # its stack is settled (ThreadStack.settle) when Wine's thread start NtContinues into its
    # start CONTEXT
    settle_stack: bool = False

    def signaled_for(self, thread: Thread) -> bool:
        return self.terminated

    @property
    def ready(self) -> bool:
        return not self.terminated and self.wait is None and self.suspend_count == 0

    def describe(self) -> str:
        return f"thread 0x{self.tid:x}"


class Scheduler:
    """The threads of one process and who runs next (see the module docstring)."""

    def __init__(self, proc: ProcessCore, main_teb: int, main_stack: ThreadStack, tid: int):
        self.proc = proc
        self.main = Thread("thread", tid=tid, teb=main_teb, stack=main_stack)
        self.threads: list[Thread] = [self.main]  # every thread made, in creation order
        self.current = self.main
        self.seed = 0
        self.quantum = DEFAULT_QUANTUM
        self._rng = random.Random(0)
        self.running = False  # a threaded run (emu.process.threads) serves switches
        self.switch_pending = False  # the current thread cannot or should not go on now
        self.yielding = False  # ...and would rather another thread ran (NtYieldExecution)
        self.idle_time = 0  # clock time added by quanta and by sleeping with nothing to do
        self.switches = 0
        self.instructions = 0  # executed in counted runs (emu.process.threads)
        self.schedule: list[int] = []  # the thread id switched to, at every switch
        self._next_tid = tid + 4
        self._order = 0
        self._free_tebs: list[tuple[int, int]] = []  # (TEB, x86 descriptor slot) to reuse
        self._next_slot = 1
        # what a NULL keyed-event handle names (\KernelObjects\CritSecOutOfMemoryEvent)
        self.default_keyed_event = KeyedEvent("keyed event", "CritSecOutOfMemoryEvent")

    def configure(self, seed: int | None = None, quantum: int | None = None) -> None:
        if quantum is not None:
            if quantum < 1:
                raise ValueError(f"quantum must be at least 1 instruction, not {quantum}")
            self.quantum = quantum
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(seed)

    # ------------------------------------------------------------------ queries
    def clock(self) -> int:
        """Time since boot in 100 ns units (see the module docstring)."""
        return 10_000 * len(self.proc.syscalls) + self.idle_time

    def live(self) -> list[Thread]:
        return [t for t in self.threads if not t.terminated]

    def by_tid(self, tid: int) -> Thread | None:
        for t in self.threads:
            if t.tid == tid and not t.terminated:
                return t
        return None

    # ------------------------------------------------------------------ creation
    def create_thread(
        self,
        start: int,
        argument: int,
        *,
        suspended: bool,
        commit: int = 0,
        reserve: int = 0,
        highest: int | None = None,
        stack: ThreadStack | None = None,
        context: bytes | None = None,
    ) -> Thread:
        """A new thread that will run ``start(argument)`` through ntdll's thread start, or,
        given the caller's ``stack`` and initial ``context`` (NtCreateThread), continue into
        that CONTEXT after LdrInitializeThunk (written below its stack pointer, as Windows'
        kernel hands LdrInitializeThunk the initial context on the new thread's stack).
        Raises NtStatusError when it cannot be made (no Wine ntdll to start it, sizes beyond
        user space, no room for its stack, no TEB descriptor left on x86, a CONTEXT whose stack
        cannot be written)."""
        proc = self.proc
        own_stack = stack is None
        try:
            ldr = proc.modules.resolve("ntdll!LdrInitializeThunk")
            user_start = proc.modules.resolve("ntdll!RtlUserThreadStart")
        except KeyError:
            raise NtStatusError(
                NtStatus.NOT_SUPPORTED, "threads start through Wine's ntdll, which is not loaded"
            ) from None
        space = proc.arch.user_max
        if commit > space or reserve > space:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, "stack size beyond user space")
        if not self._free_tebs and self._next_slot > MAX_TEB_SLOTS:
            raise NtStatusError(NtStatus.INSUFFICIENT_RESOURCES, "no TEB descriptor left")
        given_at = 0
        if context is not None:
            given_at = given_context_place(proc, context)  # probed before anything is made
        if stack is None:
            commit, reserve = thread_stack_sizes(proc, commit, reserve)
            # NtStatusError when there is no room (under ``highest``: NtCreateThreadEx's ZeroBits)
            stack = ThreadStack(proc, reserve, commit, highest, WINE_START_COMMIT)
        if self._free_tebs:
            teb, slot = self._free_tebs.pop()
            proc.write(teb, bytes(TEB_REGION_SIZE))
        else:
            try:
                teb, _ = proc.memory.allocate(
                    0, TEB_REGION_SIZE, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE,
                    usage="TEB", secured=True,  # a NoChange VAD, as the main thread's
                )  # fmt: skip
            except NtStatusError:
                if own_stack:
                    proc.memory.free(stack.base, 0, MEM_RELEASE)
                raise
            slot = self._take_slot()
        thread = Thread("thread", tid=self._next_tid, teb=teb, stack=stack, start=start)
        thread.slot = slot
        self._next_tid += 4
        thread.suspend_count = 1 if suspended else 0
        thread.owns_stack = own_stack
        init_teb(proc, teb, thread.tid, stack)
        if context is None:
            at, sp = write_start_context(proc, stack.top, start, argument, user_start, slot)
        else:
            at = sp = write_given_context(proc, given_at, context, slot)
        thread.start_registers = loader_registers(proc, at, sp, ldr)
        thread.start_context = at
        thread.settle_stack = own_stack
        self.threads.append(thread)
        return thread

    def _take_slot(self) -> int:
        slot = self._next_slot
        self._next_slot += 1
        return slot

    # ------------------------------------------------------------------ waits
    def begin_wait(self, wait: Wait) -> int | None:
        """The current thread waits: the status at once when the wait is satisfied (or times
        out) now, else None: it blocks until ``notify`` or its deadline wakes it."""
        thread = self.current
        if wait.keyed is not None:
            partner = self._keyed_partner(wait.keyed)
            if partner is not None:  # the other side is there: both go on
                partner.wait, partner.wake_status = None, NtStatus.SUCCESS
                return NtStatus.SUCCESS
        elif wait.alert:
            if thread.alerted:
                thread.alerted = False
                return STATUS_ALERTED
        else:
            status = try_satisfy(wait, thread)
            if status is not None:  # a signalled object ends the wait before any APC
                return status
        if wait.alertable:
            status = self.test_alert(thread, STATUS_USER_APC)
            if status is not None:
                return status
        now = self.clock()
        if wait.deadline is not None and wait.deadline <= now:
            return wait.timeout_status
        if not self.running or len(self.live()) == 1:
            # no other thread can signal: only time can end the wait (no switch needed, so a
            # one-thread run stays one counted run)
            if wait.deadline is None:
                return None
            self.idle_time += wait.deadline - now
            return wait.timeout_status
        self._order += 1
        wait.order = self._order
        thread.wait = wait
        self.request_switch()
        return STATUS_PENDING

    def _keyed_partner(self, keyed: tuple[KeyedEvent, int, bool]) -> Thread | None:
        """The first thread blocked on the other side of this keyed event and key."""
        event, key, releasing = keyed
        waiting = [
            t for t in self.threads
            if t.wait is not None and t.wait.keyed is not None
            and t.wait.keyed[0] is event and t.wait.keyed[1] == key
            and t.wait.keyed[2] is not releasing
        ]  # fmt: skip
        return min(waiting, key=lambda t: t.wait.order if t.wait else 0) if waiting else None

    def notify(self) -> None:
        """Something was signalled: satisfy the waits that can be, first come first served."""
        waiting = sorted((t for t in self.threads if t.wait is not None and not t.wait.alert),
                         key=lambda t: t.wait.order if t.wait else 0)  # fmt: skip
        for thread in waiting:
            assert thread.wait is not None
            status = try_satisfy(thread.wait, thread)
            if status is not None:
                thread.wait, thread.wake_status = None, status

    def alert(self, thread: Thread) -> None:
        """NtAlertThreadByThreadId: wake its alert wait, or let its next one return at once."""
        if thread.wait is not None and thread.wait.alert:
            thread.wait, thread.wake_status = None, STATUS_ALERTED
        else:
            thread.alerted = True

    # ------------------------------------------------------------------ alerts and APCs
    def test_alert(self, thread: Thread, apc_status: int = NtStatus.SUCCESS) -> int | None:
        """The kernel's check of an alertable wait or NtTestAlert (KiCheckAlertability,
        KeTestAlertThread): a pending NtAlertThread is consumed (STATUS_ALERTED, no APC runs);
        else queued user APCs are made pending (``apc_status``); else None."""
        if thread.user_alerted:
            thread.user_alerted = False
            return STATUS_ALERTED
        if thread.apcs:
            thread.apc_pending = True
            return apc_status
        return None

    def queue_apc(self, thread: Thread, apc: tuple[int, int, int, int]) -> None:
        """NtQueueApcThread: queue a user APC; a thread in an alertable wait is woken with
        STATUS_USER_APC, the APC delivered as it resumes."""
        thread.apcs.append(apc)
        if thread.wait is not None and thread.wait.alertable:
            thread.wait, thread.wake_status = None, STATUS_USER_APC
            thread.apc_pending = True

    def alert_thread(self, thread: Thread) -> None:
        """NtAlertThread (KeAlertThread in user mode): end its alertable wait with
        STATUS_ALERTED, or set its Alerted flag for the next one."""
        if thread.user_alerted or thread.terminated:
            return
        if thread.wait is not None and thread.wait.alertable:
            thread.wait, thread.wake_status = None, STATUS_ALERTED
        else:
            thread.user_alerted = True

    def _wake_expired(self) -> None:
        now = self.clock()
        for t in self.threads:
            if t.wait is not None and t.wait.deadline is not None and t.wait.deadline <= now:
                t.wake_status = t.wait.timeout_status
                t.wait = None

    def on_cpu(self, thread: Thread, fn: Callable[[], T], *, keep: bool = False) -> T:
        """Run ``fn`` while the CPU holds switched-out ``thread``'s registers (its saved
        state), then put the current thread's back; ``keep``: what ``fn`` changed becomes
        ``thread``'s state (NtGetContextThread / NtSetContextThread on another thread)."""
        assert thread.context is not None and thread is not self.current
        cpu = self.proc.cpu
        own = cpu.save_context()
        cpu.restore_context(thread.context)
        try:
            result = fn()
            if keep:
                thread.context = cpu.save_context()
        finally:
            cpu.restore_context(own)
        return result

    # ------------------------------------------------------------------ ending
    def terminate(self, thread: Thread, status: int) -> None:
        """``thread`` ends with ``status``: it is signalled, its mutants are abandoned."""
        if thread.terminated:
            return
        thread.terminated, thread.exit_status = True, status & 0xFFFFFFFF
        thread.wait, thread.wake_status = None, None
        thread.apcs.clear()  # its user APCs are discarded (never run)
        thread.apc_pending = False
        for mutant in list(thread.owned):
            mutant.disown(abandoned=True)
        thread.context = thread.start_registers = None
        if thread is self.current:
            self.request_switch()
        self.notify()

    def release_ended(self) -> None:
        """Free the stacks of ended threads (not the main thread's, not the one whose state the
        CPU still holds). Their TEBs stay mapped and are reused for new threads, as Wine's
        kernel keeps them: Wine's loader links every TEB into a list (TlsLinks) that a thread
        ended by TerminateThread never leaves, and the next thread start walks it."""
        for t in self.threads:
            if t.terminated and not t.released and t is not self.main and t is not self.current:
                t.released = True
                if t.stack is not None and t.owns_stack:  # NtCreateThread's is its creator's
                    self.proc.memory.free(t.stack.base, 0, MEM_RELEASE)
                self._free_tebs.append((t.teb, t.slot))

    # ------------------------------------------------------------------ switching
    def request_switch(self, yielding: bool = False) -> None:
        """Stop the CPU at the end of this system call: the scheduler chooses who runs next."""
        if self.running:
            self.switch_pending = True
            self.yielding = self.yielding or yielding
            self.proc.cpu.stop("thread switch")

    def advance(self, instructions: int) -> None:
        """A quantum of ``instructions`` ran: the clock moves on."""
        self.idle_time += instructions // _NS_PER_TICK
        self.proc.publish_clock()

    def choose_next(self) -> Thread:
        """The thread to run now (the clock jumps ahead when all sleep). Raises EmulationError
        when every live thread waits forever."""
        self._wake_expired()
        ready = [t for t in self.threads if t.ready]
        while not ready:
            deadlines = [t.wait.deadline for t in self.live() if t.wait and t.wait.deadline]
            if not deadlines:
                raise self._deadlock()
            self.idle_time += max(0, min(deadlines) - self.clock())
            self.proc.publish_clock()
            self._wake_expired()
            ready = [t for t in self.threads if t.ready]
        if self.yielding and len(ready) > 1 and any(t is self.current for t in ready):
            # (by identity: the yield used to remove the first thread instead, when
            # KernelObject's generated __eq__ made every two threads equal)
            ready = [t for t in ready if t is not self.current]
        self.yielding = self.switch_pending = False
        choice = ready[0] if len(ready) == 1 else self._rng.choice(ready)
        if choice is not self.current:
            self.switches += 1
            self.schedule.append(choice.tid)
        return choice

    def _deadlock(self) -> EmulationError:
        live = self.live()
        waits = "; ".join(
            f"thread 0x{t.tid:x} waits for {t.wait.describe()}"
            if t.wait is not None
            else f"thread 0x{t.tid:x} is suspended"
            for t in live
        )
        what = "the only thread waits" if len(live) == 1 else f"all {len(live)} threads wait"
        return EmulationError(Fault(f"deadlock: {what} forever", pc=self.proc.cpu.pc, detail=waits))


def init_teb(proc: ProcessCore, teb: int, tid: int, stack: ThreadStack) -> None:
    """The TEB fields Windows' kernel fills for a new thread (and Wine's, which its PE code
    reads): the NT_TIB, ClientId, PEB, locale and the static Unicode string."""
    arch = proc.arch
    TEB.write(proc, arch, teb, "ExceptionList", 0xFFFFFFFF if arch.ptr_size == 4 else 0)
    TEB.write(proc, arch, teb, "Self", teb)
    TEB.write(proc, arch, teb, "UniqueProcess", PROCESS_ID)
    TEB.write(proc, arch, teb, "UniqueThread", tid)
    TEB.write(proc, arch, teb, "ProcessEnvironmentBlock", proc.peb)
    TEB.write(proc, arch, teb, "CurrentLocale", TEB.read(proc, arch, proc.teb, "CurrentLocale"))
    string, buffer = STATIC_UNICODE[arch.name]
    UNICODE_STRING.write(proc, arch, teb + string, "MaximumLength", STATIC_UNICODE_BUFFER)
    UNICODE_STRING.write(proc, arch, teb + string, "Buffer", teb + buffer)
    stack.write_teb(teb)


def write_start_context(
    proc: ProcessCore, top: int, entry: int, argument: int, user_start: int, slot: int = 0
) -> tuple[int, int]:
    """The thread's start CONTEXT near the top of its stack: ``user_start(entry, argument)``
    (ntdll!RtlUserThreadStart) on the stack below it. Returns (context, stack pointer for
    LdrInitializeThunk). On x86 its SEGMENTS are the process's selectors with the fs of TEB
    descriptor ``slot``: NtContinue loads them."""
    arch = proc.arch
    ctx = align_down(top - 0x100 - CONTEXT_SIZE[arch.name], 64)  # room above, as Windows
    proc.write(ctx, bytes(CONTEXT_SIZE[arch.name]))
    if arch.ptr_size == 8:
        values = {
            0x30: ("<I", 0x10000B),  # ContextFlags: CONTEXT_AMD64 | CONTROL | INTEGER | FLOAT
            0x34: ("<I", 0x1F80),  # MxCsr
            0x38: ("<H", 0x33),  # SegCs
            0x42: ("<H", 0x2B),  # SegSs
            0x44: ("<I", 0x200),  # EFlags (IF)
            0x80: ("<Q", entry),  # Rcx: the entry point
            0x88: ("<Q", argument),  # Rdx: its argument
            0x98: ("<Q", ctx - 0x100 - 8),  # Rsp: as after a call
            0xF8: ("<Q", user_start),  # Rip
            0x100: ("<H", 0x27F),  # FltSave.ControlWord
            0x118: ("<I", 0x1F80),  # FltSave.MxCsr
        }
    else:
        values = {
            0x00: ("<I", 0x1000F),  # ContextFlags: CONTEXT_i386 | CONTROL|INTEGER|SEGMENTS|FLOAT
            0x8C: ("<I", proc.cpu.reg("gs")),
            0x90: ("<I", teb_selector(slot)),  # SegFs: the thread's own TEB
            0x94: ("<I", proc.cpu.reg("es")),
            0x98: ("<I", proc.cpu.reg("ds")),
            0xBC: ("<I", proc.cpu.reg("cs")),
            0xC8: ("<I", proc.cpu.reg("ss")),
            0x1C: ("<I", 0x27F),  # FloatSave.ControlWord
            0xA4: ("<I", argument),  # Ebx: the argument
            0xB0: ("<I", entry),  # Eax: the entry point
            0xB8: ("<I", user_start),  # Eip
            0xC0: ("<I", 0x202),  # EFlags
            0xC4: ("<I", ctx - 0x100),  # Esp
        }
    for off, (fmt, value) in values.items():
        proc.write(ctx + off, struct.pack(fmt, value))
    return ctx, ctx - 0x100


def given_context_place(proc: ProcessCore, context: bytes) -> int:
    """Where a caller's initial CONTEXT goes: below its stack pointer, aligned (CONTEXT_ALIGN),
    with room for LdrInitializeThunk's frame below it. STATUS_ACCESS_VIOLATION when that
    stack memory cannot be written (probed as the kernel probes user memory)."""
    arch = proc.arch
    x64 = arch.ptr_size == 8
    sp = arch.unpack_ptr(context, 0x98 if x64 else 0xC4)  # Rsp / Esp
    at = align_down(sp - len(context), 16 if x64 else 4)
    low = at - (8 if x64 else 20)
    if low < arch.user_min or not proc.memory.is_accessible(low, sp - low, write=True):
        raise NtStatusError(
            NtStatus.ACCESS_VIOLATION, f"the initial stack at 0x{sp:x} cannot be written"
        )
    return at


def write_given_context(proc: ProcessCore, at: int, context: bytes, slot: int) -> int:
    """Write a caller's initial CONTEXT at ``at``; on x86 its fs names the new thread's own TEB
    (heapemu gives every thread a descriptor of its own, where Windows reloads 0x3B's base)."""
    ctx = bytearray(context)
    if proc.arch.ptr_size == 4:
        struct.pack_into("<I", ctx, 0x90, teb_selector(slot))  # SegFs
    proc.write(at, bytes(ctx))
    return at


def loader_registers(proc: ProcessCore, context: int, sp: int, ldr_init: int) -> dict[str, int]:
    """Registers entering ``LdrInitializeThunk(context, 0, 0, 0)`` on the stack at ``sp``,
    with a NULL return address (it never returns: it NtContinue()s into the context)."""
    arch = proc.arch
    if arch.ptr_size == 8:
        sp -= 8
        proc.write(sp, bytes(8))
        return {"rsp": sp, "rip": ldr_init, "rcx": context, "rflags": 0x202}
    sp -= 20  # return address, then the four stdcall arguments
    proc.write(sp, struct.pack("<5I", 0, context, 0, 0, 0))
    return {"esp": sp, "eip": ldr_init, "eflags": 0x202}
