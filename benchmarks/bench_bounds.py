"""Host memory of a long run (issue 20 D11, D12): per captured MiB of program output and per
100,000 system calls, each configuration in a child process of its own.

- Output: 64 x NtWriteFile(stdout, 1 MiB) issued by emulated code (a ``syscall`` /
  ``int 0x2e`` stub), with the default output limit (16 MiB kept), with no limit (everything
  kept: the cost per captured MiB), and with a sink (``/dev/null``) and nothing kept. Before
  the fix the same run cost 3.8 host MiB per MiB (the capture plus a decoded copy in every
  record); the bound is 1.
- System calls: 50,000 x (RtlAllocateHeap + RtlFreeHeap) of 1 MiB on the builtin heap (each
  reserves and releases its own region: 100,000 system calls), with the default ring of
  records (``DEFAULT_SYSCALL_LOG``), with no records (``syscall_log=0``: what the rest of the
  process grows by, Unicorn's map/unmap of 50,000 regions included) and with the full log
  (``syscall_log=None``). Before the fix the log grew by 254 MiB per 100,000 pairs, i.e. 127
  MiB per 100,000 system calls.

The child notes its resident set after set-up, resets the peak (``/proc/self/clear_refs``),
runs, and reports VmHWM above that baseline.

    python -m benchmarks bounds
    python -m benchmarks.bench_bounds --child output x64 default      (one measurement)
"""

from __future__ import annotations

import json
import sys

from .bench_memory import MIB
from .common import reset_peak, run_child, status_kib

OUTPUT_WRITES = 64  # x 1 MiB
PAIRS = 50_000  # alloc+free of 1 MiB: 100,000 system calls
BEFORE_PER_MIB = 3.8  # host MiB per output MiB before the fix (issue 20 D11)
BEFORE_PER_100K = 127  # MiB per 100,000 system calls before the fix (issue 20 D12)
WRITE_NUMBER = 0x8  # our stub's own table: NtWriteFile


def output_child(arch: str, mode: str) -> dict[str, object]:
    from emu import Process
    from emu.nt.objects import STD_HANDLES
    from emu.nt.output import OutputCapture
    from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE

    proc = Process(arch, time_limit=0)
    if proc.arch.ptr_size == 8:
        stub = f"mov r10, rcx\nmov eax, {WRITE_NUMBER}\nsyscall\nret"
    else:
        stub = f"mov eax, {WRITE_NUMBER}\nlea edx, [esp+4]\nint 0x2e\nret 36"
    module = proc.load_flat(stub, "write_stub")
    proc.register_syscall_table(module.base, module.end, {WRITE_NUMBER: "NtWriteFile"})
    sink = open("/dev/null", "wb") if mode == "sink" else None  # noqa: SIM115 (closed below)
    limit = {"default": proc.objects.stdout.limit, "unlimited": None, "sink": 0}[mode]
    proc.objects.stdout = OutputCapture(limit, sink)
    rw = MEM_RESERVE | MEM_COMMIT
    buf, _ = proc.memory.allocate(0, 2 * MIB, rw, PAGE_READWRITE)
    proc.write(buf, b"x" * MIB)
    iosb = buf + MIB
    baseline = status_kib("VmRSS") * 1024
    reset_peak()
    for _ in range(OUTPUT_WRITES):
        status = proc.call(module.base, STD_HANDLES["stdout"], 0, 0, 0, iosb, buf, MIB, 0, 0)
        assert status == 0, hex(status)
    peak = status_kib("VmHWM") * 1024
    if sink is not None:
        sink.close()
    return {
        "arch": arch,
        "mode": mode,
        "written_mib": OUTPUT_WRITES,
        "kept_mib": len(proc.objects.stdout) / MIB,
        "growth_bytes": peak - baseline,
    }


def syscalls_child(arch: str, mode: str, pairs: int) -> dict[str, object]:
    from emu import Process
    from emu.heap.allocator import Allocator
    from emu.nt.records import DEFAULT_SYSCALL_LOG

    keep = {"full": None, "none": 0, "ring": DEFAULT_SYSCALL_LOG}[mode]
    proc = Process(arch, time_limit=0, syscall_log=keep)
    allocator = Allocator(proc, proc.load_allocator("builtin"))
    heap = allocator.create_heap()
    block = allocator.alloc(heap, MIB)  # the first of each kind: translations, caches
    allocator.free(heap, block)
    baseline = status_kib("VmRSS") * 1024
    calls = len(proc.syscalls)
    reset_peak()
    for _ in range(pairs):
        allocator.free(heap, allocator.alloc(heap, MIB))
    peak = status_kib("VmHWM") * 1024
    return {
        "arch": arch,
        "mode": mode,
        "pairs": pairs,
        "syscalls": len(proc.syscalls) - calls,
        "kept": len(list(proc.syscalls)),
        "growth_bytes": peak - baseline,
    }


def _child(*args: str) -> dict[str, object]:
    return run_child("benchmarks.bench_bounds", *args, timeout=3600)


def _mib(value: object) -> float:
    return float(value) / MIB  # type: ignore[arg-type]


def run(pairs: int = PAIRS) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for arch in ("x86", "x64"):
        out = {mode: _child("output", arch, mode) for mode in ("default", "unlimited", "sink")}
        per_mib = _mib(out["unlimited"]["growth_bytes"]) / OUTPUT_WRITES
        rows.append(
            {
                "benchmark": f"host MiB per captured MiB of output (no limit, {OUTPUT_WRITES} MiB)",
                "arch": arch,
                "value": round(per_mib, 2),
                "unit": "MiB/MiB",
                "reference": BEFORE_PER_MIB,
                "reference_name": "before (D11)",
                "ratio": round(per_mib / BEFORE_PER_MIB, 2),
                **{f"{m}_growth_mib": round(_mib(r["growth_bytes"]), 1) for m, r in out.items()},
            }
        )
        rows.append(
            {
                "benchmark": f"host MiB for {OUTPUT_WRITES} MiB of output, default 16 MiB limit",
                "arch": arch,
                "value": round(_mib(out["default"]["growth_bytes"]), 1),
                "unit": "MiB",
                "reference": OUTPUT_WRITES * BEFORE_PER_MIB,
                "reference_name": "before (D11)",
                "ratio": round(
                    _mib(out["default"]["growth_bytes"]) / (OUTPUT_WRITES * BEFORE_PER_MIB), 3
                ),
                "sink_growth_mib": round(_mib(out["sink"]["growth_bytes"]), 1),
            }
        )
        modes = ("ring", "none", "full")
        calls = {mode: _child("syscalls", arch, mode, str(pairs)) for mode in modes}
        for mode, r in calls.items():
            growth = _mib(r["growth_bytes"]) * 100_000 / float(r["syscalls"])  # type: ignore[arg-type]
            rows.append(
                {
                    "benchmark": f"host MiB per 100,000 system calls ({mode} syscall log)",
                    "arch": arch,
                    "value": round(growth, 1),
                    "unit": "MiB",
                    "reference": BEFORE_PER_100K,
                    "reference_name": "before (D12)",
                    "ratio": round(growth / BEFORE_PER_100K, 3),
                    "syscalls": r["syscalls"],
                    "records_kept": r["kept"],
                }
            )
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--child":
        kind, arch, mode = sys.argv[2:5]
        if kind == "output":
            print(json.dumps(output_child(arch, mode)))
        else:
            print(json.dumps(syscalls_child(arch, mode, int(sys.argv[5]))))
    else:
        for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else PAIRS):
            print(row)
