"""Threads on one emulated CPU (issue 16 cause 7), on x86 and x64.

tests/programs/threads.c runs through Wine's kernel32/kernelbase/ntdll: threads created,
joined and their exit codes read; events, semaphores, mutexes (recursion, abandonment),
critical sections and Sleep; eight threads sharing one heap, repeated exactly for a seed;
a deadlock; ExitProcess from a worker. The system calls themselves are also called directly
(``asmutil.syscall_stubs``) where a single thread shows their Windows answers.
"""

from __future__ import annotations

import json
import struct

import pytest
from asmutil import syscall_stubs
from programbuild import build

from emu import EmulationError, Process
from emu.cli.exec import exec_main
from emu.facade import load_program
from emu.heap.registry import walk_heap
from emu.load.program import ProgramResult
from emu.win.layouts import TEB
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE, NtStatus

pytestmark = pytest.mark.wine

CURRENT = -1
STILL_ACTIVE, WAIT_TIMEOUT, ERROR_TOO_MANY_POSTS, ERROR_NOT_OWNER = 0x103, 0x102, 298, 288
WAIT_ABANDONED = 0x80
# The allocators a program's heaps can be served by. Today Wine's own heap; when `heapemu
# exec --allocator` routes Wine's Rtl*Heap to another allocator, list ALLOCATOR_NAMES here.
PROGRAM_ALLOCATORS = ("wine",)


def _checks(result: ProgramResult) -> dict[str, int]:
    """The program's "<check> <hex value>" lines."""
    out = {}
    for line in result.text.splitlines():
        name, _, value = line.partition(" ")
        out[name] = int(value.split()[0], 16)
    return out


def _run(arch: str, *args: str, seed: int = 0, quantum: int | None = None) -> Process:
    proc = Process.from_program(
        build("threads.exe", arch), ["threads.exe", *args], threads_seed=seed, quantum=quantum
    )
    assert proc.program is not None
    proc.program.run()
    return proc


BASIC = {
    "wait-all": 0,
    **{f"exit-code-{i}": 0x100 + i for i in range(4)},  # each thread's own TLS slot
    "suspended-still-active": STILL_ACTIVE,
    "wait-suspended-timeout": WAIT_TIMEOUT,
    "resume-previous": 1,
    "wait-exit-thread": 0,
    "exit-thread-code": 0x77,
    "critical-section-counter": 3 * 2000,
    "ping-pong-rounds": 5,
    "ping-pong-join": 0,
    "event-poll-timeout": WAIT_TIMEOUT,
    "manual-stays-set": 0,
    "manual-reset": WAIT_TIMEOUT,
    "wait-any-index": 1,
    "pulse-no-waiter": 1,
    "sem-release-2": 1,
    "sem-previous": 0,
    "sem-over-limit": ERROR_TOO_MANY_POSTS,
    "sem-one-left-waiting": WAIT_TIMEOUT,  # two of three took the two releases
    "sem-all-taken": 0,
    "mutex-recursive": 0,
    "mutex-release-1": 1,
    "mutex-release-2": 1,
    "mutex-release-not-owner": ERROR_NOT_OWNER,
    "mutex-abandoned": WAIT_ABANDONED,
    "mutex-owned-after-abandon": 0,
    "sleeper-not-yet": WAIT_TIMEOUT,  # 10 ms of a 50 ms sleep: on the emulated clock
    "sleeper-done": 0,
    "keyed-create": 0,
    "keyed-release-alone": WAIT_TIMEOUT,  # nobody waits with the key: the release times out
    "keyed-other-key": WAIT_TIMEOUT,  # the releaser blocks on key 0x10, not 0x20
    "keyed-wait": 0,
    "keyed-released": 0,
    "thread-attach-count": 15,  # every thread got DLL_THREAD_ATTACH (the program's TLS callback)
    "thread-detach-count": 15,
}


