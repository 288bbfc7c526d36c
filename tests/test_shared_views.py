"""Views of one section share memory (issue 16), on x86 (int 0x2e) and x64 (syscall), through
the real system calls: on Windows every view of a pagefile-backed or file-backed section is the
same physical pages, so a write through one view is seen through every other view at once,
except in FILE_MAP_COPY (PAGE_WRITECOPY) views, whose written pages are their own.

Writes come from emulated code (a store in flat code, and the kernel writing a system call's
output through its probes), reads from emulated code or Python. tests/programs/vmrules.c's
``shared`` mode checks the same through Wine's CreateFileMapping / MapViewOfFile."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from programbuild import build
from test_sections import Sections
from test_virtual_memory import CURRENT

from emu import EmulationError, Process
from emu.cpu import shared
from emu.facade import load_program
from emu.nt.calls.section import SEC_COMMIT, SEC_RESERVE
from emu.nt.objects import SectionObject
from emu.win.ntdefs import (
    MEM_COMMIT,
    PAGE_EXECUTE_READWRITE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
    NtStatus,
)

pytestmark = pytest.mark.skipif(not shared.available(), reason="no memfd/MAP_FIXED here")

SIZE = 0x30000

_CODE = {
    "x64": """
poke:
    mov dword ptr [rcx], edx
    ret
peek:
    mov eax, dword ptr [rcx]
    ret
""",
    "x86": """
poke:
    mov ecx, dword ptr [esp+4]
    mov edx, dword ptr [esp+8]
    mov dword ptr [ecx], edx
    ret 8
peek:
    mov ecx, dword ptr [esp+4]
    mov eax, dword ptr [ecx]
    ret 4
