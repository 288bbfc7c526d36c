"""loader.peimage on the test PEs of both arches: what it reads agrees with pefile's full parse,
layout() places and relocates exactly what it should, and each kind of corruption, made by
editing a valid PE's bytes, is a LoaderError naming the file and the problem."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import pefile
import pytest
from pebuild import build

from loader import LoaderError
from loader.peimage import (
    IMAGE_FILE_RELOCS_STRIPPED,
    IMAGE_REL_BASED_DIR64,
    IMAGE_REL_BASED_HIGHLOW,
    IMAGE_SCN_MEM_EXECUTE,
    IMAGE_SCN_MEM_READ,
    IMAGE_SCN_MEM_WRITE,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_SIZE,
    PeImage,
    section_protection,
    split_forwarder,
)

ARCHES = ["x86", "x64"]
NAMES = ["mathlib.dll", "tlsdll.dll", "user.exe"]


@pytest.fixture(params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def image(name: str, arch: str) -> PeImage:
    return PeImage.from_file(build(name, arch))


def pefile_full(path: Path) -> pefile.PE:
    pe = pefile.PE(str(path))  # full parse: every directory
    return pe


# --- agreement with pefile ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_headers_and_sections_agree_with_pefile(name: str, arch: str) -> None:
    path = build(name, arch)
    img = PeImage.from_file(path)
    pe = pefile_full(path)
    oh = pe.OPTIONAL_HEADER
    assert img.machine == arch
    assert img.format == ("PE32+" if arch == "x64" else "PE32")
    assert img.is_dll == name.endswith(".dll") == pe.is_dll()
    assert img.image_base == oh.ImageBase
    assert img.size_of_image == oh.SizeOfImage
    assert img.size_of_headers == oh.SizeOfHeaders
    assert img.entry_point_rva == oh.AddressOfEntryPoint
    assert (img.stack_reserve, img.stack_commit) == (oh.SizeOfStackReserve, oh.SizeOfStackCommit)
    assert [(s.rva, s.virtual_size, s.raw_data, s.characteristics) for s in img.sections] == [
        (s.VirtualAddress, s.Misc_VirtualSize, s.get_data(), s.Characteristics) for s in pe.sections
    ]
    names = [s.name for s in img.sections]
    assert names[:2] == [".text", ".rdata"]
    # Long names ("/4") are resolved through the COFF string table.
    assert not any(n.startswith("/") for n in names)
    text = img.sections[0]
    assert text.rva <= img.entry_point_rva < text.rva + text.virtual_size


@pytest.mark.parametrize("name", NAMES)
def test_directories_agree_with_pefile(name: str, arch: str) -> None:
    path = build(name, arch)
    img = PeImage.from_file(path)
    pe = pefile_full(path)
    base = pe.OPTIONAL_HEADER.ImageBase

    theirs_exports = [
        (
            s.ordinal,
            s.name.decode() if s.name else None,
            None if s.forwarder else s.address,
            s.forwarder.decode() if s.forwarder else None,
        )
        for s in (
            pe.DIRECTORY_ENTRY_EXPORT.symbols if hasattr(pe, "DIRECTORY_ENTRY_EXPORT") else []
        )
    ]
    ours_exports = [(e.ordinal, e.name, e.rva, e.forwarder) for e in img.exports]
    assert sorted(ours_exports, key=str) == sorted(theirs_exports, key=str)

    theirs_imports = [
        (
            d.dll.decode(),
            [
                (
                    i.name.decode() if i.name else None,
                    None if i.name else i.ordinal,
                    i.address - base,
                )
                for i in d.imports
            ],
        )
        for d in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
    ]
    ours_imports = [
        (d.dll, [(e.name, e.ordinal, e.iat_rva) for e in d.entries]) for d in img.imports
    ]
    assert ours_imports == theirs_imports

    theirs_relocs = [
        (r.rva, r.type)
        for block in getattr(pe, "DIRECTORY_ENTRY_BASERELOC", [])
        for r in block.entries
        if r.type != 0
    ]
    assert [(r.rva, r.type) for r in img.relocations] == theirs_relocs

    if arch == "x64":
        theirs_pdata = [
            (f.struct.BeginAddress, f.struct.EndAddress, f.struct.UnwindData)
            for f in getattr(pe, "DIRECTORY_ENTRY_EXCEPTION", [])
        ]
        assert [(f.begin, f.end, f.unwind_info) for f in img.runtime_functions] == theirs_pdata
        assert img.runtime_functions
    else:
        assert img.runtime_functions == ()


@pytest.mark.parametrize("name", NAMES)
def test_layout_agrees_with_pefile_mapped_image(name: str, arch: str) -> None:
    path = build(name, arch)
    img = PeImage.from_file(path)
    pe = pefile_full(path)
    ours = img.layout(img.image_base)
    theirs = pe.get_memory_mapped_image()
    assert len(ours) == img.size_of_image
    # pefile stops after the last section's file data; the rest of the image is zero-fill.
    assert ours[: len(theirs)] == theirs and not any(ours[len(theirs) :])
    if img.is_relocatable:
        other = img.image_base + (0x10000000 if arch == "x64" else 0x01000000)
        theirs = pe.get_memory_mapped_image(ImageBase=other)
        assert img.layout(other)[: len(theirs)] == theirs


# --- what the test PEs contain -------------------------------------------------------------------


def test_mathlib_exports(arch: str) -> None:
    img = image("mathlib.dll", arch)
    assert img.export_dll_name == "mathlib.dll"
    named = {e.name for e in img.exports if e.name}
    assert named == {
        "add",
        "mul3",
        "add_std",
        "sum6",
        "counter",
        "counter_ptr",
        "fwd_alloc",
        "fwd_ord",
    }
    text = next(s for s in img.sections if s.name == ".text")
    data = next(s for s in img.sections if s.name == ".data")
    for fn in ("add", "mul3", "add_std", "sum6"):
        rva = img.export(fn).rva
        assert rva is not None and text.rva <= rva < text.rva + text.virtual_size
    for var in ("counter", "counter_ptr"):
        rva = img.export(var).rva
        assert rva is not None and data.rva <= rva < data.rva + data.virtual_size
    secret = img.export(7)
    assert secret.name is None and secret.rva is not None and secret.forwarder is None
    assert img.exports_by_ordinal[7] is secret
    assert img.export("fwd_alloc").forwarder == "kernel32.HeapAlloc"
    assert img.export("fwd_alloc").rva is None
    assert img.export("fwd_ord").forwarder == "other.#12"
    assert split_forwarder("kernel32.HeapAlloc") == ("kernel32", "HeapAlloc")
    assert split_forwarder("other.#12") == ("other", 12)
    assert img.imports == ()
    with pytest.raises(LoaderError, match=r"mathlib\.dll: no export 'nope'"):
        img.export("nope")
    with pytest.raises(LoaderError, match="no export ordinal 99"):
        img.export(99)


def test_user_imports(arch: str) -> None:
    img = image("user.exe", arch)
    assert not img.is_dll
    by_dll = {d.dll: d.entries for d in img.imports}
    assert set(by_dll) == {"kernel32.dll", "mathlib.dll"}
    assert [e.name for e in by_dll["kernel32.dll"]] == ["GetProcessHeap", "HeapAlloc", "HeapFree"]
    math = by_dll["mathlib.dll"]
    assert {e.name for e in math if e.name} == {"add", "add_std", "counter", "mul3", "sum6"}
    assert [e.ordinal for e in math if e.name is None] == [7]
    width = 8 if arch == "x64" else 4
    for entries in by_dll.values():
        slots = [e.iat_rva for e in entries]
        assert slots == list(range(slots[0], slots[0] + width * len(slots), width))
    # IAT slots initially hold the lookup values (hint/name RVA or ordinal flag), not zeros.
    first = by_dll["kernel32.dll"][0]
    assert img.read(first.iat_rva, width) != bytes(width)


def test_tls_directory(arch: str) -> None:
    img = image("tlsdll.dll", arch)
    tls = img.tls
    assert tls is not None
    sections = {s.name: s for s in img.sections}
    text, tls_section, data = sections[".text"], sections[".tls"], sections[".data"]
    assert tls_section.rva <= tls.raw_data_start_rva < tls.raw_data_end_rva
    assert tls.raw_data_end_rva <= tls_section.rva + tls_section.virtual_size
    assert data.rva <= tls.index_rva < data.rva + data.virtual_size
    assert len(tls.callbacks) == 2
    assert all(text.rva <= cb < text.rva + text.virtual_size for cb in tls.callbacks)
    width = 8 if arch == "x64" else 4
    # The callback array holds preferred-base VAs, each covered by a relocation.
    reloc_rvas = {r.rva for r in img.relocations}
    for i in range(2):
        assert tls.callbacks_rva + i * width in reloc_rvas
    # The template holds tls_slot's initial value.
    template = img.read(tls.raw_data_start_rva, tls.raw_data_end_rva - tls.raw_data_start_rva)
    assert struct.pack("<I", 0x1234) in template
    assert image("mathlib.dll", arch).tls is None


def test_x64_pdata_covers_exported_functions() -> None:
    img = image("mathlib.dll", "x64")
    begins = [f.begin for f in img.runtime_functions]
    assert begins == sorted(begins)
    for fn in ("add", "mul3", "sum6"):
        rva = img.export(fn).rva
        assert rva is not None
        assert any(f.begin <= rva < f.end for f in img.runtime_functions), fn


# --- protections and page runs --------------------------------------------------------------------


def test_section_protection_table() -> None:
    x, r, w = IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE
    assert section_protection(0) == PAGE_NOACCESS
    assert section_protection(r) == PAGE_READONLY
    assert section_protection(w) == PAGE_READWRITE
    assert section_protection(r | w) == PAGE_READWRITE
    assert section_protection(x) == PAGE_EXECUTE
    assert section_protection(x | r) == PAGE_EXECUTE_READ
    assert section_protection(x | w) == PAGE_EXECUTE_READWRITE
    assert section_protection(x | r | w) == PAGE_EXECUTE_READWRITE


@pytest.mark.parametrize("name", NAMES)
def test_page_runs(name: str, arch: str) -> None:
    img = image(name, arch)
    runs = img.page_runs()
    assert runs[0].rva == 0 and runs[0].protection == PAGE_READONLY and runs[0].name == "headers"
    cursor = 0
    for run in runs:
        assert run.rva == cursor and run.size > 0
        assert run.rva % PAGE_SIZE == 0 and run.size % PAGE_SIZE == 0
        cursor += run.size
    assert cursor == -(-img.size_of_image // PAGE_SIZE) * PAGE_SIZE
    protections = {run.name: run.protection for run in runs}
    assert protections[".text"] == PAGE_EXECUTE_READ
    assert protections[".rdata"] == PAGE_READONLY
    if ".data" in protections:
        assert protections[".data"] == PAGE_READWRITE


# --- layout and relocation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_layout_at_preferred_base_places_sections(name: str, arch: str) -> None:
    path = build(name, arch)
    img = PeImage.from_file(path)
    data = path.read_bytes()
    laid = img.layout(img.image_base)
    expected = bytearray(img.size_of_image)
    expected[: img.size_of_headers] = data[: img.size_of_headers]
    pe = pefile.PE(str(path), fast_load=True)
    for s in pe.sections:
        chunk = data[s.PointerToRawData : s.PointerToRawData + s.SizeOfRawData]
        expected[s.VirtualAddress : s.VirtualAddress + len(chunk)] = chunk
    assert laid == bytes(expected)


@pytest.mark.parametrize("name", ["mathlib.dll", "tlsdll.dll"])
def test_relocated_layout_changes_exactly_the_relocated_fields(name: str, arch: str) -> None:
    img = image(name, arch)
    assert img.is_relocatable and img.relocations
    width, kind = (8, IMAGE_REL_BASED_DIR64) if arch == "x64" else (4, IMAGE_REL_BASED_HIGHLOW)
    assert {r.type for r in img.relocations} == {kind}
    delta = 0x12340000
    before = img.layout(img.image_base)
    after = img.layout(img.image_base + delta)
    mask = (1 << (8 * width)) - 1
    fmt = "<Q" if width == 8 else "<I"
    covered: set[int] = set()
    for r in img.relocations:
        (old,) = struct.unpack_from(fmt, before, r.rva)
        (new,) = struct.unpack_from(fmt, after, r.rva)
        assert new == (old + delta) & mask
        covered.update(range(r.rva, r.rva + width))
    changed = {i for i in range(len(before)) if before[i] != after[i]}
    assert changed <= covered and changed


def test_relocated_pointer_variable(arch: str) -> None:
    img = image("mathlib.dll", arch)
    counter = img.export("counter").rva
    counter_ptr = img.export("counter_ptr").rva
    assert counter is not None and counter_ptr is not None
    fmt = "<Q" if arch == "x64" else "<I"
    for base in (img.image_base, img.image_base + 0x00A00000):
        (value,) = struct.unpack_from(fmt, img.layout(base), counter_ptr)
        assert value == base + counter


def test_layout_refuses_non_relocatable_images(arch: str) -> None:
    if arch == "x64":
        exe = image("user.exe", arch)  # lld leaves no .reloc in an x64 EXE
        assert not exe.is_relocatable
        assert exe.layout(exe.image_base)
        with pytest.raises(LoaderError, match=r"user\.exe: cannot load at .* no base relocation"):
            exe.layout(exe.image_base + 0x100000)
    path = build("mathlib.dll", arch)
    data = bytearray(path.read_bytes())
    characteristics = file_header(data) + 18
    flags = struct.unpack_from("<H", data, characteristics)[0] | IMAGE_FILE_RELOCS_STRIPPED
    struct.pack_into("<H", data, characteristics, flags)
    img = PeImage.from_bytes(bytes(data), "stripped.dll")
    assert img.layout(img.image_base)
    with pytest.raises(LoaderError, match=r"stripped\.dll: .*IMAGE_FILE_RELOCS_STRIPPED is set"):
        img.layout(img.image_base + 0x100000)


def test_layout_refuses_bad_bases(arch: str) -> None:
    img = image("mathlib.dll", arch)
    with pytest.raises(LoaderError, match="not page-aligned"):
        img.layout(img.image_base + 0x10)
    with pytest.raises(LoaderError, match="does not fit"):
        img.layout((1 << 47) if arch == "x64" else 0xFFFFC000)


def test_machine_mismatch_message() -> None:
    x86 = image("mathlib.dll", "x86")
    x64 = image("mathlib.dll", "x64")
    x86.require_arch("x86")
    x64.require_arch("x64")
    with pytest.raises(LoaderError) as info:
        x86.require_arch("x64")
    assert str(info.value) == "mathlib.dll is a PE32 (x86) image; this process is x64"
    with pytest.raises(LoaderError) as info:
        x64.require_arch("x86")
    assert str(info.value) == "mathlib.dll is a PE32+ (x64) image; this process is x86"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"nothere\.dll: cannot read"):
        PeImage.from_file(tmp_path / "nothere.dll")


# --- corruption, one class at a time --------------------------------------------------------------


def file_header(data: bytes | bytearray) -> int:
    return int(struct.unpack_from("<I", data, 0x3C)[0]) + 4


def optional_header(data: bytes | bytearray) -> int:
    return file_header(data) + 20


def is_pe32plus(data: bytes | bytearray) -> bool:
    return bool(struct.unpack_from("<H", data, optional_header(data))[0] == 0x20B)


def opt_field(data: bytes | bytearray, name: str) -> tuple[int, str]:
    """File offset and struct format of an IMAGE_OPTIONAL_HEADER32/64 field."""
    wide = is_pe32plus(data)
    offsets = {
        "AddressOfEntryPoint": (16, "<I"),
        "ImageBase": (24, "<Q") if wide else (28, "<I"),
        "SectionAlignment": (32, "<I"),
        "FileAlignment": (36, "<I"),
        "SizeOfImage": (56, "<I"),
        "SizeOfHeaders": (60, "<I"),
        "NumberOfRvaAndSizes": (108 if wide else 92, "<I"),
    }
    offset, fmt = offsets[name]
    return optional_header(data) + offset, fmt


def data_directory(data: bytes | bytearray, index: int) -> int:
    return optional_header(data) + (112 if is_pe32plus(data) else 96) + 8 * index


def section_header(data: bytes | bytearray, index: int) -> int:
    (opt_size,) = struct.unpack_from("<H", data, file_header(data) + 16)
    return optional_header(data) + opt_size + 40 * index


def rva_to_offset(data: bytes | bytearray, rva: int) -> int:
    (count,) = struct.unpack_from("<H", data, file_header(data) + 2)
    for i in range(count):
        h = section_header(data, i)
        vsize, va, raw_size, raw_ptr = struct.unpack_from("<IIII", data, h + 8)
        if va <= rva < va + max(vsize, raw_size):
            return raw_ptr + rva - va
    raise AssertionError(f"RVA {rva:#x} is in no section")


def section_index(data: bytes | bytearray, name: str) -> int:
    (count,) = struct.unpack_from("<H", data, file_header(data) + 2)
    for i in range(count):
        if (
            data[section_header(data, i) : section_header(data, i) + 8].rstrip(b"\0")
            == name.encode()
        ):
            return i
    raise AssertionError(name)


def set_opt(field: str, value: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        offset, fmt = opt_field(data, field)
        struct.pack_into(fmt, data, offset, value)

    return edit


def set_section(name: str, offset: int, value: int) -> Callable[[bytearray], None]:
    """Set a u32 of a section header: 8 VirtualSize, 12 VirtualAddress, 16 SizeOfRawData,
    20 PointerToRawData, 36 Characteristics."""

    def edit(data: bytearray) -> None:
        struct.pack_into(
            "<I", data, section_header(data, section_index(data, name)) + offset, value
        )

    return edit


def set_directory(
    index: int, rva: int | None = None, size: int | None = None
) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        at = data_directory(data, index)
        old_rva, old_size = struct.unpack_from("<II", data, at)
        struct.pack_into(
            "<II", data, at, old_rva if rva is None else rva, old_size if size is None else size
        )

    return edit


def in_directory(index: int, offset: int, fmt: str, value: int) -> Callable[[bytearray], None]:
    """Overwrite a field inside a data directory's own structure."""

    def edit(data: bytearray) -> None:
        (rva,) = struct.unpack_from("<I", data, data_directory(data, index))
        struct.pack_into(fmt, data, rva_to_offset(data, rva) + offset, value)

    return edit


