"""Differential test: the builtin heap in heapemu's emulated process (x86 and x64) against the
same C compiled for the host (x64 with gcc, x86 as a static 32-bit musl program), driven by the
same operation script. The native run is handed the addresses heapemu's NtAllocateVirtualMemory
returned, so every result, every system call and the final heap memory must be identical, byte
for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from native.nativeheap import NativeRun, VmCall, WalkEntry, run_script
from native.scripts import make_script, seed002_script

from emu import Process
from emu.heap.allocator import Allocator
from emu.load.builtin_heap import load_c_heap
from emu.nt.memory import RESERVED
from emu.win.ntdefs import MEM_RESERVE, PAGE_SIZE


class EmulatedRun:
    """Interprets the native driver's script language through ``Allocator`` in a Process."""

    def __init__(self, arch: str, unit: str = "ntheap"):
        self.proc = Process(arch)
        module = load_c_heap(self.proc, unit, create_process_heap=False)
        self.a = Allocator(self.proc, module)
        self.run = NativeRun(lines=[])

    def val(self, token: str) -> int:
        for op in ("+", "-"):
            if op in token[1:]:
                name, _, num = token.partition(op)
                off = int(num, 0)
                return self.val(name) + (off if op == "+" else -off)
        return self.run.values[token] if token in self.run.values else int(token, 0)

    def execute(self, lines: list[str]) -> NativeRun:
        a, proc, run = self.a, self.proc, self.run
        for line in lines:
            tok = line.split("#")[0].split()
            if not tok:
                continue
            op, args = tok[0], tok[1:]
            if op == "create":
                base = self.val(args[4]) if len(args) > 4 else 0
                v = a._call("RtlCreateHeap", self.val(args[1]), base, self.val(args[2]),
                            self.val(args[3]), 0, 0)  # fmt: skip
                run.values[args[0]] = v
                run.ops.append((op, v))
            elif op == "processheap":
                proc.set_process_heap(self.val(args[0]))
            elif op == "alloc":
                v = a.alloc(self.val(args[1]), self.val(args[3]), self.val(args[2]))
                run.values[args[0]] = v
                run.ops.append((op, v))
            elif op == "realloc":
                h, fl, p, n = (self.val(x) for x in args[1:5])
                v = a.realloc(h, p, n, fl)
                run.values[args[0]] = v
                run.ops.append((op, v))
            elif op in ("free", "size", "validate"):
                h, fl = self.val(args[0]), self.val(args[1])
                p = self.val(args[2]) if len(args) > 2 else 0
                fn = {"free": "RtlFreeHeap", "size": "RtlSizeHeap", "validate": "RtlValidateHeap"}
                v = a._call(fn[op], h, fl, p)
                run.ops.append((op, v & 0xFFFFFFFF if op != "size" else v))
            elif op == "walk":
                run.walks.append(
                    [
                        WalkEntry(
                            e.address,
                            e.size,
                            e.overhead,
                            e.region_index,
                            e.flags,
                            e.committed_size,
                            e.uncommitted_size,
                            e.first_entry,
                            e.last_entry,
                        )
                        for e in a.walk(self.val(args[0]))
                    ]
                )
                run.walk_status.append(0x8000001A)
            elif op in ("fill", "check"):
                p, seed, n = (self.val(x) for x in args)
                data = bytes((seed + i) & 0xFF for i in range(n))
                if op == "fill":
                    proc.write(p, data)
                else:
                    run.checks.append(proc.read(p, n) == data)
            else:
                raise AssertionError(f"the emulated interpreter has no {op!r}")
        for rec in proc.syscalls:
            d = rec.details
            if rec.name == "NtAllocateVirtualMemory":
                run.vm.append(VmCall("alloc", d["base_in"], d["size_in"], d["type"], d["protect"],
                                     rec.status, d.get("base", 0), d.get("size", 0)))  # fmt: skip
            elif rec.name == "NtFreeVirtualMemory":
                run.vm.append(VmCall("free", d["base_in"], d["size_in"], d["type"], 0, rec.status))
        return run

    def region_image(self, base: int, size: int) -> bytes:
        """Region bytes with uncommitted pages as zeros (the native dump's convention)."""
        region = self.proc.memory.region_at(base)
        assert region is not None and region.base == base and region.size == size
        out = bytearray()
        for i, state in enumerate(region.pages):
            addr = base + i * PAGE_SIZE
            out += bytes(PAGE_SIZE) if state == RESERVED else self.proc.read(addr, PAGE_SIZE)
        return bytes(out)


def compare(
    lines: list[str], tmp_path: Path, arch: str, heap: str = "nt"
) -> tuple[EmulatedRun, NativeRun]:
    """Run lines emulated and natively (heap: "nt" = asm/src/ntheap.c, "segment" =
    asm/src/segheap.c) and assert that everything they did and left is the same."""
    lines = ["create ph 0x2 0 0", "processheap ph", *lines]
    emulated = EmulatedRun(arch, {"nt": "ntheap", "segment": "segheap"}[heap])
    erun = emulated.execute(lines)
    # the reservations heapemu's kernel chose, in order: the native run maps the same ones
    answers = [
        (c.out_base, c.out_size)
        for c in erun.vm
        if c.kind == "alloc" and c.type & MEM_RESERVE and c.base == 0 and c.status == 0
    ]  # fmt: skip
    native = run_script(lines, arch=arch, answers=answers, dump_dir=tmp_path, heap=heap)
    assert erun.values == native.values
    assert erun.ops == native.ops
    assert erun.checks == native.checks and all(erun.checks)
    assert erun.walks == native.walks
    assert erun.vm == native.vm
    assert native.regions, "the native run dumped no region"
    for region in native.regions:
        assert emulated.region_image(region.base, region.size) == region.read(), (
            f"region 0x{region.base:x} differs"
        )
    return emulated, native


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_seed002_scenario_matches_native_byte_for_byte(arch: str, tmp_path: Path) -> None:
    _emulated, native = compare(seed002_script(), tmp_path, arch)
    assert len(native.regions) >= 3  # process heap, the scenario's heap, the 1 MiB block


@pytest.mark.parametrize("arch", ["x86", "x64"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_script_matches_native_byte_for_byte(arch: str, seed: int, tmp_path: Path) -> None:
    script, _ = make_script(seed, 600)
    _emulated, native = compare(script.lines, tmp_path, arch)
    assert native.results("size") == script.sizes
