"""Process and exception system calls: how emulated code ends a run or raises."""

from __future__ import annotations

from emu.errors import Fault
from emu.nt.kernel import BOOLEAN, HANDLE, NTSTATUS, PCONTEXT, PEXCEPTION_RECORD, Kernel, syscall
from emu.win.layouts import EXCEPTION_RECORD
from emu.win.ntdefs import NtStatus, status_name


@syscall
def NtRaiseException(
    k: Kernel, ExceptionRecord: PEXCEPTION_RECORD, ContextRecord: PCONTEXT, FirstChance: BOOLEAN
) -> int:
    """No user-mode exception dispatch is emulated: a raised exception ends the call with an
    EmulationError naming the exception code and the address that raised it."""
    code = EXCEPTION_RECORD.read(k, k.arch, ExceptionRecord, "ExceptionCode")
    where = EXCEPTION_RECORD.read(k, k.arch, ExceptionRecord, "ExceptionAddress")
    k.details.update(code=code, address=where)
    k.proc.cpu.raise_fault(
        Fault(
            f"exception {status_name(code)} raised",
            pc=k.proc.cpu.pc,
            status=code,
            detail=f"raised by code at 0x{where:x} ({k.proc.symbolize(where)})",
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
