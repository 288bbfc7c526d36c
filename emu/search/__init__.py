"""Heap-layout search and allocator campaigns (``heapemu search``, ``heapemu campaign``).

A layer above ``emu.scenario`` (a found solution or a failing case is written as a scenario)
and below ``emu.cli``: ``spec`` (search specs), ``program`` (steps and candidates as replay
tapes, scenarios written back), ``state`` (a process at the end of the prefix, snapshotted),
``layout`` (the search), ``shrink`` (minimal sequences).
"""

from emu.search.layout import SearchResult, search, verify_scenario
from emu.search.spec import SearchSpec, load_search_spec, parse_search_spec, spec_from_json

__all__ = [
    "SearchResult",
    "SearchSpec",
    "load_search_spec",
    "parse_search_spec",
    "search",
    "spec_from_json",
    "verify_scenario",
]
