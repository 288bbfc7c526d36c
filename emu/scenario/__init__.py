"""Scenarios: small YAML/JSON files of heap operations, checked before they run, run on either
architecture and allocator, with checkpoints (``heapemu run``; issue 8).

    from emu.scenario import run_scenario
    result = run_scenario("scenarios/lec04_growable_heap.yaml", "x64", "builtin")
    result.ok, result.names["a"][16], result.checkpoint("after_frees").heaps[0].counts()

The format is described in ``scenario_schema``'s docstring. Modules: ``scenario_yaml`` (YAML
with line numbers, ScenarioError), ``scenario_model`` (Step, Ref, Scenario), ``scenario_schema``
and ``scenario_ops`` (checking), ``scenario_run`` (running, Observer, checkpoint views),
``scenario_result`` (results and their JSON), ``scenario_render`` (terminal output).
"""

from __future__ import annotations

from pathlib import Path

from emu.scenario.model import OPS, AllocatorSpec, Ref, Scenario, Step
from emu.scenario.result import (
    Checkpoint,
    HeapSnapshot,
    MemoryRun,
    RegionSnapshot,
    ScenarioResult,
    StepResult,
    describe_value,
)
from emu.scenario.run import (
    CHECKPOINT_VIEWS,
    Observer,
    ScenarioRun,
    register_checkpoint_view,
    run_scenario,
    scenario_matrix,
)
from emu.scenario.schema import load_scenario, parse_scenario
from emu.scenario.yamlfile import Problem, ScenarioError, load_text

__all__ = [
    "CHECKPOINT_VIEWS",
    "OPS",
    "AllocatorSpec",
    "Checkpoint",
    "HeapSnapshot",
    "MemoryRun",
    "Observer",
    "Problem",
    "Ref",
    "RegionSnapshot",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "ScenarioRun",
    "Step",
    "StepResult",
    "describe_value",
    "find_scenario",
    "load_scenario",
    "load_text",
    "parse_scenario",
    "register_checkpoint_view",
    "run_scenario",
    "scenario_matrix",
    "shipped_scenarios",
]

# the repository's scenarios/ (a checkout or an editable install)
SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"


def shipped_scenarios() -> list[Path]:
    """The scenarios that come with heapemu."""
    return sorted(SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.is_dir() else []


def find_scenario(name: str | Path) -> Path:
    """A file as given, else a shipped scenario of that name (``lec04_growable_heap``)."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    for candidate in shipped_scenarios():
        if candidate.stem == str(name):
            return candidate
    return path
