"""µs per ``proc.call`` of a 10-instruction function, next to the raw Unicorn floor
(``reg_write(SP)`` + ``emu_start`` of the same function through ctypes, its return address on
its own page), in the same run: chunks of each alternate, the best chunk counts.
Target: proc.call <= 1.5x the floor."""

from __future__ import annotations

import ctypes

import keystone
from unicorn.unicorn_py3.unicorn import uclib

from emu import Process
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_EXECUTE_READ

from .common import best_of

N = 200_000
CHUNK = 2_000


def _function(proc: Process) -> int:
    """Nine adds and a return: 10 instructions, three arguments."""
    ret = "ret" if proc.arch.ptr_size == 8 else "ret 12"
    src = "\n".join(["add eax, ecx"] * 9 + [ret])
    base, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READ)
    code, _ = keystone.Ks(keystone.KS_ARCH_X86, proc.arch.ks_mode).asm(src, base)
    proc.write(base, bytes(code))
    return base


def measure(arch: str) -> dict[str, object]:
    proc = Process(arch)
    f = _function(proc)
    cpu = proc.cpu
    # the floor: what any call must pay, with the frame already in place
    sp = proc.thread_stack.top - 0x200
    proc.write_ptr(sp, proc.call_gate.sentinel)
    value = ctypes.c_uint64(sp)
    ref = ctypes.byref(value)
    uch, sp_id, done = cpu._uch, cpu._sp_id, proc.call_gate.sentinel

    def floor() -> None:
        for _ in range(CHUNK):
            uclib.uc_reg_write(uch, sp_id, ref)
            uclib.uc_emu_start(uch, f, done, 0, 0)

    def calls() -> None:
        for _ in range(CHUNK):
            proc.call(f, 1, 2, 3)

    floor()
    calls()  # warm the translation cache
    # alternating short chunks, best of many: a shared host's load shifts within seconds
    t_floor = t_call = float("inf")
    for _ in range(N // CHUNK):
        t_floor = min(t_floor, best_of(floor, 1) / CHUNK * 1e6)
        t_call = min(t_call, best_of(calls, 1) / CHUNK * 1e6)
    return {
        "benchmark": "proc.call (10 instructions)",
        "arch": arch,
        "value": round(t_call, 2),
        "unit": "µs/call",
        "reference": round(t_floor, 2),
        "reference_name": "reg_write(SP)+emu_start floor",
        "ratio": round(t_call / t_floor, 2),
        "target": "<= 1.5",
    }


def run() -> list[dict[str, object]]:
    return [measure(arch) for arch in ("x86", "x64")]
