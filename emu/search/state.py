"""A process at the end of the prefix: where every candidate starts.

``PrefixState(kind, arch, heap, prefix)`` loads the allocator into a fresh process, creates the
heap and replays the prefix; ``run(ops)`` then runs a candidate's operations from that state and
yields a ``Run`` (the process, the heap, the prefix's and the candidate's raw results) to look
at before the next candidate. Two ways to get back to the end of the prefix, chosen here only:

- ``snapshot``: the process has ``snapshot()``/``restore()`` (whole process: registers, memory,
  handles, heaps). The prefix runs once; each candidate restores and replays only itself.
- ``rebuild`` (until snapshots exist): each candidate creates the heap again, replays prefix and
  candidate as one tape and destroys the heap afterwards, so a candidate costs its prefix too
  (``stats`` counts those operations). That only stands for a fresh process if a new heap comes
  back exactly as the first did, so every rebuild checks the heap's address and the prefix's
  results against the first build and stops with ``StateError`` if they differ.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from emu.errors import EmulationError
from emu.facade import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import AllocatorKind
from emu.heap.replay.run import load_driver, replay
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import Op

SNAPSHOT, REBUILD = "snapshot", "rebuild"


class StateError(RuntimeError):
    """The end of the prefix cannot be reached again as it was."""


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
    mode: str
    runs: int = 0
    prefix_ops: int = 0  # operations the prefix has
    prefix_ops_replayed: int = 0  # ... and how many were run again for candidates (rebuild)
    prefix_seconds: float = 0.0  # building the first state
    restore_seconds: float = 0.0  # restoring snapshots / creating and destroying heaps

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
        self._prefix_tape = Tape.from_ops(self.prefix)
        self.heap, self.prefix_values, self._slots = self._build()
        snap = getattr(self.proc, "snapshot", None)
        if callable(snap) and callable(getattr(self.proc, "restore", None)):
            self._snapshot: Any = snap()
            self.stats = StateStats(SNAPSHOT, prefix_ops=len(self.prefix))
        else:
            self._snapshot = None
            self.allocator.destroy(self.heap)
            self.stats = StateStats(REBUILD, prefix_ops=len(self.prefix))
        self.stats.prefix_seconds = time.perf_counter() - t0

    @property
    def mode(self) -> str:
        return self.stats.mode

    def _build(self) -> tuple[int, list[int], dict[int, int]]:
        heap = self.allocator.create_heap(*self.heap_args)
        if not self.prefix:
            return heap, [], {}
        r = replay(self.allocator, self._prefix_tape, heap)
        return heap, list(r.values), r.slots

    @contextmanager
    def run(self, ops: Sequence[Op]) -> Iterator[Run]:
        """Run ``ops`` from the end of the prefix; look at the Run inside the ``with``.
        EmulationError (a fault in a candidate) propagates; the state stays usable."""
        self.stats.runs += 1
        if self._snapshot is not None:
            t0 = time.perf_counter()
            self.proc.restore(self._snapshot)
            self.stats.restore_seconds += time.perf_counter() - t0
            values: Sequence[int] = (
                replay(self.allocator, ops, self.heap, slots=self._slots).values if ops else []
            )
            yield Run(self.proc, self.allocator, self.heap, self.prefix_values, values)
            return
        # rebuild: the one place that stands in for snapshots (see the module doc)
        t0 = time.perf_counter()
        heap = self.allocator.create_heap(*self.heap_args)
        self.stats.restore_seconds += time.perf_counter() - t0
        if heap != self.heap:
            raise StateError(
                f"a new heap came back at 0x{heap:x}, not 0x{self.heap:x}: the process does not "
                "return to the end of the prefix; candidates cannot be compared"
            )
        n = len(self.prefix)
        try:
            result = replay(self.allocator, [*self.prefix, *ops], heap) if n or ops else None
            values = result.values if result is not None else []
            self.stats.prefix_ops_replayed += n
            if list(values[:n]) != self.prefix_values:
                raise StateError("the prefix gave other results when rebuilt")
            yield Run(self.proc, self.allocator, heap, self.prefix_values, values[n:])
        finally:
            t0 = time.perf_counter()
            try:
                self.allocator.destroy(heap)
            except EmulationError as e:
                raise StateError(f"the candidate's heap could not be destroyed: {e}") from e
            self.stats.restore_seconds += time.perf_counter() - t0