def first_reloc_entry(value: Callable[[int], int]) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        (rva,) = struct.unpack_from("<I", data, data_directory(data, 5))
        at = rva_to_offset(data, rva) + 8
        (entry,) = struct.unpack_from("<H", data, at)
        struct.pack_into("<H", data, at, value(entry))

    return edit


def truncate(length: Callable[[bytearray], int]) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        del data[length(data) :]

    return edit


def patch(offset: int, raw: bytes) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        data[offset : offset + len(raw)] = raw

    return edit


def set_file_header(offset: int, fmt: str, value: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        struct.pack_into(fmt, data, file_header(data) + offset, value)

    return edit


def last_raw_end(data: bytearray) -> int:
    (count,) = struct.unpack_from("<H", data, file_header(data) + 2)
    ends = []
    for i in range(count):
        raw_size, raw_ptr = struct.unpack_from("<II", data, section_header(data, i) + 16)
        ends.append(raw_ptr + raw_size)
    return max(ends)


EXPORT, IMPORT, EXCEPTION, BASERELOC, TLS = 0, 1, 3, 5, 9

# (id, test PE, edit, pattern the message must contain after "<file>: ")
CORRUPTIONS: list[tuple[str, str, Callable[[bytearray], None], str]] = [
    ("empty", "mathlib.dll", truncate(lambda d: 0), r"file is truncated \(0x0 bytes\)"),
    ("dos-truncated", "mathlib.dll", truncate(lambda d: 0x30), r"truncated .*DOS header"),
    ("dos-signature", "mathlib.dll", patch(0, b"ZM"), r"DOS signature is b'ZM'"),
    (
        "e_lfanew-past-end",
        "mathlib.dll",
        patch(0x3C, struct.pack("<I", 0x7FFFFFF0)),
        r"e_lfanew 0x7ffffff0 points past the end",
    ),
    (
        "nt-signature",
        "mathlib.dll",
        lambda d: d.__setitem__(slice(file_header(d) - 4, file_header(d)), b"PX\0\0"),
        r"NT signature .* is b'PX\\x00\\x00'",
    ),
    (
        "machine",
        "mathlib.dll",
        set_file_header(0, "<H", 0x1C0),
        r"unsupported FileHeader.Machine 0x1c0",
    ),
    (
        "magic",
        "mathlib.dll",
        lambda d: struct.pack_into("<H", d, optional_header(d), 0x107),
        r"OptionalHeader.Magic 0x107 does not match",
    ),
    (
        "too-many-sections",
        "mathlib.dll",
        set_file_header(2, "<H", 500),
        r"NumberOfSections 500 is absurd",
    ),
    (
        "section-table-truncated",
        "mathlib.dll",
        truncate(lambda d: section_header(d, 2) + 10),
        r"truncated .*section table",
    ),
    (
        "size-of-optional-header",
        "mathlib.dll",
        set_file_header(16, "<H", 0x40),
        r"SizeOfOptionalHeader 0x40 is invalid",
    ),
    (
        "size-of-image-absurd",
        "mathlib.dll",
        set_opt("SizeOfImage", 0x7FFFF000),
        r"SizeOfImage 0x7ffff000 is absurd",
    ),
    (
        "size-of-image-below-headers",
        "mathlib.dll",
        set_opt("SizeOfImage", 0x200),
        r"SizeOfImage 0x200 is smaller than SizeOfHeaders",
    ),
    (
        "size-of-image-below-sections",
        "mathlib.dll",
        set_opt("SizeOfImage", 0x3000),
        r"section \S+ .* lies outside SizeOfImage 0x3000",
    ),
    (
        "size-of-image-beyond-sections",
        "mathlib.dll",
        set_opt("SizeOfImage", 0x100000),
        r"SizeOfImage 0x100000 is larger than the headers and sections need",
    ),
    (
        "section-alignment-not-power-of-two",
        "mathlib.dll",
        set_opt("SectionAlignment", 0x1800),
        r"SectionAlignment 0x1800 is invalid",
    ),
    (
        "section-alignment-low",
        "mathlib.dll",
        set_opt("SectionAlignment", 0x200),
        r"SectionAlignment 0x200 is invalid",
    ),
    (
        "file-alignment",
        "mathlib.dll",
        set_opt("FileAlignment", 0x100),
        r"FileAlignment 0x100 is invalid",
    ),
    (
        "size-of-headers-past-file",
        "mathlib.dll",
        set_opt("SizeOfHeaders", 0x100000),
        r"truncated .*SizeOfHeaders is 0x100000",
    ),
    (
        "size-of-headers-too-small",
        "mathlib.dll",
        set_opt("SizeOfHeaders", 0x80),
        r"SizeOfHeaders 0x80 does not cover the section table",
    ),
    (
        "image-base-misaligned",
        "mathlib.dll",
        set_opt("ImageBase", 0x10001000),
        r"ImageBase 0x10001000 is invalid",
    ),
    (
        "entry-point-outside",
        "mathlib.dll",
        set_opt("AddressOfEntryPoint", 0x900000),
        r"AddressOfEntryPoint 0x900000 lies outside the image",
    ),
    (
        "section-raw-data-past-end",
        "mathlib.dll",
        set_section(".text", 16, 0x9000),
        r"section \.text raw data 0x400\+0x9000 runs past the end of the file \(0x\w+ bytes\)",
    ),
    (
        "section-raw-pointer-past-end",
        "mathlib.dll",
        set_section(".data", 20, 0x100000),
        r"section \.data raw data 0x100000\+0x200 runs past the end of the file",
    ),
    (
        "file-truncated-in-section-data",
        "mathlib.dll",
        truncate(lambda d: last_raw_end(d) - 0x100),
        r"raw data .* runs past the end of the file",
    ),
    (
        "section-raw-pointer-misaligned",
        "mathlib.dll",
        set_section(".rdata", 20, 0x610),
        r"section \.rdata PointerToRawData 0x610 is not a multiple of FileAlignment",
    ),
    (
        "sections-overlap",
        "mathlib.dll",
        set_section(".rdata", 12, 0x1000),
        r"section \.rdata at RVA 0x1000 overlaps section \.text",
    ),
    (
        "section-overlaps-headers",
        "mathlib.dll",
        set_section(".text", 12, 0x0),
        r"section \.text at RVA 0x0 overlaps the headers",
    ),
    (
        "section-outside-image",
        "mathlib.dll",
        set_section(".data", 8, 0x100000),
        r"section \.data 0x4000\+0x100000 lies outside SizeOfImage",
    ),
    (
        "section-misaligned",
        "mathlib.dll",
        set_section(".data", 12, 0x4100),
        r"section \.data VirtualAddress 0x4100 is not a multiple of SectionAlignment",
    ),
    (
        "reloc-directory-outside",
        "mathlib.dll",
        set_directory(BASERELOC, rva=0x6FFC, size=0x100),
        r"base relocation directory 0x6ffc\+0x100 lies outside the image",
    ),
    (
        "reloc-block-size-zero",
        "mathlib.dll",
        in_directory(BASERELOC, 4, "<I", 0),
        r"base relocation block at RVA 0x[0-9a-f]+ has invalid SizeOfBlock 0x0",
    ),
    (
        "reloc-block-past-directory",
        "mathlib.dll",
        in_directory(BASERELOC, 4, "<I", 0x1000),
        r"invalid SizeOfBlock 0x1000",
    ),
    (
        "reloc-entry-outside",
        "mathlib.dll",
        in_directory(BASERELOC, 0, "<I", 0x6FFF000),
        r"base relocation at RVA 0x6fff[0-9a-f]+ .* lies outside the image",
    ),
    (
        "reloc-unknown-type",
        "mathlib.dll",
        first_reloc_entry(lambda e: (4 << 12) | (e & 0xFFF)),
        r"base relocation at RVA 0x[0-9a-f]+ has type 4, not supported",
    ),
    (
        "export-directory-outside",
        "mathlib.dll",
        set_directory(EXPORT, rva=0x80000),
        r"export directory 0x80000\+0x[0-9a-f]+ lies outside the image",
    ),
    (
        "export-function-count-absurd",
        "mathlib.dll",
        in_directory(EXPORT, 20, "<I", 0x10000000),
        r"export directory counts are absurd: NumberOfFunctions 268435456",
    ),
    (
        "export-name-count-absurd",
        "mathlib.dll",
        in_directory(EXPORT, 24, "<I", 0x7FFFFFFF),
        r"NumberOfNames 2147483647",
    ),
    (
        "export-functions-outside",
        "mathlib.dll",
        in_directory(EXPORT, 28, "<I", 0x6FF0),
        r"export AddressOfFunctions array 0x6ff0\+0x[0-9a-f]+ lies outside the image",
    ),
    (
        "export-names-outside",
        "mathlib.dll",
        in_directory(EXPORT, 32, "<I", 0xFFFFFF00),
        r"export AddressOfNames array 0xffffff00",
    ),
    (
        "export-name-ordinals-outside",
        "mathlib.dll",
        in_directory(EXPORT, 36, "<I", 0x7000),
        r"export AddressOfNameOrdinals array 0x7000",
    ),
    (
        "export-dll-name-outside",
        "mathlib.dll",
        in_directory(EXPORT, 12, "<I", 0x123456),
        r"export directory DLL name at RVA 0x123456\+0x1 lies outside the image",
    ),
    (
        "import-directory-outside",
        "user.exe",
        set_directory(IMPORT, rva=0x400000),
        r"import directory 0x400000\+0x[0-9a-f]+ lies outside the image",
    ),
    (
        "import-dll-name-outside",
        "user.exe",
        in_directory(IMPORT, 12, "<I", 0x7FFFFFFF),
        r"import descriptor 0 DLL name at RVA 0x7fffffff\+0x1 lies outside the image",
    ),
    (
        "import-thunks-outside",
        "user.exe",
        in_directory(IMPORT, 0, "<I", 0x10000000),
        r"import lookup table of kernel32.dll at RVA 0x10000000.* lies outside the image",
    ),
    (
        "import-iat-outside",
        "user.exe",
        in_directory(IMPORT, 16, "<I", 0x6FFC),
        r"IAT slot \d+ of kernel32.dll at RVA 0x[0-9a-f]+ lies outside the image",
    ),
    (
        "tls-directory-outside",
        "tlsdll.dll",
        set_directory(TLS, rva=0x10000),
        r"TLS directory 0x10000\+0x[0-9a-f]+ lies outside the image",
    ),
    (
        "tls-callbacks-outside",
        "tlsdll.dll",
        lambda d: in_directory(TLS, *((24, "<Q") if is_pe32plus(d) else (12, "<I")), 0x1000)(d),
        r"TLS AddressOfCallBacks 0x1000 lies outside the image",
    ),
]


@pytest.mark.parametrize(
    ("name", "edit", "problem"),
    [pytest.param(name, edit, problem, id=case) for case, name, edit, problem in CORRUPTIONS],
)
def test_corruption_is_a_loader_error_naming_the_problem(
    name: str, edit: Callable[[bytearray], None], problem: str, arch: str
) -> None:
    data = bytearray(build(name, arch).read_bytes())
    PeImage.from_bytes(bytes(data), name)  # valid before the edit
    edit(data)
    with pytest.raises(LoaderError) as info:
        PeImage.from_bytes(bytes(data), "victim.dll")
    message = str(info.value)
    assert message.startswith("victim.dll: "), message
    assert re.search(problem, message), message


def test_x64_pdata_outside_image() -> None:
    data = bytearray(build("mathlib.dll", "x64").read_bytes())
    in_directory(EXCEPTION, 4, "<I", 0x100000)(data)  # EndAddress of the first entry
    with pytest.raises(LoaderError, match=r"victim.dll: RUNTIME_FUNCTION 0 .* lies outside"):
        PeImage.from_bytes(bytes(data), "victim.dll")


def test_export_name_ordinal_index_out_of_range(arch: str) -> None:
    data = bytearray(build("mathlib.dll", arch).read_bytes())
    (export_rva,) = struct.unpack_from("<I", data, data_directory(data, EXPORT))
    (ordinals_rva,) = struct.unpack_from("<I", data, rva_to_offset(data, export_rva) + 36)
    struct.pack_into("<H", data, rva_to_offset(data, ordinals_rva), 0x4000)
    with pytest.raises(LoaderError, match=r"export name ordinal index 16384 is past"):
        PeImage.from_bytes(bytes(data), "victim.dll")


def test_non_ascii_export_name(arch: str) -> None:
    data = bytearray(build("mathlib.dll", arch).read_bytes())
    at = data.index(b"mathlib.dll\0")
    data[at] = 0xFF
    with pytest.raises(LoaderError, match=r"victim.dll: export directory DLL name .* is not ASCII"):
        PeImage.from_bytes(bytes(data), "victim.dll")


def test_absurd_thunk_count(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    # Reaching the real cap needs a 64K-entry lookup table; lower it instead.
    import loader.peimage

    monkeypatch.setattr(loader.peimage, "MAX_IMPORTS", 4)
    with pytest.raises(LoaderError, match=r"user.exe: imports are absurd: more than 4 thunks"):
        image("user.exe", arch)
