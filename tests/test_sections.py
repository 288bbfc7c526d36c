"""Sections and views follow Windows' rules (issue 16 causes 1 and 3), through real system
calls on x86 (int 0x2e) and x64 (syscall): NtCreateSection's attributes, protections and
sizes, NtQuerySection, NtMapViewOfSection's checks, image views and NtUnmapViewOfSection.
The expected answers are those Wine's kernel32/ntdll virtual tests check on Windows."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from programbuild import build
from test_virtual_memory import CURRENT, Nt

from emu import Process
from emu.nt.calls.section import (
    SEC_COMMIT,
    SEC_FILE,
    SEC_IMAGE,
    SEC_LARGE_PAGES,
    SEC_NOCACHE,
    SEC_RESERVE,
    SEC_WRITECOMBINE,
)
from emu.win.layouts import UNICODE_STRING
from emu.win.ntdefs import (
    AT_ROUND_TO_PAGE,
    MEM_COMMIT,
    MEM_IMAGE,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
    NtStatus,
)

GENERIC_READ, SYNCHRONIZE = 0x80000000, 0x100000
SECTION_QUERY, SECTION_MAP_READ, SECTION_MAP_WRITE, SECTION_ALL = 0x1, 0x4, 0x2, 0xF001F


class Sections(Nt):
    """Nt with files, sections and views built in scratch memory."""

    def __init__(self, proc: Process, files: dict[str, Path]):
        for windows, host in files.items():
            proc.objects.namespace.add_file(windows, host)
        super().__init__(proc)
        self.work, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
        self.out = self.work  # handles and sizes written back
        self.size_arg = self.work + 0x10

    def attributes(self, name: str = "") -> int:
        """An OBJECT_ATTRIBUTES (and its UNICODE_STRING) for ``name``, or none."""
        p, a = self.proc, self.proc.arch
        oa, us, text = self.work + 0x100, self.work + 0x200, self.work + 0x300
        data = name.encode("utf-16-le")
        p.write(text, data + b"\0\0")
        p.write(us, UNICODE_STRING.pack(a, {"Length": len(data), "MaximumLength": len(data) + 2,
                                            "Buffer": text}))  # fmt: skip
        n = a.ptr_size
        p.write(oa, bytes(6 * n))
        p.write_u32(oa, 6 * n)
        p.write_ptr(oa + 2 * n, us if name else 0)
        return oa

    def open(self, name: str, access: int = GENERIC_READ | SYNCHRONIZE) -> int:
        iosb = self.work + 0x80
        st = self.NtOpenFile(self.out, access, self.attributes(name), iosb, 1, 0x20)
        assert st == NtStatus.SUCCESS, hex(st)
        return self.proc.read_ptr(self.out)

    def create(
        self, protect: int, attributes: int, file: int = 0, size: int = 0, access: int = SECTION_ALL
    ) -> tuple[int, int]:
        p = self.proc
        p.write(self.size_arg, struct.pack("<q", size))
        st = self.NtCreateSection(self.out, access, 0, self.size_arg if size else 0, protect,
                                  attributes, file)  # fmt: skip
        return st, p.read_ptr(self.out) if st == NtStatus.SUCCESS else 0

    def query(self, section: int, cls: int = 0, length: int = 0x40) -> tuple[int, bytes]:
        buf = self.work + 0x400
        st = self.NtQuerySection(section, cls, buf, length, self.work + 0x20)
        return st, self.proc.read(buf, 0x40)

    def basic(self, section: int) -> tuple[int, int]:
        """(Attributes, Size) of SECTION_BASIC_INFORMATION."""
        st, data = self.query(section)
        assert st == NtStatus.SUCCESS, hex(st)
        if self.proc.arch.ptr_size == 8:
            _, attrs, size = struct.unpack_from("<QI4xq", data)
        else:
            _, attrs, size = struct.unpack_from("<IIq", data)
        return attrs, size

    def map(
        self, section: int, base: int = 0, size: int = 0, offset: int = 0,
        protect: int = PAGE_READONLY, zero_bits: int = 0, alloc_type: int = 0, inherit: int = 1,
    ) -> tuple[int, int, int]:  # fmt: skip
        p = self.proc
        p.write_ptr(self.pbase, base)
        p.write_ptr(self.psize, size)
        p.write(self.work + 0x30, struct.pack("<q", offset))
        st = self.NtMapViewOfSection(section, CURRENT, self.pbase, zero_bits, 0, self.work + 0x30,
                                     self.psize, inherit, alloc_type, protect)  # fmt: skip
        return st, p.read_ptr(self.pbase), p.read_ptr(self.psize)


@pytest.fixture
def sec(arch: str, tmp_path: Path) -> Sections:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 48)  # 0x3000 bytes
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    files = {"C:\\t\\data.bin": data, "C:\\t\\empty.bin": empty,
             "C:\\t\\image.exe": build("args.exe", arch)}  # fmt: skip
    return Sections(Process(arch), files)


def test_create_section_attributes(sec: Sections) -> None:
    """CreateFileMapping's SEC_* table (kernel32 test_CreateFileMapping): exactly one of
    SEC_COMMIT/SEC_RESERVE/SEC_IMAGE, caching attributes for data only, no large pages."""
    p6 = NtStatus.INVALID_PARAMETER_6
    anonymous = {
        SEC_RESERVE: SEC_RESERVE, SEC_RESERVE | SEC_NOCACHE: SEC_RESERVE | SEC_NOCACHE,
        SEC_RESERVE | SEC_LARGE_PAGES: p6,
        SEC_RESERVE | SEC_WRITECOMBINE: SEC_RESERVE | SEC_WRITECOMBINE,
        SEC_COMMIT: SEC_COMMIT, SEC_COMMIT | SEC_NOCACHE: SEC_COMMIT | SEC_NOCACHE,
        SEC_RESERVE | SEC_COMMIT: p6, SEC_IMAGE: NtStatus.INVALID_FILE_FOR_SECTION,
        SEC_IMAGE | SEC_RESERVE: p6, SEC_IMAGE | SEC_COMMIT: p6, SEC_NOCACHE: p6,
        SEC_LARGE_PAGES: p6, SEC_WRITECOMBINE: p6, SEC_FILE: p6, SEC_FILE | SEC_COMMIT: p6, 0: p6,
    }  # fmt: skip
    for flags, want in anonymous.items():
        st, h = sec.create(PAGE_READWRITE, flags, size=0x1000)
        if want in (p6, NtStatus.INVALID_FILE_FOR_SECTION):
            assert st == want, hex(flags)
        else:
            assert st == NtStatus.SUCCESS and sec.basic(h) == (want, 0x1000), hex(flags)
    data = sec.open("\\??\\C:\\t\\data.bin")
    file_flags = {
        SEC_COMMIT: SEC_FILE,
        SEC_RESERVE | SEC_NOCACHE: SEC_FILE | SEC_NOCACHE,
        SEC_COMMIT | SEC_WRITECOMBINE: SEC_FILE | SEC_WRITECOMBINE,
    }
    for flags, want in file_flags.items():
        st, h = sec.create(PAGE_READONLY, flags, data)
        assert st == NtStatus.SUCCESS and sec.basic(h) == (want, 0x3000), hex(flags)
    st, _ = sec.create(PAGE_READONLY, SEC_IMAGE, data)
    assert st == NtStatus.INVALID_IMAGE_NOT_MZ
    image = sec.open("\\??\\C:\\t\\image.exe")
    st, h = sec.create(PAGE_READONLY, SEC_IMAGE, image)
    assert st == NtStatus.SUCCESS and sec.basic(h)[0] == SEC_FILE | SEC_IMAGE
    assert sec.create(PAGE_READONLY, SEC_IMAGE | SEC_WRITECOMBINE, image)[0] == p6


def test_a_refused_section_leaves_a_null_handle(sec: Sections) -> None:
    """NtCreateSection clears the out-handle before it checks anything: Wine's kernelbase
    CreateFileMappingW returns that handle whatever the status, so a refusal must leave NULL
    there (kernel32 virtual.c test_CreateFileMapping: 29 failures per arch before)."""
    for attributes, protect in ((SEC_RESERVE | SEC_COMMIT, PAGE_READWRITE),
                                (SEC_RESERVE | SEC_LARGE_PAGES, PAGE_READWRITE),
                                (SEC_COMMIT, PAGE_NOACCESS)):  # fmt: skip
        sec.proc.write_ptr(sec.out, 0x1234)
        st = sec.NtCreateSection(sec.out, SECTION_ALL, 0, sec.size_arg, protect, attributes, 0)
        assert st != NtStatus.SUCCESS and sec.proc.read_ptr(sec.out) == 0, hex(attributes)


def test_create_section_protection_and_size(sec: Sections) -> None:
    for prot in (PAGE_NOACCESS, PAGE_EXECUTE, PAGE_READWRITE | PAGE_NOCACHE, 0):
        assert sec.create(prot, SEC_COMMIT, size=0x1000)[0] == NtStatus.INVALID_PAGE_PROTECTION
    st, h = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x3457)
    assert sec.basic(h) == (SEC_COMMIT, 0x4000)  # pagefile sections are whole pages
    assert sec.create(PAGE_READWRITE, SEC_COMMIT)[0] == NtStatus.INVALID_PARAMETER_4
    data = sec.open("\\??\\C:\\t\\data.bin")
    # the sandbox opens files read-only: nothing can back a writable section
    assert sec.create(PAGE_READWRITE, SEC_COMMIT, data)[0] == NtStatus.ACCESS_DENIED
    assert (
        sec.create(PAGE_EXECUTE_READ, SEC_COMMIT, data)[0] == NtStatus.ACCESS_DENIED
    )  # no FILE_EXECUTE
    assert sec.create(PAGE_WRITECOPY, SEC_COMMIT, data)[0] == NtStatus.SUCCESS
    assert sec.create(PAGE_READONLY, SEC_COMMIT, data, size=0x3001)[0] == NtStatus.SECTION_TOO_BIG
    st, h = sec.create(PAGE_READONLY, SEC_COMMIT, data, size=0x2452)
    assert sec.basic(h) == (SEC_FILE, 0x2452)  # file sections keep their exact size
    assert sec.map(h, size=0x2453)[0] == NtStatus.INVALID_VIEW_SIZE
    st, _, size = sec.map(h, size=0x2452)
    assert (st, size) == (NtStatus.SUCCESS, 0x3000)
    empty = sec.open("\\??\\C:\\t\\empty.bin")
    assert sec.create(PAGE_READONLY, SEC_COMMIT, empty)[0] == NtStatus.MAPPED_FILE_SIZE_ZERO
    assert sec.create(PAGE_READONLY, SEC_IMAGE, empty)[0] == NtStatus.INVALID_FILE_FOR_SECTION


def test_query_section(sec: Sections) -> None:
    n = 24 if sec.proc.arch.ptr_size == 8 else 16
    _, h = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x1000)
    assert sec.query(h, 0, n - 1)[0] == NtStatus.INFO_LENGTH_MISMATCH
    assert sec.query(h, 0, n + 1)[0] == NtStatus.SUCCESS
    assert sec.proc.read_ptr(sec.work + 0x20) == n
    image_size = 0x40 if sec.proc.arch.ptr_size == 8 else 0x30
    assert sec.query(h, 1, image_size - 1)[0] == NtStatus.INFO_LENGTH_MISMATCH
    assert sec.query(h, 1, image_size)[0] == NtStatus.SECTION_NOT_IMAGE
    assert sec.query(h, 9, 0x40)[0] == NtStatus.INVALID_INFO_CLASS
    _, no_query = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x1000, access=SECTION_MAP_READ)
    assert sec.query(no_query)[0] == NtStatus.ACCESS_DENIED


def test_query_section_probes_the_whole_buffer(sec: Sections) -> None:
    """NtQuerySection probes all of its buffer for writing before it looks at the class: a
    length past the caller's committed memory is STATUS_ACCESS_VIOLATION, even for a class
    the section does not have (kernel32 virtual.c test_MapViewOfFile, on Windows)."""
    _, h = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x1000)
    _, buf, _ = sec.alloc(0, 0x20000, MEM_RESERVE)
    assert sec.alloc(buf, 0x1000, MEM_COMMIT, PAGE_READWRITE)[0] == NtStatus.SUCCESS
    buf, out = buf + 0x800, sec.work + 0x20
    assert sec.NtQuerySection(h, 1, buf, 0x41, out) == NtStatus.SECTION_NOT_IMAGE
    assert sec.NtQuerySection(h, 1, buf, 0x10000, out) == NtStatus.ACCESS_VIOLATION
    assert sec.NtQuerySection(h, 0, buf, 0x10000, out) == NtStatus.ACCESS_VIOLATION
    assert sec.NtQuerySection(h, 0, buf, 0x100, out) == NtStatus.SUCCESS


def test_map_view_checks(sec: Sections) -> None:
    _, h = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x10000)
    st, base, size = sec.map(h, protect=PAGE_READWRITE)
    assert (st, base % 0x10000, size) == (NtStatus.SUCCESS, 0, 0x10000)
    mbi = sec.query_mbi = sec.proc.memory.query(base)
    assert (mbi.AllocationProtect, mbi.Protect, mbi.State) == (
        PAGE_READWRITE,
        PAGE_READWRITE,
        MEM_COMMIT,
    )
    assert sec.map(h, base=base)[0] == NtStatus.CONFLICTING_ADDRESSES
    assert sec.map(h, base=base, offset=1)[0] == NtStatus.MAPPED_ALIGNMENT
    assert sec.map(h, base=base + 42)[0] == NtStatus.MAPPED_ALIGNMENT
    assert sec.map(h, base=base + 0x1000)[0] == NtStatus.MAPPED_ALIGNMENT
    assert sec.map(h, zero_bits=22)[0] == NtStatus.INVALID_PARAMETER_4
    assert sec.map(h, inherit=0)[0] == NtStatus.INVALID_PARAMETER_8
    if sec.proc.arch.ptr_size == 8:
        assert sec.map(h, alloc_type=AT_ROUND_TO_PAGE)[0] == NtStatus.INVALID_PARAMETER_9
    else:  # x86: page alignment is enough
        st, b, _ = sec.map(h, base=base + 0x20000 + 0x1001, alloc_type=AT_ROUND_TO_PAGE)
        assert (st, b) == (NtStatus.SUCCESS, base + 0x21000)
    for zero_bits in (1, 10, 20):
        st, b, _ = sec.map(h, zero_bits=zero_bits)
        assert st == NtStatus.NO_MEMORY or b >> (32 - zero_bits) == 0
    assert sec.map(h, size=0x10001)[0] == NtStatus.INVALID_VIEW_SIZE
    assert sec.map(h, offset=0x10000)[0] == NtStatus.INVALID_VIEW_SIZE
    _, ro = sec.create(PAGE_READONLY, SEC_COMMIT, size=0x1000)
    assert sec.map(ro, protect=PAGE_READWRITE)[0] == NtStatus.SECTION_PROTECTION
    assert sec.map(ro, protect=PAGE_WRITECOPY)[0] == NtStatus.SUCCESS  # copy-on-write reads
    _, read_only_handle = sec.create(
        PAGE_READWRITE, SEC_COMMIT, size=0x1000, access=SECTION_MAP_READ
    )
    assert sec.map(read_only_handle, protect=PAGE_READWRITE)[0] == NtStatus.ACCESS_DENIED
    sec.proc.write_ptr(sec.pbase, 0)
    assert sec.NtMapViewOfSection(h, 0, sec.pbase, 0, 0, 0, sec.psize, 1, 0, PAGE_READONLY) == (
        NtStatus.INVALID_HANDLE
    )
    # only views are unmapped, by any address inside them
    _, private, _ = sec.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT)
    assert sec.NtUnmapViewOfSection(CURRENT, private) == NtStatus.NOT_MAPPED_VIEW
    assert sec.free(base, 0, MEM_RELEASE)[0] == NtStatus.UNABLE_TO_DELETE_SECTION
    assert sec.NtUnmapViewOfSection(CURRENT, base + 0x1234) == NtStatus.SUCCESS
    assert sec.NtUnmapViewOfSection(CURRENT, base) == NtStatus.NOT_MAPPED_VIEW


def test_data_view_contents_and_reserve_views(sec: Sections) -> None:
    data = sec.open("\\??\\C:\\t\\data.bin")
    _, h = sec.create(PAGE_READONLY, SEC_COMMIT, data)
    _, base, _ = sec.map(h, offset=0, size=0x3000)
    assert sec.proc.read(base + 0x101, 3) == bytes([1, 2, 3])
    _, reserved = sec.create(PAGE_READWRITE, SEC_RESERVE, size=0x100000)
    _, v, _ = sec.map(reserved, protect=PAGE_READWRITE)
    mbi = sec.proc.memory.query(v)
    assert (mbi.State, mbi.Protect, mbi.AllocationProtect, mbi.RegionSize) == (
        MEM_RESERVE,
        0,
        PAGE_READWRITE,
        0x100000,
    )
    assert sec.alloc(v, 0x10000, MEM_COMMIT, PAGE_READONLY)[0] == NtStatus.SUCCESS
    assert sec.alloc(v, 0x1000, MEM_COMMIT, PAGE_EXECUTE_READ)[0] == (
        NtStatus.INVALID_PAGE_PROTECTION
    )  # more than the view's protection


def test_commit_in_views(sec: Sections) -> None:
    """MEM_COMMIT in a view: a pagefile-backed view commits any protection its own allows,
    copy-on-write ones too (refused for private memory only); in a file's view every commit is
    STATUS_ALREADY_COMMITTED (ERROR_ACCESS_DENIED), whatever the protection asked (Wine's
    kernel32 virtual.c test_mappings: ~400 checks per arch)."""
    _, reserved = sec.create(PAGE_EXECUTE_READWRITE, SEC_RESERVE, size=0x10000)
    _, v, _ = sec.map(reserved, protect=PAGE_EXECUTE_READWRITE)
    for i, prot in enumerate((PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, PAGE_READWRITE)):
        assert sec.alloc(v + i * 0x1000, 0x1000, MEM_COMMIT, prot)[0] == NtStatus.SUCCESS
        assert sec.proc.memory.query(v + i * 0x1000).Protect == prot
    _, private, _ = sec.alloc(0, 0x1000, MEM_RESERVE)
    assert sec.alloc(private, 0x1000, MEM_COMMIT, PAGE_WRITECOPY)[0] == (
        NtStatus.INVALID_PAGE_PROTECTION
    )
    data = sec.open("\\??\\C:\\t\\data.bin")
    _, h = sec.create(PAGE_READONLY, SEC_COMMIT, data)
    _, base, _ = sec.map(h, protect=PAGE_WRITECOPY)
    for prot in (PAGE_READONLY, PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, PAGE_READWRITE):
        assert sec.alloc(base, 0x1000, MEM_COMMIT, prot)[0] == NtStatus.ALREADY_COMMITTED


def test_second_image_view(sec: Sections) -> None:
    """Issue 16 cause 1: a second SEC_IMAGE view of a loaded image is a view of its own, with a
    module record of its own (``args#2.exe``), the same contents and STATUS_IMAGE_NOT_AT_BASE."""
    proc = sec.proc
    image = sec.open("\\??\\C:\\t\\image.exe")
    _, h = sec.create(PAGE_READONLY, SEC_IMAGE, image)
    st, first, size = sec.map(h)
    assert st in (NtStatus.SUCCESS, NtStatus.IMAGE_NOT_AT_BASE)
    assert proc.modules.get("image.exe").base == first
    st, second, size2 = sec.map(h)
    assert (st, size2) == (NtStatus.IMAGE_NOT_AT_BASE, size) and second != first
    assert proc.read(second, size) == proc.read(first, size)  # relocated for the first view
    mbi = proc.memory.query(second)
    assert (mbi.Type, mbi.AllocationProtect, mbi.Protect) == (MEM_IMAGE, 0x80, PAGE_READONLY)
    module = proc.modules.get("image#2.exe")
    assert module is not None and module.base == second
    assert proc.symbolize(module.exports.get("main", second)).startswith("image#2")
    assert sec.NtAreMappedFilesTheSame(first, second + 0x1000) == NtStatus.SUCCESS
    assert sec.NtAreMappedFilesTheSame(second, 0) == NtStatus.INVALID_ADDRESS
    assert sec.NtUnmapViewOfSection(CURRENT, second + 0x10) == NtStatus.SUCCESS
    assert proc.modules.get("image#2.exe") is None and proc.modules.get("image.exe") is not None
    assert proc.memory.region_at(second) is None


GENERIC_WRITE, DELETE = 0x40000000, 0x10000
FILE_CREATE, FILE_OPEN, FILE_OVERWRITE_IF = 2, 1, 5
FILE_CREATED, FILE_OVERWRITTEN, FILE_DELETE_ON_CLOSE = 2, 3, 0x1000


def _create_file(
    sec: Sections, name: str, disposition: int, access: int, options: int = 0
) -> tuple[int, int, int]:
    """NtCreateFile: (status, handle, IO_STATUS_BLOCK.Information)."""
    p, iosb = sec.proc, sec.work + 0x80
    st = sec.NtCreateFile(sec.out, access | SYNCHRONIZE, sec.attributes(name), iosb, 0, 0x80,
                          0, disposition, options | 0x20, 0, 0)  # fmt: skip
    ok = st == NtStatus.SUCCESS
    return st, p.read_ptr(sec.out) if ok else 0, p.read_ptr(iosb + p.arch.ptr_size) if ok else 0


def test_files_the_program_creates(sec: Sections) -> None:
    """A program can create files of its own in the namespace's directories (a temporary
    file, a file to map): in memory, writable, sized, mapped, deleted; the sandbox's own files
    stay read-only and no name outside its directories is created (Wine's kernel32 virtual.c
    test_mappings, test_CreateFileMapping_protection, test_MapViewOfFile... map such files:
    ~800 checks per arch did not run or failed without them)."""
    p = sec.proc
    rw = GENERIC_READ | GENERIC_WRITE
    name = "\\??\\C:\\t\\new.tmp"
    st, h, info = _create_file(sec, name, FILE_CREATE, rw)
    assert (st, info) == (NtStatus.SUCCESS, FILE_CREATED)
    assert _create_file(sec, name, FILE_CREATE, rw)[0] == NtStatus.OBJECT_NAME_COLLISION
    assert _create_file(sec, "\\??\\C:\\nowhere\\x.tmp", FILE_CREATE, rw)[0] == (
        NtStatus.OBJECT_NAME_NOT_FOUND
    )
    assert _create_file(sec, "\\??\\C:\\t\\data.bin", FILE_OVERWRITE_IF, rw)[0] == (
        NtStatus.ACCESS_DENIED
    )  # a host file stays read-only
    buf, iosb, offset = sec.work + 0x800, sec.work + 0x80, sec.work + 0x40
    p.write(buf, b"heapemu!")
    p.write(offset, struct.pack("<q", 0x10))
    assert sec.NtWriteFile(h, 0, 0, 0, iosb, buf, 8, offset, 0) == NtStatus.SUCCESS
    p.write(offset, struct.pack("<q", 0))
    assert sec.NtReadFile(h, 0, 0, 0, iosb, buf, 0x40, offset, 0) == NtStatus.SUCCESS
    assert p.read(buf, 0x18) == bytes(0x10) + b"heapemu!"  # the gap reads zero
    # a section with write access grows the file to its size; a view shows its bytes
    st, section = sec.create(PAGE_READWRITE, SEC_COMMIT, h, size=0x2000)
    assert st == NtStatus.SUCCESS and sec.basic(section) == (SEC_FILE, 0x2000)
    st, base, size = sec.map(section, protect=PAGE_READWRITE)
    assert (st, size) == (NtStatus.SUCCESS, 0x2000)
    assert p.read(base + 0x10, 8) == b"heapemu!"
    assert sec.alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)[0] == NtStatus.ALREADY_COMMITTED
    assert sec.NtClose(h) == NtStatus.SUCCESS
    # opened again: overwritten (empty), then deleted when its last handle closes
    st, h, info = _create_file(sec, name, FILE_OVERWRITE_IF, rw)
    assert (st, info) == (NtStatus.SUCCESS, FILE_OVERWRITTEN)
    assert sec.NtReadFile(h, 0, 0, 0, iosb, buf, 0x40, offset, 0) == NtStatus.END_OF_FILE
    st, gone, _ = _create_file(sec, name, FILE_OPEN, DELETE, FILE_DELETE_ON_CLOSE)
    assert st == NtStatus.SUCCESS and sec.NtClose(gone) == NtStatus.SUCCESS
    assert _create_file(sec, name, FILE_OPEN, GENERIC_READ)[0] == NtStatus.DELETE_PENDING
    assert sec.NtClose(h) == NtStatus.SUCCESS
    assert _create_file(sec, name, FILE_OPEN, GENERIC_READ)[0] == NtStatus.OBJECT_NAME_NOT_FOUND
    # read-only access: no writes
    st, h, _ = _create_file(sec, name, FILE_CREATE, GENERIC_READ)
    assert st == NtStatus.SUCCESS
    assert sec.NtWriteFile(h, 0, 0, 0, iosb, buf, 8, offset, 0) == NtStatus.ACCESS_DENIED
    assert sec.create(PAGE_READWRITE, SEC_COMMIT, h, size=0x1000)[0] == NtStatus.ACCESS_DENIED


