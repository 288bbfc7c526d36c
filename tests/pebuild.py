"""Build the small test PEs of tests/pe_src/ with the pinned PyPI ziglang (`python -m ziglang cc`).

Every PE is built CRT-free (-nostdlib, own entry point) for x86 (x86-windows-gnu) and x64
(x86_64-windows-gnu), so the only imports are the ones its source asks for:

    mathlib.dll  no imports; exports add, mul3, add_std, sum6, counter, counter_ptr, ordinal 7
                 (NONAME), forwarders fwd_alloc -> kernel32.HeapAlloc and fwd_ord -> other.#12
    tlsdll.dll   no imports; TLS directory with two callbacks; exports tls_value, callback_hits
    user.exe     imports kernel32.dll (GetProcessHeap, HeapAlloc, HeapFree) and mathlib.dll
                 (add, mul3, add_std, sum6, counter, ordinal 7)

Outputs are cached under $HEAPEMU_BUILD_DIR or <repo>/.build/pe/, in a directory named by a hash
of the sources, flags and zig version, so a second test run does no compiling. A build goes to a
temporary directory first and is renamed into place, so concurrent runs cannot see half a build,
under a lock file beside it (tests/buildlock.py), so parallel test workers build each PE once.

    build(name, arch) -> Path      e.g. build("mathlib.dll", "x64")
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildlock import build_lock

REPO = Path(__file__).resolve().parent.parent
PE_SRC = Path(__file__).resolve().parent / "pe_src"
ZIG_TARGETS = {"x86": "x86-windows-gnu", "x64": "x86_64-windows-gnu"}
DLLTOOL_MACHINES = {"x86": "i386", "x64": "i386:x86-64"}
# Freestanding C: no CRT, no builtins turned into libc calls, nothing else imported.
CFLAGS = ("-O2", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector")
BUILD_TIMEOUT = 600  # the first zig run fills zig's own cache and can be slow


@dataclass(frozen=True)
class Recipe:
    """How to build one test PE."""

    sources: tuple[str, ...]  # files in pe_src/ (.c, and a .def for the export table)
    entry: str  # entry point symbol (undecorated; lld finds _DllMain@12 on x86)
    import_libs: tuple[str, ...] = ()  # other recipes' import libraries, or "kernel32"

    @property
    def is_dll(self) -> bool:
        return self.entry == "DllMain"


RECIPES: dict[str, Recipe] = {
    "mathlib.dll": Recipe(("mathlib.c", "mathlib.def"), "DllMain"),
    "tlsdll.dll": Recipe(("tlsdll.c",), "DllMain"),
    "user.exe": Recipe(("user.c",), "start", ("mathlib.dll", "kernel32")),
    # seed 003: malloc-like, operator-new-like and HeapAlloc-like paths to RtlAllocateHeap
    "allocate.dll": Recipe(("allocate.c",), "DllMain", ("ntdll",)),
}
# import libraries made from pe_src/<name>.def with `zig dlltool`
DEF_LIBS = ("kernel32", "ntdll")


def build_root() -> Path:
    return Path(os.environ.get("HEAPEMU_BUILD_DIR") or REPO / ".build" / "pe")


def _zig(*args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "ziglang", *args]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


_zig_version_cache: list[str] = []


def zig_version() -> str:
    if not _zig_version_cache:
        out = subprocess.run(
            [sys.executable, "-m", "ziglang", "version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        _zig_version_cache.append(out.stdout.strip())
    return _zig_version_cache[0]


def _def_text(lib: str, arch: str) -> str:
    text = (PE_SRC / f"{lib}.def").read_text()
    # x64 has one calling convention and no @N decorations.
    return text if arch == "x86" else re.sub(r"@\d+", "", text)


def _key(name: str, arch: str) -> str:
    """Hash of everything that goes into a build, including what it links against."""
    recipe = RECIPES[name]
    h = hashlib.sha256()
    h.update(f"{name}\0{arch}\0{zig_version()}\0{CFLAGS}\0{recipe}\0".encode())
    for source in recipe.sources:
        h.update((PE_SRC / source).read_bytes())
    for lib in recipe.import_libs:
        h.update((_def_text(lib, arch) if lib in DEF_LIBS else _key(lib, arch)).encode())
    return h.hexdigest()[:20]


def _output_dir(name: str, arch: str) -> Path:
    return build_root() / f"{name}-{arch}-{_key(name, arch)}"


def build(name: str, arch: str) -> Path:
    """Path of test PE `name` built for `arch` ("x86" or "x64"), building it if not cached."""
    if name not in RECIPES:
        raise KeyError(f"no recipe for {name!r}; known: {sorted(RECIPES)}")
    if arch not in ZIG_TARGETS:
        raise KeyError(f"unknown arch {arch!r}")
    final = _output_dir(name, arch)
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
        link_inputs: list[str] = []
        for lib in recipe.import_libs:
            if lib in DEF_LIBS:
                (work / f"{lib}.def").write_text(_def_text(lib, arch))
                _zig(
                    "dlltool",
                    "-d",
                    f"{lib}.def",
                    "-l",
                    f"{lib}.lib",
                    "-m",
                    DLLTOOL_MACHINES[arch],
                    *(["-k"] if arch == "x86" else []),
                    cwd=work,
                )
                link_inputs.append(str(work / f"{lib}.lib"))
            else:
                link_inputs.append(str(build(lib, arch).with_suffix(".lib")))
        command = ["cc", "-target", ZIG_TARGETS[arch], *CFLAGS]
        if recipe.is_dll:
            command += ["-shared", f"-Wl,--out-implib,{Path(name).with_suffix('.lib')}"]
        command += ["-o", name, f"-Wl,--entry={recipe.entry}"]
        command += [str(PE_SRC / source) for source in recipe.sources]
        _zig(*command, *link_inputs, cwd=work)
        try:
            work.rename(final)
        except OSError:
            if not (final / name).is_file():  # not a concurrent build that won: a real error
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final / name


def build_all() -> dict[tuple[str, str], Path]:
    """Every recipe on every arch."""
    return {(name, arch): build(name, arch) for arch in ZIG_TARGETS for name in RECIPES}


if __name__ == "__main__":
    for (name, arch), path in build_all().items():
        print(f"{arch:4} {name:12} {path}")
