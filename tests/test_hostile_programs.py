"""Hostile programs (issue 16): whatever a program does, running it ends with a ProgramResult
or one of heapemu's typed errors, within its time limit, and the process stays usable.

tests/programs/hostile.c has one hostile act per mode (broken and endless exception handlers,
garbage CONTEXTs and EXCEPTION_RECORDs, wild jumps, a broken stack, fast fail, privileged
instructions, threads that fault or end the process, freeing the PEB/TEB/stack, rewriting
ntdll, closing every handle, bad WriteFile buffers, a corrupted heap). Each prints a line first,
so the test knows it got there. Where Windows' answer is clear the test asserts it (the exit
code of an unhandled exception, fast fail's STATUS_STACK_BUFFER_OVERRUN, the statuses the
kernel returns); elsewhere only the contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from programbuild import build

from emu import EmulationError, NtStatusError
from emu.facade import load_program
from emu.load.program import ProgramResult
from emu.win.layouts import PEB
from emu.win.ntdefs import NtStatus
from loader.errors import LoaderError

pytestmark = pytest.mark.wine

LIMIT = 20.0  # seconds: a mode that ends takes about one
ENDLESS_LIMIT = 2.0  # a mode that never ends on Windows either
ACCESS_VIOLATION = NtStatus.ACCESS_VIOLATION
ERROR_NOACCESS, ERROR_INVALID_PARAMETER = 998, 87


def lines(result: ProgramResult) -> list[str]:
    return result.text.splitlines()


def exits_with(code: int) -> Callable[[str, ProgramResult], None]:
    def check(arch: str, result: ProgramResult) -> None:
        assert result.exit_code == code, (hex(result.exit_code or 0), result.error)

    return check


def endless(arch: str, result: ProgramResult) -> None:
    assert result.exit_code is None and result.error is not None
    assert result.error.kind == "wall-clock limit exceeded"


def nested(arch: str, result: ProgramResult) -> None:
    """The handler's own faults are dispatched (nested) to it; the third call recovers."""
    assert (result.exit_code, lines(result)) == (0, ["nested", "nested calls=3"])
    assert [e.code for e in result.exceptions] == [ACCESS_VIOLATION] * 3
    assert [e.params[1] for e in result.exceptions] == [0x10, 0x20, 0x20]


def no_room(code: int, kind: str | None = None) -> Callable[[str, ProgramResult], None]:
    """The kernel could not write an exception's frame on the stack: Windows ends the
    process with the exception's code (KiDispatchException's second chance), and the run's
    error says why."""

    def check(arch: str, result: ProgramResult) -> None:
        assert result.exit_code == code and isinstance(result.error, EmulationError)
        assert "not dispatched: no room on the stack" in str(result.error)
        if kind is not None:
            assert result.error.kind == f"unhandled exception: {kind}", result.error

    return check


def nested_forever(arch: str, result: ProgramResult) -> None:
    """Each nested fault takes more stack; the frame that reaches the guaranteed area is
    delivered as STATUS_STACK_OVERFLOW (KiDispatchException), the handler faults on, and the
    first frame with no room left ends the process."""
    no_room(ACCESS_VIOLATION)(arch, result)
    assert len(result.exceptions) > 10
    assert NtStatus.STACK_OVERFLOW in {e.code for e in result.exceptions}


def continue_forever(arch: str, result: ProgramResult) -> None:
    endless(arch, result)
    assert len(result.exceptions) > 10
    assert {(e.code, e.address) for e in result.exceptions} == {
        (ACCESS_VIOLATION, result.exceptions[0].address)
    }


def seh_loop(arch: str, result: ProgramResult) -> None:
    if arch == "x86":  # a registration record that is its own Next: searched forever
        endless(arch, result)
    else:  # x64 unwinds as leaves through the return addresses, then off the stack
        exits_with(ACCESS_VIOLATION)(arch, result)


def unaligned(arch: str, result: ProgramResult) -> None:
    """NtContinue probes the CONTEXT with CONTEXT_ALIGN (4 / 16): STATUS_DATATYPE_MISALIGNMENT.
    An unaligned stack pointer is the program's own business."""
    assert lines(result)[1] == "unaligned context 80000002"