@pytest.mark.parametrize("seed", [0, 5])
def test_threads_waits_and_synchronisation_objects(arch: str, seed: int) -> None:
    proc = _run(arch, "basic", seed=seed, quantum=3000)
    assert proc.program is not None and proc.program.result is not None
    result = proc.program.result
    assert result.ok, result.error
    assert result.exit_code == 0
    assert _checks(result) == BASIC
    created = [r for r in proc.syscalls if r.name == "NtCreateThreadEx"]
    assert len(created) == 15 and all(r.status == 0 for r in created)
    assert not [r for r in proc.syscalls if r.status == NtStatus.NOT_IMPLEMENTED]
    assert proc.threads.switches > 15
    # the threads ended and released their TEBs and stacks; the main thread is current again
    assert proc.threads.current is proc.threads.main
    assert all(t.released for t in proc.threads.threads[1:])


def test_a_new_thread_has_its_own_teb_and_stack(arch: str) -> None:
    """At the thread function: TEB.Self, ClientId, PEB, stack bounds around the stack pointer,
    and Wine's loader gave it a TLS array (ThreadLocalStoragePointer)."""
    proc = Process.from_program(build("threads.exe", arch), ["threads.exe", "basic"])
    assert proc.program is not None
    a, seen = proc.arch, []

    def at_start(ctx: object) -> None:
        thread = proc.threads.current
        teb = thread.teb
        fields = {
            name: TEB.read(proc, a, teb, name)
            for name in ("Self", "UniqueThread", "ProcessEnvironmentBlock", "StackBase",
                         "StackLimit", "ThreadLocalStoragePointer")
        }  # fmt: skip
        seen.append((thread.tid, teb, proc.cpu.sp, fields))

    proc.breakpoint(f"{proc.program.exe.short_name}!returns_arg", at_start)
    assert proc.program.run().ok
    assert len(seen) == 4
    assert len({tid for tid, *_ in seen}) == 4  # (a TEB freed at a thread's end is reused)
    for tid, teb, sp, fields in seen:
        assert fields["Self"] == teb and fields["UniqueThread"] == tid
        assert fields["ProcessEnvironmentBlock"] == proc.peb
        assert fields["StackLimit"] < sp < fields["StackBase"]
        assert fields["ThreadLocalStoragePointer"] != 0
        assert tid != TEB.read(proc, a, proc.teb, "UniqueThread")


@pytest.mark.parametrize("allocator", PROGRAM_ALLOCATORS)
def test_eight_threads_on_one_heap_repeat_exactly(arch: str, allocator: str) -> None:
    """8 threads x 10,000 random HeapAlloc/HeapFree on one HeapCreate heap (serialised by its
    lock): the run ends, every worker saw its blocks intact, the heap walks clean, and the same
    seed gives the same output, the same schedule and the same final heap."""
    runs = []
    for _ in range(2):
        proc = _run(arch, "heap", "8", "10000", seed=1)
        assert proc.program is not None and proc.program.result is not None
        result = proc.program.result
        assert result.ok and result.exit_code == 0, result.error
        checks = _checks(result)
        assert checks["heap-join"] == 0 and checks["heap-validate"] == 1
        assert [checks[f"worker-{i}"] for i in range(8)] == [0] * 8
        shared = proc.process_heaps[-1]  # created last, by HeapCreate
        report = walk_heap(proc, shared, allocator)
        assert report.ok, report.corruptions
        busy = [(b.address, b.size) for b in report.busy_blocks()]
        assert len(busy) == checks["heap-busy-blocks"] > 0
        layout = [(b.address, b.size, b.busy) for b in report.blocks]
        runs.append((result.text, layout, list(proc.threads.schedule)))
        assert proc.threads.switches > 100
    assert runs[0] == runs[1]


