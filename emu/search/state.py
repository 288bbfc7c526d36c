"""A process at the end of the prefix: where every candidate starts.

``PrefixState(kind, arch, heap, prefix)`` loads the allocator into a fresh process, creates the
heap, replays the prefix once and takes ``proc.snapshot()`` (registers, memory, handles,
heaps); ``run(ops)`` restores that snapshot and runs a candidate's operations alone, its blocks'
slots carried over from the prefix, and yields a ``Run`` (the process, the heap, the prefix's
and the candidate's raw results) to look at before the next candidate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from emu.facade import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import AllocatorKind
from emu.heap.replay.run import load_driver, replay
from emu.heap.replay.workload import Op


@dataclass
class Run:
    """A candidate's run: ``values`` are the candidate's raw results (one per op)."""

    proc: Process
    allocator: Allocator
    heap: int
    prefix_values: Sequence[int]
    values: Sequence[int]


@dataclass
class StateStats:
    runs: int = 0
    prefix_ops: int = 0  # operations the prefix has (run once)
    prefix_seconds: float = 0.0  # building the state and taking its snapshot
    restore_seconds: float = 0.0  # restoring the snapshot for candidates

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PrefixState:
    kind: AllocatorKind
    arch: str
    heap_args: tuple[int, int, int]  # create_heap's flags, reserve, commit
    prefix: list[Op]
    time_limit: float = 30.0
    stats: StateStats = field(init=False)

    def __post_init__(self) -> None:
        t0 = time.perf_counter()
        self.proc = Process(self.arch, time_limit=self.time_limit)
        self.allocator = self.kind.allocator(self.proc)
        load_driver(self.proc)  # mapped now, so it is part of the state candidates start from
        self.heap = self.allocator.create_heap(*self.heap_args)
        self.prefix_values: list[int] = []
        self._slots: dict[int, int] = {}
        if self.prefix:
            r = replay(self.allocator, self.prefix, self.heap)
            self.prefix_values, self._slots = list(r.values), r.slots
        self._snapshot = self.proc.snapshot()
        self.stats = StateStats(prefix_ops=len(self.prefix))
        self.stats.prefix_seconds = time.perf_counter() - t0

    @contextmanager
    def run(self, ops: Sequence[Op]) -> Iterator[Run]:
        """Run ``ops`` from the end of the prefix; look at the Run inside the ``with``.
        EmulationError (a fault in a candidate) propagates; the next run restores anyway."""
        self.stats.runs += 1
        t0 = time.perf_counter()
        self.proc.restore(self._snapshot)
        self.stats.restore_seconds += time.perf_counter() - t0
        values: Sequence[int] = (
            replay(self.allocator, ops, self.heap, slots=self._slots).values if ops else []
        )
        yield Run(self.proc, self.allocator, self.heap, self.prefix_values, values)
