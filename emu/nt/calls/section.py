"""Section system calls: images and files mapped into the process, and Wine's NLS tables.

Wine's loader maps a DLL as Windows' does: NtOpenFile, NtCreateSection(SEC_IMAGE),
NtQuerySection(SectionImageInformation), NtMapViewOfSection. The view is laid out here with
heapemu's PE parser (``loader.peimage``): one MEM_IMAGE reservation at the preferred base, or
anywhere, relocated (STATUS_IMAGE_NOT_AT_BASE), protected section by section. Imports are left
to Wine's loader, which binds them itself. The mapped image becomes a ``Module`` with its
exports and its COFF symbol table (mingw and Wine builds keep one), so stacks read
``t!main`` and ``msvcrt!malloc``.

NtGetNlsSectionPtr and NtInitializeNlsFiles map Wine's ``.nls`` files (``loader.wine_nls``)
read-only, once per process.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from emu.errors import NtStatusError
from emu.modules import Module
from emu.nt.kernel import (
    ACCESS_MASK,
    HANDLE,
    PHANDLE,
    PSIZE_T,
    PVOID,
    SIZE_T,
    ULONG,
    ULONG_PTR,
    Kernel,
    syscall,
)
from emu.nt.memory import align_up
from emu.nt.objects import FileObject, SectionObject, Status, put_buffer
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_IMAGE,
    MEM_MAPPED,
    MEM_RESERVE,
    PAGE_READONLY,
    PAGE_READWRITE,
    SECTION_INFORMATION_CLASS,
)

if TYPE_CHECKING:
    from emu.process.core import ProcessCore
    from loader.peimage import PeImage

SEC_IMAGE = 0x1000000
INVALID_FILE_FOR_SECTION = 0xC0000020
INVALID_IMAGE_NOT_MZ = 0xC000012F
MACHINES = {"x86": 0x14C, "x64": 0x8664}

# NtGetNlsSectionPtr types (Wine's NLS_SECTION_*) and the files behind them
NLS_SORTKEYS, NLS_CASEMAP, NLS_CODEPAGE, NLS_NORMALIZE = 9, 10, 11, 12
NLS_NORMALIZATION_FILES = {
    1: "normnfc.nls",
    2: "normnfd.nls",
    5: "normnfkc.nls",
    6: "normnfkd.nls",
    13: "normidna.nls",
}
DEFAULT_LCID = 0x409  # en-US


# ---------------------------------------------------------------------------------- symbols
_OPERATORS = {"nw": "operator new", "na": "operator new[]"}
_DELETES = {"dl": "operator delete", "da": "operator delete[]"}


def _readable(name: str, x86: bool) -> str:
    """Undecorate a COFF symbol the way WinDbg shows it: x86 ``_main`` -> ``main``, stdcall
    ``_Foo@12`` -> ``Foo``; the Itanium-mangled operator new/delete get their C++ names."""
    if x86 and name.startswith("_"):
        name = name[1:]
        name = re.sub(r"@\d+$", "", name)
    m = re.fullmatch(r"_Z(nw|na)[jmy]", name)
    if m:
        return _OPERATORS[m[1]]
    m = re.fullmatch(r"_Z(dl|da)Pv[jmy]?", name)
    if m:
        return _DELETES[m[1]]
    return name


def coff_symbols(path: Path, image: PeImage) -> dict[str, int]:
    """Function symbols (name -> RVA) from the COFF symbol table of a PE file, if it has one."""
    try:
        data = path.read_bytes()
        (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
        (nsections,) = struct.unpack_from("<H", data, e_lfanew + 6)
        table, count = struct.unpack_from("<II", data, e_lfanew + 12)
        (opt_size,) = struct.unpack_from("<H", data, e_lfanew + 20)
    except (OSError, struct.error):
        return {}
    if not table or not count or table + 18 * count > len(data):
        return {}
    sec_table = e_lfanew + 24 + opt_size
    sections = []
    for i in range(min(nsections, 96)):
        rva, flags = struct.unpack_from("<I24xI", data, sec_table + 40 * i + 12)
        sections.append((rva, bool(flags & 0x20000000)))
    strings = table + 18 * count
    x86 = image.machine == "x86"
    out: dict[str, int] = {}
    i = 0
    while i < count:
        raw, value, secno, typ, storage, naux = struct.unpack_from("<8sIhHBB", data, table + 18 * i)
        i += 1 + naux
        if not 0 < secno <= len(sections) or storage not in (2, 3):
            continue
        rva, executable = sections[secno - 1]
        if not executable and (typ & 0x30) != 0x20:
            continue
        if raw[:4] == b"\0\0\0\0":
            (off,) = struct.unpack_from("<I", raw, 4)
            end = data.find(b"\0", strings + off)
            name = data[strings + off : end].decode("latin-1")
        else:
            name = raw.rstrip(b"\0").decode("latin-1")
        if not name or name.startswith(".") or (storage == 3 and value == 0 and naux):
            continue
        out.setdefault(_readable(name, x86), rva + value)
    return out


def add_coff_symbols(proc: ProcessCore, module: Module) -> None:
    """Give an already loaded PE module its COFF function symbols (exports win on clashes)."""
    if module.path is None or module.image is None:
        return
    for name, rva in coff_symbols(Path(module.path), module.image).items():
        module.symbols.setdefault(name, module.base + rva)
    proc.modules.invalidate()


# ---------------------------------------------------------------------------------- images
def write_image(proc: ProcessCore, image: PeImage, base: int, size: int, data: bytes) -> None:
    """Write a laid-out image at ``base`` and give each page run its section's protection."""
    proc.write(base, data)
    for run in image.page_runs():
        proc.memory.protect(base + run.rva, run.size, run.protection)
    proc.cpu.invalidate_code(base, size)


