"""Process and exception system calls: how emulated code ends a run or raises."""

from __future__ import annotations

from dataclasses import replace

from emu.errors import Fault
from emu.nt.exceptions import (
    apply_context,
    capture_context,
    check_context_alignment,
    deliver,
    read_record,
    stepped_system_call,
)
from emu.nt.kernel import BOOLEAN, HANDLE, NTSTATUS, PCONTEXT, PEXCEPTION_RECORD, Kernel, syscall
from emu.win.layouts import CONTEXT, EXCEPTION_RECORD
from emu.win.ntdefs import NtStatus, status_name


@syscall
def NtRaiseException(
    k: Kernel, ExceptionRecord: PEXCEPTION_RECORD, ContextRecord: PCONTEXT, FirstChance: BOOLEAN
) -> int:
    """First chance (RaiseException, RtlRaiseStatus): the CONTEXT's registers are loaded and
    the record is dispatched like a fault's (``emu.nt.exceptions``). Second chance (the
    dispatcher found no handler), or a first chance whose frame finds no room on the stack:
    the process ends with the exception code; the run's error reports where the exception
    first happened. Without a dispatcher, or when the run stops at first chance, the raise
    ends the run."""
    proc = k.proc
    check_context_alignment(k.arch.name, ContextRecord)
    event = read_record(proc, k.read, ExceptionRecord)
    event.first_chance = bool(FirstChance)
    k.details.update(code=event.code, address=event.address, first_chance=event.first_chance)
    where = f"0x{event.address:x} ({proc.symbolize(event.address)})"
    if FirstChance and proc.exception_dispatcher is not None and not proc._first_chance_stops:
        ctx = k.read(ContextRecord, CONTEXT.size(k.arch))  # only read when it is used
        stepped = stepped_system_call(proc)
        apply_context(proc, ctx, stepped=stepped)
        proc.cpu.pc = event.address  # where the state is shown from
        event.state = proc.cpu.state(event.address)
        record = k.read(ExceptionRecord, EXCEPTION_RECORD.size(k.arch))
        if deliver(proc, record, capture_context(proc), stepped=stepped, event=event):
            proc.exceptions.append(event)
            k.return_value = proc.cpu.reg(k.arch.ret)
            return NtStatus.SUCCESS
        raised = Fault(f"exception {status_name(event.code)} raised", pc=event.address)
        proc.cpu.raise_fault(proc.end_undelivered(event, raised))
        return NtStatus.SUCCESS
    if not FirstChance:
        # the first-chance event this is the end of: the latest one with its code and address
        same = [e for e in proc.exceptions if (e.code, e.address) == (event.code, event.address)]
        first = same[-1] if same else event
        chain = " -> ".join(e.describe() for e in proc.exceptions[-8:])
        raised = Fault(f"exception {status_name(event.code)} raised", pc=event.address)
        base = first.fault or raised
        first.report = replace(
            base,
            kind=f"unhandled exception: {base.kind}",
            status=event.code,
            detail=f"no handler took it (second chance); exceptions dispatched: {chain}",
            dispatched=True,
        )
        proc.unhandled_exception = first
        proc.exit_status = event.code  # Windows ends the process with the exception code
        proc.cpu.raise_fault(first.report)
        return NtStatus.SUCCESS
    proc.cpu.raise_fault(
        Fault(
            f"exception {status_name(event.code)} raised",
            pc=proc.cpu.pc,
            status=event.code,
            detail=f"raised by code at {where}",
            dispatched=True,
        )
    )
    return NtStatus.SUCCESS


@syscall
def NtTerminateProcess(k: Kernel, ProcessHandle: HANDLE, ExitStatus: NTSTATUS) -> int:
    """A NULL handle means "every other thread" (RtlExitUserProcess's first step; the process
    then runs its DLL detach code, where msvcrt flushes stdout): they end with the status
    (their mutants abandoned). The current process: the run ends and ``proc.exit_status`` holds
    the status."""
    k.details.update(exit_status=ExitStatus)
    if ProcessHandle == 0:
        sched = k.proc.threads
        for thread in sched.live():
            if thread is not sched.current:
                sched.terminate(thread, ExitStatus)
        return NtStatus.SUCCESS
    k.check_process_handle(ProcessHandle)
    k.proc.exit_status = ExitStatus
    k.proc.cpu.stop("process terminated")
    return NtStatus.SUCCESS
