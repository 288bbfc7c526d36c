"""Shared fixtures: every feature is tested on both architectures."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from alone import alone_under_xdist  # noqa: F401 (an autouse fixture: `alone` tests)

from emu import Module, Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES, ALLOCATORS
from emu.nt.kernel import SyscallDispatcher

# A Python exception inside a system-call handler is a heapemu bug: users' programs get
# STATUS_INTERNAL_ERROR, the project's own tests fail on it.
SyscallDispatcher.default_raise_internal_errors = True
# The allocators whose heaps have the NT heap's shape (HeapWalker.block_chain: blocks with
# in-band headers tiling each segment, free lists, coalescing); tests of that shape run on
# these, and tests/test_segment_heap.py covers the segment heap's own structures.
CHAIN_KINDS: tuple[str, ...] = tuple(k for k in ALLOCATOR_NAMES if ALLOCATORS[k].walker.block_chain)


def needs_block_chain(kind: str) -> None:
    """Skip (saying why) a test of the NT heap's shape for an allocator without it."""
    if kind not in CHAIN_KINDS:
        pytest.skip(
            f"{kind}: no NT-style block chains or free lists (HeapWalker.block_chain is False); "
            "its structures are tested in tests/test_segment_heap.py"
        )


@pytest.fixture(params=["x86", "x64"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proc(arch: str) -> Process:
    return Process(arch, time_limit=10.0)


@dataclass
class Heaps:
    """A process with an allocator loaded: the builtin heap or Wine's ntdll."""

    proc: Process
    module: Module
    allocator: Allocator
    kind: str

    @property
    def arch(self) -> str:
        return self.proc.arch.name


def make_heaps(arch: str, kind: str, debug_channels: str | None = None) -> Heaps:
    proc = Process(arch, time_limit=30.0)
    options = {"debug_channels": debug_channels} if debug_channels else {}
    module = proc.load_allocator(kind, **options)
    return Heaps(proc, module, Allocator(proc, module), kind)


@pytest.fixture(params=ALLOCATOR_NAMES)
def allocator_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def heaps(arch: str, allocator_kind: str) -> Heaps:
    """Every allocator on every architecture (Wine's DLLs come from `make wine-dlls`; a missing
    DLL is an error, never a skip)."""
    return make_heaps(arch, allocator_kind)
