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

from emu.cpu import shared
from emu.cpu.cpu import CpuError
from emu.cpu.shared import SharedMemory
from emu.errors import NtStatusError
from emu.modules import Module
from emu.nt.calls.memory import zero_bits_limit
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
from emu.nt.memory import (
    COMMITTED,
    IMAGE_WRITE_AS_COPY,
    PageRuns,
    Region,
    ViewInfo,
    align_down,
    align_up,
)
from emu.nt.objects import (
    FILE_EXECUTE,
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    MAX_CREATED_FILE,
    MAXIMUM_ALLOWED,
    OBJ_CASE_INSENSITIVE,
    OBJ_OPENIF,
    FileObject,
    KernelObject,
    SectionObject,
    Status,
    object_attributes_flags,
    object_name,
    put_buffer,
)
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    AT_ROUND_TO_PAGE,
    MEM_COMMIT,
    MEM_EXTENDED_PARAMETER_TYPE,
    MEM_IMAGE,
    MEM_MAPPED,
    MEM_PRESERVE_PLACEHOLDER,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_SIZE,
    PAGE_WRITECOMBINE,
    PAGE_WRITECOPY,
    SECTION_INFORMATION_CLASS,
    NtStatus,
    is_valid_protection,
)

if TYPE_CHECKING:
    from emu.process.core import ProcessCore
    from loader.peimage import PeImage

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
    """Write a laid-out image at ``base`` and give each page run its section's protection.
    As on Windows, an image's writable sections are copy-on-write (PAGE_WRITECOPY until a
    page is written) and its AllocationProtect is PAGE_EXECUTE_WRITECOPY."""
    proc.write(base, data)
    for run in image.page_runs():
        prot = IMAGE_WRITE_AS_COPY.get(run.protection, run.protection)
        proc.memory.protect(base + run.rva, run.size, prot)
    region = proc.memory.region_at(base)
    if region is not None and region.base == base:
        region.allocation_protect = PAGE_EXECUTE_WRITECOPY
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


def view_module_name(proc: ProcessCore, name: str) -> str:
    """``name``, or ``stem#2.ext`` (``#3``...) when a module of that name is loaded: a second
    view of an image gets a module record of its own."""
    if proc.modules.get(name) is None:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    n = 2
    while proc.modules.get(f"{stem}#{n}{dot}{ext}") is not None:
        n += 1
    return f"{stem}#{n}{dot}{ext}"


