"""No Python exception escapes a system call: hostile arguments get the NTSTATUS Windows gives,
and a bug in a handler is a clean STATUS_INTERNAL_ERROR for the program (tests raise it)."""

from __future__ import annotations

import contextlib
import random

import pytest
from asmutil import NUMBERS, argc, assemble, syscall_stubs
from programbuild import build

from emu import EmulationError, Process
from emu.facade import load_program
from emu.nt.kernel import SyscallHandler
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE, NtStatus
from loader.peimage import PeImage
from loader.wine import find_wine_dir, wine_syscall_numbers

CURRENT = -1


@pytest.mark.parametrize("cls", [27, 43])  # ProcessImageFileName / ProcessImageFileNameWin32
def test_query_information_process_into_kernel_space_is_an_access_violation(
    arch: str, cls: int
) -> None:
    """Issue 20 D3: the UNICODE_STRING answer was packed for a buffer at ~7 (struct.error)."""
    proc = load_program(build("args.exe", arch), ["args.exe"]).proc
    stubs = syscall_stubs(proc)
    bad = ~7 & proc.arch.ptr_mask
    st = proc.call(stubs["NtQueryInformationProcess"], CURRENT, cls, bad, 0x100, 0)
    assert st == NtStatus.ACCESS_VIOLATION
    buf, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert proc.call(stubs["NtQueryInformationProcess"], CURRENT, cls, buf, 0x100, 0) == 0
    assert proc.syscalls[-1].name == "NtQueryInformationProcess"


def test_flush_instruction_cache_of_kernel_space_is_an_access_violation(proc: Process) -> None:
    """Issue 20 D3: x64 NtFlushInstructionCache(-1, 2**64-8, 0x4000) raised UcError."""
    stubs = syscall_stubs(proc)
    top = (1 << proc.arch.bits) - 8
    assert proc.call(stubs["NtFlushInstructionCache"], CURRENT, top, 0x4000) == (
        NtStatus.ACCESS_VIOLATION
    )
    user = proc.arch.user_max + 1 - 0x1000
    assert proc.call(stubs["NtFlushInstructionCache"], CURRENT, user, 0x2000) == (
        NtStatus.ACCESS_VIOLATION
    )
    assert proc.call(stubs["NtFlushInstructionCache"], CURRENT, 0, 0) == NtStatus.SUCCESS
    assert proc.call(stubs["NtFlushInstructionCache"], CURRENT, 0x10000, 0x1000) == 0


def _buggy(k: object, Handle: int) -> int:
    raise KeyError("a bug in a handler")


