"""User APCs, alerts, thread contexts, suspension, NtCreateThread and the instruction budget
with threads (issue 16), on x86 and x64.

tests/programs/threads.c's ``apc`` and ``context`` modes run through Wine's kernel32,
kernelbase and ntdll: QueueUserAPC with alertable SleepEx / WaitForSingleObjectEx, an APC that
waits for its thread's alertable wait, NtTestAlert and NtAlertThread, the APC of a
CREATE_SUSPENDED thread running as it starts; Get/SetThreadContext on a thread that never ran
and on one stopped while it spins, suspend counts; ``ntcreate``: NtCreateThread with the
program's own stack and CONTEXT. The system calls are also called directly
(``asmutil.syscall_stubs``) in a process with Wine's ntdll, an APC routine being a Python
callback that sees its arguments.
"""

from __future__ import annotations

import struct

import pytest
from asmutil import syscall_stubs
from programbuild import build

from emu import Process
from emu.facade import load_program
from emu.win.layouts import CONTEXT, CONTEXT_ARCH_BIT, CONTEXT_CONTROL, CONTEXT_INTEGER
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE, NtStatus

pytestmark = pytest.mark.wine

CURRENT_PROCESS, CURRENT_THREAD = -1, -2
WAIT_IO_COMPLETION = 0xC0