def map_image(
    proc: ProcessCore,
    path: str | Path,
    image: PeImage,
    name: str,
    base: int = 0,
    *,
    section: SectionObject | None = None,
    highest: int | None = None,
    top_down: bool = False,
    user: bool = False,
) -> tuple[Module, bool]:
    """Map ``image`` as the kernel maps a SEC_IMAGE view: (module, not at its base).

    The first view of a section goes to the image's preferred base, or anywhere (relocated
    there); later views of the same section hold the same contents, relocated for the first
    view's base, wherever there is room (STATUS_IMAGE_NOT_AT_BASE: the caller relocates, as
    Windows' loader does). Each view gets a module record (``name#2`` for a second one).
    ``base`` asks for an address (STATUS_CONFLICTING_ADDRESSES if it is taken, with ``user``).
    Imports are not bound (the caller's loader does that); PEB.Ldr is not touched."""
    size = align_up(image.size_of_image, PAGE_SIZE)
    mem = proc.memory
    usage = f"image {name}"
    content_base = section.extra.get("content_base") if section is not None else None
    want = base or (content_base if content_base is not None else image.image_base)
    rc = MEM_RESERVE | MEM_COMMIT | (MEM_TOP_DOWN if top_down else 0)
    fixed = bool(base) and user
    try:
        if highest is not None and want + size - 1 > highest:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "above the ZeroBits limit")
        if content_base is not None and not base:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "a later view goes elsewhere")
        base, _ = mem.allocate(want, size, rc, PAGE_READWRITE, type=MEM_IMAGE, usage=usage)
    except NtStatusError:
        if fixed:
            raise
        if not image.is_relocatable and content_base is None:
            raise NtStatusError(
                NtStatus.CONFLICTING_ADDRESSES,
                f"{name}: 0x{want:x} is taken and it cannot be relocated",
            ) from None
        base, _ = mem.allocate(
            0, size, rc, PAGE_READWRITE, type=MEM_IMAGE, usage=usage, highest=highest
        )
    if content_base is None:
        content_base = base
        if section is not None:
            section.extra["content_base"] = base
    try:
        write_image(proc, image, base, size, image.layout(content_base))
        coff = {sym: base + rva for sym, rva in coff_symbols(Path(path), image).items()}
        module = image_module(image, base, size, view_module_name(proc, name), path, coff)
        proc.add_module(module)
    except Exception:
        mem.release_view(base)
        raise
    file_key = section.file_key if section is not None else str(Path(path).resolve())
    view = ViewInfo(section, file_key, image=True, module=module)
    region = mem.region_at(base)
    assert region is not None
    region.view = view
    return module, base != image.image_base or base != content_base


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
# SEC_* allocation attributes and SECTION_* access rights
SEC_BASED, SEC_NO_CHANGE, SEC_FILE = 0x200000, 0x400000, 0x800000
SEC_IMAGE, SEC_RESERVE, SEC_COMMIT = 0x1000000, 0x4000000, 0x8000000
SEC_NOCACHE, SEC_WRITECOMBINE, SEC_LARGE_PAGES = 0x10000000, 0x40000000, 0x80000000
SECTION_QUERY, SECTION_MAP_WRITE, SECTION_MAP_READ, SECTION_MAP_EXECUTE = 0x1, 0x2, 0x4, 0x8
SECTION_ALL_ACCESS = 0xF001F
VIEW_SHARE, VIEW_UNMAP = 1, 2
_SECTION_PROTECTIONS = {
    PAGE_READONLY: SECTION_MAP_READ,
    PAGE_WRITECOPY: SECTION_MAP_READ,
    PAGE_READWRITE: SECTION_MAP_READ | SECTION_MAP_WRITE,
    PAGE_EXECUTE_READ: SECTION_MAP_READ | SECTION_MAP_EXECUTE,
    PAGE_EXECUTE_WRITECOPY: SECTION_MAP_READ | SECTION_MAP_EXECUTE,
    PAGE_EXECUTE_READWRITE: SECTION_MAP_READ | SECTION_MAP_WRITE | SECTION_MAP_EXECUTE,
}  # SectionPageProtection -> the rights a view may use
_VIEW_NEEDS = {
    PAGE_NOACCESS: SECTION_MAP_READ,
    PAGE_EXECUTE: SECTION_MAP_EXECUTE,
    **_SECTION_PROTECTIONS,
}  # a view's protection -> what the section's own protection must allow
# a view's protection -> the rights the handle needs: a writable view needs SECTION_MAP_WRITE
# alone (a FILE_MAP_WRITE handle maps PAGE_READWRITE: Wine's kernel32 virtual.c
# test_MapViewOfFile, on Windows)
_HANDLE_NEEDS = {
    **_VIEW_NEEDS,
    PAGE_READWRITE: SECTION_MAP_WRITE,
    PAGE_EXECUTE_READWRITE: SECTION_MAP_EXECUTE | SECTION_MAP_WRITE,
}


def section_rights(access: int) -> int:
    """A handle's rights with the generic ones mapped (GENERIC_READ is query and map-read...)."""
    rights = access & 0xFFFFFF
    if access & 0x80000000:  # GENERIC_READ
        rights |= SECTION_QUERY | SECTION_MAP_READ
    if access & 0x40000000:  # GENERIC_WRITE
        rights |= SECTION_MAP_WRITE
    if access & 0x20000000:  # GENERIC_EXECUTE
        rights |= SECTION_MAP_EXECUTE
    if access & (0x10000000 | MAXIMUM_ALLOWED):  # GENERIC_ALL, MAXIMUM_ALLOWED
        rights |= SECTION_ALL_ACCESS
    return rights


def _check_attributes(attributes: int) -> None:
    """NtCreateSection's AllocationAttributes (STATUS_INVALID_PARAMETER_6 otherwise): exactly
    one of SEC_COMMIT, SEC_RESERVE, SEC_IMAGE; caching attributes only for data sections
    (SEC_IMAGE | SEC_NOCACHE is SEC_IMAGE_NO_EXECUTE); no large pages without the privilege."""
    kinds = attributes & (SEC_COMMIT | SEC_RESERVE | SEC_IMAGE)
    allowed = SEC_COMMIT | SEC_RESERVE | SEC_IMAGE | SEC_NOCACHE | SEC_WRITECOMBINE | SEC_NO_CHANGE
    bad = (
        attributes & ~allowed
        or kinds not in (SEC_COMMIT, SEC_RESERVE, SEC_IMAGE)
        or (kinds == SEC_IMAGE and attributes & (SEC_WRITECOMBINE | SEC_NO_CHANGE))
        or (attributes & SEC_NOCACHE and attributes & SEC_WRITECOMBINE)
    )
    if bad:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_6, f"attributes 0x{attributes:x}")


