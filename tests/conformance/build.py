"""Build Wine 8.0's conformance tests as standalone Windows programs (issue 16).

The sources come from ``loader.wine_tests`` (fetched into heapemu's cache, never into the
repository); the programs are built into ``<XDG cache>/heapemu/conformance/build/``.

Wine's own build (tools/makedep.c) compiles a test module with Wine's headers and defines
``__WINESRC__`` for every in-tree module, and generates a ``testlist.c`` that defines
``STANDALONE`` (``wine/test.h`` then holds the runner's ``main``) and lists
``{name, func_name}``; ``START_TEST(virtual)`` defines ``func_virtual``. This module does the
same with mingw-w64, for each file and arch (``i686``/``x86_64``)::

    <cc> -O1 -w -fno-builtin -D__WINESRC__ -D__WINE_PE_BUILD -D_MSVCR_VER=0 \\
         -I<wine>/include -I<wine>/include/msvcrt \\
         -o <build>/<arch>/<name>.exe <build>/<name>.c <build>/<name>_testlist.c \\
         tests/conformance/winetest_support.c -lntdll

``<build>/<name>.c`` is the test file with each ``test_*()`` call of its ``START_TEST`` body
wrapped in ``if (heapemu_test_selected("test_x"))`` (so ``$HEAPEMU_WINETEST`` can run one
function alone; the calls of the child-process modes, under ``argc >= 3``, are left alone).
Wine's headers (its msvcrt ones too, ``_MSVCR_VER=0`` = msvcrt.dll, the CRT Wine's tests use)
are needed rather than mingw's: the tests use Wine's fuller ``winternl.h`` and ``ddk/wdm.h``.
``winetest_support.c`` is heapemu's own code for what the programs would otherwise import
from DLLs a heapemu process does not have (user32, advapi32; see its comment).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loader.wine_tests import find_wine_tests

HERE = Path(__file__).resolve().parent
SUPPORT_C = HERE / "winetest_support.c"
ARCH_CC = {"x86": "i686-w64-mingw32-gcc", "x64": "x86_64-w64-mingw32-gcc"}
CFLAGS = (
    "-O1",
    "-w",
    "-fno-builtin",
    "-D__WINESRC__",
    "-D__WINE_PE_BUILD",
    "-D_MSVCR_VER=0",
)
LIBS = ("-lntdll",)
BUILD_TIMEOUT = 300


@dataclass(frozen=True)
class TestFile:
    """One Wine conformance-test file: `key` names it here, `test` is its START_TEST name."""

    key: str
    path: str  # in Wine's source tree
    test: str


TEST_FILES = (
    TestFile("kernel32-virtual", "dlls/kernel32/tests/virtual.c", "virtual"),
    TestFile("ntdll-virtual", "dlls/ntdll/tests/virtual.c", "virtual"),
    TestFile("kernel32-heap", "dlls/kernel32/tests/heap.c", "heap"),
)
FILES_BY_KEY = {f.key: f for f in TEST_FILES}


class BuildError(Exception):
    """A conformance test that could not be built (the compiler's message)."""


def build_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heapemu" / "conformance" / "build"


_CALL = re.compile(r"^(\s+)(test_\w+)\s*\(")


def _start_test_body(lines: list[str], test: str) -> tuple[int, int]:
    """The [first, last) line indexes of the START_TEST(test) function."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"START_TEST({test})"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("}"))
    return start, end


def selectable_source(text: str, test: str) -> tuple[str, list[str]]:
    """`text` with the START_TEST body's test_*() calls made selectable; also the names of
    those functions in the order they run."""
    lines = text.splitlines(keepends=True)
    start, end = _start_test_body(lines, test)
    names: list[str] = []
    depth_child = False
    for i in range(start, end):
        line = lines[i]
        if "argc >= 3" in line:  # the child-process modes: always run when asked for
            depth_child = True
        if depth_child and line.startswith("    }"):
            depth_child = False
            continue
        match = _CALL.match(line)
        if match and not depth_child:
            name = match.group(2)
            lines[i] = f'{match.group(1)}if (heapemu_test_selected("{name}")) {line.lstrip()}'
            if name not in names:
                names.append(name)
    # declared on the first line, so that every line keeps its number in Wine's file
    prologue = "int heapemu_test_selected( const char *name ); "
    return prologue + "".join(lines), names


def testlist_source(test: str) -> str:
    """Our equivalent of the testlist.c Wine's makedep generates for a test module."""
    return (
        "#define WIN32_LEAN_AND_MEAN\n#include <windows.h>\n#define STANDALONE\n"
        '#include "wine/test.h"\n'
        f"extern void func_{test}(void);\n"
        f'const struct test winetest_testlist[] = {{ {{ "{test}", func_{test} }}, {{ 0, 0 }} }};\n'
    )


def test_functions(tf: TestFile, wine: Path | None = None) -> list[str]:
    """The test_*() functions START_TEST calls, in order."""
    root = wine or find_wine_tests()
    return selectable_source((root / tf.path).read_text(errors="replace"), tf.test)[1]


def command_line(tf: TestFile, arch: str, wine: Path, out: Path) -> list[str]:
    src = out.parent.parent / f"{tf.key}.c"
    testlist = out.parent.parent / f"{tf.key}_testlist.c"
    return [
        ARCH_CC[arch],
        *CFLAGS,
        f"-I{wine / 'include'}",
        f"-I{wine / 'include' / 'msvcrt'}",
        "-o",
        str(out),
        str(src),
        str(testlist),
        str(SUPPORT_C),
        *LIBS,
    ]


def build(tf: TestFile, arch: str, wine: Path | None = None) -> Path:
    """Build one test file for one arch (again only when its inputs changed); the .exe."""
    root = wine or find_wine_tests()
    cc = ARCH_CC[arch]
    if shutil.which(cc) is None:
        raise BuildError(f"{cc} is not installed (make toolchains)")
    bdir = build_dir()
    (bdir / arch).mkdir(parents=True, exist_ok=True)
    source, _names = selectable_source((root / tf.path).read_text(errors="replace"), tf.test)
    for path, text in (
        (bdir / f"{tf.key}.c", source),
        (bdir / f"{tf.key}_testlist.c", testlist_source(tf.test)),
    ):
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    out = bdir / arch / f"{tf.key}.exe"
    command = command_line(tf, arch, root, out)
    stamp = out.with_suffix(".stamp")
    digest = hashlib.sha256(
        "\0".join(command).encode() + source.encode() + SUPPORT_C.read_bytes()
    ).hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return out
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{result.stderr[-4000:]}")
    stamp.write_text(digest)
    return out
