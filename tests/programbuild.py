"""Build the Windows console programs of tests/programs/ with Debian's mingw-w64 toolchain.

zig's windows-gnu targets link the Universal CRT only; seed 003 and seed 001 are about
msvcrt.dll's heap, which mingw-w64 programs use. So these are built with

    x64: x86_64-w64-mingw32-gcc / -g++   (Debian g++-mingw-w64-x86-64-win32)
    x86: i686-w64-mingw32-gcc / -g++     (Debian g++-mingw-w64-i686-win32)

with -O1 -g (COFF symbols for the stacks), libgcc and libstdc++ linked statically, so each
program imports only msvcrt.dll and KERNEL32.dll (runtime.dll: ucrtbase.dll and KERNEL32.dll).

    alloc.exe      seed 003: alloc_malloc / alloc_new / alloc_heap, 8 bytes each
    args.exe       argv, an environment variable, stderr and the exit code
    sandbox.exe    tries host paths it was not given
    runtime.dll    seed 001: allocates with its own CRT (ucrtbase.dll)
    crossfree.exe  frees runtime.dll's block with msvcrt.dll's free
    vmrules.exe    virtual memory, sections and views as a program uses them (issue 16)
    sysinfo.exe    processor features, memory status and counters, priorities, a thread stack
    clock.exe      GetTickCount, QueryPerformanceCounter, the system time around Sleep(50)
    fault.exe      reads address 0x10 (-O0: the faulting load is inside its basic block)
    exceptions.exe exceptions dispatched to its handlers (SEH, vectored, guard pages, ...)
    thrower.dll    throws a C++ exception ...
    cxxthrow.exe   ... that the program calling it catches
    threads.exe    threads, waits, events, semaphores, mutexes, critical sections; a shared heap
    flood.exe      MIB x 1 MiB to stdout, an unserved system call between two stderr lines
    heapops.exe    malloc/realloc/HeapCreate/HeapAlloc/GlobalAlloc/LocalAlloc..., an LFH-sized run
    hostile.exe    hostile acts, one per argument: broken handlers, garbage CONTEXTs, wild jumps...

Outputs are cached under $HEAPEMU_BUILD_DIR or <repo>/.build/programs/, in a directory named by
a hash of the sources, flags and compiler version; a build goes to a temporary directory and is
renamed into place, under a lock file beside it (tests/buildlock.py: parallel test workers
build each program once).

    build(name, arch) -> Path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildlock import build_lock

REPO = Path(__file__).resolve().parent.parent
SOURCES = Path(__file__).resolve().parent / "programs"
TRIPLETS = {"x86": "i686-w64-mingw32", "x64": "x86_64-w64-mingw32"}
PACKAGES = "g++-mingw-w64-x86-64-win32 g++-mingw-w64-i686-win32"
CFLAGS = ("-O1", "-g", "-fno-omit-frame-pointer")
LDFLAGS = ("-static-libgcc", "-static-libstdc++")
BUILD_TIMEOUT = 300


@dataclass(frozen=True)
class Recipe:
    sources: tuple[str, ...]
    dlls: tuple[str, ...] = ()  # other recipes this one links against (their import libs)
    libs: tuple[str, ...] = ()  # mingw import libraries (-l) beyond the defaults
    freestanding_dll: bool = False  # no mingw start-up code; DllMain entry; ucrtbase's CRT
    shared: bool = False  # a DLL with mingw's start-up code and runtime (import library beside it)
    # x86 only: libgcc as a DLL (libgcc_s_dw2-1.dll), so modules share one DWARF unwinder
    shared_libgcc: bool = False
    cflags: tuple[str, ...] = ()  # after the common CFLAGS (so -O0 wins over -O1)


RECIPES: dict[str, Recipe] = {
    "alloc.exe": Recipe(("alloc.cpp",)),
    "args.exe": Recipe(("args.c",)),
    "crash.exe": Recipe(("crash.c",)),
    "sandbox.exe": Recipe(("sandbox.c",)),
    "runtime.dll": Recipe(("runtime.c",), freestanding_dll=True),
    "crossfree.exe": Recipe(("crossfree.c",), dlls=("runtime.dll",)),
    "vmrules.exe": Recipe(("vmrules.c",)),
    "sysinfo.exe": Recipe(("sysinfo.c",), libs=("psapi",)),
    "clock.exe": Recipe(("clock.c",)),
    "fault.exe": Recipe(("fault.c",), cflags=("-O0",)),
    "exceptions.exe": Recipe(("exceptions.c",)),
    "thrower.dll": Recipe(("thrower.cpp",), shared=True, shared_libgcc=True),
    "cxxthrow.exe": Recipe(("cxxthrow.cpp",), dlls=("thrower.dll",), shared_libgcc=True),
    "threads.exe": Recipe(("threads.c",)),
    "flood.exe": Recipe(("flood.c",)),
    "heapops.exe": Recipe(("heapops.c",)),
    "hostile.exe": Recipe(("hostile.c",)),
}


def runtime_dlls(name: str, arch: str) -> dict[str, Path]:
    """The mingw runtime DLLs program ``name`` needs beside it, by file name (x86's shared
    libgcc): map them into its sandbox."""
    if not (RECIPES[name].shared_libgcc and arch == "x86"):
        return {}
    tool = compiler(arch, RECIPES[name].sources[0])
    out = subprocess.run([tool, "-print-file-name=libgcc_s_dw2-1.dll"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    path = Path(out.stdout.strip())
    return {path.name: path}


def build_root() -> Path:
    base = os.environ.get("HEAPEMU_BUILD_DIR")
    return Path(base) / "programs" if base else REPO / ".build" / "programs"


def compiler(arch: str, source: str) -> str:
    tool = f"{TRIPLETS[arch]}-{'g++' if source.endswith('.cpp') else 'gcc'}"
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(
            f"{tool} not found: the test programs are built with Debian's mingw-w64 "
            f"(as root: apt-get install {PACKAGES})"
        )
    return path


_versions: dict[str, str] = {}


def _version(tool: str) -> str:
    if tool not in _versions:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)
        _versions[tool] = out.stdout.splitlines()[0] if out.stdout else ""
    return _versions[tool]


def _key(name: str, arch: str) -> str:
    recipe = RECIPES[name]
    tool = compiler(arch, recipe.sources[0])
    h = hashlib.sha256(f"{name}\0{arch}\0{_version(tool)}\0{CFLAGS}{LDFLAGS}{recipe}".encode())
    for source in recipe.sources:
        h.update((SOURCES / source).read_bytes())
    for dll in recipe.dlls:
        h.update(_key(dll, arch).encode())
    return h.hexdigest()[:20]


def build(name: str, arch: str) -> Path:
    """Path of program ``name`` built for ``arch`` ("x86"/"x64"), building it if not cached."""
    if name not in RECIPES:
        raise KeyError(f"no recipe for {name!r}; known: {sorted(RECIPES)}")
    final = build_root() / f"{name}-{arch}-{_key(name, arch)}"
    if (final / name).is_file():
        return final / name
    with build_lock(final.with_name(f".{final.name}.lock")):  # one builder (xdist workers)
        if (final / name).is_file():  # built while this one waited
            return final / name
        return _build(name, arch, final)


def _build(name: str, arch: str, final: Path) -> Path:
    recipe = RECIPES[name]
    work = Path(tempfile.mkdtemp(prefix=f".{name}-{arch}-", dir=build_root()))
    try:
        command = [compiler(arch, recipe.sources[0]), *CFLAGS, *recipe.cflags]
        command += [str(SOURCES / s) for s in recipe.sources]
        if recipe.freestanding_dll:
            entry = "_DllMain@12" if arch == "x86" else "DllMain"
            implib = f"-Wl,--out-implib,{Path(name).with_suffix('.lib')}"
            command += ["-shared", "-nostdlib", f"-Wl,-e,{entry}", implib]
            command += ["-lucrtbase", "-lkernel32"]
        else:
            shared_libgcc = recipe.shared_libgcc and arch == "x86"
            command += ["-shared-libgcc", "-static-libstdc++"] if shared_libgcc else [*LDFLAGS]
            if recipe.shared:
                command += ["-shared", f"-Wl,--out-implib,{Path(name).with_suffix('.lib')}"]
            for dll in recipe.dlls:
                command.append(str(build(dll, arch).with_suffix(".lib")))
            command += [f"-l{lib}" for lib in recipe.libs]
        command += ["-o", name]
        result = subprocess.run(
            command, cwd=work, capture_output=True, text=True, timeout=BUILD_TIMEOUT
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
        try:
            work.rename(final)
        except OSError:
            if not (final / name).is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final / name


if __name__ == "__main__":
    for arch in TRIPLETS:
        for name in RECIPES:
            print(f"{arch:4} {name:14} {build(name, arch)}")
