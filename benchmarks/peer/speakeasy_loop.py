"""Runs inside the Speakeasy virtualenv (benchmarks/bench_peer.py makes it); never imports heapemu.

    python speakeasy_loop.py ARCH HEX_CODE ITERATIONS

``HEX_CODE`` is the store loop as shellcode, ``NNNNNNNN`` standing for its 32-bit iteration
count. Speakeasy loads it with ``load_shellcode`` and runs it with ``run_shellcode``: its own
emulator (Unicorn 1.0.2) with its own hooks. Two times are reported for ITERATIONS:

* ``run_seconds``: the whole ``run_shellcode`` call, as a Speakeasy user runs code (it includes
  Speakeasy's per-run set-up of its Windows environment, a few tenths of a second);
* ``engine_seconds``: only the time inside Speakeasy's engine ``start`` calls (Unicorn 1.0.2
  running the loop), minus that of a one-iteration run.

Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main() -> int:
    import speakeasy
    import unicorn
    from speakeasy.engines.unicorn_eng import EmuEngine

    spent = [0.0]
    start = EmuEngine.start

    def timed_start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return start(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    EmuEngine.start = timed_start
    arch, code_hex, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine, run = {}, {}
    for n in (1, iterations):
        code = bytes.fromhex(code_hex.replace("NNNNNNNN", n.to_bytes(4, "little").hex()))
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
            f.write(code)
        try:
            se = speakeasy.Speakeasy()
            addr = se.load_shellcode(f.name, arch)
            spent[0] = 0.0
            t0 = time.perf_counter()
            se.run_shellcode(addr)
            run[n] = time.perf_counter() - t0
            engine[n] = spent[0]
        finally:
            os.unlink(f.name)
    result = {
        "run_seconds": run[iterations],
        "engine_seconds": engine[iterations] - engine[1],
        "unicorn": str(unicorn.__version__),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
