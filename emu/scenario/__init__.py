"""Scenarios: small YAML/JSON files of heap operations, checked before they run, run on either
architecture and allocator, with checkpoints (``heapemu run``; issue 8).

    from emu.scenario import run_scenario
    result = run_scenario("lec04_growable_heap", "x64", "builtin")  # or a file's path
    result.ok, result.names["a"][16], result.checkpoint("after_frees").heaps[0].counts()

The format is described in ``scenario_schema``'s docstring. Modules: ``scenario_yaml`` (YAML
with line numbers, ScenarioError), ``scenario_model`` (Step, Ref, Scenario), ``scenario_schema``
and ``scenario_ops`` (checking), ``scenario_run`` (running, Observer, checkpoint views),
``scenario_result`` (results and their JSON), ``scenario_render`` (terminal output).
"""

from __future__ import annotations

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
from emu.scenario.shipped import find_scenario, no_such_scenario, shipped_scenarios
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
    "no_such_scenario",
    "parse_scenario",
    "register_checkpoint_view",
    "run_scenario",
    "scenario_matrix",
    "shipped_scenarios",
]
