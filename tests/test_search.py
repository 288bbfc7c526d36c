"""heapemu search: layout goals, the prefix state, the search and its scenarios (issue 19)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from emu import Process
from emu.cli import main
from emu.heap.allocator import Allocator
from emu.heap.goals import Goal, check_goal, parse_goal
from emu.heap.registry import allocator_kind as kind_named
from emu.heap.replay.run import replay
from emu.scenario import ScenarioError, load_text, parse_scenario, run_scenario
from emu.search import load_search_spec, parse_search_spec, search
from emu.search.layout import Evaluator, Generator
from emu.search.program import Action, Program
from emu.search.shrink import shrink
from emu.search.state import PrefixState

# A hole-riddled heap: the program's two allocations land in holes unless the attacker fills
# them first (adjacency); a freed block that comes back only if the attacker takes the later
# one (reuse).
ADJACENT = {
    "name": "adjacent-holes",
    "prefix": [
        {"alloc": {"size": 0x40, "count": 12}, "as": "hole"},
        {"free": "hole[1], hole[3], hole[5], hole[7], hole[9]"},
    ],
    "primitives": {"alloc": {"sizes": [0x20, 0x40, 0x80]}, "free": {"cost": 1}},
    "target": [{"alloc": 0x40, "as": "source"}, {"alloc": 0x40, "as": "victim"}],
    "goal": {"adjacent": ["source", "victim"]},
    "search": {"max_ops": 16, "time_limit": 30},
}
REUSE = {
    "name": "reuse-0x80",
    "prefix": [{"alloc": {"size": 0x80, "count": 10}, "as": "obj"}, {"free": "obj[2]"}],
    "primitives": {"alloc": {"sizes": [0x80, 0x100]}, "free": {"cost": 1}},
    "target": [{"free": "obj[4]"}, {"free": "obj[6]"}, {"alloc": 0x80, "as": "y"}],
    "goal": {"reuse": {"freed": "obj[4]", "by": "y"}},
    "search": {"max_ops": 8, "time_limit": 30},
}


def _spec(data: dict[str, object], allocator: str, arch: str) -> dict[str, object]:
    return {**data, "allocator": allocator, "arch": arch}


# ---------------------------------------------------------------------- goals and layout steps
def test_goal_forms_round_trip() -> None:
    for form in (
        {"adjacent": ["a", "b"]},
        {"distance": ["a", "b[2]"], "max": 0x40},
        {"reuse": {"freed": "x", "by": "y"}},
        {"overlap": ["a", "b"]},
    ):
        assert parse_goal(form).to_json() == form
    for bad in ({}, {"adjacent": ["a"]}, {"reuse": ["a", "b"]}, {"distance": ["a", "b"]}):
        with pytest.raises(ValueError):
            parse_goal(bad)


def test_layout_step_decides_from_the_walker(arch: str, allocator_kind: str) -> None:
    scenario = {
        "arch": arch,
        "allocator": allocator_kind,
        "steps": [
            {"create_heap": "HEAP_GROWABLE"},
            {"alloc": 0x40, "as": "a"},
            {"alloc": 0x40, "as": "b"},
            {"layout": {"adjacent": ["a", "b"]}},
            {"layout": {"distance": ["a", "b"], "max": 0}},
            {"free": "a"},
            {"alloc": 0x40, "as": "c"},
            {"layout": {"reuse": {"freed": "a", "by": "c"}}},
            {"layout": {"adjacent": ["b", "c"]}, "expect": "any"},
        ],
    }
    r = run_scenario(scenario)
    assert r.ok, r.failure and r.failure.error
    assert [s.value["holds"] for s in r.steps if s.step.op == "layout"] == [True] * 3 + [False]
    scenario["steps"].append({"layout": {"adjacent": ["b", "a"]}})  # type: ignore[attr-defined]
    r = run_scenario(scenario)
    assert not r.ok and "does not hold" in (r.failure.error if r.failure else "")


def test_layout_step_is_checked() -> None:
    with pytest.raises(ScenarioError, match="no result named 'nope'"):
        parse_scenario(
            {
                "steps": [
                    {"create_heap": None},
                    {"alloc": 8, "as": "a"},
                    {"layout": {"adjacent": ["a", "nope"]}},
                ]
            }
        )
    with pytest.raises(ScenarioError, match="exactly one of"):
        parse_scenario({"steps": [{"create_heap": None}, {"layout": {"near": ["a", "b"]}}]})


def test_check_goal_on_a_report(arch: str) -> None:
    proc = Process(arch)
    kind = kind_named("builtin")
    a = kind.allocator(proc)
    h = a.create_heap()
    p, q = a.alloc(h, 0x30), a.alloc(h, 0x30)
    report = kind.walker(proc, h).walk()
    check = check_goal(report, Goal("adjacent", "p", "q"), {"p": p, "q": q})
    assert check.holds and check.gap == 0
    assert check.blocks["p"] is not None and check.blocks["p"]["user_ptr"] == p
    far = check_goal(report, Goal("distance", "q", "p", 0x100), {"p": p, "q": q})
    assert not far.holds and far.gap is not None and far.gap < 0


# ---------------------------------------------------------------------- replay slots, state
def test_replay_goes_on_from_the_slots_of_an_earlier_replay(arch: str) -> None:
    proc = Process(arch)
    a = Allocator(proc, proc.load_allocator("builtin"))
    h = a.create_heap()
    first = replay(a, [("alloc", 0x20, 0), ("alloc", 0x20, 1), ("alloc", 0x20, 2)], h)
    assert first.slots == {i: first.values[i] for i in range(3)}
    second = replay(a, [("free", 1), ("alloc", 0x20, 3)], h, slots=first.slots)
    assert second[0] == 1 and second[1] == first[1]  # freed through the carried-over slot
    assert second.slots == {0: first[0], 2: first[2], 3: first[1]}


def test_prefix_state_returns_to_the_end_of_the_prefix(arch: str, allocator_kind: str) -> None:
    program = Program.compile(parse_search_spec(_spec(ADJACENT, allocator_kind, arch)))
    kind = kind_named(allocator_kind)
    state = PrefixState(kind, arch, (2, 0, 0), program.prefix)
    at_prefix = kind.walker(state.proc, state.heap).walk().blocks
    ops, _ = program.assemble(program.normalize([]))
    with state.run(ops) as run:
        first = list(run.values)
        assert kind.walker(run.proc, run.heap).walk().blocks != at_prefix  # the targets ran
    with state.run([]) as run:  # restored: the heap is the prefix's again
        assert kind.walker(run.proc, run.heap).walk().blocks == at_prefix
    with state.run(ops) as run:
        assert list(run.values) == first and len(first) == 2
    assert state.stats.runs == 3 and state.stats.prefix_ops == len(program.prefix)


@pytest.mark.parametrize("problem", [ADJACENT, REUSE], ids=["adjacent", "reuse"])
def test_snapshot_evaluation_equals_a_fresh_run_of_prefix_and_candidate(
    problem: dict[str, object], arch: str, allocator_kind: str
) -> None:
    """Candidates run one after another from the restored snapshot (each undoing the last's
    frees and allocations, the reuse problem freeing prefix blocks through carried-over slots)
    give the results and the heap a fresh process gives for prefix + candidate in one replay."""
    spec = parse_search_spec(_spec(problem, allocator_kind, arch))
    program = Program.compile(spec)
    kind = kind_named(allocator_kind)
    state = PrefixState(kind, arch, (2, 0, 0), program.prefix)
    gen = Generator(program, random.Random(7), spec.search["max_ops"])
    candidates = [program.normalize([]), *(gen.fresh() for _ in range(3))]
    n = len(program.prefix)
    for candidate in candidates:
        ops, _ = program.assemble(candidate)
        with state.run(ops) as run:
            values = list(run.values)
            blocks = kind.walker(run.proc, run.heap).walk().blocks
        proc = Process(arch)
        allocator = kind.allocator(proc)
        heap = allocator.create_heap(2, 0, 0)
        fresh = replay(allocator, [*program.prefix, *ops], heap)
        assert heap == state.heap and list(fresh.values[:n]) == state.prefix_values
        assert values == list(fresh.values[n:]), candidate
        assert blocks == kind.walker(proc, heap).walk().blocks, candidate


def test_shrink_finds_a_one_minimal_sequence() -> None:
    calls = []

    def keeps(xs: list[int]) -> bool:
        calls.append(xs)
        return 3 in xs and 7 in xs and sum(xs) >= 10

    assert shrink(list(range(12)), keeps) == [3, 7]
    assert shrink([1, 2, 3], lambda xs: True, fixed=lambda x: x == 2) == [2]


# ---------------------------------------------------------------------- the search
@pytest.mark.parametrize("problem", [ADJACENT, REUSE], ids=["adjacent", "reuse"])
def test_search_finds_shrinks_and_writes_a_reproducing_scenario(
    problem: dict[str, object], arch: str, allocator_kind: str
) -> None:
    spec = parse_search_spec(_spec(problem, allocator_kind, arch))
    r = search(spec, allocator_kind, arch)
    assert r.solved and r.verified, r.to_json()
    assert r.found is not None and r.solution is not None and r.scenario
    assert r.solution["length"] <= r.found["length"]
    assert r.solution["check"]["holds"]
    # the scenario runner, call by call in a fresh process, reaches the goal
    result = run_scenario(parse_scenario(load_text(r.scenario)))
    assert result.ok and result.arch == arch and result.allocator == allocator_kind
    layout = [s for s in result.steps if s.step.op == "layout"]
    assert layout and layout[0].value["holds"]
    # 1-minimal: without any one attacker operation the goal is missed
    ev = Evaluator(spec, allocator_kind, arch)
    minimal = [Action(*a) for a in r.solution["candidate"]]
    assert ev.evaluate(ev.program.normalize(minimal)).solved
    for i, a in enumerate(minimal):
        if a.kind != "target":
            assert not ev.evaluate(ev.program.normalize(minimal[:i] + minimal[i + 1 :])).solved


def test_search_spec_problems_name_their_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "prefix:\n  - alloc: 0x40\n    as: a\n  - free: b\n"
        "primitives: {alloc: {sizes: [0x40]}, jump: {}}\n"
        "target:\n  - alloc: 0x40\n    as: s\n"
        "goal: {adjacent: [s, v]}\n"
    )
    with pytest.raises(ScenarioError) as e:
        load_search_spec(bad)
    assert "bad.yaml:5: unknown primitive 'jump'" in str(e.value)
    bad.write_text(bad.read_text().replace(", jump: {}", ""))
    with pytest.raises(ScenarioError) as e:
        load_search_spec(bad)
    assert "bad.yaml:4: prefix step 2 (free): free: no result named 'b'" in str(e.value)


def test_cli_search_writes_a_scenario_that_heapemu_run_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "adj.json"
    spec.write_text(json.dumps(_spec(ADJACENT, "builtin", "x64")))
    out = tmp_path / "out"
    code = main(["search", str(spec), "--workers", "0", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    (path,) = report["scenarios"].values()
    assert Path(path).is_file()
    assert main(["run", path, "--heap-map", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "layout" in shown and "holds" in shown and "heap map written to" in shown
    assert list(tmp_path.glob("*.png"))
    # a rerun finds the task finished and runs nothing
    assert main(["search", str(spec), "--workers", "0", "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["summary"]["skipped"] == 1 and again["summary"]["finished"] == 0