def _named(k: Kernel, ObjectAttributes: int) -> tuple[str, str, int] | None:
    """(directory, name, attributes) when OBJECT_ATTRIBUTES names the object."""
    if not ObjectAttributes:
        return None
    root, name = object_name(k, ObjectAttributes)
    if not name:
        return None
    flags = object_attributes_flags(k, ObjectAttributes)
    directory = "\\"
    if root:
        directory = k.proc.objects.get(root, KernelObject).name
        if name.startswith("Local\\"):  # the session's own directory, by its link
            name = name[len("Local\\") :]
    elif "\\" in name:
        directory, _, name = name.rpartition("\\")
    return directory or "\\", name, flags


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
    """A section on a file (its data or, SEC_IMAGE, its image) or on the pagefile, checked as
    Windows checks it: attributes, protection (PAGE_NOACCESS, PAGE_EXECUTE and modifiers are
    refused), the file's rights (a read-only file cannot back a writable section), sizes. A
    name puts it in the process's ``\\BaseNamedObjects`` (OBJ_OPENIF opens an existing one)."""
    from loader.errors import LoaderError
    from loader.peimage import PeImage

    objects = k.proc.objects
    attributes, protect = AllocationAttributes, SectionPageProtection
    k.details.update(attributes=attributes, protect=protect)
    # the out-handle is probed (and cleared) first: Wine's kernelbase CreateFileMappingW
    # returns it whatever the status, so a refusal must leave it NULL
    k.write_ptr(SectionHandle, 0)
    _check_attributes(attributes)
    if protect not in _SECTION_PROTECTIONS:
        raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{protect:x}")
    maximum = struct.unpack("<q", k.read(MaximumSize, 8))[0] if MaximumSize else 0
    named = _named(k, ObjectAttributes)
    if named is not None:
        existing = objects.find_named(named[0], named[1], bool(named[2] & OBJ_CASE_INSENSITIVE))
        if existing is not None:
            if not named[2] & OBJ_OPENIF or not isinstance(existing, SectionObject):
                raise NtStatusError(NtStatus.OBJECT_NAME_COLLISION, named[1])
            handle = objects.insert(existing, section_rights(DesiredAccess))
            k.write_ptr(SectionHandle, handle)
            k.details.update(handle=handle, name=named[1])
            return NtStatus.OBJECT_NAME_EXISTS
    cache = attributes & (SEC_NOCACHE | SEC_WRITECOMBINE)
    if not FileHandle:
        if attributes & SEC_IMAGE:
            raise NtStatusError(NtStatus.INVALID_FILE_FOR_SECTION, "SEC_IMAGE without a file")
        if maximum <= 0:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "no file and no MaximumSize")
        size = align_up(maximum, PAGE_SIZE)
        if size > k.memory.commit_limit:
            raise NtStatusError(NtStatus.SECTION_TOO_BIG, f"0x{maximum:x} bytes")
        kind = attributes & (SEC_COMMIT | SEC_RESERVE)
        section = SectionObject(
            "section", "<pagefile>", size=size, protection=protect, attributes=kind | cache
        )
    else:
        f = objects.get(FileHandle, FileObject)
        if not f.is_file:
            raise NtStatusError(
                NtStatus.INVALID_FILE_FOR_SECTION, f"{f.name} cannot back a section"
            )
        k.details.update(file=f.name)
        if not f.access & FILE_READ_DATA:
            raise NtStatusError(NtStatus.ACCESS_DENIED, f"{f.name} was not opened for reading")
        grows = (
            f.memory is not None and not attributes & SEC_IMAGE and maximum > f.size
            and _SECTION_PROTECTIONS[protect] & SECTION_MAP_WRITE
        )  # fmt: skip
        if f.size == 0 and not grows:
            raise NtStatusError(
                NtStatus.INVALID_FILE_FOR_SECTION if attributes & SEC_IMAGE
                else NtStatus.MAPPED_FILE_SIZE_ZERO, f.name,
            )  # fmt: skip
        if attributes & SEC_IMAGE:
            try:
                image = PeImage.from_bytes(f.data(), f.name.rsplit("\\", 1)[-1])
            except LoaderError as e:
                raise NtStatusError(NtStatus.INVALID_IMAGE_NOT_MZ, str(e)) from None
            if image.machine != k.arch.name:
                raise NtStatusError(NtStatus.INVALID_IMAGE_FORMAT, f"{f.name} is {image.machine}")
            if f.memory is not None:  # images are mapped from host files only
                raise NtStatusError(
                    NtStatus.INVALID_FILE_FOR_SECTION, f"{f.name}: an image in a created file"
                )
            size = align_up(image.size_of_image, PAGE_SIZE)
            section = SectionObject(
                "section", f.name, file=f, size=size, image=True, protection=protect,
                attributes=SEC_FILE | SEC_IMAGE,
            )  # fmt: skip
            section.extra["image"] = image
        else:
            if _SECTION_PROTECTIONS[protect] & SECTION_MAP_WRITE and (
                f.memory is None or not f.access & FILE_WRITE_DATA
            ):
                # the sandbox opens its files read-only: nothing backs the writes; a file the
                # program created backs them when opened for writing
                raise NtStatusError(NtStatus.ACCESS_DENIED, f"{f.name} is not open for writing")
            if _SECTION_PROTECTIONS[protect] & SECTION_MAP_EXECUTE and not f.access & FILE_EXECUTE:
                raise NtStatusError(NtStatus.ACCESS_DENIED, f"{f.name} was not opened to execute")
            if grows:  # a section with write access extends its file (zeros)
                assert f.memory is not None
                if maximum > MAX_CREATED_FILE:
                    raise NtStatusError(NtStatus.DISK_FULL, f"0x{maximum:x} bytes")
                f.memory.data.extend(bytes(maximum - f.size))
            if maximum > f.size:  # a read-only section cannot grow its file
                raise NtStatusError(NtStatus.SECTION_TOO_BIG, f"0x{maximum:x} > 0x{f.size:x}")
            section = SectionObject("section", f.name, file=f, size=maximum or f.size,
                                    protection=protect, attributes=SEC_FILE | cache)  # fmt: skip
    handle = objects.insert(section, section_rights(DesiredAccess))
    if named is not None:
        objects.add_named(named[0], named[1], section)
        k.details.update(name=named[1])
    k.write_ptr(SectionHandle, handle)
    k.details.update(handle=handle)
    return NtStatus.SUCCESS