def image_module(
    image: PeImage,
    base: int,
    size: int,
    name: str,
    path: str | Path,
    extra_symbols: dict[str, int] | None = None,
) -> Module:
    """The Module for ``image`` mapped at ``base``: its exports, ordinals and forwarders, and
    its symbols (exports, then ``extra_symbols`` where no export has the name)."""
    by_name: dict[str, int] = {}
    by_ordinal: dict[int, int] = {}
    forwarders: dict[str, str] = {}
    for exp in image.exports:
        if exp.forwarder is not None:
            if exp.name:
                forwarders[exp.name] = exp.forwarder
            forwarders[f"#{exp.ordinal}"] = exp.forwarder
        elif exp.rva is not None:
            by_ordinal[exp.ordinal] = base + exp.rva
            if exp.name:
                by_name[exp.name] = base + exp.rva
    symbols = dict(by_name)
    for sym, addr in (extra_symbols or {}).items():
        symbols.setdefault(sym, addr)
    return Module(
        name=name,
        base=base,
        size=size,
        kind="pe",
        path=str(path),
        exports=by_name,
        ordinals=by_ordinal,
        symbols=symbols,
        forwarders=forwarders,
        image=image,
    )


def map_image(
    proc: ProcessCore, path: str | Path, image: PeImage, name: str, base: int = 0
) -> tuple[Module, bool]:
    """Map ``image`` as the kernel maps a SEC_IMAGE view: (module, relocated). Imports are not
    bound (the caller's loader does that); PEB.Ldr is not touched."""
    size = align_up(image.size_of_image, 0x1000)
    want = base or image.image_base
    mem = proc.memory
    usage = f"image {name}"
    try:
        base, _ = mem.allocate(
            want, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, type=MEM_IMAGE, usage=usage
        )
    except NtStatusError:
        if not image.is_relocatable:
            raise NtStatusError(
                0xC0000018, f"{name}: 0x{want:x} is taken and it cannot be relocated"
            ) from None
        base, _ = mem.allocate(
            0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, type=MEM_IMAGE, usage=usage
        )
    write_image(proc, image, base, size, image.layout(base))
    coff = {sym: base + rva for sym, rva in coff_symbols(Path(path), image).items()}
    module = image_module(image, base, size, name, path, coff)
    proc.add_module(module)
    return module, base != image.image_base


def _headers(image: PeImage) -> dict[str, int]:
    """Optional-header fields PeImage does not keep (for SECTION_IMAGE_INFORMATION)."""
    head = image.read(0, min(image.size_of_headers, 0x1000))
    (e_lfanew,) = struct.unpack_from("<I", head, 0x3C)
    opt = e_lfanew + 24
    major_os, minor_os = struct.unpack_from("<HH", head, opt + 40)
    major_sub, minor_sub = struct.unpack_from("<HH", head, opt + 48)
    (checksum,) = struct.unpack_from("<I", head, opt + 64)
    (loader_flags,) = struct.unpack_from("<I", head, opt + (108 if image.is_pe32plus else 92))
    return dict(
        major_os=major_os,
        minor_os=minor_os,
        major_sub=major_sub,
        minor_sub=minor_sub,
        checksum=checksum,
        loader_flags=loader_flags,
    )