def test_another_seed_explores_another_interleaving(arch: str) -> None:
    """Seeds 1 and 2 switch threads in other orders; the event recorder keeps each thread's
    calls apart (every RtlAllocateHeap/RtlFreeHeap of the workers returns, to its caller)."""
    outputs = {}
    for seed in (1, 2):
        proc = Process.from_program(
            build("threads.exe", arch), ["threads.exe", "heap", "4", "100"],
            threads_seed=seed, quantum=2000,
        )  # fmt: skip
        assert proc.program is not None
        with proc.record() as rec:
            result = proc.program.run()
        checks = _checks(result)
        assert [checks[f"worker-{i}"] for i in range(4)] == [0] * 4
        assert checks["heap-validate"] == 1
        outputs[seed] = list(proc.threads.schedule)
        shared = proc.process_heaps[-1]
        calls = [e for e in rec.all if e.args.get("HeapHandle") == shared]
        assert len(calls) >= 4 * 100 and all(e.finished and e.ret for e in calls)
        assert all(e.caller.startswith("ntdll!") or "heap_worker" in e.caller for e in calls)
    assert outputs[1] != outputs[2]


def test_a_deadlock_ends_the_run_with_a_clear_error(arch: str) -> None:
    proc = _run(arch, "deadlock")
    assert proc.program is not None and proc.program.result is not None
    result = proc.program.result
    assert result.exit_code is None and result.error is not None
    assert result.error.kind == "deadlock: all 2 threads wait forever"
    detail = result.error.fault.detail
    assert detail.count("waits for mutant owned by thread") == 2, detail
    assert result.text.splitlines() == ["deadlock-begins 1"]


def test_exit_process_from_a_worker_ends_every_thread(arch: str) -> None:
    proc = _run(arch, "exit")
    assert proc.program is not None and proc.program.result is not None
    result = proc.program.result
    assert result.ok and result.exit_code == 0x2A
    assert proc.threads.main.terminated  # killed by NtTerminateProcess(NULL) from the worker


# ---------------------------------------------------------------------- the calls themselves
class Calls:
    """System-call stubs in a one-thread process, and a scratch page for their arguments."""

    def __init__(self, arch: str):
        self.proc = Process(arch, time_limit=10.0)
        self.stubs = syscall_stubs(self.proc)
        self.buf, _ = self.proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        self.n = self.proc.arch.ptr_size

    def __call__(self, name: str, *args: int) -> int:
        return self.proc.call(self.stubs[name], *args) & 0xFFFFFFFF

    def handle(self, name: str, *args: int) -> int:
        assert self(name, self.buf + 0x800, 0x1F0003, 0, *args) == 0
        return self.proc.read_ptr(self.buf + 0x800)

    def timeout(self, value: int) -> int:
        self.proc.write(self.buf + 0x900, struct.pack("<q", value))
        return self.buf + 0x900

    def handles(self, *handles: int) -> int:
        for i, h in enumerate(handles):
            self.proc.write_ptr(self.buf + 0xA00 + i * self.n, h)
        return self.buf + 0xA00

    def u32(self, addr: int) -> int:
        return self.proc.read_u32(addr)