@syscall
def NtOpenSection(
    k: Kernel, SectionHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID
) -> int:
    """A named section of this process (``\\BaseNamedObjects``); there is no ``\\KnownDlls``."""
    named = _named(k, ObjectAttributes)
    if named is None:
        raise NtStatusError(NtStatus.OBJECT_NAME_INVALID, "no name")
    k.details.update(name=named[1])
    obj = k.proc.objects.find_named(named[0], named[1], bool(named[2] & OBJ_CASE_INSENSITIVE))
    if obj is None:
        raise NtStatusError(NtStatus.OBJECT_NAME_NOT_FOUND, named[1])
    if not isinstance(obj, SectionObject):
        raise NtStatusError(NtStatus.OBJECT_TYPE_MISMATCH, named[1])
    handle = k.proc.objects.insert(obj, section_rights(DesiredAccess))
    k.write_ptr(SectionHandle, handle)
    return NtStatus.SUCCESS


@syscall
def NtQuerySection(
    k: Kernel,
    SectionHandle: HANDLE,
    SectionInformationClass: ULONG,
    SectionInformation: PVOID,
    SectionInformationLength: SIZE_T,
    ReturnLength: PSIZE_T,
) -> int:
    """SectionBasicInformation (base, attributes, size) and, for images,
    SectionImageInformation; the handle needs SECTION_QUERY."""
    objects = k.proc.objects
    s = objects.get(SectionHandle, SectionObject)
    k.details.update(cls=SectionInformationClass, name=s.name)
    if not section_rights(objects.access(SectionHandle)) & SECTION_QUERY:
        raise NtStatusError(NtStatus.ACCESS_DENIED, "the handle has no SECTION_QUERY")
    k.probe_range(SectionInformation, SectionInformationLength)
    # ProbeForWrite of the whole buffer before the class is looked at: a length past the
    # caller's memory is STATUS_ACCESS_VIOLATION (Wine's kernel32 virtual.c, on Windows)
    k.probe(SectionInformation, SectionInformationLength, write=True)
    ps = k.arch.ptr_size
    if SectionInformationClass == SECTION_INFORMATION_CLASS.SectionBasicInformation:
        fmt = "<QI4xq" if ps == 8 else "<IIq"
        data = struct.pack(fmt, 0, s.attributes, s.size)
    elif SectionInformationClass == SECTION_INFORMATION_CLASS.SectionImageInformation:
        needed = 0x40 if ps == 8 else 0x30
        if SectionInformationLength < needed:
            raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{SectionInformationLength}")
        if not s.image:
            raise NtStatusError(NtStatus.SECTION_NOT_IMAGE, s.name)
        image = s.extra["image"]
        assert s.file is not None
        data = image_information(image, image.image_base, s.file.size, ps)
    else:
        raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"class {SectionInformationClass}")
    put_buffer(k, SectionInformation, SectionInformationLength, data)
    if ReturnLength:
        k.write_ptr(ReturnLength, len(data))
    return NtStatus.SUCCESS


