#!/usr/bin/env python3
"""Regenerate the checked-in assembly of the embedded heaps from their C sources.

Each heap of ``HEAPS`` (``ntheap``: asm/src/ntheap.c, the Wine-style NT heap; ``segheap``:
asm/src/segheap.c, the Windows 10 segment heap; ``win7heap``: asm/src/win7heap.c, the Windows 7
NT heap with its LFH) becomes ``asm/<heap>_x86.s`` and
``asm/<heap>_x64.s``.

    python asm/generate.py            # rewrite the checked-in assembly
    python asm/generate.py --check    # exit 1 if regenerating would change it

One entry of SOURCES per heap: ``ntheap`` (the Wine-style NT heap) and ``win7heap`` (the
Windows 7 NT heap with its LFH front end).

The compiler is pinned: ``python -m ziglang cc`` from ziglang==0.17.0 (clang 22), targets
x86-windows-gnu and x86_64-windows-gnu. Its Intel-syntax output is made keystone-ready here:

* only code (``.text``) and read-only data (``.rdata``) are kept; debug and other sections,
  ``.def/.scl/.type/.endef``, ``.seh_*``, ``.cv_*``, ``.cfi_*``, ``.file``, ``.addrsig*``,
  ``.globl``, ``.intel_syntax`` and ``@feat.00`` are dropped; comments are removed;
* x86 decorations are removed (``_RtlAllocateHeap@12`` -> ``RtlAllocateHeap``, ``_helper`` ->
  ``helper``), so every function has its plain name and the system calls resolve to the stub
  labels in ``asm/syscalls_*.s``;
* assembler-local labels (``.LBB0_3`` on x64, ``LBB0_3`` on x86), which keystone rejects in
  memory operands, become ``<heap>_LBB0_3`` (``ntheap_LBB0_3``, ``segheap_LBB0_3``), so no two
  heaps share a label prefix;
* any directive not known to be safe stops the generation (nothing unknown slips through).

The flags keep the code self-contained: freestanding, no builtins (so no memset/memcpy calls;
generation fails if a call to an undefined name remains), no stack protector, no stack probes,
no jump tables, no SSE (general registers only), no unwind tables, no debug info.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: heap name -> C source; the name is the output file prefix and the local-label prefix.
HEAPS: dict[str, Path] = {
    "ntheap": HERE / "src" / "ntheap.c",
    "segheap": HERE / "src" / "segheap.c",
    "win7heap": HERE / "src" / "win7heap.c",
}
SOURCE = HEAPS["ntheap"]
ZIG_VERSION = "0.17.0"

# arch -> (zig target, cpu: baseline without SSE)
TARGETS: dict[str, tuple[str, str]] = {
    "x86": ("x86-windows-gnu", "i686"),
    "x64": ("x86_64-windows-gnu", "x86_64-sse-sse2"),
}

CFLAGS: tuple[str, ...] = (
    "-O2",
    "-g0",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-fno-stack-protector",
    "-mno-stack-arg-probe",
    "-fno-jump-tables",
    "-fno-strict-aliasing",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-falign-loops=1",  # no padding inside functions (only between them)
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-command-line-argument",  # zig passes -c along with -S
)

# Directives dropped outright, and directives kept as they are.
DROPPED_DIRECTIVES = (
    ".def",
    ".scl",
    ".type",
    ".endef",
    ".file",
    ".addrsig",
    ".addrsig_sym",
    ".globl",
    ".intel_syntax",
    ".lcomm",
    ".ident",
)
DROPPED_PREFIXES = (".seh_", ".cv_", ".cfi_")
KEPT_DIRECTIVES = (".p2align", ".byte", ".short", ".long", ".quad", ".zero", ".ascii", ".asciz")

IDENT = re.compile(r"[A-Za-z_.$@?][\w.$@?]*")
LABEL = re.compile(r"^([A-Za-z_.$@?][\w.$@?]*):(.*)$")


class GenerateError(Exception):
    """The compiler output contains something this script cannot make keystone-ready."""


def output_path(arch: str, heap: str = "ntheap") -> Path:
    return HERE / f"{heap}_{arch}.s"


def zig_command(arch: str, *mode: str, heap: str = "ntheap") -> list[str]:
    """The zig cc command line for arch and heap; mode is e.g. ("-S", "-masm=intel") or
    ("-c",)."""
    target, cpu = TARGETS[arch]
    return [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        "-target",
        target,
        f"-mcpu={cpu}",
        *mode,
        *CFLAGS,
        str(HEAPS[heap]),
    ]


def run_zig(arch: str, out: Path, *mode: str, heap: str = "ntheap") -> None:
    cmd = [*zig_command(arch, *mode, heap=heap), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GenerateError(f"zig cc failed ({arch}):\n{proc.stderr}")


def compile_to_asm(arch: str, heap: str = "ntheap") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{heap}_{arch}.s"
        run_zig(arch, out, "-S", "-masm=intel", heap=heap)
        return out.read_text()


def compile_to_object(arch: str, out: Path, heap: str = "ntheap") -> None:
    """The same C, same flags, as a COFF object (for comparing keystone's bytes with it)."""
    run_zig(arch, out, "-c", heap=heap)


def undecorate(name: str, arch: str) -> str:
    """Plain name of a symbol: x86 stdcall ``_Name@12`` and cdecl ``_name`` lose decoration."""
    if arch != "x86":
        return name
    m = re.fullmatch(r"_([A-Za-z_]\w*)@\d+", name)
    if m:
        return m.group(1)
    if name.startswith("_") and len(name) > 1:
        return name[1:]
    return name


def is_local_label(name: str, arch: str) -> bool:
    return name.startswith(".L") if arch == "x64" else (name.startswith("L") and "@" not in name)


def strip_comment(line: str) -> str:
    """Remove a '#' comment, leaving '#' inside string literals alone."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def section_kind(directive: str) -> str:
    """'text', 'rdata' or 'drop' for a .section/.text/.data/.bss line."""
    parts = directive.replace(",", " ").split()
    if parts[0] == ".text":
        return "text"
    if parts[0] in (".data", ".bss"):
        return "drop"
    name = parts[1] if len(parts) > 1 else ""
    if name == ".text" or name.startswith(".text$"):
        return "text"
    if name.startswith(".rdata"):
        return "rdata"
    return "drop"


def to_keystone(raw: str, arch: str, heap: str = "ntheap") -> tuple[str, set[str]]:
    """Make the compiler's Intel-syntax output keystone-ready (see the module docstring);
    local labels get the prefix ``<heap>_``.

    Returns the text and the names used as call/jump targets.
    """
    kept: dict[str, list[str]] = {"text": [], "rdata": []}
    section = "text"
    for number, line in enumerate(raw.splitlines(), 1):
        code = strip_comment(line).strip()
        if not code:
            continue
        first = code.split()[0]
        if first in (".section", ".text", ".data", ".bss"):
            section = section_kind(code)
            continue
        if section == "drop" or code.startswith("@feat.00"):
            continue
        if LABEL.match(code):
            pass
        elif first.startswith("."):
            if first in DROPPED_DIRECTIVES or first.startswith(DROPPED_PREFIXES):
                continue
            if first not in KEPT_DIRECTIVES:
                raise GenerateError(f"{arch} line {number}: unexpected directive: {line.strip()}")
        elif "=" in code.split(":")[0] or first == ".set":
            raise GenerateError(f"{arch} line {number}: unexpected assignment: {line.strip()}")
        kept[section].append(code)

    lines = kept["text"] + kept["rdata"]
    defined = {m.group(1) for code in lines if (m := LABEL.match(code))}
    rename: dict[str, str] = {}
    for name in defined:
        if is_local_label(name, arch):
            rename[name] = f"{heap}_" + name.lstrip(".")
        else:
            rename[name] = undecorate(name, arch)
    if len(set(rename.values())) != len(rename):
        raise GenerateError(f"{arch}: two labels map to one name")

    def fix(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok in rename:
            return rename[tok]
        return undecorate(tok, arch) if re.fullmatch(r"_\w+@\d+", tok) else tok

    out: list[str] = []
    targets: set[str] = set()
    for code in lines:
        m = LABEL.match(code)
        if m:
            out.append(f"{rename[m.group(1)]}:")
            rest = m.group(2).strip()
            if not rest:
                continue
            code = rest
        parts = code.split(None, 1)
        mnemonic = parts[0]
        operands = IDENT.sub(fix, parts[1]) if len(parts) > 1 else ""
        if (mnemonic == "call" or mnemonic.startswith("j")) and IDENT.fullmatch(operands):
            targets.add(operands)
        out.append(f"\t{mnemonic}\t{operands}".rstrip())
    return "\n".join(out) + "\n", targets


def keystone_text(raw: str, arch: str, heap: str = "ntheap") -> str:
    """The checked-in file's content for arch and heap (header + converted code)."""
    body, targets = to_keystone(raw, arch, heap)
    stubs = (HERE / f"syscalls_{arch}.s").read_text()
    missing = sorted(targets - set(re.findall(r"(?m)^(\w+):", body + stubs)))
    if missing:
        raise GenerateError(f"{arch}: calls to undefined names: {', '.join(missing)}")
    target = TARGETS[arch][0]
    header = (
        f"# Generated by asm/generate.py from asm/src/{HEAPS[heap].name}: zig cc {ZIG_VERSION}"
        f" (clang), target {target}.\n"
        "# Do not edit; change the C source and run `python asm/generate.py`.\n"
    )
    return header + body


def generate(arch: str, heap: str = "ntheap") -> str:
    return keystone_text(compile_to_asm(arch, heap), arch, heap)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if regenerating would change the checked-in files",
    )
    args = parser.parse_args(argv)
    stale = []
    for heap, arch in ((heap, arch) for heap in HEAPS for arch in TARGETS):
        try:
            text = generate(arch, heap)
        except GenerateError as exc:
            print(f"generate.py: {exc}", file=sys.stderr)
            return 2
        path = output_path(arch, heap)
        current = path.read_text() if path.exists() else None
        if text == current:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"generate.py --check: out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
