"""Run every benchmark and print one table; results go to benchmarks/results/*.json."""

from __future__ import annotations

import sys

from rich.table import Table

from emu.scenario.render import emit, output_console

from . import (
    bench_bounds,
    bench_call,
    bench_memory,
    bench_observe,
    bench_peer,
    bench_replay,
    bench_search,
    bench_snapshot,
)
from .common import save

SUITES = {
    "peer": bench_peer.run,
    "call": bench_call.run,
    "observe": bench_observe.run,
    "replay": bench_replay.run,
    "memory": bench_memory.run,
    "address_space": bench_memory.run_address_space,
    "bounds": bench_bounds.run,
    "snapshot": bench_snapshot.run,
    "search_speed": bench_search.run_speed,
    "search_scaling": bench_search.run_scaling,
    "search_suite": bench_search.run_suite,
    "campaign_1m": bench_search.run_campaign_1m,
}
# suites that honour HEAPEMU_BENCH_ALLOCATORS (bench_search.BENCH_ALLOCATORS)
BY_ALLOCATOR = ("replay", "search_speed", "search_suite", "campaign_1m")


def main(argv: list[str]) -> int:
    chosen = argv or list(SUITES)
    table = Table(title="heapemu benchmarks (ratios measured in one run)")
    for col in ("benchmark", "arch", "value", "unit", "reference", "ratio"):
        table.add_column(col)
    for name in chosen:
        rows = SUITES[name]()
        save(bench_search.result_name(name) if name in BY_ALLOCATOR else name, rows)
        for r in rows:
            table.add_row(
                str(r["benchmark"]),
                str(r["arch"]),
                str(r["value"]),
                str(r["unit"]),
                f"{r['reference']} ({r['reference_name']})" if r["reference_name"] else "",
                f"{r['ratio']}x" if r["ratio"] != "" else "",
            )
    emit(output_console(), table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