def _save_contents(k: Kernel, section: SectionObject, region: Region) -> None:
    """Where views cannot share host memory (``emu.cpu.shared.available()`` is False): keep a
    pagefile-backed view's committed pages with its section, so the next view shows them.
    Each view then has its own memory: a write through one view is seen by views mapped after
    it is unmapped, not by views already mapped. Copy-on-write views keep their writes."""
    if section.file is not None or section.image or section.memory is not None:
        return  # a file's bytes stay the file's; shared memory holds the section's
    if _copy_on_write(region.allocation_protect):
        return
    offset = section.extra.get("view_offsets", {}).get(region.base, 0)
    store = section.extra.setdefault("contents", {})
    for addr, size, state in region.runs():
        if state and not state & PAGE_GUARD:
            data = k.proc.read(addr, size)
            for i in range(0, size, PAGE_SIZE):
                store[offset + addr - region.base + i] = data[i : i + PAGE_SIZE]


def _copy_on_write(protect: int) -> bool:
    """A FILE_MAP_COPY view: its writes are its own (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY)."""
    return protect & 0xFF in (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY)


def section_memory(section: SectionObject) -> SharedMemory | None:
    """A data section's bytes in host memory its views share, made by its first view: zero
    for the pagefile, the file's bytes for a file. None for images, and where the host
    cannot share memory (every view then gets a copy, as before)."""
    if section.image:
        return None
    if section.memory is None and shared.available():
        try:
            memory = SharedMemory(align_up(section.size, PAGE_SIZE), f"heapemu {section.name}")
        except OSError as e:  # out of host memory or file descriptors
            raise NtStatusError(NtStatus.INSUFFICIENT_RESOURCES, f"section memory: {e}") from None
        if section.file is not None:
            # a mapped file's pages come from the file; the sandbox's files are read-only
            # (no writable section of a file exists), so nothing is ever written back
            memory.write(0, section.file.data()[: section.size])
        section.memory = memory
    return section.memory