def test_a_handler_bug_is_a_clean_error_for_the_program(
    proc: Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = syscall_stubs(proc)
    dispatcher = proc.syscall_dispatcher
    handlers = dict(dispatcher.handlers)
    handlers["NtClose"] = SyscallHandler("NtClose", _buggy, ("Handle",), ("ptr",))
    monkeypatch.setattr(dispatcher, "handlers", handlers)
    # the project's tests raise it (conftest): the bug is not hidden
    with pytest.raises(KeyError, match="a bug in a handler"):
        proc.call(stubs["NtClose"], 0x40)
    # what a user's run gets: STATUS_INTERNAL_ERROR, recorded, and the process goes on
    monkeypatch.setattr(dispatcher, "raise_internal_errors", False)
    assert proc.call(stubs["NtClose"], 0x40) == NtStatus.INTERNAL_ERROR
    rec = proc.syscalls[-1]
    assert rec.name == "NtClose" and "KeyError" in rec.details["kernel_error"]
    assert dispatcher.internal_errors == 1
    assert proc.call(stubs["NtYieldExecution"]) == NtStatus.NO_YIELD_PERFORMED  # no other thread


# services that end the run or wait by design: a fault or a stop is their answer
_RUN_ENDERS = {
    "NtTerminateProcess",
    "NtTerminateThread",
    "NtRaiseException",
    "NtContinue",
    "NtWaitForSingleObject",
    "NtWaitForMultipleObjects",
    "NtWaitForKeyedEvent",
    "NtReleaseKeyedEvent",
    "NtDelayExecution",
}


@pytest.mark.parametrize("seed", [1, 2])
def test_random_system_calls_never_raise(arch: str, seed: int) -> None:
    """Random services with hostile arguments (NULL, -1, kernel addresses, unaligned and
    wrapping values, pointers into a scratch page): every call answers an NTSTATUS (or ends
    the run with an EmulationError) and the process still answers afterwards."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    scratch, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    mask = proc.arch.ptr_mask
    pool = [
        0, 1, 2, 4, 0x40, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF, mask, mask - 7, 1 << (proc.arch.bits - 1),
        0x7FFE0000, proc.arch.user_max, proc.arch.user_max + 1, scratch, scratch + 3,
        scratch + 0x800, scratch + 0xFFF8, scratch + 0x10000,
    ]  # fmt: skip
    rng = random.Random(seed)
    names = sorted(n for n in NUMBERS.values() if n.startswith("Nt") and n not in _RUN_ENDERS)
    for _ in range(300):
        name = rng.choice(names)
        args = [rng.choice(pool) for _ in range(argc(name))]
        # pointed-to values are hostile too
        proc.write(scratch, bytes(rng.getrandbits(8) for _ in range(0x100)))
        with contextlib.suppress(EmulationError):  # a run-ending answer is allowed
            proc.call(stubs[name], *args, time_limit=5.0)
        assert proc.call(stubs["NtClose"], 0) == NtStatus.INVALID_HANDLE
    assert proc.syscall_dispatcher.internal_errors == 0


def test_a_table_registered_later_serves_a_call_site_seen_before(proc: Process) -> None:
    """The dispatcher remembers each call site's service name: registering a table must still
    change what a site issued before gets (unserved first, then served)."""
    number = next(n for n, name in NUMBERS.items() if name == "NtClose")
    if proc.arch.ptr_size == 8:
        lines = ["mov r10, rcx", f"mov eax, {number}", "syscall", "ret"]
    else:
        lines = [f"mov eax, {number}", "lea edx, [esp+4]", "int 0x2e", f"ret {4 * argc('NtClose')}"]
    module = proc.load_flat("stub:\n" + "\n".join(lines), "late_table_stub")
    stub = module.symbols["stub"]
    dispatcher = proc.syscall_dispatcher
    assert proc.call(stub, 0x40) == NtStatus.NOT_IMPLEMENTED  # no table covers the site yet
    assert proc.syscalls[-1].name == f"syscall_0x{number:x}"
    proc.register_syscall_table(module.base, module.end, NUMBERS)
    assert proc.call(stub, 0x40) == NtStatus.INVALID_HANDLE  # served now
    assert proc.syscalls[-1].name == "NtClose" and proc.syscalls[-1].args == {"Handle": 0x40}
    assert [w["name"] for w in dispatcher.warnings()] == [f"syscall_0x{number:x}"]


def test_a_system_call_from_any_code_uses_ntdlls_numbers(arch: str) -> None:
    """Windows looks a system-call number up in its one service table whoever issues it: a
    copy of an ntdll stub in fresh memory (Wine's ntdll virtual.c test_syscalls, x64) or any
    code entering the kernel in the x86 style is served by the process's ntdll numbering;
    code with a table of its own keeps it (the builtin heap, the tests' stubs)."""
    proc = Process(arch)
    proc.load_wine_ntdll()
    numbers = wine_syscall_numbers(PeImage.from_file(find_wine_dir(arch) / "ntdll.dll"))
    close = next(n for n, name in numbers.items() if name == "NtClose")
    if arch == "x64":
        code, conv = f"mov r10, rcx; mov eax, {close}; syscall; ret", None
    else:
        code, conv = f"mov eax, {close}; lea edx, [esp+4]; int 0x2e; ret 4", "stdcall"
    anywhere = assemble(proc, code)
    assert proc.call(anywhere, 0x1234, convention=conv) == NtStatus.INVALID_HANDLE
    assert proc.syscalls[-1].name == "NtClose"
    own = assemble(proc, code)
    proc.register_syscall_table(own, own + 0x100, {})  # a table of its own, without the number
    assert proc.call(own, 0x1234, convention=conv) == NtStatus.NOT_IMPLEMENTED
