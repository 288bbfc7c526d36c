"""The task functions ``emu.search.runner.execute`` runs, by name: each takes a JSON payload
and returns (status, result, operations run). The result is deterministic (no times, no
host names): the same task gives the same result on the local pool and on Ray."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emu.search.campaign import differential_case, inject_case, invariant_case
from emu.search.layout import search
from emu.search.spec import spec_from_json

TIMING = ("seconds", "seconds_to_solution")


def search_task(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """One search for one (spec, allocator, arch); the times go next to the result."""
    spec = spec_from_json(payload["spec"])
    r = search(
        spec,
        payload["allocator"],
        payload["arch"],
        seed=payload.get("seed"),
        time_limit=payload.get("time_limit"),
        max_candidates=payload.get("max_candidates"),
        strategy=payload.get("strategy"),
    ).to_json()
    r["timing"] = {k: r.pop(k) for k in TIMING}
    r["timing"]["state"] = r.pop("state")
    return ("ok" if r["solved"] else "failed"), r, r["candidates"]


def noop_task(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """Does nothing: what a task costs the engine alone (scheduling, transport, storing)."""
    return "ok", {"echo": payload.get("n")}, 0


TaskFunction = Callable[[dict[str, Any]], tuple[str, dict[str, Any], int]]
TASK_FUNCTIONS: dict[str, TaskFunction] = {
    "search": search_task,
    "invariant": invariant_case,
    "differential": differential_case,
    "inject": inject_case,
    "noop": noop_task,
}