def map_view(
    k: Kernel,
    section: SectionObject,
    handle: int,
    base: int,
    size: int,
    offset: int,
    commit_size: int,
    allocation_type: int,
    protect: int,
    *,
    highest: int | None,
    lowest: int | None = None,
    alignment: int = ALLOCATION_GRANULARITY,
) -> tuple[int, int, int]:
    """NtMapViewOfSection(Ex) once the arguments are read: (base, size, status)."""
    mem = k.memory
    granted = section_rights(k.proc.objects.access(handle))
    needs = _VIEW_NEEDS[protect & 0xFF]
    missing = _HANDLE_NEEDS[protect & 0xFF] & ~granted
    if missing:
        raise NtStatusError(NtStatus.ACCESS_DENIED, f"the handle lacks rights 0x{missing:x}")
    if section.image:
        image = section.extra["image"]
        assert section.file is not None and section.file.host_path is not None
        name = section.name.rsplit("\\", 1)[-1]
        module, relocated = map_image(
            k.proc, section.file.host_path, image, name, base, section=section, highest=highest,
            top_down=bool(allocation_type & MEM_TOP_DOWN), user=True,
        )  # fmt: skip
        k.proc.objects.image_views[module.base] = module
        k.details.update(module=module.name)
        status = NtStatus.IMAGE_NOT_AT_BASE if relocated else NtStatus.SUCCESS
        return module.base, module.size, status
    if needs & ~_SECTION_PROTECTIONS[section.protection]:
        raise NtStatusError(
            NtStatus.SECTION_PROTECTION,
            f"view 0x{protect:x} on a section of 0x{section.protection:x}",
        )
    if offset % ALLOCATION_GRANULARITY:
        raise NtStatusError(NtStatus.MAPPED_ALIGNMENT, f"offset 0x{offset:x}")
    if offset >= section.size or size > section.size - offset:
        raise NtStatusError(NtStatus.INVALID_VIEW_SIZE, f"0x{size:x} at 0x{offset:x}")
    size = size or section.size - offset
    cache = (PAGE_NOCACHE if section.attributes & SEC_NOCACHE else 0) | (
        PAGE_WRITECOMBINE if section.attributes & SEC_WRITECOMBINE else 0
    )  # the section's caching shows in its views
    view_protect = protect | (cache if protect != PAGE_NOACCESS else 0)
    commits = None
    if section.attributes & SEC_RESERVE:  # which of its pages are committed: the section's
        commits = section.extra.get("commits")
        if commits is None:
            commits = section.extra["commits"] = PageRuns(
                align_up(section.size, PAGE_SIZE) // PAGE_SIZE
            )
    view = ViewInfo(section, section.file_key, offset=offset, commits=commits)
    reserve = MEM_RESERVE | (allocation_type & MEM_TOP_DOWN)
    new_base, length = mem.allocate(
        base, size, reserve, view_protect, type=MEM_MAPPED, usage=f"view of {section.name}",
        highest=highest, lowest=lowest, alignment=alignment, view=view, user=True,
    )  # fmt: skip
    region = mem.region_at(new_base)
    assert region is not None
    if section.attributes & SEC_RESERVE:
        commit = align_up(commit_size, PAGE_SIZE) if commit_size else 0
    else:
        commit = length
    views = section.extra.setdefault("view_offsets", {})
    views[new_base] = offset
    memory = section_memory(section)
    try:
        if commits is not None:  # pages committed through other views are committed here too
            first = offset // PAGE_SIZE
            for _, a, b, state in list(commits.runs(first, first + length // PAGE_SIZE)):
                if state == COMMITTED:
                    mem.allocate(new_base + (a - first) * PAGE_SIZE, (b - a) * PAGE_SIZE,
                                 MEM_COMMIT, view_protect, type=MEM_MAPPED)  # fmt: skip
        if commit:
            mem.allocate(new_base, min(commit, length), MEM_COMMIT, view_protect, type=MEM_MAPPED)
        if memory is not None and not _copy_on_write(protect):
            try:  # the view's pages are the section's: every view sees every write
                k.proc.cpu.share(new_base, length, memory, offset)
            except CpuError as e:
                raise NtStatusError(NtStatus.INSUFFICIENT_RESOURCES, str(e)) from None
            view.shared = True
        else:
            _fill_view(k, section, region, offset, size)
    except NtStatusError:
        views.pop(new_base, None)
        if view.shared:
            k.proc.cpu.unshare(new_base, length)
        mem.release_view(new_base)
        raise
    return new_base, length, NtStatus.SUCCESS


def _fill_view(k: Kernel, section: SectionObject, region: Region, offset: int, size: int) -> None:
    """A private view's contents (a copy-on-write view, or any view where the host cannot
    share memory): the section's bytes as they are now, i.e. its shared memory, else the
    file's bytes or what earlier views of the section left."""
    proc = k.proc
    if section.memory is not None or section.file is not None:
        if section.memory is not None:
            data = section.memory.read(offset, region.size)
        else:
            assert section.file is not None
            data = section.file.data()[offset : offset + size]
        for addr, length, state in region.runs():
            if state and not state & PAGE_GUARD and addr - region.base < len(data):
                proc.write(addr, data[addr - region.base : addr - region.base + length])
        return
    for page_offset, data in section.extra.get("contents", {}).items():
        addr = region.base + page_offset - offset
        if region.base <= addr < region.end and k.memory.page_state(addr):
            proc.write(addr, data)


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
    """A view of a section, checked as Windows checks it: the handle's rights and the
    section's protection against Win32Protect (STATUS_ACCESS_DENIED / _SECTION_PROTECTION),
    64 KiB alignment of base and offset, ZeroBits, the view's size. Its Protect and
    AllocationProtect are Win32Protect; a SEC_RESERVE section's view comes up reserved."""
    k.check_process_handle(ProcessHandle)
    section = k.proc.objects.get(SectionHandle, SectionObject)
    k.details.update(name=section.name)
    if InheritDisposition not in (VIEW_SHARE, VIEW_UNMAP):
        raise NtStatusError(
            NtStatus.INVALID_PARAMETER_8, f"InheritDisposition {InheritDisposition}"
        )
    allowed = MEM_TOP_DOWN | MEM_RESERVE | SEC_NO_CHANGE
    if k.arch.ptr_size == 4:
        allowed |= AT_ROUND_TO_PAGE  # x86 only: a page-aligned view
    if AllocationType & ~allowed:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_9, f"AllocationType 0x{AllocationType:x}")
    highest = zero_bits_limit(k, ZeroBits, 4)
    if not is_valid_protection(Win32Protect):
        raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{Win32Protect:x}")
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(ViewSize)
    offset = struct.unpack("<q", k.read(SectionOffset, 8))[0] if SectionOffset else 0
    k.write_ptr(BaseAddress, base)
    k.write_ptr(ViewSize, size)
    if base and highest is not None and base + max(size, 1) - 1 > highest:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"0x{base:x} is above the ZeroBits limit")
    alignment = ALLOCATION_GRANULARITY
    if AllocationType & AT_ROUND_TO_PAGE:
        base, alignment = align_down(base, PAGE_SIZE), PAGE_SIZE
    if base % alignment:
        raise NtStatusError(NtStatus.MAPPED_ALIGNMENT, f"base 0x{base:x}")
    if offset < 0:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_6, f"offset {offset}")
    new_base, new_size, status = map_view(
        k, section, SectionHandle, base, size, offset, CommitSize, AllocationType, Win32Protect,
        highest=highest, alignment=alignment,
    )  # fmt: skip
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(ViewSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return status


@syscall
def NtMapViewOfSectionEx(
    k: Kernel,
    SectionHandle: HANDLE,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    SectionOffset: PVOID,
    ViewSize: PSIZE_T,
    AllocationType: ULONG,
    PageProtection: ULONG,
    ExtendedParameters: PVOID,
    ExtendedParameterCount: ULONG,
) -> int:
    """NtMapViewOfSection with extended parameters: address requirements (no alignment for a
    view) and, for an image, the machine it must be."""
    from emu.nt.calls.memory import _extended_parameters, address_requirements

    k.check_process_handle(ProcessHandle)
    section = k.proc.objects.get(SectionHandle, SectionObject)
    k.details.update(name=section.name)
    params = _extended_parameters(k, ExtendedParameters, ExtendedParameterCount, view=True)
    if AllocationType & ~(MEM_TOP_DOWN | MEM_RESERVE | SEC_NO_CHANGE):
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"AllocationType 0x{AllocationType:x}")
    if not is_valid_protection(PageProtection):
        raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{PageProtection:x}")
    types = MEM_EXTENDED_PARAMETER_TYPE
    machine = params.get(types.MemExtendedParameterImageMachine)
    if machine:
        if not section.image:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, "an image machine for data")
        if machine & 0xFFFF != MACHINES[section.extra["image"].machine]:
            raise NtStatusError(NtStatus.NOT_SUPPORTED, f"machine 0x{machine:x}")
    lowest = highest = None
    requirements = params.get(types.MemExtendedParameterAddressRequirements)
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(ViewSize)
    offset = struct.unpack("<q", k.read(SectionOffset, 8))[0] if SectionOffset else 0
    k.write_ptr(BaseAddress, base)
    if requirements is not None:
        if base:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, "address requirements with a base")
        if requirements:
            lowest, highest, _ = address_requirements(k, requirements, view=True)
    if base % ALLOCATION_GRANULARITY:
        raise NtStatusError(NtStatus.MAPPED_ALIGNMENT, f"base 0x{base:x}")
    new_base, new_size, status = map_view(
        k, section, SectionHandle, base, size, offset, 0, AllocationType, PageProtection,
        highest=highest, lowest=lowest,
    )  # fmt: skip
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(ViewSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return status


def unmap_view(k: Kernel, address: int) -> None:
    """Unmap the view holding ``address`` (any address inside it names it)."""
    region = k.memory.region_at(address) if address <= k.arch.user_max else None
    if region is None or region.type not in (MEM_MAPPED, MEM_IMAGE):
        raise NtStatusError(NtStatus.NOT_MAPPED_VIEW, f"0x{address:x} is not a mapped view")
    view = region.view
    if view is not None and view.shared:
        k.proc.cpu.unshare(region.base, region.size)  # the section keeps the bytes
    if view is not None and view.section is not None:
        _save_contents(k, view.section, region)
        view.section.extra.get("view_offsets", {}).pop(region.base, None)
        k.proc.objects.drop_memory_if_unused(view.section)
    module = view.module if view is not None else k.proc.objects.image_views.get(region.base)
    k.proc.objects.image_views.pop(region.base, None)
    if module is None:
        module = k.proc.modules.containing(region.base)
    if module is not None and module.base == region.base and module in list(k.proc.modules):
        k.proc.modules.remove(module)
        k.details.update(module=module.name)
    k.memory.release_view(region.base)


@syscall
def NtUnmapViewOfSection(k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID) -> int:
    """The view or image holding BaseAddress is unmapped (its module record goes with it);
    private memory is STATUS_NOT_MAPPED_VIEW."""
    k.check_process_handle(ProcessHandle)
    unmap_view(k, BaseAddress)
    return NtStatus.SUCCESS


@syscall
def NtUnmapViewOfSectionEx(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, Flags: ULONG
) -> int:
    """MEM_UNMAP_WITH_TRANSIENT_BOOST (a scheduling hint) is accepted; MEM_PRESERVE_PLACEHOLDER
    is not emulated for views."""
    k.check_process_handle(ProcessHandle)
    if Flags & ~0x3:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_3, f"flags 0x{Flags:x}")
    if Flags & MEM_PRESERVE_PLACEHOLDER:
        raise NtStatusError(NtStatus.NOT_SUPPORTED, "views are never mapped in placeholders here")
    unmap_view(k, BaseAddress)
    return NtStatus.SUCCESS