""",
}


class Views(Sections):
    """Sections with a store and a load in emulated code."""

    def __init__(self, proc: Process, files: dict[str, Path] | None = None):
        super().__init__(proc, files or {})
        code = proc.load_flat(_CODE[proc.arch.name], "views_code")
        self._poke, self._peek = code.symbols["poke"], code.symbols["peek"]

    def poke(self, addr: int, value: int) -> None:
        """A 32-bit store by emulated code."""
        self.proc.call(self._poke, addr, value)

    def peek(self, addr: int) -> int:
        """A 32-bit load by emulated code."""
        return int(self.proc.call(self._peek, addr)) & 0xFFFFFFFF

    def section(self, size: int = SIZE, attributes: int = SEC_COMMIT) -> int:
        st, handle = self.create(PAGE_READWRITE, attributes, size=size)
        assert st == NtStatus.SUCCESS, hex(st)
        return handle

    def view(self, handle: int, protect: int = PAGE_READWRITE, **kw: int) -> int:
        st, base, _ = self.map(handle, protect=protect, **kw)
        assert st == NtStatus.SUCCESS, hex(st)
        return base

    def unmap(self, base: int) -> None:
        assert self.NtUnmapViewOfSection(CURRENT, base) == NtStatus.SUCCESS


@pytest.fixture
def v(arch: str) -> Views:
    return Views(Process(arch))


def test_two_views_see_each_others_writes(v: Views) -> None:
    h = v.section()
    a, b = v.view(h), v.view(h)
    assert a != b
    v.poke(a + 0x1234, 0xC0FFEE)  # emulated code stores through a ...
    assert v.peek(b + 0x1234) == 0xC0FFEE  # ... and loads through b
    v.poke(b + 0x2FFC, 0x5EED)
    assert v.peek(a + 0x2FFC) == 0x5EED
    assert v.proc.read(b + 0x1234, 4) == struct.pack("<I", 0xC0FFEE)
    # the kernel writes a system call's output through a: MEMORY_BASIC_INFORMATION
    assert v.NtQueryVirtualMemory(CURRENT, a, 0, a + 0x800, 0x30, 0) == NtStatus.SUCCESS
    assert v.proc.read_ptr(b + 0x800) == a  # BaseAddress, seen through b
    assert v.proc.read(b + 0x800, 0x30) == v.proc.read(a + 0x800, 0x30)
    # a view at an offset shows the same pages at its own addresses
    tail = v.view(h, offset=0x10000, size=0x20000)
    v.poke(tail + 8, 0x7A11)
    assert v.peek(a + 0x10008) == 0x7A11 and v.peek(b + 0x10008) == 0x7A11


def test_a_view_mapped_later_sees_earlier_writes(v: Views) -> None:
    h = v.section()
    a = v.view(h)
    v.poke(a + 0x20000, 0xABCD1234)
    later = v.view(h, protect=PAGE_READONLY)
    assert v.peek(later + 0x20000) == 0xABCD1234
    v.poke(a + 0x20004, 0x1111)  # and writes after it was mapped
    assert v.peek(later + 0x20004) == 0x1111


def test_copy_on_write_view_keeps_its_writes(v: Views) -> None:
    h = v.section()
    a = v.view(h)
    v.poke(a + 0x100, 0xAAAA)
    copy = v.view(h, protect=PAGE_WRITECOPY)
    assert v.peek(copy + 0x100) == 0xAAAA  # the section's bytes when it was mapped
    v.poke(copy + 0x100, 0xCCCC)  # its first write makes the page its own
    assert v.proc.memory.query(copy + 0x100).Protect == PAGE_READWRITE
    assert v.peek(copy + 0x100) == 0xCCCC
    assert v.peek(a + 0x100) == 0xAAAA  # the section does not see it
    assert v.peek(v.view(h) + 0x100) == 0xAAAA  # nor does a view mapped after it
    v.poke(a + 0x100, 0xBBBB)
    assert v.peek(copy + 0x100) == 0xCCCC  # its written page stays its own
    v.unmap(copy)
    assert v.peek(a + 0x100) == 0xBBBB  # unmapping it leaves the section as it was


def test_unmapping_one_view_keeps_the_others_data(v: Views) -> None:
    h = v.section()
    a, b = v.view(h), v.view(h)
    v.poke(a + 0x40, 0x600D)
    v.unmap(a)
    assert v.peek(b + 0x40) == 0x600D
    assert v.proc.memory.region_at(a) is None
    # the unmapped range is private memory again: a new allocation there reads zero
    st, base, _ = v.alloc(a, 0x10000, MEM_COMMIT | 0x2000)
    assert (st, base) == (NtStatus.SUCCESS, a)
    assert v.peek(a + 0x40) == 0
    v.poke(a + 0x40, 0x9999)
    assert v.peek(b + 0x40) == 0x600D
    v.poke(b + 0x44, 0x4444)  # the other view still writes the section
    assert v.peek(v.view(h) + 0x44) == 0x4444


def test_code_written_through_one_view_runs_through_another(v: Views) -> None:
    """The double mapping of a JIT (a writable view and an executable one): a store through
    the writable view drops what the CPU translated through the executable view, as on a real
    CPU (QEMU drops code by physical page: every view of the section is one physical page)."""
    st, h = v.create(PAGE_EXECUTE_READWRITE, SEC_COMMIT, size=0x10000)
    assert st == NtStatus.SUCCESS
    low, high = v.view(h, PAGE_EXECUTE_READWRITE), v.view(h, PAGE_EXECUTE_READWRITE)
    for writer, runner in ((low, high), (high, low)):
        v.proc.write(writer, b"\xb8\x11\x00\x00\x00\xc3")  # mov eax, 0x11; ret
        assert v.proc.call(runner) == 0x11
        v.poke(writer, 0x22B8)  # emulated code rewrites it: mov eax, 0x22
        assert v.proc.call(runner) == 0x22
        v.proc.write(writer + 1, b"\x33")  # so does a debugger
        assert v.proc.call(runner) == 0x33
    third = v.view(h, PAGE_EXECUTE_READWRITE)  # a view mapped later, and one unmapped
    v.unmap(low)
    v.poke(third, 0x44B8)
    assert v.proc.call(high) == 0x44


def test_section_keeps_its_data_with_no_view_while_a_handle_is_open(v: Views) -> None:
    h = v.section()
    section = v.proc.objects.get(h, SectionObject)
    a, b = v.view(h), v.view(h, offset=0x20000)
    v.poke(a + 0x10, 0x1234)
    v.poke(b + 0xFF8, 0x5678)
    v.unmap(a)
    v.unmap(b)
    memory = section.memory
    assert memory is not None and not memory.closed  # the handle holds the section
    again = v.view(h)
    assert v.peek(again + 0x10) == 0x1234 and v.peek(again + 0x20FF8) == 0x5678
    # the last handle closed, the view still holds the section's bytes
    assert v.NtClose(h) == NtStatus.SUCCESS
    assert section.memory is memory and not memory.closed
    v.poke(again + 0x14, 0x77)
    assert v.peek(again + 0x14) == 0x77
    # the last view gone too: the section lets its memory go, and its memfd closes
    v.unmap(again)
    assert section.memory is None
    finalizer = memory._finalizer  # holds no reference to the memory
    del memory
    assert not finalizer.alive  # nothing else held it: the memfd is closed


def test_reserve_section_pages_committed_through_one_view_are_committed_in_all(v: Views) -> None:
    """A SEC_RESERVE section's commitment is the section's (its prototype PTEs): a page
    committed through one view is committed, and shared, in every view, and in views mapped
    later (a process opening such a section finds the committed part by VirtualQuery)."""
    h = v.section(0x100000, SEC_RESERVE)
    a, b = v.view(h), v.view(h, offset=0x20000, size=0x40000)
    assert v.proc.memory.query(b + 0x10000).State == 0x2000  # MEM_RESERVE
    assert v.alloc(a + 0x30000, 0x2000, MEM_COMMIT)[0] == NtStatus.SUCCESS
    mbi = v.proc.memory.query(b + 0x10000)  # section offset 0x30000
    assert (mbi.State, mbi.Protect, mbi.RegionSize) == (MEM_COMMIT, PAGE_READWRITE, 0x2000)
    v.poke(a + 0x30010, 0xDEAD)
    assert v.peek(b + 0x10010) == 0xDEAD
    later = v.view(h, protect=PAGE_READONLY)
    mbi = v.proc.memory.query(later + 0x30000)
    assert (mbi.State, mbi.Protect, mbi.RegionSize) == (MEM_COMMIT, PAGE_READONLY, 0x2000)
    assert v.peek(later + 0x30010) == 0xDEAD
    # committed read-only through one view, the page is read-only in the others
    assert v.alloc(later + 0x50000, 0x1000, MEM_COMMIT, PAGE_READONLY)[0] == NtStatus.SUCCESS
    assert v.proc.memory.query(b + 0x30000).Protect == PAGE_READONLY
    # pages reserved in the section fault in every view, whatever a view's host pages hold
    with pytest.raises(EmulationError, match="STATUS_ACCESS_VIOLATION"):
        v.peek(b + 0x8000)
    v.unmap(a)
    v.unmap(b)
    v.unmap(later)
    again = v.view(h)  # no view left, the handle keeps the section's commitment
    assert v.proc.memory.query(again + 0x30000).State == MEM_COMMIT
    assert v.proc.memory.query(again + 0x50000).State == MEM_COMMIT
    assert v.proc.memory.query(again + 0x40000).State == 0x2000
    assert v.peek(again + 0x30010) == 0xDEAD


def test_snapshot_restore_keeps_views_coherent(v: Views) -> None:
    proc = v.proc
    h = v.section()
    a, b = v.view(h), v.view(h)
    kept = v.section(0x10000)  # a section with a handle and no view: its bytes count too
    k = v.view(kept)
    v.poke(k + 0x20, 0x4B)
    v.unmap(k)
    v.poke(a + 0x100, 0x1111)
    copy = v.view(h, protect=PAGE_WRITECOPY)
    v.poke(copy + 0x200, 0xC0C0)
    snap = proc.snapshot()
    # after the snapshot: writes, an unmap, a new view, a closed section
    v.poke(b + 0x100, 0x2222)
    v.poke(copy + 0x200, 0xD0D0)
    v.unmap(a)
    c = v.view(h)
    v.poke(c + 0x300, 0x3333)
    assert v.NtClose(kept) == NtStatus.SUCCESS
    proc.restore(snap)
    assert proc.memory.region_at(a) is not None and v.peek(a + 0x100) == 0x1111
    assert v.peek(b + 0x100) == 0x1111
    assert v.peek(copy + 0x200) == 0xC0C0 and v.peek(a + 0x200) == 0
    assert proc.memory.region_at(c) is None or c in (a, b, copy)
    section = proc.objects.get(h, SectionObject)
    assert section.memory is not None
    assert section.memory.read(0x100, 4) == struct.pack("<I", 0x1111)
    assert section.memory.read(0x300, 4) == bytes(4)  # the later write is gone from the file
    # coherent again: a write through one restored view is seen through the other
    v.poke(b + 0x104, 0x4444)
    assert v.peek(a + 0x104) == 0x4444
    assert v.peek(v.view(h) + 0x104) == 0x4444
    assert v.peek(copy + 0x104) == 0  # the copy view's private page stays private
    # the section closed after the snapshot is back, with its bytes
    assert v.peek(v.view(kept) + 0x20) == 0x4B
    proc.restore(snap)  # any number of times
    assert v.peek(a + 0x104) == 0 and v.peek(b + 0x100) == 0x1111


def test_named_section_opened_twice_shares(v: Views) -> None:
    oa = v.attributes("\\BaseNamedObjects\\heapemu_shared")
    v.proc.write(v.size_arg, struct.pack("<q", 0x1000))
    st = v.NtCreateSection(v.out, 0xF001F, oa, v.size_arg, PAGE_READWRITE, SEC_COMMIT, 0)
    assert st == NtStatus.SUCCESS
    first = v.proc.read_ptr(v.out)
    assert v.NtOpenSection(v.out, 0xF001F, oa) == NtStatus.SUCCESS
    second = v.proc.read_ptr(v.out)
    assert first != second
    x, y = v.view(first), v.view(second)
    v.poke(y + 0x14, 0x5EED)
    assert v.peek(x + 0x14) == 0x5EED
    v.poke(x + 0x18, 0xF00D)
    assert v.peek(y + 0x18) == 0xF00D


def test_file_views_share_the_files_bytes(v: Views, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 48)  # 0x3000 bytes
    v.proc.objects.namespace.add_file("C:\\t\\data.bin", data)
    f = v.open("\\??\\C:\\t\\data.bin")
    st, h = v.create(PAGE_READONLY, SEC_COMMIT, f)
    assert st == NtStatus.SUCCESS
    a, b = v.view(h, PAGE_READONLY), v.view(h, PAGE_READONLY)
    assert v.peek(a + 0x101) == 0x04030201 == v.peek(b + 0x101)
    copy = v.view(h, protect=PAGE_WRITECOPY)
    v.poke(copy + 0x101, 0)
    assert v.peek(a + 0x101) == 0x04030201  # the file's bytes are not written
    assert data.read_bytes()[0x101:0x105] == bytes([1, 2, 3, 4])
    # a debugger's write through one read-only view shows in the other
    v.proc.write(a + 0x2000, b"\xaa")
    assert v.proc.read(b + 0x2000, 1) == b"\xaa"


def test_without_shared_memory_views_are_copies(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the host cannot share memory (HEAPEMU_SHARED_VIEWS=0 stands for a host without
    memfd or fixed mappings) each view is a copy: a view sees what views unmapped before it
    was mapped left, not what views mapped beside it write. Copy-on-write views leave nothing."""
    monkeypatch.setenv("HEAPEMU_SHARED_VIEWS", "0")
    v = Views(Process(arch))
    h = v.section()
    a, b = v.view(h), v.view(h)
    v.poke(a + 0x10, 0x1111)
    assert v.peek(b + 0x10) == 0  # not shared
    assert v.proc.objects.get(h, SectionObject).memory is None and not v.proc.cpu.shares()
    v.unmap(a)
    c = v.view(h)
    assert v.peek(c + 0x10) == 0x1111  # what the unmapped view left
    copy = v.view(h, protect=PAGE_WRITECOPY)
    v.poke(copy + 0x10, 0xCCCC)
    v.unmap(copy)
    assert v.peek(v.view(h) + 0x10) == 0x1111


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_views_share_memory_through_wine(arch: str) -> None:
    """CreateFileMapping and MapViewOfFile in a mingw program: what Windows answers."""
    program = load_program(build("vmrules.exe", arch), ["vmrules.exe", "shared"])
    result = program.run()
    assert result.ok, result.error
    got = dict(line.split(" ", 1) for line in result.text.splitlines() if line)
    assert {k: int(x, 16) for k, x in got.items()} == {
        "shared-views": 1,
        "shared-b-sees-a": 1,
        "shared-a-sees-b": 0xB0B0CAFE,
        "shared-offset-view": 0x7A11,
        "shared-later-view": 0xB0B0CAFE,
        "shared-copy-reads": 0xB0B0CAFE,
        "shared-copy-own": 0xC0C0,
        "shared-copy-not-seen": 0xB0B0CAFE,
        "shared-copy-keeps-its-page": 0xC0C0,
        "shared-unmapped-one": 0xA0A0,
        "shared-no-view-kept": 0xA0A0,
        "shared-no-view-text": 1,
        "shared-named": 0x5EED,
    }
    assert result.exit_code == 0
    assert program.proc.syscall_dispatcher.internal_errors == 0