def image_information(image: PeImage, base: int, file_size: int, ptr_size: int) -> bytes:
    """SECTION_IMAGE_INFORMATION for ``image`` mapped (or to be mapped) at ``base``."""
    h = _headers(image)
    entry = base + image.entry_point_rva if image.entry_point_rva else 0
    p = "Q" if ptr_size == 8 else "I"
    head = struct.pack(
        f"<{p}I{'4x' if ptr_size == 8 else ''}{p}{p}",
        entry,
        0,
        image.stack_reserve,
        image.stack_commit,
    )
    tail = struct.pack(
        "<IHHHHHHHBBIII",
        image.subsystem,
        h["minor_sub"],
        h["major_sub"],
        h["major_os"],
        h["minor_os"],
        image.file_characteristics,
        image.dll_characteristics,
        MACHINES[image.machine],
        1,  # ImageContainsCode
        0,  # ImageFlags
        h["loader_flags"],
        file_size,
        h["checksum"],
    )
    return head + tail


# ---------------------------------------------------------------------------------- syscalls
@syscall
def NtCreateSection(
    k: Kernel,
    SectionHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    MaximumSize: PVOID,
    SectionPageProtection: ULONG,
    AllocationAttributes: ULONG,
    FileHandle: HANDLE,
) -> int:
    from loader.errors import LoaderError
    from loader.peimage import PeImage

    objects = k.proc.objects
    k.details.update(attributes=AllocationAttributes)
    if not FileHandle:
        if not MaximumSize:
            raise NtStatusError(Status.INVALID_PARAMETER, "no file and no MaximumSize")
        (size,) = struct.unpack("<q", k.read(MaximumSize, 8))
        section = SectionObject("section", "<pagefile>", size=size)
    else:
        f = objects.get(FileHandle, FileObject)
        assert isinstance(f, FileObject)
        if f.host_path is None:
            raise NtStatusError(INVALID_FILE_FOR_SECTION, f"{f.name} cannot back a section")
        k.details.update(file=f.name)
        section = SectionObject("section", f.name, file=f, size=f.size)
        if AllocationAttributes & SEC_IMAGE:
            try:
                image = PeImage.from_bytes(f.data(), f.name.rsplit("\\", 1)[-1])
            except LoaderError as e:
                raise NtStatusError(INVALID_IMAGE_NOT_MZ, str(e)) from None
            if image.machine != k.arch.name:
                raise NtStatusError(Status.INVALID_IMAGE_FORMAT, f"{f.name} is {image.machine}")
            section.image = True
            section.size = align_up(image.size_of_image, 0x1000)
            section.extra["image"] = image
    handle = objects.insert(section)
    k.write_ptr(SectionHandle, handle)
    k.details.update(handle=handle)
    return Status.SUCCESS


@syscall
def NtOpenSection(
    k: Kernel, SectionHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID
) -> int:
    """No named sections exist here (no \\KnownDlls): STATUS_OBJECT_NAME_NOT_FOUND."""
    from emu.nt.objects import object_name

    _, name = object_name(k, ObjectAttributes)
    k.details.update(name=name)
    raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, name)


@syscall
def NtQuerySection(
    k: Kernel,
    SectionHandle: HANDLE,
    SectionInformationClass: ULONG,
    SectionInformation: PVOID,
    SectionInformationLength: SIZE_T,
    ReturnLength: PSIZE_T,
) -> int:
    s = k.proc.objects.get(SectionHandle, SectionObject)
    k.details.update(cls=SectionInformationClass, name=s.name)
    ps = k.arch.ptr_size
    if SectionInformationClass == SECTION_INFORMATION_CLASS.SectionBasicInformation:
        attributes = SEC_IMAGE if s.image else 0x8000000  # SEC_COMMIT
        fmt = "<QI4xq" if ps == 8 else "<IIq"
        data = struct.pack(fmt, 0, attributes, s.size)
    elif SectionInformationClass == SECTION_INFORMATION_CLASS.SectionImageInformation and s.image:
        image = s.extra["image"]
        assert s.file is not None
        data = image_information(image, image.image_base, s.file.size, ps)
    else:
        raise NtStatusError(0xC0000003, f"SectionInformationClass {SectionInformationClass}")
    put_buffer(k, SectionInformation, SectionInformationLength, data)
    if ReturnLength:
        k.write_ptr(ReturnLength, len(data))
    return Status.SUCCESS


def _map_data(k: Kernel, data: bytes, size: int, protect: int, usage: str) -> int:
    base, _ = k.proc.memory.allocate(
        0, max(size, 1), MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, type=MEM_MAPPED, usage=usage
    )
    if data:
        k.proc.write(base, data[:size])
    if protect != PAGE_READWRITE:
        k.proc.memory.protect(base, max(size, 1), protect)
    return base


