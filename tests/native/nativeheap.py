"""Build and run the embedded NT heap natively on the Linux host (tests/native/driver.c).

The same C as the emulated allocator (asm/src/ntheap.c; with ``heap="segment"`` the segment
heap, asm/src/segheap.c) is compiled for the host with a
native stand-in for its system calls (see driver.c's header for the full script language and
output format), and driven by an operation script:

    run = run_script('''
        create h 0x2 0 0        # growable heap (reserve 0 -> 0x110000)
        alloc p h 0 0x100
        fill p 7 0x100
        size h 0 p
        walk h
    ''', arch="x64")
    run.value("p")        -> address returned by RtlAllocateHeap
    run.results("size")   -> [0x100]
    run.walks[0]          -> [WalkEntry(...), ...]
    run.vm                -> every NtAllocateVirtualMemory / NtFreeVirtualMemory call

Builds: "x64" with gcc, "x86" with ``python -m ziglang cc -target x86-linux-musl`` (a static
32-bit program; the first build on a machine fills zig's cache, ~1 minute). Both with UBSan.
``heap="win7"`` builds the driver against asm/src/win7heap.c (the Windows 7 heap + LFH, with
-DHEAPEMU_WIN7HEAP: the script also gets ``keys``, ``query`` and ``setinfo`` lines).
Cached under $HEAPEMU_NATIVE_BUILD_DIR or <repo>/.build/native/, in a directory named by a hash
of the sources, flags and compiler; a build goes to a temporary directory first and is renamed,
under a lock file beside it (tests/buildlock.py: parallel test workers build each driver once).

For a differential test against the emulator: run the script through the emulated heap, collect
the (base, size) of every NtAllocateVirtualMemory *reservation* without a base address, in order
(what the emulator's kernel returned), and pass them as ``answers``; the native run then maps
the same addresses, so every output line and every dumped byte should be equal. ``dump_dir``
(or a ``dump`` line) writes each live region to ``DIR/dump<N>_<base>.bin`` with uncommitted
pages as zeros; ``run.regions`` lists them with their committed ranges.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildlock import build_lock

REPO = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "driver.c", REPO / "asm" / "src" / "ntheap.c", REPO / "asm" / "src" / "ntheap.h")
#: heap name -> (driver.c, the heap's C source, its header, extra compiler flags)
HEAPS: dict[str, tuple[Path, Path, Path, tuple[str, ...]]] = {
    "nt": (*SOURCES, ()),
    "segment": (
        HERE / "driver.c",
        REPO / "asm" / "src" / "segheap.c",
        REPO / "asm" / "src" / "segheap.h",
        ("-DDRIVER_SEGHEAP",),
    ),
    "win7": (
        HERE / "driver.c",
        REPO / "asm" / "src" / "win7heap.c",
        REPO / "asm" / "src" / "win7heap.h",
        ("-DHEAPEMU_WIN7HEAP",),
    ),
}
COMMON_FLAGS = (
    "-O1",
    "-g",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-DNTHEAP_NATIVE",
    "-fno-strict-aliasing",
)
BUILD_TIMEOUT = 600


class NativeError(Exception):
    """The driver rejected the script or crashed; the message has the end of its output."""


def _compiler(arch: str) -> list[str]:
    if arch == "x64":
        return ["gcc", *COMMON_FLAGS, "-fsanitize=undefined", "-fno-sanitize-recover=undefined"]
    if arch == "x86":
        return [
            sys.executable, "-m", "ziglang", "cc", "-target", "x86-linux-musl",
            *COMMON_FLAGS, "-fsanitize=undefined", "-fsanitize-trap=undefined",
        ]  # fmt: skip
    raise ValueError(f"unknown architecture {arch!r}")


def build_root() -> Path:
    return Path(os.environ.get("HEAPEMU_NATIVE_BUILD_DIR") or REPO / ".build" / "native")


def build_driver(arch: str = "x64", heap: str = "nt") -> Path:
    """Path of the driver built for arch ("x64": gcc, "x86": zig cc musl) and heap ("nt":
    asm/src/ntheap.c, "segment": asm/src/segheap.c, "win7": asm/src/win7heap.c), cached by hash."""
    *sources, extra = HEAPS[heap]
    cmd = [*_compiler(arch), *extra]
    digest = hashlib.sha256("\0".join(cmd).encode())
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    final = build_root() / f"{arch}-{digest.hexdigest()[:16]}"
    exe = final / ("ntheap_driver" if heap == "nt" else f"{heap}heap_driver")
    if exe.is_file():
        return exe
    with build_lock(final.with_name(f".{final.name}.lock")):  # one builder (xdist workers)
        if not exe.is_file():  # else built while this one waited
            _build(arch, cmd, sources, exe)
    return exe


def _build(arch: str, cmd: list[str], sources: list[Path], exe: Path) -> None:
    final = exe.parent
    work = Path(tempfile.mkdtemp(prefix=f"{arch}-tmp-", dir=build_root()))
    try:
        proc = subprocess.run(
            [*cmd, "-I", str(REPO / "asm" / "src"), str(sources[0]), str(sources[1]),
             "-o", str(work / exe.name)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise NativeError(f"building the {arch} driver failed:\n{proc.stderr}")
        try:
            work.rename(final)
        except OSError:
            if not exe.is_file():  # not a concurrent build that won: a real error
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class WalkEntry:
    """One RtlWalkHeap result (RTL_HEAP_WALK_ENTRY); region fields only for region entries."""

    data: int
    size: int
    overhead: int
    region: int
    flags: int
    committed: int = 0
    uncommitted: int = 0
    first_block: int = 0
    last_block: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.flags & 0x1)  # RTL_HEAP_ENTRY_BUSY

    @property
    def is_region(self) -> bool:
        return bool(self.flags & 0x2)  # RTL_HEAP_ENTRY_REGION

    @property
    def is_uncommitted(self) -> bool:
        return bool(self.flags & 0x1000)  # RTL_HEAP_ENTRY_UNCOMMITTED


@dataclass(frozen=True)
class VmCall:
    """One NtAllocateVirtualMemory ("alloc") or NtFreeVirtualMemory ("free") call."""

    kind: str
    base: int  # *BaseAddress on entry
    size: int  # *RegionSize on entry
    type: int
    protect: int
    status: int
    out_base: int = 0  # alloc: what was written back on success
    out_size: int = 0


@dataclass(frozen=True)
class Region:
    """A live region at a dump: committed [start, end) ranges and the dump file (if any)."""

    base: int
    size: int
    committed: tuple[tuple[int, int], ...]
    file: Path | None

    def read(self) -> bytes:
        assert self.file is not None, "run with dump_dir to get region contents"
        return self.file.read_bytes()


@dataclass
class NativeRun:
    """Parsed output of one driver run (``lines`` is the raw output)."""

    lines: list[str]
    values: dict[str, int] = field(default_factory=dict)
    ops: list[tuple[str, int]] = field(default_factory=list)
    walks: list[list[WalkEntry]] = field(default_factory=list)
    walk_status: list[int] = field(default_factory=list)
    vm: list[VmCall] = field(default_factory=list)
    exceptions: list[int] = field(default_factory=list)
    checks: list[bool] = field(default_factory=list)
    heaps: list[list[int]] = field(default_factory=list)
    peeks: list[bytes] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)

    def value(self, name: str) -> int:
        """The last value a create/reserve/alloc/realloc line gave name."""
        return self.values[name]

    def results(self, op: str) -> list[int]:
        """Results of every ``op`` line (free, size, validate, destroy, lock, unlock)."""
        return [v for o, v in self.ops if o == op]

    def reservations(self) -> list[tuple[int, int]]:
        """(base, size) of every successful reservation without a base: the answers format."""
        return [
            (c.out_base, c.out_size)
            for c in self.vm
            if c.kind == "alloc" and c.type & 0x2000 and c.base == 0 and c.status == 0
        ]


def _parse(text: str) -> NativeRun:
    run = NativeRun(lines=text.splitlines())
    walk: list[WalkEntry] = []
    for line in run.lines:
        tok = line.split()
        if not tok:
            continue
        head = tok[0]
        if head == "vm":
            nums = [int(t, 16) for t in tok[2:] if t != "->"]
            if tok[1] == "alloc":
                run.vm.append(VmCall("alloc", *nums[:5], *nums[5:7]))
            elif tok[1] == "free":
                base, size, type_, status = nums
                run.vm.append(VmCall("free", base, size, type_, 0, status))
        elif head == "walk" and tok[1] == "end":
            run.walks.append(walk)
            run.walk_status.append(int(tok[2], 16) if tok[2] != "runaway" else -1)
            walk = []
        elif head == "walk":
            nums = [int(t, 0) for t in tok[1:]]
            walk.append(WalkEntry(*nums))
        elif head == "exception":
            run.exceptions.append(int(tok[1], 16))
        elif head == "check":
            run.checks.append(tok[1] == "ok")
        elif head == "peek":
            run.peeks.append(bytes.fromhex(tok[1] if len(tok) > 1 else ""))
        elif head == "heaps":
            run.heaps.append([int(t, 16) for t in tok[2:]])
        elif head == "region":
            ranges = tuple(
                (int(a, 16), int(b, 16))
                for a, b in (r.split("-") for r in tok[3].split(",") if tok[3] != "-")
            )
            file = None if tok[4] == "-" else Path(tok[4])
            run.regions.append(Region(int(tok[1], 16), int(tok[2], 16), ranges, file))
        elif len(tok) >= 3 and tok[-2] == "->":
            value = int(tok[-1], 16)
            if len(tok) == 4:  # "alloc NAME -> VALUE"
                run.values[tok[1]] = value
            run.ops.append((head, value))
    return run


def run_script(
    script: str | Iterable[str],
    *,
    arch: str = "x64",
    heap: str = "nt",
    answers: Sequence[tuple[int, int]] | None = None,
    dump_dir: Path | None = None,
    timeout: float = 120,
) -> NativeRun:
    """Run an operation script (text or lines) through the native heap and parse its output.

    answers: (base, size) per reservation, in order, written as ``alloc BASE SIZE`` lines;
    dump_dir: where ``dump`` lines write region files (a final dump is added when given);
    heap: "nt" (asm/src/ntheap.c), "segment" (asm/src/segheap.c) or "win7" (asm/src/win7heap.c).
    """
    text = script if isinstance(script, str) else "\n".join(script)
    exe = build_driver(arch, heap)
    args = [str(exe)]
    with tempfile.TemporaryDirectory() as tmp:
        if answers is not None:
            answer_file = Path(tmp) / "answers.txt"
            answer_file.write_text("".join(f"alloc {b:#x} {s:#x}\n" for b, s in answers))
            args += ["-a", str(answer_file)]
        if dump_dir is not None:
            args += ["-d", str(dump_dir)]
            text += "\ndump\n"
        proc = subprocess.run(
            args, input=text, capture_output=True, text=True, timeout=timeout, check=False
        )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise NativeError(
            f"driver exited with {proc.returncode}:\n{tail}\n{proc.stderr[-2000:]}".rstrip()
        )
    return _parse(proc.stdout)