def test_events_semaphores_and_mutants_answer_as_windows(arch: str) -> None:
    c = Calls(arch)
    poll = c.timeout(0)
    auto = c.handle("NtCreateEvent", 1, 1)  # SynchronizationEvent, signalled
    assert c("NtWaitForSingleObject", auto, 0, poll) == 0
    assert c("NtWaitForSingleObject", auto, 0, poll) == NtStatus.TIMEOUT  # reset by the wait
    manual = c.handle("NtCreateEvent", 0, 0)  # NotificationEvent
    assert c("NtSetEvent", manual, c.buf) == 0 and c.u32(c.buf) == 0  # PreviousState
    assert c("NtWaitForSingleObject", manual, 0, poll) == 0
    assert c("NtWaitForSingleObject", manual, 0, poll) == 0  # stays set
    assert c("NtPulseEvent", manual, c.buf) == 0 and c.u32(c.buf) == 1
    assert c("NtWaitForSingleObject", manual, 0, poll) == NtStatus.TIMEOUT  # pulsed: reset
    assert c("NtCreateEvent", c.buf, 0, 0, 2, 0) == NtStatus.INVALID_PARAMETER_4  # no such type

    sem = c.handle("NtCreateSemaphore", 1, 2)
    assert c("NtReleaseSemaphore", sem, 2, c.buf) == NtStatus.SEMAPHORE_LIMIT_EXCEEDED
    assert c("NtReleaseSemaphore", sem, 1, c.buf) == 0 and c.u32(c.buf) == 1
    assert c("NtCreateSemaphore", c.buf, 0, 0, 3, 2) == NtStatus.INVALID_PARAMETER_4

    # WaitAny: the lowest signalled index; WaitAll: nothing taken unless all can be
    empty = c.handle("NtCreateEvent", 1, 0)
    arr = c.handles(empty, sem)
    assert c("NtWaitForMultipleObjects", 2, arr, 1, 0, poll) == 1  # STATUS_WAIT_1
    assert c("NtWaitForMultipleObjects", 2, arr, 0, 0, poll) == NtStatus.TIMEOUT
    assert c("NtReleaseSemaphore", sem, 1, c.buf) == 0 and c.u32(c.buf) == 1  # count kept
    assert c("NtWaitForMultipleObjects", 2, c.handles(sem, sem), 0, 0, poll) == (
        NtStatus.INVALID_PARAMETER_MIX
    )
    assert c("NtWaitForMultipleObjects", 0, arr, 1, 0, poll) == NtStatus.INVALID_PARAMETER_1
    assert c("NtWaitForMultipleObjects", 65, arr, 1, 0, poll) == NtStatus.INVALID_PARAMETER_1
    assert c("NtWaitForMultipleObjects", 2, arr, 2, 0, poll) == NtStatus.INVALID_PARAMETER_3

    mutant = c.handle("NtCreateMutant", 1)  # owned by the caller
    assert c("NtWaitForSingleObject", mutant, 0, poll) == 0  # recursion
    assert c("NtReleaseMutant", mutant, c.buf) == 0 and c.u32(c.buf) == 0xFFFFFFFF  # -1
    assert c("NtReleaseMutant", mutant, c.buf) == 0 and c.u32(c.buf) == 0
    assert c("NtReleaseMutant", mutant, c.buf) == NtStatus.MUTANT_NOT_OWNED
    assert c("NtWaitForSingleObject", 0x7FF0, 0, poll) == NtStatus.INVALID_HANDLE


def test_time_passes_only_on_the_emulated_clock(arch: str) -> None:
    """A one-thread process: a timed wait or a sleep moves the clock by its length (no host
    time passes); a wait nothing can end is a deadlock."""
    c = Calls(arch)
    event = c.handle("NtCreateEvent", 1, 0)

    def now() -> int:
        assert c("NtQuerySystemTime", c.buf + 0x100) == 0
        return int(struct.unpack("<q", c.proc.read(c.buf + 0x100, 8))[0])

    before = now()
    assert c("NtWaitForSingleObject", event, 0, c.timeout(-5_000_000)) == NtStatus.TIMEOUT
    assert c("NtDelayExecution", 0, c.timeout(-20_000_000)) == 0  # 2 s
    assert 25_000_000 <= now() - before < 26_000_000
    absolute = now() + 10_000_000  # a system time 1 s ahead
    assert c("NtWaitForSingleObject", event, 0, c.timeout(absolute)) == NtStatus.TIMEOUT
    assert now() >= absolute
    assert c("NtYieldExecution") == NtStatus.NO_YIELD_PERFORMED
    with pytest.raises(EmulationError, match="deadlock: the only thread waits forever"):
        c("NtWaitForSingleObject", event, 0, 0)
    with pytest.raises(EmulationError, match="deadlock"):
        c("NtWaitForAlertByThreadId", 0, 0)
    tid = TEB.read(c.proc, c.proc.arch, c.proc.teb, "UniqueThread")
    assert c("NtAlertThreadByThreadId", tid) == 0  # an alert before the wait ends it at once
    assert c("NtWaitForAlertByThreadId", 0, 0) == NtStatus.ALERTED
    assert c("NtAlertThreadByThreadId", 0x7777) == NtStatus.INVALID_CID
    # keyed events: NULL is the system's; alone, a release or wait can only time out
    assert c("NtReleaseKeyedEvent", 0, 0x10, 0, c.timeout(0)) == NtStatus.TIMEOUT
    assert c("NtWaitForKeyedEvent", 0, 0x10, 0, c.timeout(-10_000)) == NtStatus.TIMEOUT
    with pytest.raises(EmulationError, match="a release on keyed event"):
        c("NtWaitForKeyedEvent", 0, 0x10, 0, 0)


