"""Parse, validate and lay out a Windows PE image (PE32 x86 / PE32+ x64) without any emulator.

Everything a loader needs is checked here, before a byte is mapped: a truncated, corrupt or
hostile file gives a LoaderError naming the file and the problem. Parsing is bounded: sizes are
checked before anything is allocated or walked, every loop has a cap, and the only large
allocation is the image itself (SizeOfImage, at most MAX_SIZE_OF_IMAGE, and only once the section
table has shown that the sections really need that much).

pefile reads the DOS/NT/optional headers (fast_load). The section table and the data
directories (exports, imports, base relocations, TLS, .pdata) are walked here, strictly (the
data directories over the image laid out at its preferred base): pefile logs a warning and drops
what it cannot read, while a loader must refuse it with the reason, and an independent walker lets
the tests cross-check the two.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pefile

from loader.errors import LoaderError

# --- Windows constants (winnt.h names) -------------------------------------------------------

IMAGE_DOS_SIGNATURE = b"MZ"
IMAGE_NT_SIGNATURE = b"PE\0\0"
IMAGE_FILE_MACHINE_I386 = 0x014C
IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_NT_OPTIONAL_HDR32_MAGIC = 0x10B
IMAGE_NT_OPTIONAL_HDR64_MAGIC = 0x20B
IMAGE_NUMBEROF_DIRECTORY_ENTRIES = 16
IMAGE_SIZEOF_FILE_HEADER = 20
IMAGE_SIZEOF_SECTION_HEADER = 40
IMAGE_SIZEOF_SYMBOL = 18

IMAGE_FILE_RELOCS_STRIPPED = 0x0001
IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
IMAGE_FILE_DLL = 0x2000

IMAGE_SCN_CNT_UNINITIALIZED_DATA = 0x00000080
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_READ = 0x40000000
IMAGE_SCN_MEM_WRITE = 0x80000000

IMAGE_DIRECTORY_ENTRY_EXPORT = 0
IMAGE_DIRECTORY_ENTRY_IMPORT = 1
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3
IMAGE_DIRECTORY_ENTRY_BASERELOC = 5
IMAGE_DIRECTORY_ENTRY_TLS = 9

IMAGE_REL_BASED_ABSOLUTE = 0
IMAGE_REL_BASED_HIGHLOW = 3
IMAGE_REL_BASED_DIR64 = 10

IMAGE_ORDINAL_FLAG32 = 0x80000000
IMAGE_ORDINAL_FLAG64 = 0x8000000000000000

PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40

PAGE_SIZE = 0x1000
# Windows maps images at 64 KiB granularity; a preferred base off that grid is corrupt.
ALLOCATION_GRANULARITY = 0x10000

# --- Caps that keep parsing bounded on hostile input --------------------------------------------

MAX_FILE_SIZE = 1 << 30
MAX_SIZE_OF_IMAGE = 1 << 30
MAX_SECTIONS = 96  # the limit the PE/COFF specification gives for the Windows loader
MAX_SIZE_OF_OPTIONAL_HEADER = 0x1000
MAX_EXPORTS = 0x10000  # ordinals are 16-bit
MAX_IMPORT_DLLS = 1024
MAX_IMPORTS = 0x10000  # thunks in one descriptor, and in all descriptors together
MAX_NAME = 1024  # longest DLL / function / forwarder name accepted
MAX_TLS_CALLBACKS = 256
MAX_RELOCATIONS = 1 << 22
# User-mode address space an x64 image may occupy (47-bit canonical lower half).
X64_USER_LIMIT = 1 << 47

_DIRECTORY_NAMES = {
    IMAGE_DIRECTORY_ENTRY_EXPORT: "export",
    IMAGE_DIRECTORY_ENTRY_IMPORT: "import",
    IMAGE_DIRECTORY_ENTRY_EXCEPTION: "exception (.pdata)",
    IMAGE_DIRECTORY_ENTRY_BASERELOC: "base relocation",
    IMAGE_DIRECTORY_ENTRY_TLS: "TLS",
}

ARCH_BY_MACHINE = {IMAGE_FILE_MACHINE_I386: "x86", IMAGE_FILE_MACHINE_AMD64: "x64"}


def align_up(value: int, alignment: int) -> int:
    """Round value up to a multiple of alignment (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def section_protection(characteristics: int) -> int:
    """The PAGE_* protection Windows gives a section with these IMAGE_SCN_* characteristics.

    Writable sections are really PAGE_WRITECOPY / PAGE_EXECUTE_WRITECOPY on Windows; a private
    emulated process has nothing to share, so they map as the READWRITE variants.
    """
    x = bool(characteristics & IMAGE_SCN_MEM_EXECUTE)
    r = bool(characteristics & IMAGE_SCN_MEM_READ)
    w = bool(characteristics & IMAGE_SCN_MEM_WRITE)
    if x:
        if w:
            return PAGE_EXECUTE_READWRITE
        return PAGE_EXECUTE_READ if r else PAGE_EXECUTE
    if w:
        return PAGE_READWRITE
    return PAGE_READONLY if r else PAGE_NOACCESS


def split_forwarder(forwarder: str) -> tuple[str, str | int]:
    """Split "OTHER.Func" into ("OTHER", "Func") and "OTHER.#12" into ("OTHER", 12)."""
    dll, _, target = forwarder.rpartition(".")
    if target.startswith("#") and target[1:].isdigit():
        return dll, int(target[1:])
    return dll, target


# --- What a parsed image exposes -------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One IMAGE_SECTION_HEADER, with its file bytes and derived mapping."""

    name: str
    rva: int  # VirtualAddress
    virtual_size: int  # VirtualSize, or SizeOfRawData when VirtualSize is 0 (as Windows does)
    raw_offset: int  # PointerToRawData (0 when the section has no file data)
    raw_data: bytes  # the SizeOfRawData bytes at PointerToRawData
    characteristics: int

    @property
    def protection(self) -> int:
        return section_protection(self.characteristics)

    @property
    def raw_size(self) -> int:
        return len(self.raw_data)


@dataclass(frozen=True)
class Export:
    """One exported function or variable."""

    ordinal: int  # Base + index into AddressOfFunctions
    name: str | None  # None when exported by ordinal only
    rva: int | None  # None for a forwarder
    forwarder: str | None  # "OTHER.Func" or "OTHER.#12"


@dataclass(frozen=True)
class ImportEntry:
    """One imported symbol: by name (with its hint) or by ordinal, and the IAT slot to fill."""

    name: str | None
    ordinal: int | None
    hint: int
    iat_rva: int  # the FirstThunk slot the loader writes the resolved address into


@dataclass(frozen=True)
class ImportDll:
    """One IMAGE_IMPORT_DESCRIPTOR."""

    dll: str
    entries: tuple[ImportEntry, ...]


@dataclass(frozen=True)
class Relocation:
    """One base relocation (IMAGE_REL_BASED_HIGHLOW or _DIR64; ABSOLUTE padding is dropped)."""

    rva: int
    type: int


@dataclass(frozen=True)
class TlsDirectory:
    """IMAGE_TLS_DIRECTORY32/64, with every address turned into an RVA (0 = absent)."""

    raw_data_start_rva: int  # StartAddressOfRawData
    raw_data_end_rva: int  # EndAddressOfRawData
    index_rva: int  # AddressOfIndex
    callbacks_rva: int  # AddressOfCallBacks
    size_of_zero_fill: int
    characteristics: int
    callbacks: tuple[int, ...]  # RVAs of the TLS callbacks, in order


@dataclass(frozen=True)
class RuntimeFunction:
    """One x64 RUNTIME_FUNCTION from .pdata (all RVAs)."""

    begin: int  # BeginAddress
    end: int  # EndAddress
    unwind_info: int  # UnwindInfoAddress


@dataclass(frozen=True)
class PageRun:
    """A page-aligned range of the image and the protection to map it with."""

    rva: int
    size: int
    protection: int
    name: str  # "headers", a section name, or "" for a gap between sections


# --- Bounded reading of the laid-out image ---------------------------------------------------


class _Reader:
    """Reads little-endian values from the preferred-base image; out of bounds is a LoaderError."""

    def __init__(self, image: bytearray, name: str) -> None:
        self.image = image
        self.name = name

    def _check(self, rva: int, size: int, what: str) -> None:
        if rva < 0 or rva + size > len(self.image):
            raise LoaderError(
                f"{self.name}: {what} at RVA {rva:#x}+{size:#x} lies outside the image "
                f"(SizeOfImage {len(self.image):#x})"
            )

    def u16(self, rva: int, what: str) -> int:
        self._check(rva, 2, what)
        return int(struct.unpack_from("<H", self.image, rva)[0])

    def u32(self, rva: int, what: str) -> int:
        self._check(rva, 4, what)
        return int(struct.unpack_from("<I", self.image, rva)[0])

    def u64(self, rva: int, what: str) -> int:
        self._check(rva, 8, what)
        return int(struct.unpack_from("<Q", self.image, rva)[0])

    def ptr(self, rva: int, size: int, what: str) -> int:
        return self.u64(rva, what) if size == 8 else self.u32(rva, what)

    def cstr(self, rva: int, what: str) -> str:
        """A NUL-terminated ASCII string of at most MAX_NAME characters."""
        self._check(rva, 1, what)
        end = self.image.find(b"\0", rva, min(rva + MAX_NAME + 1, len(self.image)))
        if end < 0:
            raise LoaderError(
                f"{self.name}: {what} at RVA {rva:#x} is not NUL-terminated within "
                f"{MAX_NAME} bytes or the image"
            )
        raw = bytes(self.image[rva:end])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise LoaderError(
                f"{self.name}: {what} at RVA {rva:#x} is not ASCII: {raw[:40]!r}"
            ) from None


# --- The image ---------------------------------------------------------------------------------


class PeImage:
    """A validated PE image: headers, sections, directories, and its memory layout.

    Build with from_file / from_bytes; every problem is found there, so layout() and
    page_runs() only fail for a base the image cannot be relocated to.
    """

    name: str
    machine: str  # "x86" or "x64"
    is_pe32plus: bool
    pointer_size: int
    is_dll: bool
    file_characteristics: int
    dll_characteristics: int
    subsystem: int
    image_base: int  # preferred ImageBase
    size_of_image: int
    size_of_headers: int
    section_alignment: int
    file_alignment: int
    entry_point_rva: int  # AddressOfEntryPoint (0 = none)
    stack_reserve: int
    stack_commit: int
    heap_reserve: int
    heap_commit: int
    sections: tuple[Section, ...]
    export_dll_name: str | None  # the DLL's own name in its export directory
    exports: tuple[Export, ...]  # sorted by ordinal
    exports_by_name: dict[str, Export]
    exports_by_ordinal: dict[int, Export]
    imports: tuple[ImportDll, ...]
    relocations: tuple[Relocation, ...]
    tls: TlsDirectory | None
    runtime_functions: tuple[RuntimeFunction, ...]  # x64 .pdata; empty on x86

    # -- construction

    @classmethod
    def from_file(cls, path: str | Path) -> PeImage:
        """Read and validate a PE file; errors name the file by its base name."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_SIZE:
                raise LoaderError(
                    f"{path.name}: file is {size:#x} bytes, larger than the {MAX_FILE_SIZE:#x} "
                    "a PE image may be here"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise LoaderError(f"{path.name}: cannot read {path}: {exc.strerror or exc}") from exc
        return cls.from_bytes(data, path.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> PeImage:
        """Validate a PE image held in memory; name is used in every error message."""
        self = cls.__new__(cls)
        self.name = name
        self._parse(bytes(data))
        return self

    # -- public helpers

    @property
    def format(self) -> str:
        return "PE32+" if self.is_pe32plus else "PE32"

    @property
    def relocs_stripped(self) -> bool:
        return bool(self.file_characteristics & IMAGE_FILE_RELOCS_STRIPPED)

    @property
    def is_relocatable(self) -> bool:
        """Whether layout() may place the image anywhere but its preferred base."""
        return not self.relocs_stripped and self._has_reloc_directory

    def require_arch(self, arch: str) -> None:
        """Refuse an image whose machine is not the process's ("x86" or "x64")."""
        if arch not in ("x86", "x64"):
            raise ValueError(f"unknown process arch {arch!r}")
        if self.machine != arch:
            raise LoaderError(
                f"{self.name} is a {self.format} ({self.machine}) image; this process is {arch}"
            )

    def read(self, rva: int, size: int) -> bytes:
        """Bytes of the image at its preferred base (not relocated)."""
        if size < 0 or rva < 0 or rva + size > self.size_of_image:
            raise LoaderError(
                f"{self.name}: read of RVA {rva:#x}+{size:#x} lies outside the image "
                f"(SizeOfImage {self.size_of_image:#x})"
            )
        return bytes(self._image[rva : rva + size])

    def export(self, name_or_ordinal: str | int) -> Export:
        """The export with this name or ordinal; a LoaderError naming the DLL when absent."""
        found = (
            self.exports_by_ordinal.get(name_or_ordinal)
            if isinstance(name_or_ordinal, int)
            else self.exports_by_name.get(name_or_ordinal)
        )
        if found is None:
            what = (
                f"ordinal {name_or_ordinal}"
                if isinstance(name_or_ordinal, int)
                else repr(name_or_ordinal)
            )
            raise LoaderError(f"{self.name}: no export {what}")
        return found

    def layout(self, base: int) -> bytes:
        """The memory image (SizeOfImage bytes) with base relocations applied for `base`."""
        if base % PAGE_SIZE:
            raise LoaderError(f"{self.name}: load address {base:#x} is not page-aligned")
        limit = X64_USER_LIMIT if self.is_pe32plus else 1 << 32
        if base <= 0 or base + self.size_of_image > limit:
            raise LoaderError(
                f"{self.name}: load address {base:#x} + SizeOfImage {self.size_of_image:#x} "
                f"does not fit the {self.machine} address space"
            )
        delta = base - self.image_base
        if delta == 0:
            return bytes(self._image)
        if not self.is_relocatable:
            why = (
                "IMAGE_FILE_RELOCS_STRIPPED is set"
                if self.relocs_stripped
                else "it has no base relocation directory"
            )
            raise LoaderError(
                f"{self.name}: cannot load at {base:#x} instead of its preferred base "
                f"{self.image_base:#x}: {why}"
            )
        image = bytearray(self._image)
        for reloc in self.relocations:
            if reloc.type == IMAGE_REL_BASED_HIGHLOW:
                (value,) = struct.unpack_from("<I", image, reloc.rva)
                struct.pack_into("<I", image, reloc.rva, (value + delta) & 0xFFFFFFFF)
            elif reloc.type == IMAGE_REL_BASED_DIR64:
                (value,) = struct.unpack_from("<Q", image, reloc.rva)
                struct.pack_into("<Q", image, reloc.rva, (value + delta) & 0xFFFFFFFFFFFFFFFF)
            else:  # _parse_relocations admits no other type; keep layout safe on its own
                raise LoaderError(
                    f"{self.name}: relocation type {reloc.type} at RVA {reloc.rva:#x} "
                    "is not supported"
                )
        return bytes(image)

    def page_runs(self) -> list[PageRun]:
        """Page-aligned (rva, size, protection) runs covering the whole image, in order.

        Headers are read-only; each section maps per its characteristics over its aligned
        virtual size; gaps (and a section of size 0) are PAGE_NOACCESS. The last run ends at
        SizeOfImage rounded up to a page.
        """
        runs: list[PageRun] = []
        image_end = align_up(self.size_of_image, PAGE_SIZE)
        headers_end = align_up(self.size_of_headers, PAGE_SIZE)
        runs.append(PageRun(0, headers_end, PAGE_READONLY, "headers"))
        cursor = headers_end
        for section in self.sections:
            if section.virtual_size == 0:
                continue
            if section.rva > cursor:
                runs.append(PageRun(cursor, section.rva - cursor, PAGE_NOACCESS, ""))
            # A SizeOfImage that is not a multiple of a large SectionAlignment cuts the last one.
            end = min(
                align_up(section.rva + section.virtual_size, self.section_alignment), image_end
            )
            runs.append(PageRun(section.rva, end - section.rva, section.protection, section.name))
            cursor = end
        if image_end > cursor:
            runs.append(PageRun(cursor, image_end - cursor, PAGE_NOACCESS, ""))
        return runs

    def __repr__(self) -> str:
        return (
            f"<PeImage {self.name} {self.format} {self.machine} base={self.image_base:#x} "
            f"size={self.size_of_image:#x} sections={len(self.sections)}>"
        )

    # -- parsing

    def _fail(self, problem: str) -> LoaderError:
        return LoaderError(f"{self.name}: {problem}")

    def _parse(self, data: bytes) -> None:
        if len(data) > MAX_FILE_SIZE:
            raise self._fail(f"file is {len(data):#x} bytes, larger than {MAX_FILE_SIZE:#x}")
        self._precheck_headers(data)
        try:
            pe = pefile.PE(data=data, fast_load=True)
        except LoaderError:
            raise
        except Exception as exc:  # pefile raises PEFormatError but also struct/Index/ValueError
            raise self._fail(f"pefile cannot parse the headers: {exc}") from exc
        # No pe.close(): pefile was given bytes, not a file to unmap, and close() runs a full
        # gc.collect() that would cost ~10 ms per image.
        self._read_headers(pe, data)
        self._read_sections(data)
        self._build_image(data)
        self._reader = _Reader(self._image, self.name)
        self._parse_exports()
        self._parse_imports()
        self._parse_relocations()
        self._parse_tls()
        self._parse_pdata()

    def _precheck_headers(self, data: bytes) -> None:
        """Check, on the raw bytes, everything pefile needs before it may be asked."""
        size = len(data)
        if size < 0x40:
            raise self._fail(f"file is truncated ({size:#x} bytes): the DOS header needs 0x40")
        if data[:2] != IMAGE_DOS_SIGNATURE:
            raise self._fail(f"not a PE file: DOS signature is {data[:2]!r}, expected b'MZ'")
        (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
        if e_lfanew + 4 + IMAGE_SIZEOF_FILE_HEADER + 2 > size:
            raise self._fail(
                f"e_lfanew {e_lfanew:#x} points past the end of the file ({size:#x} bytes)"
            )
        if data[e_lfanew : e_lfanew + 4] != IMAGE_NT_SIGNATURE:
            raise self._fail(
                f"not a PE file: NT signature at e_lfanew {e_lfanew:#x} is "
                f"{data[e_lfanew : e_lfanew + 4]!r}, expected b'PE\\x00\\x00'"
            )
        fh = e_lfanew + 4
        machine, nsections, _, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", data, fh)
        if machine not in ARCH_BY_MACHINE:
            raise self._fail(
                f"unsupported FileHeader.Machine {machine:#x} (only IMAGE_FILE_MACHINE_I386 "
                "0x14c and IMAGE_FILE_MACHINE_AMD64 0x8664 are)"
            )
        if nsections > MAX_SECTIONS:
            raise self._fail(
                f"FileHeader.NumberOfSections {nsections} is absurd (at most {MAX_SECTIONS})"
            )
        opt = fh + IMAGE_SIZEOF_FILE_HEADER
        (magic,) = struct.unpack_from("<H", data, opt)
        expected = (
            IMAGE_NT_OPTIONAL_HDR64_MAGIC
            if machine == IMAGE_FILE_MACHINE_AMD64
            else IMAGE_NT_OPTIONAL_HDR32_MAGIC
        )
        if magic != expected:
            raise self._fail(
                f"OptionalHeader.Magic {magic:#x} does not match FileHeader.Machine "
                f"{machine:#x} (expected {expected:#x})"
            )
        # Fixed part of IMAGE_OPTIONAL_HEADER32/64, up to and including NumberOfRvaAndSizes.
        fixed = 112 if magic == IMAGE_NT_OPTIONAL_HDR64_MAGIC else 96
        if opt + fixed > size:
            raise self._fail(
                f"file is truncated ({size:#x} bytes): the optional header at {opt:#x} "
                f"needs {fixed:#x}"
            )
        (ndirs,) = struct.unpack_from("<I", data, opt + fixed - 4)
        needed = fixed + 8 * min(ndirs, IMAGE_NUMBEROF_DIRECTORY_ENTRIES)
        if not needed <= opt_size <= MAX_SIZE_OF_OPTIONAL_HEADER:
            raise self._fail(
                f"FileHeader.SizeOfOptionalHeader {opt_size:#x} is invalid: the optional header "
                f"with {min(ndirs, 16)} data directories needs {needed:#x} "
                f"(at most {MAX_SIZE_OF_OPTIONAL_HEADER:#x})"
            )
        table_end = opt + opt_size + IMAGE_SIZEOF_SECTION_HEADER * nsections
        if table_end > size:
            raise self._fail(
                f"file is truncated ({size:#x} bytes): the section table of {nsections} "
                f"sections ends at {table_end:#x}"
            )
        self._section_table_end = table_end
        self._e_lfanew = e_lfanew
        self._ndirs = min(ndirs, IMAGE_NUMBEROF_DIRECTORY_ENTRIES)

    def _read_headers(self, pe: pefile.PE, data: bytes) -> None:
        fh = pe.FILE_HEADER
        oh = pe.OPTIONAL_HEADER
        self.machine = ARCH_BY_MACHINE[fh.Machine]
        self.is_pe32plus = oh.Magic == IMAGE_NT_OPTIONAL_HDR64_MAGIC
        self.pointer_size = 8 if self.is_pe32plus else 4
        self.file_characteristics = fh.Characteristics
        self.is_dll = bool(fh.Characteristics & IMAGE_FILE_DLL)
        self.dll_characteristics = oh.DllCharacteristics
        self.subsystem = oh.Subsystem
        self.image_base = oh.ImageBase
        self.size_of_image = oh.SizeOfImage
        self.size_of_headers = oh.SizeOfHeaders
        self.section_alignment = oh.SectionAlignment
        self.file_alignment = oh.FileAlignment
        self.entry_point_rva = oh.AddressOfEntryPoint
        self.stack_reserve = oh.SizeOfStackReserve
        self.stack_commit = oh.SizeOfStackCommit
        self.heap_reserve = oh.SizeOfHeapReserve
        self.heap_commit = oh.SizeOfHeapCommit
        # The section table is read here, not from pe.sections: pefile silently drops the
        # headers it dislikes (raw data past the end of the file...), which must be refused with
        # the reason instead. precheck made sure the whole table is in the file.
        table = self._section_table_end - IMAGE_SIZEOF_SECTION_HEADER * fh.NumberOfSections
        self._section_headers = [
            struct.unpack_from("<8sIIIIIIHHI", data, table + IMAGE_SIZEOF_SECTION_HEADER * i)
            for i in range(fh.NumberOfSections)
        ]
        self._symbol_table = (fh.PointerToSymbolTable, fh.NumberOfSymbols)
        self._directories = {
            index: (entry.VirtualAddress, entry.Size)
            for index, entry in enumerate(oh.DATA_DIRECTORY[: self._ndirs])
        }

        sa, fa = self.section_alignment, self.file_alignment
        if not _is_power_of_two(sa) or sa < PAGE_SIZE or sa > MAX_SIZE_OF_IMAGE:
            raise self._fail(
                f"OptionalHeader.SectionAlignment {sa:#x} is invalid (a power of two from "
                f"{PAGE_SIZE:#x}; smaller, low-alignment images are not supported)"
            )
        if not _is_power_of_two(fa) or not 0x200 <= fa <= 0x10000 or fa > sa:
            raise self._fail(
                f"OptionalHeader.FileAlignment {fa:#x} is invalid (a power of two from 0x200 to "
                f"0x10000, at most SectionAlignment {sa:#x})"
            )
        soi = self.size_of_image
        if soi > MAX_SIZE_OF_IMAGE:
            raise self._fail(
                f"OptionalHeader.SizeOfImage {soi:#x} is absurd (more than {MAX_SIZE_OF_IMAGE:#x})"
            )
        soh = self.size_of_headers
        if soh < self._section_table_end:
            raise self._fail(
                f"OptionalHeader.SizeOfHeaders {soh:#x} does not cover the section table, "
                f"which ends at {self._section_table_end:#x}"
            )
        if soh > len(data):
            raise self._fail(f"file is truncated ({len(data):#x} bytes): SizeOfHeaders is {soh:#x}")
        if soi < soh:
            raise self._fail(
                f"OptionalHeader.SizeOfImage {soi:#x} is smaller than SizeOfHeaders {soh:#x}"
            )
        base = self.image_base
        limit = X64_USER_LIMIT if self.is_pe32plus else 1 << 32
        if base == 0 or base % ALLOCATION_GRANULARITY or base + soi > limit:
            raise self._fail(
                f"OptionalHeader.ImageBase {base:#x} is invalid (a non-zero multiple of "
                f"{ALLOCATION_GRANULARITY:#x} with the image below {limit:#x})"
            )
        if self.entry_point_rva >= soi:
            raise self._fail(
                f"OptionalHeader.AddressOfEntryPoint {self.entry_point_rva:#x} lies outside the "
                f"image (SizeOfImage {soi:#x})"
            )
        if self.stack_commit > self.stack_reserve or self.stack_reserve > MAX_SIZE_OF_IMAGE:
            raise self._fail(
                f"SizeOfStackCommit {self.stack_commit:#x} / SizeOfStackReserve "
                f"{self.stack_reserve:#x} are invalid"
            )

    def _section_name(self, raw: bytes, data: bytes) -> str:
        name = raw.split(b"\0", 1)[0].decode("latin-1")
        # "/4" names a long name (e.g. ".debug_info") in the COFF string table; purely cosmetic,
        # so an unreadable one stays as it is.
        if name.startswith("/") and name[1:].isdigit():
            pointer, count = self._symbol_table
            strtab = pointer + count * IMAGE_SIZEOF_SYMBOL
            offset = strtab + int(name[1:])
            if pointer and offset < len(data):
                end = data.find(b"\0", offset, offset + 256)
                if end > offset:
                    return data[offset:end].decode("latin-1")
        return name

    def _read_sections(self, data: bytes) -> None:
        sa, fa = self.section_alignment, self.file_alignment
        headers_end = align_up(self.size_of_headers, sa)
        sections: list[Section] = []
        cursor = headers_end
        cursor_owner = "the headers"
        for raw_name, vsize, rva, raw_size, raw_ptr, *_, characteristics in self._section_headers:
            name = self._section_name(raw_name, data)
            label = f"section {name}"
            if raw_size == 0:
                raw_ptr = 0  # Windows ignores PointerToRawData of a section with no file data
            if vsize == 0:
                vsize = raw_size
            if rva % sa:
                raise self._fail(
                    f"{label} VirtualAddress {rva:#x} is not a multiple of SectionAlignment {sa:#x}"
                )
            if rva < cursor:
                raise self._fail(
                    f"{label} at RVA {rva:#x} overlaps {cursor_owner} (which end at {cursor:#x})"
                    if cursor_owner == "the headers"
                    else f"{label} at RVA {rva:#x} overlaps {cursor_owner} "
                    f"(which ends at {cursor:#x})"
                )
            if rva + vsize > self.size_of_image:
                raise self._fail(
                    f"{label} {rva:#x}+{vsize:#x} lies outside SizeOfImage {self.size_of_image:#x}"
                )
            if raw_ptr % fa:
                raise self._fail(
                    f"{label} PointerToRawData {raw_ptr:#x} is not a multiple of FileAlignment "
                    f"{fa:#x}"
                )
            if raw_ptr + raw_size > len(data):
                raise self._fail(
                    f"{label} raw data {raw_ptr:#x}+{raw_size:#x} runs past the end of the file "
                    f"({len(data):#x} bytes)"
                )
            sections.append(
                Section(
                    name=name,
                    rva=rva,
                    virtual_size=vsize,
                    raw_offset=raw_ptr,
                    raw_data=data[raw_ptr : raw_ptr + raw_size],
                    characteristics=characteristics,
                )
            )
            cursor = align_up(rva + vsize, sa)
            cursor_owner = label
        needed = max(cursor, headers_end)
        if align_up(self.size_of_image, sa) > needed:
            raise self._fail(
                f"OptionalHeader.SizeOfImage {self.size_of_image:#x} is larger than the headers "
                f"and sections need ({needed:#x})"
            )
        self.sections = tuple(sections)

    def _build_image(self, data: bytes) -> None:
        image = bytearray(self.size_of_image)
        image[: self.size_of_headers] = data[: self.size_of_headers]
        for s in self.sections:
            # Windows copies at most the section's aligned virtual extent from the file.
            count = min(s.raw_size, align_up(s.virtual_size, self.section_alignment))
            count = min(count, self.size_of_image - s.rva)
            image[s.rva : s.rva + count] = s.raw_data[:count]
        self._image = image

    def _directory(self, index: int) -> tuple[int, int] | None:
        """(rva, size) of a present data directory, checked to lie inside the image."""
        rva, size = self._directories.get(index, (0, 0))
        if size == 0:
            return None
        if rva == 0 or rva + size > self.size_of_image:
            raise self._fail(
                f"{_DIRECTORY_NAMES[index]} directory {rva:#x}+{size:#x} lies outside the image "
                f"(SizeOfImage {self.size_of_image:#x})"
            )
        return rva, size

    def _parse_exports(self) -> None:
        self.export_dll_name = None
        self.exports = ()
        self.exports_by_name = {}
        self.exports_by_ordinal = {}
        directory = self._directory(IMAGE_DIRECTORY_ENTRY_EXPORT)
        if directory is None:
            return
        dir_rva, dir_size = directory
        r = self._reader
        if dir_size < 40:
            raise self._fail(f"export directory size {dir_size:#x} is smaller than 0x28")
        name_rva = r.u32(dir_rva + 12, "IMAGE_EXPORT_DIRECTORY.Name")
        base = r.u32(dir_rva + 16, "IMAGE_EXPORT_DIRECTORY.Base")
        nfuncs = r.u32(dir_rva + 20, "IMAGE_EXPORT_DIRECTORY.NumberOfFunctions")
        nnames = r.u32(dir_rva + 24, "IMAGE_EXPORT_DIRECTORY.NumberOfNames")
        funcs = r.u32(dir_rva + 28, "IMAGE_EXPORT_DIRECTORY.AddressOfFunctions")
        names = r.u32(dir_rva + 32, "IMAGE_EXPORT_DIRECTORY.AddressOfNames")
        ordinals = r.u32(dir_rva + 36, "IMAGE_EXPORT_DIRECTORY.AddressOfNameOrdinals")
        if nfuncs > MAX_EXPORTS or nnames > MAX_EXPORTS:
            raise self._fail(
                f"export directory counts are absurd: NumberOfFunctions {nfuncs}, "
                f"NumberOfNames {nnames} (at most {MAX_EXPORTS})"
            )
        if nfuncs and base + nfuncs - 1 > 0xFFFF:
            raise self._fail(f"export ordinals {base}..{base + nfuncs - 1} do not fit in 16 bits")
        # Check whole arrays up front so a bad pointer fails once, with the array named.
        for what, rva, count, width in (
            ("AddressOfFunctions", funcs, nfuncs, 4),
            ("AddressOfNames", names, nnames, 4),
            ("AddressOfNameOrdinals", ordinals, nnames, 2),
        ):
            if count and (rva == 0 or rva + count * width > self.size_of_image):
                raise self._fail(
                    f"export {what} array {rva:#x}+{count * width:#x} lies outside the image "
                    f"(SizeOfImage {self.size_of_image:#x})"
                )
        if name_rva:
            self.export_dll_name = r.cstr(name_rva, "export directory DLL name")
        image = self._image
        func_rvas = struct.unpack_from(f"<{nfuncs}I", image, funcs) if nfuncs else ()
        name_rvas = struct.unpack_from(f"<{nnames}I", image, names) if nnames else ()
        name_ords = struct.unpack_from(f"<{nnames}H", image, ordinals) if nnames else ()
        names_by_index: dict[int, str] = {}
        aliases: dict[str, int] = {}
        for name_ptr, index in zip(name_rvas, name_ords, strict=True):
            if index >= nfuncs:
                raise self._fail(
                    f"export name ordinal index {index} is past NumberOfFunctions {nfuncs}"
                )
            name = r.cstr(name_ptr, "export name")
            names_by_index.setdefault(index, name)  # a second name for one slot is an alias
            aliases.setdefault(name, index)
        exports: list[Export] = []
        by_index: dict[int, Export] = {}
        for index, func in enumerate(func_rvas):
            if func == 0:
                continue  # an unused ordinal slot
            ordinal = base + index
            export_name = names_by_index.get(index)
            if dir_rva <= func < dir_rva + dir_size:
                forwarder = r.cstr(func, f"forwarder of export ordinal {ordinal}")
                dll, _, target = forwarder.rpartition(".")
                if not dll or not target or (target.startswith("#") and not target[1:].isdigit()):
                    raise self._fail(
                        f"forwarder {forwarder!r} of export ordinal {ordinal} is not "
                        "'DLL.Function' or 'DLL.#ordinal'"
                    )
                export = Export(ordinal, export_name, None, forwarder)
            else:
                if func >= self.size_of_image:
                    raise self._fail(
                        f"export ordinal {ordinal} ({export_name or 'no name'}) RVA {func:#x} lies "
                        f"outside the image (SizeOfImage {self.size_of_image:#x})"
                    )
                export = Export(ordinal, export_name, func, None)
            exports.append(export)
            by_index[index] = export
        for alias, index in aliases.items():
            if index in by_index:
                self.exports_by_name[alias] = by_index[index]
            else:
                raise self._fail(f"export {alias!r} names an empty AddressOfFunctions slot")
        self.exports = tuple(exports)
        self.exports_by_ordinal = {e.ordinal: e for e in exports}

    def _parse_imports(self) -> None:
        self.imports = ()
        directory = self._directory(IMAGE_DIRECTORY_ENTRY_IMPORT)
        if directory is None:
            return
        dir_rva, _ = directory
        r = self._reader
        width = self.pointer_size
        flag = IMAGE_ORDINAL_FLAG64 if self.is_pe32plus else IMAGE_ORDINAL_FLAG32
        dlls: list[ImportDll] = []
        total = 0
        # Like Windows, walk descriptors up to the first with no Name or FirstThunk; the
        # directory's Size is not trusted to count them.
        for number in range(MAX_IMPORT_DLLS + 1):
            desc = dir_rva + 20 * number
            what = f"import descriptor {number}"
            original_first_thunk = r.u32(desc, what)
            name_rva = r.u32(desc + 12, what)
            first_thunk = r.u32(desc + 16, what)
            if name_rva == 0 or first_thunk == 0:
                break
            if number == MAX_IMPORT_DLLS:
                raise self._fail(f"import directory lists more than {MAX_IMPORT_DLLS} DLLs")
            dll = r.cstr(name_rva, f"{what} DLL name")
            lookup = original_first_thunk or first_thunk
            entries: list[ImportEntry] = []
            for i in range(MAX_IMPORTS + 1):
                value = r.ptr(lookup + i * width, width, f"import lookup table of {dll}")
                if value == 0:
                    break
                if i == MAX_IMPORTS or total >= MAX_IMPORTS:
                    raise self._fail(f"imports are absurd: more than {MAX_IMPORTS} thunks")
                iat_rva = first_thunk + i * width
                if iat_rva + width > self.size_of_image:
                    raise self._fail(
                        f"IAT slot {i} of {dll} at RVA {iat_rva:#x} lies outside the image "
                        f"(SizeOfImage {self.size_of_image:#x})"
                    )
                if value & flag:
                    entries.append(ImportEntry(None, value & 0xFFFF, 0, iat_rva))
                else:
                    if value >= self.size_of_image:
                        raise self._fail(
                            f"import {i} of {dll}: IMAGE_IMPORT_BY_NAME RVA {value:#x} lies "
                            f"outside the image (SizeOfImage {self.size_of_image:#x})"
                        )
                    hint = r.u16(value, f"import {i} of {dll} hint")
                    name = r.cstr(value + 2, f"import {i} of {dll} name")
                    entries.append(ImportEntry(name, None, hint, iat_rva))
                total += 1
            dlls.append(ImportDll(dll, tuple(entries)))
        self.imports = tuple(dlls)

    def _parse_relocations(self) -> None:
        self.relocations = ()
        directory = self._directory(IMAGE_DIRECTORY_ENTRY_BASERELOC)
        self._has_reloc_directory = directory is not None
        if directory is None:
            return
        dir_rva, dir_size = directory
        r = self._reader
        allowed = IMAGE_REL_BASED_DIR64 if self.is_pe32plus else IMAGE_REL_BASED_HIGHLOW
        allowed_name = "IMAGE_REL_BASED_DIR64" if self.is_pe32plus else "IMAGE_REL_BASED_HIGHLOW"
        width = 8 if self.is_pe32plus else 4
        relocations: list[Relocation] = []
        offset = 0
        while offset < dir_size:
            if dir_size - offset < 8:
                raise self._fail(
                    f"base relocation directory has {dir_size - offset} stray bytes at its end"
                )
            block = dir_rva + offset
            page = r.u32(block, "base relocation block")
            block_size = r.u32(block + 4, "base relocation block")
            if block_size < 8 or block_size % 2 or offset + block_size > dir_size:
                raise self._fail(
                    f"base relocation block at RVA {block:#x} has invalid SizeOfBlock "
                    f"{block_size:#x} (directory {dir_rva:#x}+{dir_size:#x})"
                )
            count = (block_size - 8) // 2
            if len(relocations) + count > MAX_RELOCATIONS:
                raise self._fail(f"more than {MAX_RELOCATIONS} base relocations")
            for entry in struct.unpack_from(f"<{count}H", self._image, block + 8):
                kind, rva = entry >> 12, page + (entry & 0xFFF)
                if kind == IMAGE_REL_BASED_ABSOLUTE:
                    continue
                if kind != allowed:
                    raise self._fail(
                        f"base relocation at RVA {rva:#x} has type {kind}, not supported in a "
                        f"{self.format} image (only IMAGE_REL_BASED_ABSOLUTE and {allowed_name})"
                    )
                if rva + width > self.size_of_image:
                    raise self._fail(
                        f"base relocation at RVA {rva:#x} (block page {page:#x}) lies outside "
                        f"the image (SizeOfImage {self.size_of_image:#x})"
                    )
                relocations.append(Relocation(rva, kind))
            offset += block_size
        self.relocations = tuple(relocations)

    def _va_to_rva(self, va: int, what: str, size: int = 1) -> int:
        """An address from a header field (a VA at the preferred base) as an RVA; 0 stays 0."""
        if va == 0:
            return 0
        rva = va - self.image_base
        if rva < 0 or rva + size > self.size_of_image:
            raise self._fail(
                f"{what} {va:#x} lies outside the image "
                f"({self.image_base:#x}+{self.size_of_image:#x})"
            )
        return rva

    def _parse_tls(self) -> None:
        self.tls = None
        directory = self._directory(IMAGE_DIRECTORY_ENTRY_TLS)
        if directory is None:
            return
        rva, size = directory
        r = self._reader
        w = self.pointer_size
        if size < 4 * w + 8:
            raise self._fail(f"TLS directory size {size:#x} is smaller than {4 * w + 8:#x}")
        start_va, end_va, index_va, callbacks_va = (
            r.ptr(rva + i * w, w, "IMAGE_TLS_DIRECTORY") for i in range(4)
        )
        zero_fill = r.u32(rva + 4 * w, "IMAGE_TLS_DIRECTORY")
        characteristics = r.u32(rva + 4 * w + 4, "IMAGE_TLS_DIRECTORY")
        start = self._va_to_rva(start_va, "TLS StartAddressOfRawData", 0)
        end = self._va_to_rva(end_va, "TLS EndAddressOfRawData", 0)
        if (start == 0) != (end == 0) or end < start:
            raise self._fail(
                f"TLS raw data {start_va:#x}..{end_va:#x} is not a valid range in the image"
            )
        if zero_fill > MAX_SIZE_OF_IMAGE:
            raise self._fail(f"TLS SizeOfZeroFill {zero_fill:#x} is absurd")
        index = self._va_to_rva(index_va, "TLS AddressOfIndex", 4)
        array = self._va_to_rva(callbacks_va, "TLS AddressOfCallBacks", w)
        callbacks: list[int] = []
        if array:
            for i in range(MAX_TLS_CALLBACKS + 1):
                va = r.ptr(array + i * w, w, "TLS callback array")
                if va == 0:
                    break
                if i == MAX_TLS_CALLBACKS:
                    raise self._fail(f"more than {MAX_TLS_CALLBACKS} TLS callbacks")
                callbacks.append(self._va_to_rva(va, f"TLS callback {i}"))
        self.tls = TlsDirectory(
            start, end, index, array, zero_fill, characteristics, tuple(callbacks)
        )

    def _parse_pdata(self) -> None:
        self.runtime_functions = ()
        if not self.is_pe32plus:
            return  # x86 images have no table-based unwinding; the directory is unused
        directory = self._directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        if directory is None:
            return
        rva, size = directory
        if size % 12:
            raise self._fail(
                f"exception directory size {size:#x} is not a multiple of "
                "sizeof(RUNTIME_FUNCTION) 12"
            )
        count = size // 12
        values = struct.unpack_from(f"<{3 * count}I", self._image, rva)
        functions: list[RuntimeFunction] = []
        for i in range(count):
            begin, end, unwind = values[3 * i : 3 * i + 3]
            if not begin <= end <= self.size_of_image or unwind >= self.size_of_image:
                raise self._fail(
                    f"RUNTIME_FUNCTION {i} ({begin:#x}..{end:#x}, unwind {unwind:#x}) lies "
                    f"outside the image (SizeOfImage {self.size_of_image:#x})"
                )
            functions.append(RuntimeFunction(begin, end, unwind))
        self.runtime_functions = tuple(functions)