@syscall
def NtMapViewOfSection(
    k: Kernel,
    SectionHandle: HANDLE,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    ZeroBits: ULONG_PTR,
    CommitSize: SIZE_T,
    SectionOffset: PVOID,
    ViewSize: PSIZE_T,
    InheritDisposition: ULONG,
    AllocationType: ULONG,
    Win32Protect: ULONG,
) -> int:
    k.check_process_handle(ProcessHandle)
    s = k.proc.objects.get(SectionHandle, SectionObject)
    want = k.read_ptr(BaseAddress)
    k.details.update(name=s.name)
    status = Status.SUCCESS
    if s.image:
        assert s.file is not None and s.file.host_path is not None
        name = s.name.rsplit("\\", 1)[-1]
        module, relocated = map_image(k.proc, s.file.host_path, s.extra["image"], name, want)
        base, size = module.base, module.size
        k.proc.objects.image_views[base] = module
        if relocated:
            status = Status.IMAGE_NOT_AT_BASE
    else:
        offset = 0
        if SectionOffset:
            (offset,) = struct.unpack("<q", k.read(SectionOffset, 8))
        size = k.read_ptr(ViewSize) or s.size - offset
        data = s.file.data()[offset : offset + size] if s.file else b""
        protect = PAGE_READONLY if Win32Protect in (0, PAGE_READONLY) else PAGE_READWRITE
        base = _map_data(k, data, size, protect, f"view of {s.name}")
    k.write_ptr(BaseAddress, base)
    k.write_ptr(ViewSize, size)
    k.details.update(base=base, size=size)
    return status


@syscall
def NtUnmapViewOfSection(k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID) -> int:
    """Data views are released; an image view stays mapped (heapemu's memory manager keeps
    image reservations for good) but its module is forgotten."""
    k.check_process_handle(ProcessHandle)
    module = k.proc.objects.image_views.pop(BaseAddress, None)
    if module is not None:
        k.proc.modules.remove(module)
        k.details.update(module=module.name)
        return Status.SUCCESS
    region = k.proc.memory.region_at(BaseAddress)
    if region is None or region.type != MEM_MAPPED:
        raise NtStatusError(0xC0000019, f"0x{BaseAddress:x} is not a mapped view")  # NOT_MAPPED
    k.proc.memory.free(region.base, 0, 0x8000)
    return Status.SUCCESS


# ---------------------------------------------------------------------------------- NLS
def _nls_file(Type: int, Id: int) -> str | None:
    if Type == NLS_SORTKEYS:
        return "sortdefault.nls"
    if Type == NLS_CASEMAP:
        return "l_intl.nls"
    if Type == NLS_CODEPAGE:
        return f"c_{Id:03d}.nls"
    if Type == NLS_NORMALIZE:
        return NLS_NORMALIZATION_FILES.get(Id)
    return None


def map_nls(k: Kernel, name: str) -> tuple[int, int]:
    """(address, size) of a read-only view of NLS file ``name``, mapped once per process."""
    objects = k.proc.objects
    views = objects.nls_views
    if name in views:
        return views[name]
    path = objects.nls_dir / name if objects.nls_dir else None
    if path is None or not path.is_file():
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, f"no NLS file {name}")
    data = path.read_bytes()
    base = _map_data(k, data, len(data), PAGE_READONLY, f"NLS {name}")
    views[name] = (base, len(data))
    return views[name]


@syscall
def NtGetNlsSectionPtr(
    k: Kernel, Type: ULONG, Id: ULONG, Unknown: PVOID, BaseAddress: PVOID, Size: PSIZE_T
) -> int:
    name = _nls_file(Type, Id)
    k.details.update(file=name)
    if name is None:
        raise NtStatusError(Status.INVALID_PARAMETER, f"NLS section type {Type} id {Id}")
    base, size = map_nls(k, name)
    k.write_ptr(BaseAddress, base)
    if Size:
        k.write_ptr(Size, size)
    return Status.SUCCESS


@syscall
def NtInitializeNlsFiles(
    k: Kernel, BaseAddress: PVOID, DefaultLocale: PVOID, DefaultCasingTableSize: PVOID
) -> int:
    base, size = map_nls(k, "locale.nls")
    k.write_ptr(BaseAddress, base)
    if DefaultLocale:
        k.write_u32(DefaultLocale, DEFAULT_LCID)
    if DefaultCasingTableSize:
        k.write(DefaultCasingTableSize, struct.pack("<q", size))
    return Status.SUCCESS
