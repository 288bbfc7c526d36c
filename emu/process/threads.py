"""The run loop of a threaded process: one CPU, the scheduler of ``emu.nt.threads`` deciding.

``run_threads`` runs the current thread until it stops: at a scheduling point a system call
asked for (a wait that blocks, a thread that ends, yields or is made ready: the CPU stops
after that call), or after ``quantum`` instructions (Unicorn's instruction count). The
scheduler then picks the next thread; the CPU's whole state (``Cpu.save_context``) is put
away and the next thread's put back, or, for a thread that never ran, its start registers
set on a clean state with its own TEB behind fs/gs. The run ends when the process does
(NtTerminateProcess, or its last thread ending), or with an EmulationError: a fault, a
deadlock, the wall-clock limit (for the whole run, all threads), the instruction budget.

Counting: while only one thread exists and there is no budget the CPU runs uncounted, as a
single call does. Once a second thread exists (or under a budget) every run is limited by a
count (``quantum``, or what is left of the budget) and every instruction is counted: a run
that ends by its count executed exactly that many; for a run a system call cut short (a
block, a switch, a thread starting), which Unicorn does not report, the CPU's
``BlockCounter`` (a native block hook) counted the blocks it entered, each whole, and a
system call ends its block, so that count is exact too (a fault inside a block counts the
block's rest: the only overcount). ``Scheduler.instructions`` is the total and the clock
advances 1 ns per counted instruction. The counter costs about 8% of the process CPU time
of ``threads.exe heap 8 10000`` (seed 1) on x64 (1.14 -> 1.22 s), about 5% on x86 (1.58 ->
1.66 s).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from emu.cpu.cpu import BlockCounter
from emu.cpu.segments import set_thread_teb
from emu.errors import EmulationError, Fault
from emu.nt.apc import deliver_apc
from emu.nt.threads import TEB_REGION_SIZE, Thread

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

SWITCH, TERMINATED = "thread switch", "process terminated"


def _switch_to(proc: ProcessCore, thread: Thread, template: object) -> None:
    """Make ``thread`` the one the CPU runs."""
    sched, cpu = proc.threads, proc.cpu
    current = sched.current
    if thread is not current:
        for flush in proc.switch_observers:
            flush()
        if not current.terminated:
            current.context = cpu.save_context()
        sched.current = thread
    if thread.start_registers is not None:
        # first run: a clean register file on the process's segment set-up, its own TEB
        cpu.restore_context(template)
        for name in proc.arch.gprs:
            cpu.set_reg(name, 0)
        for name, value in thread.start_registers.items():
            cpu.set_reg(name, value)
        set_thread_teb(cpu, thread.teb, TEB_REGION_SIZE, thread.slot)
        thread.start_registers = None
    elif thread.context is not None:
        cpu.restore_context(thread.context)
        thread.context = None
    if thread.wake_status is not None:
        cpu.set_reg(proc.arch.ret, thread.wake_status)
        thread.wake_status = None
    if thread.apc_pending:  # woken from an alertable wait by an APC: it runs first
        deliver_apc(proc, thread)


def run_threads(
    proc: ProcessCore, *, time_limit: float | None = None, max_instructions: int | None = None
) -> None:
    """Run the process's threads from where they are until the process ends (see the module
    docstring). Returns normally when it ended (``proc.exit_status``); raises EmulationError
    otherwise."""
    sched, cpu = proc.threads, proc.cpu
    if sched.running:
        raise EmulationError(Fault("the threads of this process are already running"))
    limit = proc.time_limit if time_limit is None else time_limit
    deadline = time.monotonic() + limit if limit else 0.0
    sentinel = proc.call_gate.sentinel  # nothing returns there: a thread's return is 0
    template = cpu.save_context()
    counter: BlockCounter | None = None  # counts every instruction once threads share the CPU
    used = 0
    completed = False
    proc.breakpoint_stop = None
    sched.running = True
    try:
        _switch_to(proc, sched.current, template)
        while True:
            if max_instructions and used >= max_instructions:
                raise _error(proc, Fault("instruction budget exhausted", pc=cpu.pc,
                                         detail=f"budget {max_instructions}"))  # fmt: skip
            count = sched.quantum if len(sched.threads) > 1 else 0
            if max_instructions:
                left = max_instructions - used
                count = min(count, left) if count else left
            remaining = deadline - time.monotonic() if deadline else None
            if remaining is not None and remaining <= 0:
                raise _error(proc, Fault("wall-clock limit exceeded", pc=cpu.pc,
                                         detail=f"limit {limit} s"))  # fmt: skip
            if counter is None and count:
                counter = BlockCounter(cpu).start()  # counts only
            before = counter.instructions if counter is not None else 0
            cpu.run(cpu.pc, sentinel, count, remaining)
            reason = cpu.stop_reason
            fault = cpu.fault
            if counter is not None and (reason is not None or fault is not None):
                # cut short (a system call, a fault, the process's end): the blocks it entered,
                # each counted whole (a system call ends its block)
                ran = counter.instructions - before
                used += ran
                sched.instructions += ran
                sched.advance(ran)
            if fault is not None and not proc._first_chance_stops and proc._deliver_fault(fault):
                # the faulting thread goes on in ntdll's KiUserExceptionDispatcher
                assert proc.exception_dispatcher is not None
                cpu.pc = proc.exception_dispatcher
                continue
            if reason == TERMINATED and proc.exit_status is not None:
                completed = True
                return
            if cpu.fault is not None or cpu.timed_out or reason not in (None, SWITCH):
                raise proc._run_error(
                    sched.current.start or cpu.pc, (), max_instructions, limit, context=_where(proc)
                )
            if reason is None:  # its count ran out: a full quantum (or the budget)
                if count == 0 or cpu.pc == sentinel:
                    raise _error(proc, Fault("a thread returned past its start", pc=cpu.pc))
                used += count
                sched.instructions += count
                sched.advance(count)
            try:
                chosen = sched.choose_next()
            except EmulationError as e:  # a deadlock: say where the last thread stopped
                raise _error(proc, e.fault) from None
            _switch_to(proc, chosen, template)
            sched.release_ended()
    finally:
        if counter is not None:
            counter.stop()
        sched.running = False
        sched.switch_pending = sched.yielding = False
        main = sched.main
        if sched.current is not main:
            for flush in proc.switch_observers:
                flush()
            # calls from Python after the run go on the main thread, its TEB behind fs/gs
            cpu.restore_context(main.context if main.context is not None else template)
            main.context = None
            sched.current = main
        for observer in proc.run_observers:
            observer(completed)
        for stopped in proc.stop_observers:  # threads may have ended inside calls
            stopped()


def _where(proc: ProcessCore) -> str:
    thread = proc.threads.current
    start = f", started at {proc.symbolize(thread.start)}" if thread.start else ""
    return f"in thread 0x{thread.tid:x}{start}"


def _error(proc: ProcessCore, fault: Fault) -> EmulationError:
    state = proc.cpu.state(fault.pc)
    return EmulationError(fault, state, context=_where(proc))