def raise_garbage(arch: str, result: ProgramResult) -> None:
    """KiRaiseException: more than EXCEPTION_MAXIMUM_PARAMETERS (15) is
    STATUS_INVALID_PARAMETER; an unreadable record or CONTEXT is STATUS_ACCESS_VIOLATION; the
    record is copied (its ExceptionRecord pointer still names the program's own record)."""
    assert lines(result)[1:6] == [
        "huge c000000d",
        "sixteen c000000d",
        "bad-record c0000005",
        "bad-context c0000005",
        "raised code=e0480002 params=15 chained=0",
    ]


def raise_params(arch: str, result: ProgramResult) -> None:
    """RaiseException: no arguments (or a NULL array) is 0 parameters; more than 15 are cut
    to EXCEPTION_MAXIMUM_PARAMETERS."""
    assert (result.exit_code, lines(result)) == (0, ["raise-params", "params 0 15 0"])


def fast_fail(arch: str, result: ProgramResult) -> None:
    """__fastfail: no handler runs, the process ends with STATUS_STACK_BUFFER_OVERRUN."""
    assert result.exit_code == NtStatus.STACK_BUFFER_OVERRUN and lines(result) == ["fastfail"]
    assert result.unhandled is not None and result.unhandled.params == (7,)
    assert result.error is not None and result.error.kind == "fast fail (int 0x29)"


def privileged(arch: str, result: ProgramResult) -> None:
    """cli, hlt, in, out, mov from cr0, wrmsr: each STATUS_PRIVILEGED_INSTRUCTION at itself
    (skipped by the handler); then an unhandled hlt ends the process with that code."""
    assert result.exit_code == NtStatus.PRIVILEGED_INSTRUCTION
    assert lines(result) == ["privileged", "handled 6:" + " c0000096" * 6, "unhandled hlt"]


def int80(arch: str, result: ProgramResult) -> None:
    """`int 0x80` through a gate closed to user mode: a #GP, STATUS_ACCESS_VIOLATION at the
    int with no address (parameter -1), which a handler can skip; unhandled, it ends the
    process with that code."""
    assert result.exit_code == ACCESS_VIOLATION
    assert lines(result) == ["int80", "handled 1: c0000005", "unhandled int 0x80"]
    first = result.exceptions[0]
    assert first.state is not None and first.state.instruction == "int 0x80"
    assert first.params[0] == 0 and first.params[1] & 0xFFFFFFFF == 0xFFFFFFFF


def thread_fault(arch: str, result: ProgramResult) -> None:
    """An unhandled exception in any thread ends the process with its code."""
    assert result.exit_code == ACCESS_VIOLATION
    assert lines(result) == ["thread-fault", "thread faults"]


def exit_in_heap(arch: str, result: ProgramResult) -> None:
    """ExitProcess(7) from a worker while the main thread allocates: the other threads end
    where they are, the process with 7. (The worker yields until the main thread is in the
    heap: x64's yield used to pick the worker again and again, KernelObject's generated
    __eq__ making every two threads equal.)"""
    assert (result.exit_code, lines(result)) == (7, ["exit-in-heap", "thread exits"])


def terminate_self(arch: str, result: ProgramResult) -> None:
    """TerminateThread of the current thread ends it there (its exit code 5); the last
    thread's ends the process with its code (6)."""
    assert result.exit_code == 6
    assert lines(result) == ["terminate-self", "thread exit code 5"]


def free_peb(arch: str, result: ProgramResult) -> None:
    """The PEB and the TEB are secured VADs: freeing, decommitting or reprotecting them is
    STATUS_INVALID_PAGE_PROTECTION (ERROR_INVALID_PARAMETER); the stack can be freed, and the
    thread then has none to return on or to take an exception on."""
    refused = f"0 {ERROR_INVALID_PARAMETER}"
    assert lines(result)[:7] == [
        "free-peb",
        f"peb {refused}",
        f"teb {refused}",
        f"teb-decommit {refused}",
        f"teb-protect {refused}",
        "teb-self 1",
        "stack",
    ]
    no_room(ACCESS_VIOLATION)(arch, result)


