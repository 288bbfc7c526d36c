"""Issue 20's CPU rows: emulated code must not crash the interpreter (D1), leave CPU state that
poisons later calls (D5) or run privileged instructions (D6); rdtsc/rdrand are deterministic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from programbuild import build

ROOT = Path(__file__).resolve().parent.parent

# D1: a program stopped by the wall-clock watchdog, then everything that drops translated code
# (the recorder's unhook, a debugger write over the code that ran). Before the fix, Unicorn's
# translation-block jump lists were left inconsistent by the watchdog's stop and walking them
# crashed the interpreter in ~1 of 3 x64 runs (measured: 6 of 25, 11 of 25 with the writes).
_TIMEOUT_SCRIPT = """
import sys
from emu.errors import EmulationError
from emu.facade import load_program

for _ in range(int(sys.argv[2])):
    p = load_program(sys.argv[1], time_limit=0.001)
    with p.proc.record():
        r = p.run()
    assert isinstance(r.error, EmulationError), r.error
    assert r.error.kind == "wall-clock limit exceeded", r.error
    for m in p.proc.modules:  # drop every translation made in the run
        p.proc.write(m.base, p.proc.read(m.base, 0x1000))
    try:
        p.proc.call(m.base + 0x1000, 0, time_limit=0.001)
    except EmulationError:
        pass
raise r.error
"""


@pytest.mark.wine
def test_timeout_with_the_recorder_never_crashes(arch: str) -> None:
    """D1: ``time_limit=0.001`` with the event recorder on ends in an EmulationError (the
    script re-raises it: exit status 1), never a signal, however often it is repeated."""
    exe = build("args.exe", arch)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", _TIMEOUT_SCRIPT, str(exe), "12"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "EmulationError" in out.stderr and "wall-clock limit exceeded" in out.stderr
