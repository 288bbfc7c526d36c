"""The native baseline: asm/src/ntheap.c compiled for the Linux host, replaying a tape.

Both architectures are built with the compiler that produced the emulated code (``python -m
ziglang cc``, clang) and the heap is compiled with the same code-generation flags as
``asm/generate.py`` (-O2, no builtins, no jump tables, the same -mcpu), so the native and the
emulated runs execute the same C compiled the same way. Builds are cached by a hash of the
sources and command lines under $HEAPEMU_NATIVE_BUILD_DIR or <repo>/.build/native_replay/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

from asm.generate import CFLAGS, TARGETS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SOURCES = (HERE / "replay.c", REPO / "asm" / "src" / "ntheap.c", REPO / "asm" / "src" / "ntheap.h")
LINUX_TARGETS = {"x86": "x86-linux-musl", "x64": "x86_64-linux-musl"}
# generate.py's flags that only make sense for a freestanding Windows object
_WINDOWS_ONLY = {"-ffreestanding", "-nostdlib", "-mno-stack-arg-probe", "-g0"}


class NativeError(Exception):
    pass


def _commands(arch: str, work: Path) -> list[list[str]]:
    zig = [sys.executable, "-m", "ziglang", "cc", "-target", LINUX_TARGETS[arch]]
    heap_flags = [f for f in CFLAGS if f not in _WINDOWS_ONLY]
    inc = ["-I", str(REPO / "asm" / "src"), "-DNTHEAP_NATIVE"]
    obj = str(work / "ntheap.o")
    return [
        [*zig, f"-mcpu={TARGETS[arch][1]}", *heap_flags, *inc, "-c", str(SOURCES[1]), "-o", obj],
        [*zig, "-O2", "-Wall", "-Wextra", "-Werror", *inc, str(SOURCES[0]), obj,
         "-o", str(work / "native_replay")],
    ]  # fmt: skip


def build(arch: str) -> Path:
    """Path of the native replay program for ``arch`` (built on first use, ~1 min cold)."""
    root = Path(os.environ.get("HEAPEMU_NATIVE_BUILD_DIR") or REPO / ".build") / "native_replay"
    digest = hashlib.sha256(repr(_commands(arch, Path("W"))).encode())
    for src in SOURCES:
        digest.update(src.read_bytes())
    final = root / f"{arch}-{digest.hexdigest()[:16]}"
    exe = final / "native_replay"
    if exe.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{arch}-tmp-", dir=root))
    try:
        for cmd in _commands(arch, work):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if p.returncode != 0:
                raise NativeError(f"building the {arch} native replay failed:\n{p.stderr}")
        try:
            work.rename(final)
        except OSError:
            if not exe.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return exe


@dataclass
class NativeRun:
    ops: int
    rounds: int
    best_seconds: float
    vm_calls: int
    results: array[int]  # the first round's results
    best_cpu_seconds: float = 0.0  # the best round's CPU time (CLOCK_THREAD_CPUTIME_ID)

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.best_seconds if self.best_seconds else 0.0


def run(arch: str, tape_bytes: bytes, rounds: int = 5) -> NativeRun:
    """Replay ``tape_bytes`` natively ``rounds`` times (fresh heap each); the best time."""
    exe = build(arch)
    with tempfile.TemporaryDirectory() as tmp:
        tape_path, results_path = Path(tmp) / "tape.bin", Path(tmp) / "results.bin"
        tape_path.write_bytes(tape_bytes)
        p = subprocess.run(
            [str(exe), str(tape_path), str(rounds), str(results_path)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if p.returncode != 0:
            raise NativeError(f"native replay exited with {p.returncode}: {p.stderr[-2000:]}")
        tok = p.stdout.split()
        fields = dict(zip(tok[0::2], tok[1::2], strict=False))
        results: array[int] = array("Q" if arch == "x64" else "I")
        results.frombytes(results_path.read_bytes())
    return NativeRun(
        ops=int(fields["ops"]),
        rounds=int(fields["rounds"]),
        best_seconds=int(fields["best_ns"]) / 1e9,
        vm_calls=int(fields["vm_calls"]),
        results=results,
        best_cpu_seconds=int(fields.get("best_cpu_ns", 0)) / 1e9,
    )
