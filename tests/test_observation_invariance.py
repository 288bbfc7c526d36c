"""Looking never changes what is looked at: checkpoints, heap views, instruction traces,
breakpoints, event recording and convention checks leave every allocation address (and the
address space's layout) exactly as a plain run has them, on both architectures and every
allocator of the registry (issue 15, defect 3)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from emu.heap.registry import ALLOCATOR_NAMES
from emu.observe.breakpoints import BreakContext
from emu.scenario import Checkpoint, Observer, ScenarioResult, ScenarioRun, run_scenario
from emu.scenario.observe import EventsObserver
from emu.views import build_address, build_entries, build_summary

STEPS: list[dict[str, Any]] = [
    {"create_heap": "HEAP_GROWABLE", "as": "heap"},
    {"alloc": {"size": 0x100, "count": 40}, "as": "a"},
    {"free": "a[16]"},
    {"alloc": 0x100, "as": "b"},
    {"free": "a[17], a[30]"},
    {"alloc": 0x100000, "as": "big"},
    {"realloc": {"block": "b", "size": 0x4000}, "as": "c"},
    {"alloc": 0x20, "as": "small"},
    {"validate": None},
]


def scenario(checkpoints: bool) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i, step in enumerate(STEPS):
        steps.append(step)
        if checkpoints:
            steps.append({"checkpoint": f"cp{i}"})
    return {"name": "invariance", "steps": steps}


class Looker(Observer):
    """Everything a user can watch a run with, all at once."""

    def __init__(self) -> None:
        self.hits = 0
        self.views = 0
        self.trace = io.StringIO()

    def started(self, run: ScenarioRun) -> None:
        assert run.allocator is not None
        entry = run.allocator.entry["RtlAllocateHeap"]

        def hit(ctx: BreakContext) -> None:
            self.hits += 1
            ctx.stack()

        run.proc.breakpoint(entry, hit, argc=3)
        run.proc.trace(self.trace, function=entry, call=3)

    def checkpoint(self, run: ScenarioRun, checkpoint: Checkpoint) -> None:
        proc, a = run.proc, run.allocator
        build_summary(proc, allocator=a)
        build_address(proc, allocator=a)
        for heap in run.heaps.values():
            build_entries(proc, heap, allocator=a)
        self.views += 1


def layout(result: ScenarioResult) -> Any:
    return result.names, [(r.base, r.size) for r in result.checkpoints[-1].regions]


@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_observation_moves_no_allocation(arch: str, kind: str, tmp_path: Path) -> None:
    plain_sc = scenario(checkpoints=False)
    plain_sc["steps"] = [*plain_sc["steps"], {"checkpoint": "end"}]  # one look, at the very end
    plain = run_scenario(plain_sc, arch, kind)
    assert plain.ok, plain.failure

    looker = Looker()
    events = EventsObserver(jsonl=str(tmp_path / "ev.jsonl"), check_conventions=True)
    watched_sc = scenario(checkpoints=True)
    watched_sc["steps"] = [*watched_sc["steps"], {"checkpoint": "end"}]
    watched = run_scenario(watched_sc, arch, kind, observers=[looker, events])
    assert watched.ok, watched.failure
    assert looker.hits >= 43 and looker.views == len(STEPS) + 1 and looker.trace.getvalue()
    assert watched.events and not events.violations

    names = {k: v for k, v in watched.names.items() if not k.startswith("cp")}
    assert names == plain.names
    assert layout(watched)[1] == layout(plain)[1]  # the same regions at the same addresses