def _checks(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        out[name] = int(value, 16)
    return out


def _run(arch: str, mode: str, seed: int = 0, quantum: int | None = None) -> Process:
    proc = Process.from_program(
        build("threads.exe", arch), ["threads.exe", mode], threads_seed=seed, quantum=quantum
    )
    assert proc.program is not None
    result = proc.program.run()
    assert result.ok and result.exit_code == 0, result.error
    return proc


APC = {
    "self-queue": 1,
    "self-not-yet": 0,  # queued, not run: the thread has not waited alertably yet
    "self-sleepex": WAIT_IO_COMPLETION,
    "self-ran": 1,
    "self-arg": 0x51,
    "self-tid": 1,  # in the thread it was queued to
    "two-sleepex-0": WAIT_IO_COMPLETION,  # SleepEx(0, TRUE) runs both...
    "two-order": 0x12,  # ...in the order they were queued (NtContinue's TestAlert)
    "no-apc-sleepex": 0,
    "test-alert-runs": 0,  # NtTestAlert: STATUS_SUCCESS, the APC ran
    "test-alert-ran": 1,
    "alert-self": 0,
    "test-alert-alerted": NtStatus.ALERTED,  # NtAlertThread's flag, consumed...
    "test-alert-again": 0,  # ...once
    "alerted-wait": NtStatus.ALERTED,  # an alert ends an alertable wait
    "worker-queue": 1,
    "worker-not-run-while-not-alertable": 0,
    "worker-join": 0,
    "worker-saw-before-alertable": 0,  # its non-alertable wait ended without running it
    "worker-sleepex": WAIT_IO_COMPLETION,  # its SleepEx(INFINITE, TRUE) ran it
    "worker-apc-arg": 0x77,
    "worker-apc-tid": 1,
    "alertable-wait-woken": WAIT_IO_COMPLETION,  # queued while it waited: woken
    "alertable-wait-apc": 1,
    "alert-other": 0,
    "alert-other-woken": NtStatus.ALERTED,  # WaitForSingleObjectEx returns the status
    "alert-resume-suspend": 0,
    "alert-resume": 0,
    "alert-resume-previous": 1,
    "alert-resume-woken": NtStatus.ALERTED,
    "suspended-apc-waits": 0,
    "start-apc-before-routine": 1,  # LdrInitializeThunk's NtContinue(TestAlert) ran it
    "start-apc-tid": 1,
}

CONTEXT_CHECKS = {
    "new-get": 1,
    "new-start-routine": 1,  # a thread that never ran: RtlUserThreadStart(routine, argument)
    "new-start-arg": 0x10,
    "new-set": 1,
    "new-resume": 1,
    "new-changed-arg": 0x4321,  # the argument SetThreadContext gave it
    "suspend-1": 0,
    "suspend-2": 1,
    "resume-2": 2,
    "suspended-does-not-run": 1,
    "spinner-get": 1,
    "spinner-in-spins": 1,  # stopped inside its loop
    "spinner-set": 1,
    "resume-1": 1,
    "spinner-join": 0,
    "spinner-redirected": 0x99,  # resumed where SetThreadContext sent it
    "self-get": 1,
    "self-sp-on-stack": 1,
}


NTCREATE = {
    "ntcreate-status": 0,
    "ntcreate-tid": 1,  # the CLIENT_ID it wrote
    "ntcreate-not-started": 0,  # CreateSuspended
    "ntcreate-resume": 1,
    "ntcreate-join": 0,
    "ntcreate-exit-code": 0,  # the argument + 1 (per arch below)
    "ntcreate-seen": 0,
    "ntcreate-tls": 0,  # Wine's loader initialised the thread (TLS) before its CONTEXT ran
    "ntcreate-stack-kept": 1,  # the stack is its creator's: freed by it, not with the thread
    "ntcreate-no-context": NtStatus.INVALID_PARAMETER,
}


def test_nt_create_thread_runs_the_callers_context_on_its_stack(arch: str) -> None:
    proc = _run(arch, "ntcreate")
    assert proc.program is not None and proc.program.result is not None
    arg = 0x640 if arch == "x64" else 0x320
    want = {**NTCREATE, "ntcreate-exit-code": arg + 1, "ntcreate-seen": arg, "ntcreate-tls": arg}
    assert _checks(proc.program.result.text) == want
    created = [r for r in proc.syscalls if r.name == "NtCreateThread" and r.status == 0]
    assert len(created) == 1 and proc.symbolize(created[0].details["start"]).endswith(
        "old_style_start"
    )


def test_queue_user_apc_runs_in_alertable_waits_of_its_thread(arch: str) -> None:
    proc = _run(arch, "apc")
    assert proc.program is not None and proc.program.result is not None
    assert _checks(proc.program.result.text) == APC
    queued = [r for r in proc.syscalls if r.name == "NtQueueApcThread"]
    assert len(queued) == 7 and all(r.status == 0 for r in queued)
    # Wine's QueueUserAPC queues kernelbase's call_user_apc(routine, data), as Windows queues
    # kernel32's BaseDispatchAPC
    assert {proc.symbolize(r.args["ApcRoutine"]) for r in queued} == {"kernelbase!call_user_apc"}
    assert {proc.symbolize(r.args["ApcArgument1"]) for r in queued} == {"threads!record_apc"}
    assert [r.args["ApcArgument2"] for r in queued] == [0x51, 1, 2, 3, 0x77, 0x88, 0x99]
    assert not proc.syscall_dispatcher.warnings()


def test_apc_runs_repeat_exactly_for_a_seed(arch: str) -> None:
    runs = []
    for _ in range(2):
        proc = _run(arch, "apc", seed=3, quantum=2000)
        assert proc.program is not None and proc.program.result is not None
        runs.append((proc.program.result.text, list(proc.threads.schedule)))
    assert runs[0] == runs[1] and _checks(runs[0][0]) == APC


def test_get_and_set_thread_context_on_suspended_threads(arch: str) -> None:
    proc = _run(arch, "context", quantum=3000)
    assert proc.program is not None and proc.program.result is not None
    assert _checks(proc.program.result.text) == CONTEXT_CHECKS
    assert not proc.syscall_dispatcher.warnings()


# ---------------------------------------------------------------------- the calls themselves
class Calls:
    """System-call stubs in a process with Wine's ntdll (its KiUserApcDispatcher delivers),
    a scratch page, and an APC routine that records its arguments and thread."""

    def __init__(self, arch: str, x86_path: str = "int2e"):
        self.proc = Process.from_program(build("threads.exe", arch), ["threads.exe"])
        self.stubs = syscall_stubs(self.proc, x86_path)
        self.buf, _ = self.proc.memory.allocate(0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        self.mask = self.proc.arch.ptr_mask
        self.ran: list[tuple[int, ...]] = []
        x64 = self.proc.arch.ptr_size == 8
        # Wine calls the routine (arg1, arg2, arg3) and on x64 the CONTEXT as a fourth
        self.routine = self.proc.register_callback(self._record, 4 if x64 else 3)

    def _record(self, proc: Process, *args: int) -> int:
        self.ran.append((*args[:3], proc.threads.current.tid))
        return 0

    def __call__(self, name: str, *args: int) -> int:
        return self.proc.call(self.stubs[name], *args) & 0xFFFFFFFF

    def timeout(self, value: int) -> int:
        self.proc.write(self.buf + 0x900, struct.pack("<q", value))
        return self.buf + 0x900

    def event(self, signalled: bool) -> int:
        assert self("NtCreateEvent", self.buf + 0x800, 0x1F0003, 0, 0, int(signalled)) == 0
        return self.proc.read_ptr(self.buf + 0x800)

    def queue(self, *args: int, thread: int = CURRENT_THREAD) -> int:
        return self("NtQueueApcThread", thread & self.mask, self.routine, *args)


def test_apc_and_alert_calls_answer_as_windows(arch: str) -> None:
    c = Calls(arch)
    tid = c.proc.threads.main.tid
    poll = c.timeout(0)
    unsignalled, signalled = c.event(False), c.event(True)
    assert c.queue(1, 2, 3) == 0 and c.ran == []  # queued, not run
    # a non-alertable wait leaves it queued
    assert c("NtWaitForSingleObject", unsignalled, 0, poll) == NtStatus.TIMEOUT and c.ran == []
    # a signalled object ends an alertable wait before any APC runs
    assert c("NtWaitForSingleObject", signalled, 1, poll) == 0 and c.ran == []
    # an alertable wait runs it and returns STATUS_USER_APC, even a poll
    assert c("NtWaitForSingleObject", unsignalled, 1, poll) == NtStatus.USER_APC
    assert c.ran == [(1, 2, 3, tid)]
    # two queued: one alertable sleep runs both, in order, and ends early
    clock = c.proc.threads.clock()
    assert c.queue(4, 5, 6) == 0 and c.queue(7, 8, 9) == 0
    assert c("NtDelayExecution", 1, c.timeout(-10_000_000)) == NtStatus.USER_APC
    assert c.ran[1:] == [(4, 5, 6, tid), (7, 8, 9, tid)]
    assert c.proc.threads.clock() < clock + 10_000_000
    # NtTestAlert runs what is queued; NtAlertThread's alert comes first and is consumed
    assert c("NtTestAlert") == 0 and len(c.ran) == 3
    assert c.queue(10, 11, 12) == 0
    assert c("NtAlertThread", CURRENT_THREAD & c.mask) == 0
    assert c("NtTestAlert") == NtStatus.ALERTED and len(c.ran) == 3
    assert c("NtTestAlert") == 0 and c.ran[-1] == (10, 11, 12, tid)
    assert c("NtAlertThread", CURRENT_THREAD & c.mask) == 0
    handles = c.buf + 0xA00
    c.proc.write_ptr(handles, unsignalled)
    assert c("NtWaitForMultipleObjects", 1, handles, 1, 1, poll) == NtStatus.ALERTED
    assert c("NtDelayExecution", 1, poll) == 0  # the alert was consumed: a plain Sleep(0)
    # NtQueueApcThreadEx: no reserve object is NtQueueApcThread; heapemu makes none
    ex = c("NtQueueApcThreadEx", CURRENT_THREAD & c.mask, 0, c.routine, 13, 14, 15)
    assert ex == 0
    bad = c("NtQueueApcThreadEx", CURRENT_THREAD & c.mask, 0x40, c.routine, 0, 0, 0)
    assert bad == NtStatus.INVALID_HANDLE
    assert c("NtSignalAndWaitForSingleObject", signalled, unsignalled, 1, poll) == 0xC0
    assert c.ran[-1] == (13, 14, 15, tid)
    # a thread that has ended takes no APC and has no context
    start = c.proc.resolve("ntdll!RtlExitUserThread")
    assert c("NtCreateThreadEx", c.buf, 0x1FFFFF, 0, CURRENT_PROCESS & c.mask, start, 0, 1,
             0, 0, 0, 0) == 0  # fmt: skip
    thread = c.proc.read_ptr(c.buf)
    assert c("NtTerminateThread", thread, 3) == 0
    assert c.queue(0, 0, 0, thread=thread) == NtStatus.UNSUCCESSFUL
    assert c("NtGetContextThread", thread, c.buf + 0x1000) == NtStatus.UNSUCCESSFUL
    # without Wine's ntdll there is no KiUserApcDispatcher to run an APC
    bare = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(bare)
    status = bare.call(stubs["NtQueueApcThread"], CURRENT_THREAD & c.mask, 0x1000, 0, 0, 0)
    assert status == NtStatus.NOT_SUPPORTED


def _field(c: Calls, ctx: bytes, name: str) -> int:
    f = CONTEXT.fields[name]
    return int(struct.unpack_from(f.fmt(c.proc.arch), ctx, f.offset(c.proc.arch))[0])


def test_thread_context_calls_honour_context_flags(arch: str) -> None:
    c = Calls(arch)
    a, x64 = c.proc.arch, arch == "x64"
    size, out = CONTEXT.size(a), c.buf + 0x1000
    pc_name, first, second = ("Rip", "Rcx", "Rdx") if x64 else ("Eip", "Eax", "Ebx")
    start = c.proc.resolve("ntdll!RtlExitUserThread")
    assert c("NtCreateThreadEx", c.buf, 0x1FFFFF, 0, CURRENT_PROCESS & c.mask, start, 0x1234, 1,
             0, 0, 0, 0) == 0  # fmt: skip
    thread = c.proc.read_ptr(c.buf)

    def get(handle: int, flags: int) -> bytes:
        c.proc.write(out, b"\xaa" * size)
        c.proc.write(out + CONTEXT.offset(a, "ContextFlags"), struct.pack("<I", flags))
        assert c("NtGetContextThread", handle, out) == 0
        return c.proc.read(out, size)

    arch_bit = CONTEXT_ARCH_BIT[arch]
    untouched = a.ptr_mask & int.from_bytes(b"\xaa" * 8, "little")
    # without the architecture's bit no part is selected (winnt.h's CONTEXT_INTEGER has it)
    assert _field(c, get(thread, CONTEXT_INTEGER), first) == untouched
    ctx = get(thread, arch_bit | CONTEXT_INTEGER)  # a thread that never ran: its start
    assert (_field(c, ctx, first), _field(c, ctx, second)) == (start, 0x1234)
    assert _field(c, ctx, pc_name) == a.ptr_mask & int.from_bytes(b"\xaa" * 8, "little")
    ctx = get(thread, arch_bit | CONTEXT_CONTROL)
    assert _field(c, ctx, pc_name) == c.proc.resolve("ntdll!RtlUserThreadStart")
    assert _field(c, ctx, first) == a.ptr_mask & int.from_bytes(b"\xaa" * 8, "little")
    # SetContextThread changes what it will start with, only the parts asked for
    changed = bytearray(get(thread, arch_bit | CONTEXT_INTEGER | CONTEXT_CONTROL))
    f = CONTEXT.fields[second]
    struct.pack_into(f.fmt(a), changed, f.offset(a), 0x5678)
    struct.pack_into("<I", changed, CONTEXT.offset(a, "ContextFlags"), arch_bit | CONTEXT_INTEGER)
    struct.pack_into(CONTEXT.fields[pc_name].fmt(a), changed, CONTEXT.offset(a, pc_name), 0x1000)
    c.proc.write(out, bytes(changed))
    assert c("NtSetContextThread", thread, out) == 0
    ctx = get(thread, arch_bit | CONTEXT_INTEGER | CONTEXT_CONTROL)
    assert _field(c, ctx, second) == 0x5678 and _field(c, ctx, first) == start
    assert _field(c, ctx, pc_name) == c.proc.resolve("ntdll!RtlUserThreadStart")
    # the calling thread: its pc is the return from the system call (past `syscall`/`int 0x2e`)
    stub = c.stubs["NtGetContextThread"]
    ctx = get(CURRENT_THREAD & c.mask, arch_bit | CONTEXT_CONTROL)
    assert _field(c, ctx, pc_name) == stub + (10 if x64 else 11)  # at its `ret`
    # CONTEXT_ALIGN'ed, as NtContinue
    misaligned = out + (8 if x64 else 2)
    assert c("NtGetContextThread", thread, misaligned) == NtStatus.DATATYPE_MISALIGNMENT
    assert c("NtSetContextThread", thread, misaligned) == NtStatus.DATATYPE_MISALIGNMENT


def test_apc_delivered_from_sysenter_and_syscall(arch: str) -> None:
    """A system call instruction after which Unicorn steps pc (x64 `syscall`, x86 `sysenter`
    through KiFastSystemCall): the APC's CONTEXT resumes past it."""
    c = Calls(arch, "sysenter")
    assert c.queue(0x21, 0x22, 0x23) == 0
    assert c("NtTestAlert") == 0
    assert c.ran == [(0x21, 0x22, 0x23, c.proc.threads.main.tid)]
    assert c("NtTestAlert") == 0 and len(c.ran) == 1


def test_the_budget_counts_every_instruction_of_every_thread(arch: str) -> None:
    """Runs cut short by system calls (nearly all of the apc mode's: waits, switches, APCs)
    are counted exactly: a budget of exactly what the program needs completes it (counting
    the same again), one less stops it there."""
    exe = build("threads.exe", arch)
    program = load_program(exe, ["threads.exe", "apc"])
    result = program.run(max_instructions=10**10)
    assert result.ok and result.exit_code == 0, result.error
    need = program.proc.threads.instructions
    assert need > 1_000_000
    program = load_program(exe, ["threads.exe", "apc"])
    assert program.run(max_instructions=need).ok
    assert program.proc.threads.instructions == need
    program = load_program(exe, ["threads.exe", "apc"])
    result = program.run(max_instructions=need - 1)
    assert result.error is not None and result.error.kind == "instruction budget exhausted"
    assert program.proc.threads.instructions == need - 1


def test_no_room_below_a_garbage_stack_pointer(arch: str) -> None:
    """An APC due while the stack pointer is too low for its frame (a program's garbage esp,
    as the system-call fuzzer made it) is not delivered: no Python error, the APC stays
    queued, and it runs once the stack is back."""
    from emu.nt.apc import deliver_apc

    c = Calls(arch)
    thread = c.proc.threads.current
    assert c.queue(1, 2, 3) == 0
    sp = c.proc.cpu.sp
    c.proc.cpu.sp = 0x100
    assert not deliver_apc(c.proc, thread) and len(thread.apcs) == 1
    c.proc.cpu.sp = sp
    assert c("NtTestAlert") == 0 and [r[:3] for r in c.ran] == [(1, 2, 3)]