def test_thread_calls_without_wine_and_on_the_only_thread(arch: str) -> None:
    c = Calls(arch)
    # a thread starts through Wine's ntdll (LdrInitializeThunk): without it, none can start
    assert c("NtCreateThreadEx", c.buf, 0x1FFFFF, 0, CURRENT & c.proc.arch.ptr_mask, 0x1000, 0,
             0, 0, 0, 0, 0) == NtStatus.NOT_SUPPORTED  # fmt: skip
    assert c("NtTerminateThread", 0, 5) == NtStatus.CANT_TERMINATE_SELF  # NULL: not the last
    cls, size = 0, 0x30 if arch == "x64" else 0x1C  # ThreadBasicInformation
    current = -2 & c.proc.arch.ptr_mask
    assert c("NtQueryInformationThread", current, cls, c.buf, size, 0) == 0
    assert c.u32(c.buf) == STILL_ACTIVE  # ExitStatus: STATUS_PENDING while it runs
    assert c.proc.read_ptr(c.buf + (8 if arch == "x64" else 4)) == c.proc.teb
    assert c("NtQueryInformationThread", current, 12, c.buf, 4, 0) == 0  # ThreadAmILastThread
    assert c.u32(c.buf) == 1


def test_terminate_thread_and_the_last_thread_ending_the_process(arch: str) -> None:
    """TerminateThread stops a thread that never makes a system call (its turns end with the
    quantum); when main leaves with ExitThread, the process lives on until its last thread
    returns, and ends with that thread's exit code."""
    proc = _run(arch, "last", quantum=5000)
    assert proc.program is not None and proc.program.result is not None
    result = proc.program.result
    assert result.ok, result.error
    assert _checks(result) == {
        "terminate-other": 1,
        "terminated-wait": 0,
        "terminated-code": 0x55,
        "last-thread-runs": 1,
    }
    assert result.exit_code == 9
    assert proc.threads.main.terminated and proc.threads.main.exit_status == 7


def test_budget_and_time_limit_hold_across_threads(arch: str) -> None:
    program = load_program(build("threads.exe", arch), ["threads.exe", "heap", "8", "100000"])
    result = program.run(max_instructions=3_000_000)
    assert result.error is not None and result.error.kind == "instruction budget exhausted"
    assert result.error.context.startswith("in thread 0x")
    program = load_program(build("threads.exe", arch), ["threads.exe", "heap", "8", "100000"])
    result = program.run(time_limit=1.0)
    assert result.error is not None and result.error.kind == "wall-clock limit exceeded"


