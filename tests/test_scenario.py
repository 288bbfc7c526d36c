"""Scenario files: the schema's errors (file, line, problem) and running on both architectures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from emu.heap.allocator import HeapWalkEntry
from emu.scenario import (
    Observer,
    ScenarioError,
    ScenarioResult,
    ScenarioRun,
    StepResult,
    find_scenario,
    load_scenario,
    register_checkpoint_view,
    run_scenario,
    shipped_scenarios,
)
from emu.scenario.run import CHECKPOINT_VIEWS

SEED = Path(__file__).resolve().parent.parent / "emu" / "scenarios" / "lec04_growable_heap.yaml"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, name: str = "s.yaml") -> list[str]:
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, text, name))
    return [str(p) for p in e.value.problems]


# ---------------------------------------------------------------------- the schema
@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "steps:\n  - create_heap:\n  - allocc: 16\n",
            3,
            "unknown operation 'allocc' (did you mean 'alloc'?",
        ),
        ("steps:\n  - create_heap:\n  - free: b\n", 3, "no result named 'b' before this step"),
        (
            "steps:\n  - create_heap:\n  - alloc: {size: 16, count: 2}\n    as: a\n"
            "  - free: a[2]\n",
            5,
            "a[2] is out of range: a has 2 blocks",
        ),
        ("steps:\n  - create_heap:\n  - alloc: big\n", 3, "alloc size must be an integer"),
        (
            "steps:\n  - create_heap:\n  - alloc: {size: 16, count: 2}\n    as: a\n"
            "  - realloc:\n      block: a\n      size: 32\n",
            6,
            "a is a list of 2 blocks; name one",
        ),
        ("steps:\n  - create_heap:\n  - size: heap\n", 3, "heap is a heap; a block is needed"),
        ("steps:\n  - alloc: 16\n", 2, "no heap yet: add a `create_heap:` step"),
        ("steps:\n  - create_heap: {flags: HEAP_GROWABEL}\n", 2, "did you mean HEAP_GROWABLE?"),
        (
            "steps:\n  - create_heap:\n  - alloc: {size: 16, flag: 8}\n",
            3,
            "unknown argument 'flag'",
        ),
        ("steps:\n  - create_heap:\n  - checkpoint: x\n  - checkpoint: x\n", 4, "already used"),
        (
            "steps:\n  - create_heap:\n  - alloc: 16\n    as: p\n  - free: p\n    expect: maybe\n",
            6,
            "free returns true or false",
        ),
        ("steps:\n  - create_heap:\n  - alloc: 16\n    alloc: 32\n", 4, "duplicate key 'alloc'"),
        ("steps:\n  - create_heap:\n  - free: [a[1], a[2]]\n", 3, "quote references"),
        ("arch: arm64\nsteps: []\n", 1, "arch must be x86, x64, both"),
        ("stepz: []\n", 1, "unknown key 'stepz' (did you mean 'steps'?"),
        (
            "steps:\n  - create_heap:\n  - write: {at: heap, data: zz}\n",
            3,
            "data must be hex bytes",
        ),
    ],
)
def test_problems_name_file_line_and_problem(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 's.yaml'}:{line}: "), found
    assert fragment in found[0]
    assert "\n" not in found[0]


def test_every_problem_is_reported_before_anything_runs(tmp_path: Path) -> None:
    text = "steps:\n  - create_heap:\n  - allocc: 1\n  - free: nope\n  - alloc: -1\n"
    lines = [p.split(":")[1] for p in problems(tmp_path, text)]
    assert lines == ["3", "4", "5"]


def test_json_scenarios_have_lines_too(tmp_path: Path) -> None:
    text = (
        '{"steps": [\n {"create_heap": null},\n {"alloc": "0x10", "as": "p"},\n {"free": "q"}\n]}'
    )
    [p] = problems(tmp_path, text, "s.json")
    assert p.startswith(f"{tmp_path / 's.json'}:4: step 3 (free): ")
    [p] = problems(tmp_path, '{"steps": [\n {"alloc": 16,}\n]}', "s.json")
    assert ":2: not valid JSON" in p


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.yaml")


def test_references_flags_and_defaults() -> None:
    sc = load_scenario(
        {
            "arch": "x64",
            "steps": [
                {"create_heap": "growable|no_serialize"},
                {"alloc": {"size": 16, "count": 5, "flags": ["HEAP_ZERO_MEMORY"]}, "as": "a"},
                {"free": "a[1:3], a[-1]"},
                {"free": "a"},
                "walk",
            ],
        }
    )
    assert sc.arches == ["x64"] and [a.kind for a in sc.allocators] == ["builtin"]
    create, alloc, free, free_all, walk = sc.steps
    assert create.name == "heap" and create.args["flags"] == 0x3
    assert alloc.args == {"size": 16, "count": 5, "flags": 0x8}
    assert [str(r) for r in free.args["block"]] == ["a[1]", "a[2]", "a[-1]"]
    assert len(free_all.args["block"]) == 5
    assert walk.op == "walk"
    assert sc.entry_points() == {"RtlCreateHeap", "RtlAllocateHeap", "RtlFreeHeap", "RtlWalkHeap"}


def test_seed002_scenario_is_shipped_and_found_by_name() -> None:
    assert SEED in shipped_scenarios()
    assert find_scenario("lec04_growable_heap") == SEED
    sc = load_scenario(SEED)
    assert sc.arches == ["x86", "x64"]
    assert [s.args["name"] for s in sc.steps if s.op == "checkpoint"] == [
        "after_100_allocations",
        "after_frees",
        "end",
    ]


# ---------------------------------------------------------------------- running
def test_seed002_runs_on_both_architectures(arch: str) -> None:
    r = run_scenario(SEED, arch, "builtin")
    assert r.ok, r.failure and r.failure.error
    a = r.names["a"]
    stride = 0x108 if arch == "x86" else 0x110  # as in test_seed002 and WinDbg's session
    assert len(a) == 100 and all(a[i + 1] - a[i] == stride for i in range(99))
    assert r.names["b"] == a[17] and r.names["a18"] == a[18]  # freed blocks reused at once
    first, frees, end = r.checkpoints
    assert (first.name, frees.name, end.name) == ("after_100_allocations", "after_frees", "end")
    counts = [c.heaps[0].counts() for c in r.checkpoints]
    assert [c["busy"] for c in counts] == [100, 97, 98]
    free = [e for e in frees.heaps[0].entries if e.kind == "free"]
    for b in (a[18], a[48], a[78]):
        assert any(e.address - e.overhead <= b < e.address + e.size for e in free), hex(b)
    # the 0x100000 block got its own reservation, seen in the step's system calls and memory
    big = next(s for s in r.steps if s.step.name == "big")
    assert any(c.args["AllocationType"] & 0x2000 for c in big.syscalls)
    assert any(reg.base <= r.names["big"] < reg.base + reg.size for reg in end.regions)
    assert not any(reg.base <= r.names["big"] < reg.base + reg.size for reg in frees.regions)
    assert r.steps[0].syscalls and r.syscalls >= sum(len(s.syscalls) for s in r.steps)


@pytest.mark.wine
def test_seed002_on_wine(arch: str) -> None:
    r = run_scenario(SEED, arch, "wine")
    assert r.ok and r.allocator == "wine"
    assert [c.heaps[0].counts()["busy"] for c in r.checkpoints] == [100, 97, 98]


def test_json_form_is_complete_and_serialisable() -> None:
    r = run_scenario(SEED, "x64", "builtin")
    data = json.loads(json.dumps(r.to_json()))
    assert data["ok"] and data["arch"] == "x64" and data["allocator"] == "builtin"
    assert data["names"]["a"] == r.names["a"]
    step = data["steps"][0]
    assert step["op"] == "create_heap" and step["line"] == 12 and step["as"] == "heap"
    assert step["syscalls"][0]["name"] == "NtAllocateVirtualMemory"
    cp = data["checkpoints"][0]
    assert cp["heaps"][0]["entries"][0]["kind"] in ("region", "busy", "free")
    assert {"base", "size", "usage", "committed", "runs"} <= set(cp["regions"][0])
    assert data["events"] == [] and cp["views"] == {}


def test_operations_and_expectations(arch: str) -> None:
    r = run_scenario(
        {
            "steps": [
                {"create_heap": None},
                {"alloc": {"size": 0x20, "count": 4, "flags": "zero_memory"}, "as": "a"},
                {"write": {"at": "a[0]", "text": "hi!"}},
                {"write": {"at": "a[1]", "offset": 4, "fill": 0x41, "size": 2}},
                {"read": {"at": "a[0]", "size": 4}, "expect": "68 69 21 00"},
                {"read": {"at": "a[1]", "size": 8}, "expect": "0000000041410000"},
                {"size": "a[2]", "expect": 0x20},
                {"realloc": {"block": "a[3]", "size": 0x200}, "as": "r"},
                {"size": "r", "expect": 0x200},
                {"free": "a[0:2]"},
                {"free": "a[1]", "expect": False},
                {"validate": "r"},
                {"walk": None, "as": "entries"},
                {"create_heap": {"flags": 0, "reserve": 0x10000, "commit": 0x1000}, "as": "h2"},
                {"alloc": 0x10, "heap": "h2", "as": "p"},
                {"checkpoint": "two heaps"},
                {"destroy": "h2"},
                {"alloc": 0x10, "heap": "process_heap", "expect": "any"},
                {"checkpoint": "one heap"},
                {"validate": None, "heap": "heap"},
            ]
        },
        arch,
    )
    assert r.ok, r.failure and r.failure.error
    assert isinstance(r.names["entries"][0], HeapWalkEntry)
    data = json.loads(json.dumps(r.to_json()))
    assert data["names"]["entries"][0]["kind"] == r.names["entries"][0].kind
    assert [h.name for h in r.checkpoint("two heaps").heaps] == ["heap", "h2"]
    assert [h.name for h in r.checkpoint("one heap").heaps] == ["heap", "process_heap"]


def test_a_failure_stops_the_run_and_says_why(arch: str) -> None:
    r = run_scenario(
        {
            "steps": [
                {"create_heap": None},
                {"alloc": 0x10, "as": "p"},
                {"size": "p", "expect": 0x11},
                {"validate": None},
            ]
        },
        arch,
    )
    assert not r.ok and r.not_run == 1
    assert r.failure is not None and r.failure.step.index == 3
    assert r.failure.error == "expected 0x11, got 0x10"
    r = run_scenario(
        {"steps": [{"create_heap": None}, {"alloc": 16, "as": "p"}, {"free": "p"}, {"free": "p"}]},
        arch,
    )
    assert r.failure is not None and "RtlFreeHeap returned false" in (r.failure.error or "")
    assert "expect: false" in (r.failure.error or "")


def test_a_fault_is_a_failed_step_with_the_instruction(arch: str) -> None:
    r = run_scenario(
        {
            "steps": [
                {"create_heap": None},
                {"write": {"at": "heap", "offset": 0x7000000, "data": "00"}},
            ]
        },
        arch,
    )
    f = r.failure
    assert f is not None and f.fault is not None and "EmulationError" in (f.error or "")
    assert f.fault["address"] == r.names["heap"] + 0x7000000


def test_custom_flat_module_with_mapped_exports(tmp_path: Path, arch: str) -> None:
    """A flat-code 'allocator' whose exports have other names: a bump allocator."""
    ret = "ret" if arch == "x64" else "ret {n}"
    sources = {
        "x64": """
            .globl make_heap
            .globl bump
            make_heap:
                lea rax, [rip + pool]
                ret
            bump:
                mov rax, [rcx]
                lea rax, [rcx + rax + 16]
                add qword ptr [rcx], r8
                ret
            .data
            pool: .quad 0
            .fill 4096, 1, 0
        """,
        "x86": """
            .globl make_heap
            .globl bump
            make_heap:
                call here
            here:
                pop eax
                add eax, pool - here
                RET24
            bump:
                mov ecx, [esp + 4]
                mov eax, [ecx]
                lea eax, [ecx + eax + 16]
                mov edx, [esp + 12]
                add [ecx], edx
                RET12
            .data
            pool: .long 0
            .fill 4096, 1, 0
        """.replace("RET24", ret.format(n=24)).replace("RET12", ret.format(n=12)),
    }
    (tmp_path / f"bump_{arch}.s").write_text(sources[arch])
    scenario = write(
        tmp_path,
        "allocator:\n  flat: bump_{arch}.s\n  exports: {RtlCreateHeap: make_heap, "
        "RtlAllocateHeap: bump}\nsteps:\n  - create_heap:\n  - alloc: {size: 0x20, count: 3}\n"
        "    as: a\n",
    )
    r = run_scenario(scenario, arch)
    assert r.ok, r.failure and r.failure.error
    a = r.names["a"]
    assert a[1] - a[0] == 0x20 and a[2] - a[1] == 0x20 and r.allocator == f"flat:bump_{arch}.s"
    bad = write(
        tmp_path,
        "allocator:\n  flat: bump_{arch}.s\n  exports: {RtlCreateHeap: make_heep}\n"
        "steps:\n  - create_heap:\n",
        "bad.yaml",
    )
    with pytest.raises(ScenarioError) as e:
        run_scenario(bad, arch)
    [p] = e.value.problems
    assert str(p).startswith(f"{bad}:3: ") and "no export 'make_heep' for RtlCreateHeap" in str(p)


def test_observers_and_checkpoint_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension points later work plugs into: observers see everything, append events,
    and registered views are captured at each checkpoint."""
    seen: list[str] = []

    class Recorder(Observer):
        def process_created(self, run: ScenarioRun) -> None:
            seen.append(f"process {run.arch} {run.allocator}")

        def started(self, run: ScenarioRun) -> None:
            seen.append(f"started {run.allocator is not None}")

        def after_step(self, run: ScenarioRun, result: StepResult) -> None:
            run.events.append({"step": result.step.index, "calls": len(result.syscalls)})

        def checkpoint(self, run: ScenarioRun, checkpoint: Any) -> None:
            seen.append(f"checkpoint {checkpoint.name}")

        def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
            seen.append(f"finished {result.ok}")

    monkeypatch.setitem(CHECKPOINT_VIEWS, "heap_count", lambda run: len(run.heaps))
    register_checkpoint_view("heap_count", lambda run: len(run.heaps))
    r = run_scenario(SEED, "x64", observers=[Recorder()])
    assert seen == [
        "process x64 None",
        "started True",
        "checkpoint after_100_allocations",
        "checkpoint after_frees",
        "checkpoint end",
        "finished True",
    ]
    assert [e["step"] for e in r.events] == list(range(1, 13))
    assert r.checkpoint("end").views == {"heap_count": 1}
    assert r.to_json()["events"][0] == {"step": 1, "calls": 2}


def test_the_default_heap_is_the_last_created_even_after_destroy(arch: str) -> None:
    """Using a destroyed heap is the allocator's business: here a fault, kept in the result."""
    steps = [{"create_heap": None}, {"destroy": None}, {"alloc": 16}, {"checkpoint": "x"}]
    r = run_scenario({"steps": steps}, arch)
    f = r.failure
    assert f is not None and f.step.index == 3 and r.not_run == 1
    assert f.fault is not None and "RtlAllocateHeap" in f.fault["symbol"]
    assert f.headline.startswith("unmapped read at 0x")
