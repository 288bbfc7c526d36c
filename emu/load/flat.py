"""Flat code: x86/x64 assembly assembled with keystone, mapped into a process, with symbols.

Code (and read-only data) is mapped PAGE_EXECUTE_READ; data after a ``.data``/``.bss`` section
directive is placed on the next page and mapped PAGE_READWRITE. Every label's address comes back
from a single assembly pass: a table of ``.quad``/``.long`` label references is appended after
the code and read back from the output, then cut off.

Keystone reports errors without a position, so a rejected source is bisected: the shortest
failing prefix (with every later label defined, so forward references do not fail) names the
offending line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import keystone

from emu.arch import Arch
from emu.errors import NtStatusError
from emu.modules import Module
from emu.nt.memory import align_up
from emu.process.core import ProcessCore
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_EXECUTE_READ,
    PAGE_READWRITE,
    PAGE_SIZE,
)
from loader.errors import LoaderError

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
        return align_up(self.text_size, PAGE_SIZE)


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


def assemble(source: str, arch: Arch, base: int, name: str = "<flat>") -> FlatImage:
    """Assemble ``source`` for ``arch`` at ``base``; LoaderError names the offending line."""
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
    word = ".quad" if arch.ptr_size == 8 else ".long"
    table = [".p2align 3", *(f"{word} {n}" for n in labels)] if labels else []
    source_text = "\n".join(body + table)
    code = b""
    error: keystone.KsError | None = None
    for _attempt in range(3):
        ks = keystone.Ks(keystone.KS_ARCH_X86, arch.ks_mode)
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
        raw = code[len(code) - n * arch.ptr_size :]
        code = code[: len(code) - n * arch.ptr_size]
        for i, label in enumerate(labels):
            symbols[label] = arch.unpack_ptr(raw, i * arch.ptr_size) - base
    text_size = symbols.pop(_TEXT_END)
    for export in exports:
        if export not in symbols:
            raise LoaderError(f"{name}: .globl {export} names no label")
    return FlatImage(code=code, text_size=text_size, symbols=symbols, exports=exports)


def _read_source(source_or_path: str | Path) -> tuple[str, str | None]:
    if isinstance(source_or_path, Path):
        return source_or_path.read_text(), str(source_or_path)
    if "\n" not in source_or_path and len(source_or_path) < 4096:
        p = Path(source_or_path)
        if p.suffix in (".s", ".asm", ".S"):
            if not p.is_file():
                raise LoaderError(f"{source_or_path}: no such assembly file")
            return p.read_text(), str(p)
    return source_or_path, None


def load_flat(
    proc: ProcessCore, source_or_path: str | Path, name: str, base: int | None = None
) -> Module:
    """Assemble and map flat code into ``proc``; returns its Module (symbols = every label)."""
    source, path = _read_source(source_or_path)
    if proc.modules.get(name) is not None:
        raise LoaderError(f"{name}: a module of that name is already loaded")
    # first pass at a provisional base gives the size; the second at the real base
    probe = assemble(source, proc.arch, 0x10000000, name)
    size = align_up(probe.data_offset + len(probe.code) - probe.text_size, PAGE_SIZE)
    size = max(size, align_up(len(probe.code), PAGE_SIZE))
    try:
        where, reserved = proc.memory.allocate(
            base or 0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, usage=f"flat {name}"
        )
    except NtStatusError as e:
        at = f" at 0x{base:x}" if base else ""
        raise LoaderError(f"{name}: cannot map 0x{size:x} bytes{at}: {e}") from None
    try:
        image = assemble(source, proc.arch, where, name) if where != 0x10000000 else probe
        proc.write(where, image.code)
        text_pages = align_up(image.text_size, PAGE_SIZE)
        proc.memory.protect(where, text_pages, PAGE_EXECUTE_READ)
        proc.cpu.invalidate_code(where, reserved)
    except Exception:
        proc.memory.free(where, 0, MEM_RELEASE)
        raise
    symbols = {k: where + v for k, v in image.symbols.items()}
    exported = image.exports or [k for k in symbols if not k.startswith(".")]
    module = Module(
        name=name,
        base=where,
        size=reserved,
        kind="flat",
        path=path,
        exports={k: symbols[k] for k in exported},
        symbols=symbols,
        image=image,
    )
    proc.add_module(module)
    return module
