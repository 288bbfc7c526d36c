"""The system-call fuzzer (``tests/syscallfuzz.py``, issue 20): random services from Wine's
real tables with hostile arguments, through ``syscall`` (x64), ``int 0x2e`` and ``sysenter``
(x86). After every call the process must still answer a fresh call; only heapemu's typed
errors may leave ``proc.call``; nothing may hang.

``make test`` runs FUZZ_CALLS calls per architecture (default 25,000: 19 s for both on this
2-core machine at load 4, about a minute when it is busy); ``make fuzz`` runs 100,000
(HEAPEMU_SYSCALL_FUZZ_CALLS). A failure names the seed and the call index:
``fuzz(arch, calls, seed)`` replays it exactly.
"""

from __future__ import annotations

import os

import pytest
from programbuild import build
from syscallfuzz import Target, fuzz

from emu import EmulationError
from emu.win.layouts import CONTEXT, CONTEXT_ARCH_BIT, CONTEXT_CONTROL
from emu.win.ntdefs import NtStatus

FUZZ_CALLS = int(os.environ.get("HEAPEMU_SYSCALL_FUZZ_CALLS") or 25_000)
SEEDS = {"x86": 20_086, "x64": 20_064}

pytestmark = pytest.mark.wine  # the numbers are Wine's ntdll's


def test_random_system_calls_leave_the_process_answering(arch: str) -> None:
    stats = fuzz(arch, FUZZ_CALLS, SEEDS[arch])
    print(f"\n{arch}: {stats.summary()}")
    assert not stats.bugs, "\n".join(stats.bugs[:20])
    assert not stats.hangs, "\n".join(stats.hangs[:20])
    assert not stats.wedged, "\n".join(stats.wedged[:20])
    assert stats.calls == FUZZ_CALLS
    # the fuzz reaches past the argument checks: successes and many distinct answers
    assert stats.statuses["0x00000000"] > FUZZ_CALLS // 100 and len(stats.statuses) >= 20
    assert len(stats.succeeded) >= 25, sorted(stats.succeeded)
    entries = ("syscall",) if arch == "x64" else ("int2e", "sysenter")
    assert all(stats.by_entry[e] > FUZZ_CALLS // 3 for e in entries)


def test_a_trap_flag_left_by_ntcontinue_does_not_wedge_the_next_call(arch: str) -> None:
    """Found by the fuzzer: NtContinue of a CONTEXT with EFlags.TF set single-steps (as on
    Windows), and the next call from Python used to inherit TF and stop in the call gate."""
    target = Target(arch, build("args.exe", arch))
    proc = target.proc
    ctx = target.buffers[0]
    proc.write(ctx, bytes(0x800))  # a CONTEXT of zeros: pc 0, and
    flags_at = 0x44 if proc.arch.ptr_size == 8 else 0xC0  # EFlags
    proc.write(ctx + flags_at, (0x302).to_bytes(4, "little"))  # TF | IF
    # ContextFlags: the control registers (NtContinue sets only the parts the flags name)
    control = CONTEXT_ARCH_BIT[arch] | CONTEXT_CONTROL
    CONTEXT.write(proc, proc.arch, ctx, "ContextFlags", control)
    number = next(n for n, name in target.table.items() if name == "NtContinue")
    with pytest.raises(EmulationError):
        target.issue(next(iter(target.entries)), number, [ctx, 0] + [0] * 15)
    assert target.answers()
    close = next(iter(target.entries))
    assert target.issue(close, target.close_number, [0x1234] + [0] * 16) == NtStatus.INVALID_HANDLE