def _file_of(k: Kernel, address: int) -> tuple[Region, str | None]:
    """The allocation holding ``address`` and its file's identity, for
    NtAreMappedFilesTheSame (STATUS_INVALID_ADDRESS when nothing is there)."""
    region = k.memory.region_at(address) if address and address <= k.arch.user_max else None
    if region is None:
        raise NtStatusError(NtStatus.INVALID_ADDRESS, f"0x{address:x}")
    if region.type not in (MEM_MAPPED, MEM_IMAGE):
        raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{address:x} is private memory")
    key = region.view.file_key if region.view is not None else None
    if key is None and region.type == MEM_IMAGE:  # mapped by heapemu's own loaders
        module = k.proc.modules.containing(region.base)
        if module is not None and module.path:
            key = str(Path(module.path).resolve())
    if key is None:
        raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{address:x} is not a file's")
    return region, key


@syscall
def NtAreMappedFilesTheSame(
    k: Kernel, File1MappedAsAnImage: PVOID, File2MappedAsFile: PVOID
) -> int:
    """STATUS_SUCCESS when the first address is in a view of an image and the second in a
    view of the same file (or both in the same view); STATUS_NOT_SAME_DEVICE otherwise."""
    first, key1 = _file_of(k, File1MappedAsAnImage)
    second, key2 = _file_of(k, File2MappedAsFile)
    if first is second or (first.type == MEM_IMAGE and key1 == key2):
        return NtStatus.SUCCESS
    return NtStatus.NOT_SAME_DEVICE


# ---------------------------------------------------------------------------------- NLS
def _map_data(k: Kernel, data: bytes, size: int, protect: int, usage: str) -> int:
    """A read-only data view made by the kernel itself (Wine's NLS tables)."""
    base, _ = k.memory.allocate(
        0, max(size, 1), MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, type=MEM_MAPPED, usage=usage
    )
    if data:
        k.proc.write(base, data[:size])
    if protect != PAGE_READWRITE:
        k.memory.protect(base, max(size, 1), protect)
    return base


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