def test_exec_takes_a_threads_seed_and_a_quantum(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = str(build("threads.exe", arch))
    runs = []
    for _ in range(2):
        assert exec_main(["--threads-seed", "9", "--quantum", "3000", exe, "heap", "3", "50"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and "heap-validate 1" in runs[0]
    # stacks are walked on each thread's own stack; no block is freed through another heap
    assert exec_main(["--json", "--cross-heap", "--stacks", "4", exe, "heap", "3", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"]["created"] == 4 and report["threads"]["seed"] == 0
    assert report["threads"]["quantum"] == 100_000 and report["threads"]["switches"] >= 3
    assert report["cross_heap_frees"] == [] and report["frees_checked"] > 30
    worker = [e for e in report["events"] if e["caller"].startswith("threads!heap_worker")]
    assert len(worker) >= 3 * 30
    assert all(any("heap_worker" in f["symbol"] for f in e["stack"]) for e in worker)
    with pytest.raises(SystemExit) as bad:
        exec_main(["--quantum", "0", exe])  # at least one instruction
    assert bad.value.code == 2 and "--quantum: must be at least 1" in capsys.readouterr().err


def test_snapshots_keep_the_scheduler_and_refuse_several_live_threads(arch: str) -> None:
    c = Calls(arch)
    snap = c.proc.snapshot()
    clock = c.proc.threads.clock()
    assert c("NtDelayExecution", 0, c.timeout(-50_000_000)) == 0
    assert c.proc.threads.clock() > clock + 50_000_000
    c.proc.restore(snap)
    assert c.proc.threads.clock() == clock
    assert c.proc.threads.main.stack is c.proc.thread_stack  # still the process's own

    proc = Process.from_program(build("threads.exe", arch), ["threads.exe"])
    stubs = syscall_stubs(proc)
    out, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    mask = proc.arch.ptr_mask
    start, suspended = proc.resolve("ntdll!RtlExitUserThread"), 1
    status = proc.call(
        stubs["NtCreateThreadEx"], out, 0x1FFFFF, 0, CURRENT & mask, start, 0, suspended, 0, 0, 0, 0
    )
    assert status == 0 and len(proc.threads.live()) == 2
    thread = proc.threads.threads[-1]
    assert thread.suspend_count == 1 and thread.ready is False
    assert TEB.read(proc, proc.arch, thread.teb, "UniqueThread") == thread.tid
    with pytest.raises(EmulationError, match="several live threads"):
        proc.snapshot()


def test_thread_handles_suspension_and_tls_cells(arch: str) -> None:
    """A suspended thread (made, never run): its handle from NtOpenThread by client id,
    suspend counts, its start address; TlsFree's ThreadZeroTlsCell clears the slot in every
    thread's TEB; NtSignalAndWaitForSingleObject signals, then waits."""
    proc = Process.from_program(build("threads.exe", arch), ["threads.exe"])
    stubs = syscall_stubs(proc)
    buf, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    a, n = proc.arch, proc.arch.ptr_size

    def call(name: str, *args: int) -> int:
        return proc.call(stubs[name], *args) & 0xFFFFFFFF

    start = proc.resolve("ntdll!RtlExitUserThread")
    assert call("NtCreateThreadEx", buf, 0x1FFFFF, 0, CURRENT & a.ptr_mask, start, 0, 1,
                0, 0, 0, 0) == 0  # fmt: skip
    created = proc.read_ptr(buf)
    thread = proc.threads.threads[-1]
    proc.write(buf + 0x100, a.pack_ptr(0x1000) + a.pack_ptr(thread.tid))  # CLIENT_ID
    assert call("NtOpenThread", buf + 0x80, 0x1FFFFF, 0, buf + 0x100) == 0
    opened = proc.read_ptr(buf + 0x80)
    assert opened != created and proc.objects.get(opened, type(thread)) is thread
    proc.write(buf + 0x100 + n, a.pack_ptr(0x9999))
    assert call("NtOpenThread", buf + 0x80, 0x1FFFFF, 0, buf + 0x100) == NtStatus.INVALID_CID
    assert call("NtSuspendThread", opened, buf + 0x200) == 0 and proc.read_u32(buf + 0x200) == 1
    assert call("NtResumeThread", created, buf + 0x200) == 0 and proc.read_u32(buf + 0x200) == 2
    assert thread.suspend_count == 1
    assert call("NtQueryInformationThread", opened, 9, buf + 0x300, n, 0) == 0
    assert proc.read_ptr(buf + 0x300) == start  # ThreadQuerySetWin32StartAddress
    assert call("NtQueryInformationThread", opened, 12, buf + 0x300, 4, 0) == 0
    assert proc.read_u32(buf + 0x300) == 0  # ThreadAmILastThread: two threads live

    for teb in (proc.teb, thread.teb):
        proc.write_ptr(TEB.address(a, teb, "TlsSlots") + 5 * n, 0x1234)
    proc.write(buf + 0x400, struct.pack("<I", 5))
    assert call("NtSetInformationThread", -2 & a.ptr_mask, 10, buf + 0x400, 4) == 0
    for teb in (proc.teb, thread.teb):
        assert proc.read_ptr(TEB.address(a, teb, "TlsSlots") + 5 * n) == 0

    poll = buf + 0x500
    proc.write(poll, bytes(8))
    assert call("NtCreateEvent", buf + 0x600, 0x1F0003, 0, 0, 0) == 0
    assert call("NtCreateEvent", buf + 0x608, 0x1F0003, 0, 0, 0) == 0
    first, second = proc.read_ptr(buf + 0x600), proc.read_ptr(buf + 0x608)
    assert call("NtSignalAndWaitForSingleObject", first, second, 0, poll) == NtStatus.TIMEOUT
    assert call("NtWaitForSingleObject", first, 0, poll) == 0  # it was signalled
    assert call("NtSignalAndWaitForSingleObject", first, first, 0, poll) == 0
    assert call("NtTerminateThread", created, 3) == 0
    assert call("NtWaitForSingleObject", opened, 0, poll) == 0  # an ended thread is signalled
    assert call("NtSuspendThread", opened, 0) == NtStatus.THREAD_IS_TERMINATING


def test_thread_stacks_are_the_sizes_asked_and_grow_where_the_teb_says(arch: str) -> None:
    """threads.c "stacks": a new thread's stack is what CreateThread / RtlCreateUserThread
    ask (commit to pages, at least two; reserve to 64 KiB, the image's 2 MiB for 0; a commit
    beyond the reserve raises it to a multiple of 1 MiB), the bottom only reserved, and grows
    by its guard page to 0x9000 over an 0x8000-byte frame, as Windows does in Wine's ntdll
    tests virtual.c test_RtlCreateUserStack; ZeroBits bounds it (a mask only on x64). A stack
    of the program's own grows once the TEB names it (kernel32 tests virtual.c
    test_stack_commit): every page down to 4 above its bottom, the guard page left below.
    A guard page set in the committed stack (VirtualProtect, VirtualAlloc's MEM_COMMIT) moves
    StackLimit above it; clearing it does not move it back (test_stack_growth_thread)."""
    proc = _run(arch, "stacks")
    assert proc.program is not None and proc.program.result is not None
    assert proc.program.result.ok
    checks = _checks(proc.program.result)
    expected = {}
    for name, committed, reserved, grown in (
        ("commit-3f00", 0x4000, 0x200000, 0x9000),
        ("reserve-3ff000", 0x2000, 0x400000, 0x9000),
        ("commit-280000", 0x280000, 0x300000, 0x280000),
    ):
        expected.update({
            f"{name}-committed": committed,
            f"{name}-reserved": reserved,
            f"{name}-bottom-state": MEM_RESERVE,
            f"{name}-grown": grown,
        })  # fmt: skip
    expected.update({
        "rtl-status": 0,
        "rtl-committed": 0x2000,
        "rtl-reserved": 0x100000,
        "rtl-zero-bits-13": NtStatus.NO_MEMORY,
        "rtl-zero-bits-mask": 0 if arch == "x64" else NtStatus.INVALID_PARAMETER_3,
        "own-stack-result": 42,
        "own-stack-limit": 0x4000,
        "own-stack-guard": PAGE_READWRITE | 0x100,  # PAGE_GUARD
        "guard-set-limit": 0x3000,
        "guard-set-old": PAGE_READWRITE,
        "guard-cleared-limit": 0x3000,
        "guard-commit-limit": 0x5000,
    })  # fmt: skip
    assert checks == expected
