"""The common shapes of NtAllocateVirtualMemory (MEM_COMMIT inside a private reservation) and
NtFreeVirtualMemory (MEM_DECOMMIT) have fast paths (emu.nt.calls.memory: _commit_fast,
_decommit_fast): every call must be answered exactly as the general path answers it (status,
out values, the system call's record, the memory left behind), and calls of any other shape
must fall through to it. Each scenario runs twice from the same start, fast paths on and off,
through real system calls on both architectures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from asmutil import syscall_stubs

import emu.nt.calls.memory as calls
from emu import EmulationError, Process
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_EXECUTE_READ,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
)

CURRENT = -1
SHARED_DATA = 0x7FFE0000  # KUSER_SHARED_DATA: kernel-owned

# (service, offset of the base from the reservation (None: an absolute address), size, type,
# protection, where the in/out pair lives: "scratch" (a page of its own), "inside" (in the
# reservation's first page, committed beforehand), "apart" (two pages apart))
Call = tuple[str, int | None, int, int, int, str]
SCENARIOS: dict[str, list[Call]] = {
    "commit, recommit, decommit": [
        ("alloc", 0x1000, 0x2000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x1800, 0x10, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x0, 0x4000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x2000, 0x1000, MEM_COMMIT, PAGE_READONLY, "scratch"),
        ("alloc", 0x3000, 0x1000, MEM_COMMIT, PAGE_EXECUTE_READ, "scratch"),
        ("alloc", 0x5000, 0x1000, MEM_COMMIT, PAGE_NOACCESS, "scratch"),
        ("free", 0x1000, 0x1000, MEM_DECOMMIT, 0, "scratch"),
        ("free", 0x2800, 0x900, MEM_DECOMMIT, 0, "scratch"),
        ("free", 0x0, 0x8000, MEM_DECOMMIT, 0, "scratch"),
        ("alloc", 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
    ],
    "shapes the fast paths leave alone": [
        ("alloc", 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, "scratch"),
        ("alloc", 0x1000, 0x1000, MEM_COMMIT, 0x1234, "scratch"),
        ("alloc", 0x1000, 0x1000, MEM_COMMIT, PAGE_WRITECOPY, "scratch"),
        ("alloc", 0xF000, 0x2000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x1000, 0, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", None, 0x3000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", None, 0x1000, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE, "scratch"),
        ("alloc", SHARED_DATA, 0x1000, MEM_COMMIT, PAGE_READONLY, "scratch"),
        ("alloc", 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE, "apart"),
        ("free", 0x0, 0, MEM_DECOMMIT, 0, "scratch"),
        ("free", 0xF000, 0x2000, MEM_DECOMMIT, 0, "scratch"),
        ("free", SHARED_DATA, 0x1000, MEM_DECOMMIT, 0, "scratch"),
        ("free", 0x1000, 0x1000, MEM_DECOMMIT, 0, "apart"),
        ("free", 0x1000, 0x1000, MEM_RELEASE, 0, "scratch"),
    ],
    "the in/out pair inside the pages": [
        ("alloc", 0x0, 0x1000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x0, 0x2000, MEM_COMMIT, PAGE_READONLY, "inside"),
        ("alloc", 0x0, 0x1000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("free", 0x0, 0x2000, MEM_DECOMMIT, 0, "inside"),
    ],
}


def _run(arch: str, calls_: list[Call], *, limit: int | None = None) -> tuple[list[Any], int]:
    """Run the calls in a new process: what each returned, what the kernel recorded, the
    state of the reservation's pages and the commit charge after each; and how many calls
    the fast paths served."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    scratch, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    region, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    if limit is not None:
        proc.memory.commit_limit = proc.memory.committed + limit
    n = proc.arch.ptr_size
    out: list[Any] = []
    for service, offset, size, typ, prot, where in calls_:
        if where == "inside":
            pbase, psize = region + 0x10, region + 0x10 + n
        elif where == "apart":
            pbase, psize = scratch, scratch + 0x200
        else:
            pbase, psize = scratch + 0x40, scratch + 0x40 + n
        base = 0 if offset is None else offset if offset >= SHARED_DATA else region + offset
        proc.write_ptr(pbase, base)
        proc.write_ptr(psize, size)
        if service == "alloc":
            st = proc.call(stubs["NtAllocateVirtualMemory"], CURRENT, pbase, 0, psize, typ, prot)
        else:
            st = proc.call(stubs["NtFreeVirtualMemory"], CURRENT, pbase, psize, typ)
        rec = proc.syscalls.last
        assert rec is not None
        try:
            new_base, new_size = proc.read_ptr(pbase) - region, proc.read_ptr(psize)
        except EmulationError:  # the pair's page went with the call
            new_base = new_size = -1
        pages = [proc.memory.page_state(region + i * 0x1000) for i in range(16)]
        out.append(
            (st, new_base, new_size, rec.name, rec.args, rec.status, rec.details,
             str(rec), pages, proc.memory.committed, proc.memory.peak_committed)
        )  # fmt: skip
    return out, 0


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    served = {"commit": 0, "decommit": 0}

    def count(name: str, fn: Callable[..., bool]) -> Callable[..., bool]:
        def wrapper(*args: Any) -> bool:
            done = fn(*args)
            served[name] += done
            return done

        return wrapper

    monkeypatch.setattr(calls, "_commit_fast", count("commit", calls._commit_fast))
    monkeypatch.setattr(calls, "_decommit_fast", count("decommit", calls._decommit_fast))
    return served


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_fast_paths_answer_as_the_general_path(
    arch: str, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls_ = SCENARIOS[scenario]
    with monkeypatch.context() as m:
        m.setattr(calls, "_commit_fast", lambda *a: False)
        m.setattr(calls, "_decommit_fast", lambda *a: False)
        general, _ = _run(arch, calls_)
    served = _counting(monkeypatch)
    fast, _ = _run(arch, calls_)
    for call, g, f in zip(calls_, general, fast, strict=True):
        assert f == g, call
    expected = {
        "commit, recommit, decommit": {"commit": 7, "decommit": 3},
        "shapes the fast paths leave alone": {"commit": 0, "decommit": 0},
        "the in/out pair inside the pages": {"commit": 2, "decommit": 0},
    }[scenario]
    assert served == expected


def test_a_commit_past_the_commit_limit_is_refused_as_before(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls_: list[Call] = [
        ("alloc", 0x0, 0x2000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x0, 0x4000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
        ("alloc", 0x1000, 0x2000, MEM_COMMIT, PAGE_READWRITE, "scratch"),
    ]
    with monkeypatch.context() as m:
        m.setattr(calls, "_commit_fast", lambda *a: False)
        general, _ = _run(arch, calls_, limit=0x3000)
    served = _counting(monkeypatch)
    fast, _ = _run(arch, calls_, limit=0x3000)
    assert fast == general
    assert [r[0] for r in fast] == [0, 0xC000012D, 0]  # STATUS_COMMITMENT_LIMIT
    assert served["commit"] == 2
