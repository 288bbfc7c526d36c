"""Flat code: x86/x64 assembly assembled by ``asm.assembler`` (keystone), mapped into a process,
with symbols.

Code (and read-only data) is mapped PAGE_EXECUTE_READ; data after a ``.data``/``.bss`` section
directive is placed on the next page and mapped PAGE_READWRITE. Every label becomes a symbol;
``.globl`` names (or else every label) become exports.
"""

from __future__ import annotations

from pathlib import Path

from asm.assembler import assemble_unit
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
    probe = assemble_unit(source, proc.arch.name, 0x10000000, name)
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
        image = assemble_unit(source, proc.arch.name, where, name) if where != 0x10000000 else probe
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
