"""Mapping PE images into a process: ``proc.load_pe(path) -> Module``.

Everything that can fail is decided before anything is mapped (parse and validate with
``PeImage``, resolve every import, choose the base), so a refused image leaves the process as
it was. The image is one MEM_IMAGE reservation at the preferred base — or anywhere, relocated,
when that range is taken — committed and then protected section by section. Imports bind to
loaded modules' exports (following forwarders) or to Python hooks (``proc.hook_export``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from emu.errors import EmulationError, Fault, NtStatusError
from emu.modules import Module
from emu.nt.calls.section import image_module, write_image
from emu.process.core import ProcessCore
from emu.win.layouts import PEB
from emu.win.ntdefs import MEM_COMMIT, MEM_IMAGE, MEM_RESERVE, PAGE_READWRITE, NtStatus
from loader.errors import LoaderError
from loader.peimage import ImportEntry, PeImage
from loader.upcase import name_key

_MAX_FORWARD_DEPTH = 16
SYSTEM32 = "C:\\windows\\system32\\"


def _dll_key(name: str) -> str:
    n = name_key(name)  # Windows' case rules, not Python's (loader.upcase)
    return n[:-4] if n.endswith(".dll") else n


def _import_label(dll: str, entry: ImportEntry) -> str:
    return f"{dll}!{entry.name}" if entry.name else f"{dll}!#{entry.ordinal}"


def resolve_export(proc: ProcessCore, dll: str, what: str | int, depth: int = 0) -> int | None:
    """Address of ``dll``'s export ``what`` (name or ordinal) in ``proc``, following forwarders;
    None when the module is not loaded or has no such export."""
    hook = proc.export_hooks.get(f"{_dll_key(dll)}!{what}")
    if hook is not None:
        return hook
    mod = proc.modules.get(_dll_key(dll))
    if mod is None or depth > _MAX_FORWARD_DEPTH:
        return None
    if isinstance(what, int):
        addr = mod.ordinals.get(what)
    else:
        addr = mod.exports.get(what)
    if addr is not None:
        return addr
    key = f"#{what}" if isinstance(what, int) else what
    fwd = mod.forwarders.get(key)
    if fwd is None:
        return None
    target_dll, _, func = fwd.rpartition(".")
    target: str | int = int(func[1:]) if func.startswith("#") else func
    return resolve_export(proc, target_dll, target, depth + 1)


def _hook_argc(fn: Callable[..., object]) -> int:
    params = list(inspect.signature(fn).parameters.values())[1:]  # first is the Process
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError("an export hook needs a fixed argument list (or pass argc=)")
    return len(params)


def hook_export(
    proc: ProcessCore,
    name: str,
    fn: Callable[..., int | None],
    argc: int | None = None,
    convention: str | None = None,
) -> int:
    """Serve ``dll!Function`` with ``fn(proc, *args)`` for every image loaded afterwards."""
    dll, sep, func = name.partition("!")
    if not sep or not func:
        raise ValueError(f"{name!r} is not of the form dll!Function")
    n = _hook_argc(fn) if argc is None else argc
    addr = proc.register_callback(fn, n, name=f"{_dll_key(dll)}!{func}", convention=convention)
    proc.export_hooks[f"{_dll_key(dll)}!{func}"] = addr
    return addr


def _trap(label: str) -> Callable[[ProcessCore], None]:
    def trap(proc: ProcessCore) -> None:
        raise EmulationError(
            Fault(
                f"call to unresolved import {label}",
                pc=proc.cpu.pc,
                status=NtStatus.NOT_IMPLEMENTED,
                detail="nothing provides this import: load its DLL first or "
                f"proc.hook_export({label!r}, fn)",
            ),
            proc.cpu.state(),
        )

    return trap


def _bind_imports(proc: ProcessCore, image: PeImage, trap_missing: bool) -> dict[int, int]:
    """IAT slot RVA -> address, for every import; LoaderError listing all missing ones."""
    slots: dict[int, int] = {}
    missing: list[tuple[str, ImportEntry]] = []
    for imp in image.imports:
        for entry in imp.entries:
            what: str | int = entry.name if entry.name is not None else int(entry.ordinal or 0)
            addr = resolve_export(proc, imp.dll, what)
            if addr is None:
                missing.append((imp.dll, entry))
            else:
                slots[entry.iat_rva] = addr
    if missing and not trap_missing:
        names = ", ".join(_import_label(d, e) for d, e in missing)
        raise LoaderError(
            f"{image.name}: {len(missing)} import(s) nothing provides: {names} "
            "(load those DLLs first, hook them with proc.hook_export, or pass trap_missing=True)"
        )
    for dll, entry in missing:
        label = _import_label(dll, entry)
        slots[entry.iat_rva] = proc.register_callback(_trap(label), 0, name=f"unresolved {label}")
    return slots


def _place(proc: ProcessCore, image: PeImage, name: str) -> tuple[int, int]:
    """Reserve and commit the image: preferred base, else anywhere if relocatable."""
    size = image.size_of_image
    usage = f"image {name}"
    try:
        return proc.memory.allocate(
            image.image_base,
            size,
            MEM_RESERVE | MEM_COMMIT,
            PAGE_READWRITE,
            type=MEM_IMAGE,
            usage=usage,
        )
    except NtStatusError as e:
        taken = e
    if not image.is_relocatable:
        raise LoaderError(
            f"{name}: preferred base 0x{image.image_base:x} is not available ({taken}) and the "
            "image cannot be relocated"
        )
    try:
        return proc.memory.allocate(
            0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, type=MEM_IMAGE, usage=usage
        )
    except NtStatusError as e:
        raise LoaderError(f"{name}: no room for 0x{size:x} bytes: {e}") from None


def load_pe(
    proc: ProcessCore, path: str | Path, name: str | None = None, *, trap_missing: bool = False
) -> Module:
    """Map a PE32 (x86) or PE32+ (x64) image into ``proc``; see the module docstring."""
    image = PeImage.from_file(path)
    image.require_arch(proc.arch.name)
    name = name or Path(path).name
    if proc.modules.get(_dll_key(name)) is not None:
        raise LoaderError(f"{name}: a module of that name is already loaded")
    slots = _bind_imports(proc, image, trap_missing)
    base, size = _place(proc, image, name)
    try:
        data = bytearray(image.layout(base))
        for rva, addr in slots.items():
            data[rva : rva + proc.arch.ptr_size] = proc.arch.pack_ptr(addr)
        write_image(proc, image, base, size, bytes(data))
        module = image_module(image, base, size, name, path)
        try:
            proc.add_module(module)
        except ValueError as e:
            raise LoaderError(f"{name}: {e}") from None
    except Exception:
        proc.memory.release_view(base)
        raise
    entry = base + image.entry_point_rva if image.entry_point_rva else 0
    if not image.is_dll and not PEB.read(proc, proc.arch, proc.peb, "ImageBaseAddress"):
        PEB.write(proc, proc.arch, proc.peb, "ImageBaseAddress", base)
    proc.ldr.add(base, image.size_of_image, entry, SYSTEM32 + name, name, is_dll=image.is_dll)
    return module
