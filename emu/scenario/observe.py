"""Observation during scenario runs: allocation events (``--trace FILE``, JSON Lines), a
Perfetto trace (``--perfetto FILE``) and calling-convention checks (``--check-conventions``).

One :class:`EventsObserver` serves every arch-and-allocator run of a command: it starts an
EventRecorder when the allocator is loaded (so the loader's own process-heap creation is not
in the trace) and stops it when the run finishes; the events go into ``ScenarioResult.events``.
"""

from __future__ import annotations

from pathlib import Path

from emu.observe.events import AllocationEvent, EventRecorder
from emu.observe.export import write_jsonl, write_perfetto
from emu.scenario.result import ScenarioResult
from emu.scenario.run import Observer, ScenarioRun


def _per_run(path: str, run: ScenarioRun, many: bool) -> Path:
    """FILE as given for a single run; FILE with .ARCH-ALLOCATOR before the suffix otherwise."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{run.arch}-{run.spec.label}{p.suffix}") if many else p


class EventsObserver(Observer):
    def __init__(
        self,
        *,
        jsonl: str | None = None,
        perfetto: str | None = None,
        check_conventions: bool = False,
        runs: int = 1,
        stacks: int = 0,
    ):
        self.jsonl = jsonl
        self.stacks = stacks
        self.perfetto = perfetto
        self.check_conventions = check_conventions
        self.many = runs > 1
        self._recorder: EventRecorder | None = None
        self.violations: list[tuple[str, AllocationEvent, str]] = []  # (run label, event, what)
        self.written: list[Path] = []

    def started(self, run: ScenarioRun) -> None:
        self._recorder = run.proc.record(
            check_conventions=self.check_conventions, stacks=self.stacks
        )

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        rec = self._recorder
        if rec is None:
            return
        rec.stop()
        self._recorder = None
        result.events.extend(rec.events)
        label = f"{run.arch} {run.spec.label}"
        self.violations += [(label, ev, what) for ev, what in rec.violations]
        if self.jsonl:
            path = _per_run(self.jsonl, run, self.many)
            write_jsonl(rec.events, path)
            self.written.append(path)
        if self.perfetto:
            path = _per_run(self.perfetto, run, self.many)
            write_perfetto(rec.events, path)
            self.written.append(path)
