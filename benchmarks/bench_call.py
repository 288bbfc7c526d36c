"""µs per ``proc.call`` of a 10-instruction function, next to the raw Unicorn floor
(``reg_write(SP)`` + ``emu_start`` of the same function through ctypes, its return address on
its own page), in the same run: chunks of each alternate, the best chunk counts.
Target: proc.call <= 1.5x the floor. proc.call itself calls Unicorn through ``emu/cpu/direct.c``
(a CPython extension) rather than ctypes; a second row compares it with the same two C calls
made through that extension, the floor of what a call from Python can cost.

The floor is the faster of two ways to end the run at the return address: uc_emu_start's own
``until`` (which makes Unicorn 2.1.4 translate a block there on every run) and the CPU's stop
hook there with an unreachable ``until`` (what proc.call does, see ``Cpu.run``)."""

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


def measure(arch: str) -> list[dict[str, object]]:
    proc = Process(arch)
    f = _function(proc)
    cpu = proc.cpu
    # the floor: what any call must pay, with the frame already in place
    sp = proc.thread_stack.top - 0x200
    proc.write_ptr(sp, proc.call_gate.sentinel)
    value = ctypes.c_uint64(sp)
    ref = ctypes.byref(value)
    uch, sp_id, done = cpu._uch, cpu._sp_id, proc.call_gate.sentinel

    def floor_until() -> None:
        for _ in range(CHUNK):
            uclib.uc_reg_write(uch, sp_id, ref)
            uclib.uc_emu_start(uch, f, done, 0, 0)

    stops, run_exit = cpu._stop_state, cpu.run_exit

    def floor_hook() -> None:
        if stops is None or not run_exit:  # no native fast path: proc.call uses until too
            return floor_until()
        stops.until = done
        for _ in range(CHUNK):
            uclib.uc_reg_write(uch, sp_id, ref)
            uclib.uc_emu_start(uch, f, run_exit, 0, 0)

    direct, uca = cpu._direct, cpu._uca

    def floor_direct() -> None:
        """The floor without ctypes: the same two C calls through emu/cpu/direct.c, as
        proc.call makes its run (a stricter reference than the issue's ctypes floor)."""
        if direct is None or stops is None or not run_exit:
            return floor_hook()
        stops.until = done
        reg_write, emu_start = direct.reg_write, direct.emu_start
        for _ in range(CHUNK):
            reg_write(uca, sp_id, sp)
            emu_start(uca, f, run_exit, 0, 0)

    def calls() -> None:
        for _ in range(CHUNK):
            proc.call(f, 1, 2, 3)

    floor_until()
    floor_hook()
    floor_direct()
    calls()  # warm the translation cache
    # alternating short chunks, best of many: a shared host's load shifts within seconds
    t_until = t_hook = t_direct = t_call = float("inf")
    for _ in range(N // CHUNK):
        t_until = min(t_until, best_of(floor_until, 1) / CHUNK * 1e6)
        t_hook = min(t_hook, best_of(floor_hook, 1) / CHUNK * 1e6)
        t_direct = min(t_direct, best_of(floor_direct, 1) / CHUNK * 1e6)
        t_call = min(t_call, best_of(calls, 1) / CHUNK * 1e6)
    t_floor = min(t_until, t_hook)
    row = {
        "benchmark": "proc.call (10 instructions)",
        "arch": arch,
        "value": round(t_call, 2),
        "unit": "µs/call",
        "reference": round(t_floor, 2),
        "reference_name": "reg_write(SP)+emu_start floor",
        "ratio": round(t_call / t_floor, 2),
        "target": "<= 1.5",
        "floor_until_us": round(t_until, 2),
        "floor_stop_hook_us": round(t_hook, 2),
    }
    strict = {
        **row,
        "benchmark": "proc.call vs the floor without ctypes",
        "reference": round(t_direct, 2),
        "reference_name": "the same two calls via direct.c",
        "ratio": round(t_call / t_direct, 2),
        "target": "(no target: a stricter reference)",
    }
    return [row, strict]


def run() -> list[dict[str, object]]:
    return [row for arch in ("x86", "x64") for row in measure(arch)]
