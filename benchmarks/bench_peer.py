"""The store loop side by side: heapemu, Speakeasy 1.5.11 and the bare engine, in one run.

The loop is ``add; xor; mov [sp-16], reg; dec; jnz`` (5 instructions per iteration), the same
bytes everywhere (the iteration count is an immediate of its first instruction):

* heapemu: ``proc.call`` of the loop (the fast core, with everything a process installs);
* Speakeasy 1.5.11 (Unicorn 1.0.2), in its own cached virtualenv (``HEAPEMU_BENCH_VENV``,
  default ~/.cache/heapemu/bench-venv; never the project's), as a subprocess: its public
  ``run_shellcode`` (which includes Speakeasy's per-run set-up), and its engine's time alone;
* bare Unicorn 2.1.4, the physical reference: default TLB, ``UC_TLB_VIRTUAL`` without hooks,
  and ``UC_TLB_VIRTUAL`` with one ``UC_HOOK_MEM_UNMAPPED`` (what heapemu's core paid before
  the fast core: any memory hook sends every store down Unicorn's slow path).

Each configuration is timed once per round, rounds alternate, the best of ``ROUNDS`` counts.

    python -m benchmarks peer      (~2 minutes; the first run installs Speakeasy, ~1 minute)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keystone
import unicorn
from unicorn import x86_const as ux

from emu import Process
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_EXECUTE_READ

ITERATIONS = int(os.environ.get("HEAPEMU_BENCH_LOOP_ITERATIONS", 20_000_000))
ROUNDS = int(os.environ.get("HEAPEMU_BENCH_ROUNDS", 3))
SPEAKEASY = "speakeasy-emulator==1.5.11"
VENV = Path(os.environ.get("HEAPEMU_BENCH_VENV", Path.home() / ".cache/heapemu/bench-venv"))
PEER_SCRIPT = Path(__file__).parent / "peer" / "speakeasy_loop.py"
_KS_MODES = {"x86": keystone.KS_MODE_32, "x64": keystone.KS_MODE_64}


def loop_code(arch: str, iterations: int) -> bytes:
    """The store loop with its iteration count, then ``ret``."""
    r, c, sp = ("rdx", "rcx", "rsp") if arch == "x64" else ("edx", "ecx", "esp")
    src = (
        f"mov ecx, {iterations:#x}; top: add {r}, {c}; xor {r}, 0x55; "
        f"mov [{sp} - 16], {r}; dec ecx; jnz top; ret"
    )
    code, _ = keystone.Ks(keystone.KS_ARCH_X86, _KS_MODES[arch]).asm(src, 0)
    return bytes(code)


# ---------------------------------------------------------------------- Speakeasy
def speakeasy_python() -> Path:
    """The Speakeasy virtualenv's python, created and filled on first use."""
    python = VENV / "bin" / "python"
    stamp = VENV / f".{SPEAKEASY.replace('==', '-')}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SPEAKEASY], check=True)
        stamp.touch()
    return python


def speakeasy_round(python: Path, arch: str) -> dict[str, float]:
    placeholder = loop_code(arch, 0x12345678).hex().replace("78563412", "NNNNNNNN", 1)
    out = subprocess.run(
        [str(python), str(PEER_SCRIPT), arch, placeholder, str(ITERATIONS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------- bare Unicorn 2.1.4
class BareEngine:
    """The loop on a fresh Unicorn with nothing but code and stack mapped."""

    CODE, STACK = 0x10000, 0x100000

    def __init__(self, arch: str, mode: str):
        self.uc = unicorn.Uc(
            unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if arch == "x64" else unicorn.UC_MODE_32
        )
        if mode != "default":
            self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        if mode == "virtual+memhook":
            self.uc.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED, lambda *a: False)
        self.uc.mem_map(self.CODE, 0x1000, unicorn.UC_PROT_ALL)
        self.uc.mem_map(self.STACK, 0x10000, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
        code = loop_code(arch, ITERATIONS)
        self.uc.mem_write(self.CODE, code)
        self.end = self.CODE + len(code) - 1  # the `ret`
        self.sp = ux.UC_X86_REG_RSP if arch == "x64" else ux.UC_X86_REG_ESP
        self.run()  # translate once

    def run(self) -> None:
        self.uc.reg_write(self.sp, self.STACK + 0x8000)
        self.uc.emu_start(self.CODE, self.end)


# ---------------------------------------------------------------------- heapemu
def heapemu_loop(arch: str) -> Callable[[], None]:
    proc = Process(arch, time_limit=0)
    code = loop_code(arch, ITERATIONS)
    base, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READ)
    proc.write(base, code)

    def run() -> None:
        proc.call(base)

    run()
    return run


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(arch: str, python: Path) -> list[dict[str, object]]:
    instr = 5 * ITERATIONS
    heapemu = heapemu_loop(arch)
    bare = {m: BareEngine(arch, m) for m in ("default", "virtual", "virtual+memhook")}
    best: dict[str, float] = {}
    peer_unicorn = ""

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(ROUNDS):
        keep("heapemu", _timed(heapemu))
        for mode, engine in bare.items():
            keep(mode, _timed(engine.run))
        se = speakeasy_round(python, arch)
        keep("speakeasy run", se["run_seconds"])
        keep("speakeasy engine", se["engine_seconds"])
        peer_unicorn = str(se.get("unicorn", ""))
    mips = {k: instr / v / 1e6 for k, v in best.items()}
    bare_best = max(mips["default"], mips["virtual"], mips["virtual+memhook"])

    def row(name: str, ref: str, ref_name: str, **extra: object) -> dict[str, object]:
        return {
            "benchmark": name,
            "arch": arch,
            "value": round(mips["heapemu"], 1),
            "unit": "M instr/s",
            "reference": round(mips.get(ref, bare_best), 1),
            "reference_name": ref_name,
            "ratio": round(mips["heapemu"] / (mips.get(ref, bare_best)), 3),
            **extra,
        }

    rows = [
        row(
            "store loop: heapemu proc.call vs Speakeasy",
            "speakeasy run",
            f"Speakeasy 1.5.11 run_shellcode (Unicorn {peer_unicorn})",
            target=">= 1.5",
        ),
        row(
            "store loop: heapemu proc.call vs Speakeasy's engine alone",
            "speakeasy engine",
            f"Unicorn {peer_unicorn} inside run_shellcode, set-up excluded",
        ),
        row(
            "store loop: heapemu proc.call vs bare engine, best mode",
            "best",
            f"bare Unicorn {unicorn.__version__}, best of the modes below",
            target=">= 0.6",
        ),
    ]
    for mode, label in (
        ("default", "default TLB, no hooks"),
        ("virtual", "UC_TLB_VIRTUAL, no hooks"),
        ("virtual+memhook", "UC_TLB_VIRTUAL + UC_HOOK_MEM_UNMAPPED"),
    ):
        rows.append(
            {
                "benchmark": f"store loop: bare Unicorn {unicorn.__version__}, {label}",
                "arch": arch,
                "value": round(mips[mode], 1),
                "unit": "M instr/s",
                "reference": round(mips["heapemu"], 1),
                "reference_name": "heapemu proc.call",
                "ratio": round(mips[mode] / mips["heapemu"], 3),
            }
        )
    return rows


def run() -> list[dict[str, object]]:
    python = speakeasy_python()
    rows: list[dict[str, object]] = []
    for arch in ("x86", "x64"):
        rows += measure(arch, python)
    return rows
