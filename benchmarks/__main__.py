"""Run every benchmark and print one table; results go to benchmarks/results/*.json."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from . import bench_call, bench_memory, bench_observe, bench_replay, bench_search
from .common import save

SUITES = {
    "call": bench_call.run,
    "observe": bench_observe.run,
    "replay": bench_replay.run,
    "replay_tlb_proposal": bench_replay.run_tlb_proposal,
    "memory": bench_memory.run,
    "search_speed": bench_search.run_speed,
    "search_scaling": bench_search.run_scaling,
    "search_suite": bench_search.run_suite,
    "campaign_1m": bench_search.run_campaign_1m,
}


def main(argv: list[str]) -> int:
    chosen = argv or list(SUITES)
    table = Table(title="heapemu benchmarks (ratios measured in one run)")
    for col in ("benchmark", "arch", "value", "unit", "reference", "ratio"):
        table.add_column(col)
    for name in chosen:
        rows = SUITES[name]()
        save(name, rows)
        for r in rows:
            table.add_row(
                str(r["benchmark"]),
                str(r["arch"]),
                str(r["value"]),
                str(r["unit"]),
                f"{r['reference']} ({r['reference_name']})" if r["reference_name"] else "",
                f"{r['ratio']}x" if r["ratio"] != "" else "",
            )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
