"""asm.HEAP_LAYOUTS (declared once in Python) matches the C structures on both targets.

Static assertions for every field offset and size, every structure size and every constant
are generated from the Python declaration and compiled against asm/src/ntheap.c by the pinned
zig cc for x86-windows-gnu and x86_64-windows-gnu (the exact compilers of the flat code), and
by gcc for the host. The free-list bucket function is compared by running the C one natively.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import asm
from asm import generate

SRC = Path(__file__).resolve().parent.parent / "asm" / "src"


def assertions(arch: str) -> str:
    lay = asm.layout(arch)
    lines = ['#include "ntheap.c"', "#define CHECK(c, m) _Static_assert(c, m)"]
    for struct in lay.structs.values():
        lines.append(f'CHECK(sizeof({struct.name}) == {struct.size}, "sizeof {struct.name}");')
        for f in struct.fields.values():
            msg = f"{struct.name}.{f.name}"
            lines.append(
                f'CHECK(__builtin_offsetof({struct.name}, {f.name}) == {f.offset}, "{msg}");'
            )
            lines.append(
                f'CHECK(sizeof((({struct.name} *)0)->{f.name}) == {f.size}, "size {msg}");'
            )
    for name, value in lay.constants.items():
        lines.append(f'CHECK((unsigned long long)({name}) == {value:#x}ull, "{name}");')
    lines += [
        f'CHECK(ALIGNMENT == {lay.alignment}, "ALIGNMENT");',
        f'CHECK(ARENA_OFFSET == {lay.arena_offset}, "ARENA_OFFSET");',
        f'CHECK(MIN_BLOCK_SIZE == {lay.min_block_size}, "MIN_BLOCK_SIZE");',
        f'CHECK(sizeof(void *) == {lay.pointer_size}, "pointer size");',
        f"CHECK(ARENA_HEADER_SIZE(sizeof(HEAP)) == {lay.first_arena_offset(lay.heap.size)},"
        ' "first arena");',
        f"CHECK(ARENA_HEADER_SIZE(sizeof(SUBHEAP)) == {lay.first_arena_offset(lay.subheap.size)},"
        ' "first arena of later subheaps");',
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_layout_matches_the_windows_build(arch: str, tmp_path: Path) -> None:
    path = tmp_path / f"layout_{arch}.c"
    path.write_text(assertions(arch))
    # compile to an object (zig's -fsyntax-only insists on an output file)
    cmd = [
        a
        for a in generate.zig_command(arch, "-c")
        if a not in (str(generate.HEAPS["ntheap"]), "-Werror")
    ]
    out = tmp_path / f"layout_{arch}.o"
    proc = subprocess.run(
        [*cmd, "-I", str(SRC), str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_layout_matches_the_native_build(tmp_path: Path) -> None:
    path = tmp_path / "layout_native.c"
    path.write_text(assertions("x64"))
    proc = subprocess.run(
        ["gcc", "-fsyntax-only", "-DNTHEAP_NATIVE", "-I", str(SRC), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_bucket_function_matches_c(tmp_path: Path) -> None:
    lay = asm.layout("x64")
    sizes = sorted(
        {s for b in lay.bucket_bounds for s in (b - 8, b, b + 8) if s >= 24} | {0x7F000, 0xFFFF0000}
    )
    harness = tmp_path / "buckets.c"
    harness.write_text(
        '#include <stdio.h>\n#include "ntheap.c"\n'
        "u32 NtAllocateVirtualMemory(uptr a, void **b, uptr c, uptr *d, u32 e, u32 f)"
        " { (void)a; (void)b; (void)c; (void)d; (void)e; (void)f; return 0; }\n"
        "u32 NtFreeVirtualMemory(uptr a, void **b, uptr *c, u32 d)"
        " { (void)a; (void)b; (void)c; (void)d; return 0; }\n"
        "u32 NtRaiseException(EXCEPTION_RECORD *a, void *b, u32 c)"
        " { (void)a; (void)b; (void)c; return 0; }\n"
        "u8 *ntheap_get_peb(void) { return 0; }\n"
        "int main(void) { static const unsigned long long sizes[] = {"
        + ", ".join(f"{s:#x}ull" for s in sizes)
        + "};\n for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)"
        ' printf("%u\\n", bucket_of((uptr)sizes[i]));\n return 0; }\n'
    )
    exe = tmp_path / "buckets"
    subprocess.run(
        ["gcc", "-w", "-DNTHEAP_NATIVE", "-I", str(SRC), str(harness), "-o", str(exe)], check=True
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert [int(x) for x in out.split()] == [lay.bucket_of(s) for s in sizes]
    assert (
        lay.bucket_of(0x108) == 16
        and lay.bucket_of(0x10000) == lay.constants["HEAP_NB_FREE_LISTS"] - 1
    )


def test_layout_summary() -> None:
    x86, x64 = asm.layout("x86"), asm.layout("x64")
    assert (x86.alignment, x86.arena_offset, x86.min_block_size) == (8, 0, 24)
    assert (x64.alignment, x64.arena_offset, x64.min_block_size) == (16, 8, 32)
    assert (x86.heap["flags"], x64.heap["flags"]) == (0x40, 0x70)  # where Windows has them
    assert x86.heap_walk_entry.size == 0x1C and x64.heap_walk_entry.size == 0x30
    assert asm.HEAP_LAYOUTS["x64"] is x64
