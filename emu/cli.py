"""The ``heapemu`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .errors import EmulationError
from .heap import Allocator
from .ntdefs import HEAP_GROWABLE, heap_flag_names
from .process import Process


def _load(proc: Process, allocator: str) -> Allocator:
    module = proc.load_builtin_heap() if allocator == "builtin" else proc.load_wine_ntdll()
    return Allocator(proc, module, name=allocator)


def demo(arch: str = "x64", allocator: str = "builtin", console: Console | None = None) -> int:
    """Seed 002's story on an emulated heap: a growable heap, 100 x 0x100, free #17 and
    allocate, free #18 and allocate, free #18/#48/#78, one 0x100000 block."""
    out = console or Console()
    proc = Process(arch)
    a = _load(proc, allocator)
    table = Table(title=f"seed 002 on the {allocator} heap, {arch}")
    for col in ("#", "call", "result", "system calls"):
        table.add_column(col)

    def step(label: str, fn: str, *args: int) -> int:
        n = len(proc.syscalls)
        value = getattr(a, fn)(*args)
        calls = ", ".join(f"{r.name} {r.status_name}" for r in proc.syscalls[n:])
        table.add_row(str(table.row_count + 1), label, f"0x{int(value):x}", calls)
        return int(value)

    heap = step(f"RtlCreateHeap({heap_flag_names(HEAP_GROWABLE)})", "create_heap", HEAP_GROWABLE)
    blocks = [a.alloc(heap, 0x100) for _ in range(100)]
    table.add_row("", "100 x RtlAllocateHeap(0x100)", f"0x{blocks[0]:x} .. 0x{blocks[-1]:x}", "")
    step("RtlFreeHeap(#17)", "free", heap, blocks[16])
    step("RtlAllocateHeap(0x100)", "alloc", heap, 0x100)
    step("RtlFreeHeap(#18)", "free", heap, blocks[17])
    again = step("RtlAllocateHeap(0x100)", "alloc", heap, 0x100)
    for label, b in (("#18", again), ("#48", blocks[47]), ("#78", blocks[77])):
        step(f"RtlFreeHeap({label})", "free", heap, b)
    step("RtlAllocateHeap(0x100000)", "alloc", heap, 0x100000)
    step("RtlValidateHeap", "validate", heap)
    out.print(table)
    entries = a.walk(heap)
    kinds = {k: sum(1 for e in entries if e.kind == k) for k in ("busy", "free", "region")}
    out.print(
        f"RtlWalkHeap(0x{heap:x}): {kinds['busy']} busy, {kinds['free']} free entries, "
        f"{kinds['region']} region(s); {len(proc.syscalls)} system calls in all"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heapemu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="seed 002's scenario on the builtin heap (nothing downloaded)")
    d.add_argument("--arch", choices=("x86", "x64"), default="x64")
    d.add_argument("--allocator", choices=("builtin", "wine"), default="builtin")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.arch, args.allocator)
    except EmulationError as e:
        print(f"heapemu: emulation failed: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