def test_view_rights_caching_and_created_images(sec: Sections) -> None:
    """A handle with SECTION_MAP_WRITE alone maps a PAGE_READWRITE view (not a read-only one);
    pages committed in a SEC_NOCACHE view keep PAGE_NOCACHE; SEC_IMAGE on a created file that
    is no image is STATUS_INVALID_IMAGE_NOT_MZ (Wine's kernel32 virtual.c test_MapViewOfFile,
    on Windows)."""
    _, h = sec.create(PAGE_READWRITE, SEC_COMMIT, size=0x1000, access=SECTION_MAP_WRITE)
    assert sec.map(h, protect=PAGE_READONLY)[0] == NtStatus.ACCESS_DENIED
    assert sec.map(h, protect=PAGE_READWRITE)[0] == NtStatus.SUCCESS
    _, h = sec.create(PAGE_READWRITE, SEC_RESERVE | SEC_NOCACHE, size=0x20000)
    _, v, _ = sec.map(h, protect=PAGE_READWRITE)
    assert sec.alloc(v, 0x10000, MEM_COMMIT, PAGE_READONLY)[0] == NtStatus.SUCCESS
    assert sec.proc.memory.query(v).Protect == PAGE_READONLY | PAGE_NOCACHE
    st, f, _ = _create_file(sec, "\\??\\C:\\t\\notimage.tmp", FILE_CREATE,
                            GENERIC_READ | GENERIC_WRITE)  # fmt: skip
    assert st == NtStatus.SUCCESS
    assert sec.create(PAGE_READWRITE, SEC_COMMIT, f, size=0x3457)[0] == NtStatus.SUCCESS
    assert sec.create(PAGE_READONLY, SEC_IMAGE, f)[0] == NtStatus.INVALID_IMAGE_NOT_MZ
