"""heapemu's one x86/x64 assembler: keystone, with every label's offset and errors that name
the offending line.

Code (and read-only data) comes first; data after a ``.data``/``.bss`` section directive is
placed on the next page. Every label's address comes back from a single assembly pass: a table
of ``.quad``/``.long`` label references is appended after the code and read back from the
output, then cut off. Keystone reports errors without a position, so a rejected source is
bisected: the shortest failing prefix (with every later label defined, so forward references do
not fail) names the offending line. ``emu.load.flat`` maps the result into a process; the
builtin heap (``asm.assemble``) and the tests' snippets use it too.

Keystone 0.9.2 quirks (see /work notes in UNICORN-FACTS): never set ``syntax`` or
``sym_resolver`` (either switches immediates to radix 16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import keystone

from loader.errors import LoaderError

PAGE_SIZE = 0x1000
_KS_MODES = {"x86": keystone.KS_MODE_32, "x64": keystone.KS_MODE_64}

_LABEL = re.compile(r"^\s*([A-Za-z_.$?@][\w.$?@]*)\s*:")
_GLOBAL = re.compile(r"^\s*\.glob(?:a)?l\s+([\w.$?@, ]+)")
_SECTION = re.compile(r"^\s*(?:\.section\s+)?(\.text|\.data|\.bss|\.rdata|\.rodata)\b(.*)$")
_DATA_SECTIONS = {".data", ".bss"}
_TEXT_END = "__heapemu_text_end"  # a label we add where code and read-only data end


@dataclass
class FlatImage:
    """Assembled flat code: bytes at offsets from the base, and every label's offset."""

    code: bytes
    text_size: int  # bytes mapped read-execute (code and read-only data)
    symbols: dict[str, int]  # label -> offset from base
    exports: list[str] = field(default_factory=list)

    @property
    def data_offset(self) -> int:
        return (self.text_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _split_sections(lines: list[str]) -> tuple[list[str], list[str]]:
    """Lines of code/read-only data, and lines of writable data, in source order."""
    text: list[str] = []
    data: list[str] = []
    target = text
    for line in lines:
        m = _SECTION.match(line.split("#")[0])
        if m:
            target = data if m.group(1) in _DATA_SECTIONS else text
            continue
        target.append(line)
    return text, data


def _labels(lines: list[str]) -> list[tuple[int, str]]:
    out = []
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        if m:
            out.append((i, m.group(1)))
    return out


def _assemble(ks: keystone.Ks, text: str, base: int) -> bytes:
    code, _ = ks.asm(text, base)
    return bytes(code or b"")


def _locate_error(ks: keystone.Ks, lines: list[str], base: int, errno: int) -> int:
    """Index of the first line at which keystone fails with ``errno``."""
    labels = _labels(lines)

    def fails(k: int) -> bool:
        later = [f"{name}:" for i, name in labels if i >= k]
        try:
            ks.asm("\n".join(lines[:k] + later), base)
        except keystone.KsError as e:
            return bool(e.errno == errno)
        return False

    lo, hi = 0, len(lines)  # invariant: prefix lo passes, prefix hi fails
    if not fails(hi):
        return len(lines) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi - 1


def assemble_unit(source: str, arch: str, base: int, name: str = "<flat>") -> FlatImage:
    """Assemble ``source`` for ``arch`` ("x86"/"x64") at ``base``; LoaderError names the
    offending line."""
    ptr_size = 8 if arch == "x64" else 4
    lines = source.splitlines()
    # keystone resolves references to a `.globl` symbol as external (value 0): we record the
    # exports ourselves and keep the directive away from it
    text, data = _split_sections([ln for ln in lines if not _GLOBAL.match(ln)])
    body = [*text, f"{_TEXT_END}:", *([".p2align 12", *data] if data else [])]
    labels = [n for _, n in _labels(body)]
    if len(set(labels)) != len(labels):
        dup = sorted({n for n in labels if labels.count(n) > 1})
        raise LoaderError(f"{name}: labels defined more than once: {', '.join(dup)}")
    exports: list[str] = []
    for line in lines:
        m = _GLOBAL.match(line)
        if m:
            exports += [s.strip() for s in m.group(1).split(",") if s.strip()]
    word = ".quad" if ptr_size == 8 else ".long"
    table = [".p2align 3", *(f"{word} {n}" for n in labels)] if labels else []
    source_text = "\n".join(body + table)
    code = b""
    error: keystone.KsError | None = None
    for _attempt in range(3):
        ks = keystone.Ks(keystone.KS_ARCH_X86, _KS_MODES[arch])
        try:
            code = _assemble(ks, source_text, base)
            error = None
            break
        except keystone.KsError as e:
            # keystone 0.9.2 now and then rejects a valid `cmp reg, imm` in some process
            # states (it reads memory it never set); a fresh engine assembles it
            error = e
    if error is not None:
        idx = _locate_error(ks, body, base, error.errno)
        offending = body[idx].strip()
        lineno = next((i + 1 for i, ln in enumerate(lines) if ln is body[idx]), idx + 1)
        raise LoaderError(
            f"{name}: line {lineno}: keystone rejected {offending!r}: {error.message}"
        ) from None
    n = len(labels)
    symbols: dict[str, int] = {}
    if n:
        raw = code[len(code) - n * ptr_size :]
        code = code[: len(code) - n * ptr_size]
        for i, label in enumerate(labels):
            symbols[label] = int.from_bytes(raw[i * ptr_size : (i + 1) * ptr_size], "little") - base
    text_size = symbols.pop(_TEXT_END)
    for export in exports:
        if export not in symbols:
            raise LoaderError(f"{name}: .globl {export} names no label")
    return FlatImage(code=code, text_size=text_size, symbols=symbols, exports=exports)


def assemble_code(source: str, arch: str, base: int = 0) -> bytes:
    """Just the bytes of a snippet (every label resolved), for code placed by hand."""
    return assemble_unit(source, arch, base).code