def cow_ntdll(arch: str, result: ProgramResult) -> None:
    """Image code is not writable; VirtualProtect makes it PAGE_EXECUTE_WRITECOPY's private
    copy on the write (then PAGE_EXECUTE_READWRITE), and the patched code runs."""
    assert result.exit_code == 0
    assert lines(result) == [
        "writable 0",
        "cow-ntdll",
        "protect 1 old 20 patched 42",
        "now 40 type 1000000",
    ]


def writefile_huge(arch: str, result: ProgramResult) -> None:
    """A buffer the kernel's probe refuses is STATUS_ACCESS_VIOLATION (ERROR_NOACCESS), nothing
    written."""
    assert result.exit_code == 0
    cases = [line for line in lines(result) if line.startswith("case")]
    assert cases == [f"case {i} ok 0 written 0 error {ERROR_NOACCESS}" for i in range(6)]


def heap_corrupt(arch: str, result: ProgramResult) -> None:
    """Wine's heap refuses the double free; the overflow then breaks a later call."""
    assert lines(result)[:3] == ["heap-corrupt", "free 1", "double free 0"]
    assert result.exit_code is not None or result.error is not None


MODES: dict[str, Callable[[str, ProgramResult], None]] = {
    "nested": nested,
    "nested-forever": nested_forever,
    "continue-forever": continue_forever,
    "seh-garbage": exits_with(ACCESS_VIOLATION),
    "seh-loop": seh_loop,
    "continue-random": lambda arch, result: None,  # whatever random registers make of it
    "continue-zero": no_room(ACCESS_VIOLATION, "unmapped fetch"),  # a stack pointer of 0
    "continue-unaligned": unaligned,
    "raise-garbage": raise_garbage,
    "raise-params": raise_params,
    "jump-null": exits_with(ACCESS_VIOLATION),
    "jump-nx": exits_with(ACCESS_VIOLATION),
    "jump-teb": exits_with(ACCESS_VIOLATION),
    "stack-limits": exits_with(ACCESS_VIOLATION),
    "overflow": exits_with(NtStatus.STACK_OVERFLOW),  # no handler: the process ends
    "fastfail": fast_fail,
    "int80": int80,
    "ud2": exits_with(NtStatus.ILLEGAL_INSTRUCTION),
    "privileged": privileged,
    "thread-fault": thread_fault,
    "exit-in-heap": exit_in_heap,
    "terminate-self": terminate_self,
    "free-peb": free_peb,
    "noaccess-stack": no_room(ACCESS_VIOLATION),
    "cow-ntdll": cow_ntdll,
    "close-handles": exits_with(3),
    "writefile-huge": writefile_huge,
    "heap-corrupt": heap_corrupt,
}
ENDLESS = {"continue-forever", "seh-loop"}
# the main thread's stack is gone (freed, PAGE_NOACCESS): a call from Python faults on it
NO_STACK = {"free-peb", "noaccess-stack"}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_hostile_program_ends_cleanly_and_leaves_a_usable_process(arch: str, mode: str) -> None:
    program = load_program(build("hostile.exe", arch), ["hostile.exe", mode])
    proc = program.proc
    limit = ENDLESS_LIMIT if mode in ENDLESS else LIMIT
    start = time.monotonic()
    try:
        result = program.run(time_limit=limit)
    except (EmulationError, LoaderError, NtStatusError) as e:
        # allowed by the contract (any other exception fails the test by itself), but a
        # program's run reports how it ended in its result: none of these modes should
        pytest.fail(f"{mode}: the run raised a typed error instead of reporting it: {e!r}")
    elapsed = time.monotonic() - start
    assert elapsed < limit + 5.0, elapsed
    assert result.error is None or isinstance(result.error, EmulationError)
    assert result.exit_code is not None or result.error is not None  # it said how it ended
    assert mode in lines(result), result.text  # it got to its hostile act
    MODES[mode](arch, result)

    # the process is still usable: its memory reads, and a call from Python answers
    assert PEB.read(proc, proc.arch, proc.peb, "ProcessHeap") != 0
    callee = proc.resolve("hostile!callee")
    if mode in NO_STACK:
        with pytest.raises(EmulationError):
            proc.call(callee, 41, convention="cdecl")
    else:
        assert proc.call(callee, 41, convention="cdecl") == 42
    if mode == "cow-ntdll":  # the patched copy is the process's ntdll from now on
        assert proc.call("ntdll!RtlComputeCrc32", 0, proc.peb, 1) == 42