def test_shared_memory_saves_only_data_and_loads_in_place() -> None:
    """SharedMemory's snapshot of itself: the parts that hold data (holes read zero), put
    back with the file's size kept (a mapping past a truncated end would fault)."""
    memory = shared.SharedMemory(0x100000)
    assert memory.extents() == [] and memory.save() == []
    memory.write(0x42000, b"abc")
    memory.write(0xFFFFF, b"z")
    saved = memory.save()
    assert [off for off, _ in saved] == [0x42000, 0xFF000]
    assert sum(len(data) for _, data in saved) == 0x2000  # two pages, not a MiB
    memory.write(0x10, b"later")
    memory.write(0x42000, b"xyz")
    memory.load(saved)
    assert memory.read(0x10, 5) == bytes(5) and memory.read(0x42000, 3) == b"abc"
    assert memory.read(0xFFFFF, 4) == b"z\0\0\0"  # past the end reads zero
    assert memory.size == 0x100000
    memory.close()
    assert memory.closed


def test_a_view_across_a_backing_windows_edge(v: Views) -> None:
    """The CPU backs the address space in windows (256 MiB on x86, 1 GiB on x64): a view
    that crosses an edge shows the section's consecutive pages on both sides."""
    edge = 0x10000000 if v.proc.arch.ptr_size == 4 else 0x40000000
    h = v.section(0x40000)
    a, b = v.view(h, base=edge - 0x20000), v.view(h)
    v.poke(a + 0x1FFFC, 0x11111111)
    v.poke(a + 0x20000, 0x22222222)
    assert v.peek(b + 0x1FFFC) == 0x11111111 and v.peek(b + 0x20000) == 0x22222222
    snap = v.proc.snapshot()
    v.poke(b + 0x20000, 0)
    v.proc.restore(snap)
    assert v.peek(a + 0x20000) == 0x22222222
