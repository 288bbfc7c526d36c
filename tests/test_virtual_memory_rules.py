"""Windows 10's rules for private memory, kernel-owned pages, write watches, placeholders and
the newer memory services, through real system calls (syscall / int 0x2e / sysenter).

Where MSDN is silent the expected answers are the ones Wine's conformance tests
(dlls/ntdll/tests/virtual.c, dlls/kernel32/tests/virtual.c) check on Windows.
"""

from __future__ import annotations

import struct

import pytest
from asmutil import assemble
from test_virtual_memory import CURRENT, Nt

from emu import Process
from emu.process.core import KUSER_SHARED_DATA_ADDRESS
from emu.win.layouts import MEMORY_REGION_INFORMATION
from emu.win.ntdefs import (
    AT_ROUND_TO_PAGE,
    MEM_COALESCE_PLACEHOLDERS,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_IMAGE,
    MEM_LARGE_PAGES,
    MEM_PRESERVE_PLACEHOLDER,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_REPLACE_PLACEHOLDER,
    MEM_RESERVE,
    MEM_RESERVE_PLACEHOLDER,
    MEM_RESET,
    MEM_TOP_DOWN,
    MEM_WRITE_WATCH,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
    NtStatus,
)


@pytest.fixture(params=["x64", "x86-int2e", "x86-sysenter"])
def nt(request: pytest.FixtureRequest) -> Nt:
    arch, _, path = str(request.param).partition("-")
    return Nt(Process(arch), path or "int2e")


def _store(p: Process, addr: int, value: int = 1) -> None:
    """A store by emulated code (not a debugger write)."""
    reg = "ecx" if p.arch.name == "x86" else "rcx"
    f = assemble(p, f"mov dword ptr [{reg}], {value}; ret", 0x1000)
    p.call(f, addr, convention="fastcall" if p.arch.name == "x86" else None)


def _alloc_zb(nt: Nt, zero_bits: int, typ: int = MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN) -> tuple:
    p = nt.proc
    p.write_ptr(nt.pbase, 0)
    p.write_ptr(nt.psize, 0x1000)
    st = nt.NtAllocateVirtualMemory(CURRENT, nt.pbase, zero_bits, nt.psize, typ, PAGE_READWRITE)
    return st, p.read_ptr(nt.pbase)


def test_zero_bits_constrain_the_address(nt: Nt) -> None:
    for zero_bits in (1, 2, 12, 17, 20):
        st, addr = _alloc_zb(nt, zero_bits)
        if st == NtStatus.SUCCESS:
            assert addr >> (32 - zero_bits) == 0, (zero_bits, hex(addr))
            assert nt.free(addr, 0, MEM_RELEASE)[0] == NtStatus.SUCCESS
        else:
            assert st == NtStatus.NO_MEMORY
    assert _alloc_zb(nt, 21)[0] == NtStatus.NO_MEMORY  # below 0x800: never
    assert _alloc_zb(nt, 22)[0] == NtStatus.INVALID_PARAMETER_3
    st, addr = _alloc_zb(nt, 0x1AAAAAAA)  # x64: a mask of the highest address
    if nt.proc.arch.name == "x86":
        assert st == NtStatus.INVALID_PARAMETER_3
    else:
        assert st == NtStatus.SUCCESS and addr <= 0x1FFFFFFF


def test_allocation_type_and_protection_rules(nt: Nt) -> None:
    assert nt.alloc(0, 0x10000, MEM_RESERVE | MEM_RESERVE_PLACEHOLDER, PAGE_NOACCESS)[0] == (
        NtStatus.INVALID_PARAMETER
    )  # placeholders only through NtAllocateVirtualMemoryEx
    assert nt.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT | AT_ROUND_TO_PAGE)[0] == (
        NtStatus.INVALID_PARAMETER_5
    )
    assert nt.alloc(0, 0x1000, MEM_COMMIT | MEM_WRITE_WATCH)[0] == NtStatus.INVALID_PARAMETER_5
    assert nt.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES)[0] == (
        NtStatus.PRIVILEGE_NOT_HELD
    )
    # copy-on-write needs something to copy: refused for private memory, both ways
    for prot in (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY):
        assert nt.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT, prot)[0] == (
            NtStatus.INVALID_PAGE_PROTECTION
        )
    _, base, _ = nt.alloc(0, 0x1000, MEM_RESERVE | MEM_COMMIT)
    for prot in (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY, PAGE_READWRITE | PAGE_GUARD | PAGE_NOCACHE,
                 PAGE_READONLY | PAGE_EXECUTE, 0):  # fmt: skip
        assert nt.protect(base, 0x1000, prot)[0] == NtStatus.INVALID_PAGE_PROTECTION, hex(prot)
    assert nt.query(base)[1]["Protect"] == PAGE_READWRITE


def test_nocache_is_an_attribute_of_the_allocation(nt: Nt) -> None:
    st, base, size = nt.alloc(0, 0x2000, MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE)
    assert (st, size) == (NtStatus.SUCCESS, 0x2000)
    mbi = nt.query(base)[1]
    assert mbi["AllocationProtect"] == mbi["Protect"] == PAGE_READWRITE | PAGE_NOCACHE
    assert nt.protect(base, 0x1000, PAGE_READWRITE) == (
        NtStatus.SUCCESS,
        PAGE_READWRITE | PAGE_NOCACHE,
    )
    mbi = nt.query(base)[1]
    assert (mbi["Protect"], mbi["RegionSize"]) == (PAGE_READWRITE | PAGE_NOCACHE, 0x2000)
    assert nt.protect(base, 0x1000, PAGE_READONLY)[0] == NtStatus.SUCCESS
    assert nt.query(base)[1]["Protect"] == PAGE_READONLY | PAGE_NOCACHE
    # and a plain allocation does not take one per page
    _, plain, _ = nt.alloc(0, 0x2000, MEM_COMMIT)
    assert nt.protect(plain, 0x1000, PAGE_READONLY | PAGE_NOCACHE)[0] == NtStatus.SUCCESS
    assert nt.query(plain)[1]["Protect"] == PAGE_READONLY


def test_mem_reset_on_reserved_pages(nt: Nt) -> None:
    _, base, _ = nt.alloc(0, 0x10000, MEM_RESERVE, PAGE_NOACCESS)
    nt.alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)
    nt.proc.write(base, b"\x55" * 4)
    assert nt.alloc(base, 0x1000, MEM_RESET, PAGE_NOACCESS) == (NtStatus.SUCCESS, base, 0x1000)
    assert nt.query(base)[1]["Protect"] == PAGE_READWRITE
    assert nt.alloc(base + 0x1000, 0x1000, MEM_RESET, PAGE_NOACCESS)[0] == NtStatus.SUCCESS
    mbi = nt.query(base + 0x1000)[1]
    assert (mbi["State"], mbi["Protect"], mbi["RegionSize"]) == (MEM_RESERVE, 0, 0xF000)
    assert nt.alloc(base + 0xF000, 0x2000, MEM_RESET, PAGE_NOACCESS)[0] == (
        NtStatus.CONFLICTING_ADDRESSES
    )
    assert nt.alloc(base, 0x1000, MEM_RESET | MEM_COMMIT)[0] == NtStatus.INVALID_PARAMETER_5


def test_kernel_owned_pages_cannot_be_freed_or_reprotected(nt: Nt) -> None:
    """Issue 20 D13: releasing KUSER_SHARED_DATA succeeded, then every Wine system call
    faulted. Windows keeps it in a secured VAD: STATUS_INVALID_PAGE_PROTECTION."""
    p = nt.proc
    for page in (KUSER_SHARED_DATA_ADDRESS, p.trap_base):
        before = p.memory.query(page)
        assert nt.free(page, 0, MEM_RELEASE)[0] == NtStatus.INVALID_PAGE_PROTECTION
        assert nt.free(page, 0x1000, MEM_DECOMMIT)[0] == NtStatus.INVALID_PAGE_PROTECTION
        assert nt.protect(page, 0x1000, PAGE_READWRITE)[0] == NtStatus.INVALID_PAGE_PROTECTION
        assert nt.protect(page, 0x1000, PAGE_NOACCESS)[0] == NtStatus.INVALID_PAGE_PROTECTION
        assert nt.alloc(page, 0x1000, MEM_COMMIT, PAGE_EXECUTE_READWRITE)[0] == (
            NtStatus.INVALID_PAGE_PROTECTION
        )
        assert nt.alloc(page, 0x1000, MEM_RESERVE)[0] == NtStatus.CONFLICTING_ADDRESSES
        assert p.memory.query(page) == before
    # still readable, and the trap page still returns from every call
    reg = "ecx" if p.arch.name == "x86" else "rcx"
    f = assemble(p, f"mov eax, dword ptr [{reg}]; ret", 0x1000)
    conv = "fastcall" if p.arch.name == "x86" else None
    assert p.call(f, KUSER_SHARED_DATA_ADDRESS + 0x26C, convention=conv) == 10  # NtMajorVersion


def test_commit_free_and_protect_inside_an_image(nt: Nt) -> None:
    """An image is the kernel's: committing in it is STATUS_ALREADY_COMMITTED (only pagefile
    sections can be committed), freeing it STATUS_UNABLE_TO_DELETE_SECTION, and a writable
    protection becomes copy-on-write."""
    mem = nt.proc.memory
    base, _ = mem.allocate(0, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_WRITECOPY,
                           type=MEM_IMAGE, usage="image test")  # fmt: skip
    mem.protect(base, 0x3000, PAGE_READONLY)
    assert nt.alloc(base, 0x1000, MEM_COMMIT, PAGE_READWRITE)[0] == NtStatus.ALREADY_COMMITTED
    assert nt.free(base, 0, MEM_RELEASE)[0] == NtStatus.UNABLE_TO_DELETE_SECTION
    assert nt.free(base, 0x1000, MEM_DECOMMIT)[0] == NtStatus.UNABLE_TO_DELETE_SECTION
    assert nt.protect(base + 0x1000, 0x1000, PAGE_READWRITE) == (NtStatus.SUCCESS, PAGE_READONLY)
    assert nt.query(base + 0x1000)[1]["Protect"] == PAGE_WRITECOPY
    assert nt.protect(base, 0x1000, PAGE_EXECUTE_READWRITE)[0] == NtStatus.SUCCESS
    assert nt.query(base)[1]["Protect"] == PAGE_EXECUTE_WRITECOPY
    assert nt.protect(base, 0x1000, PAGE_READONLY | PAGE_NOCACHE)[0] == (
        NtStatus.INVALID_PAGE_PROTECTION
    )
    # the first write copies the page: it is PAGE_READWRITE from then on, its neighbour not
    _store(nt.proc, base + 0x1010, 0x1234)
    assert nt.proc.read_u32(base + 0x1010) == 0x1234
    assert nt.query(base + 0x1000)[1]["Protect"] == PAGE_READWRITE
    assert nt.query(base + 0x1000)[1]["RegionSize"] == 0x1000
    assert nt.query(base + 0x2000)[1]["Protect"] == PAGE_READONLY


def test_a_copied_page_is_not_copy_on_write_again(nt: Nt) -> None:
    """A page of an image that has its own copy (written while copy-on-write) stays private:
    asked for PAGE_READWRITE or PAGE_WRITECOPY again it is PAGE_READWRITE, and
    PAGE_EXECUTE_READWRITE / PAGE_EXECUTE_WRITECOPY give PAGE_EXECUTE_READWRITE; a page never
    written is still made copy-on-write (Wine's kernel32 virtual.c test_mappings,
    map_prot_written: 420 checks per arch)."""
    mem = nt.proc.memory
    base, _ = mem.allocate(0, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_WRITECOPY,
                           type=MEM_IMAGE, usage="image test")  # fmt: skip
    mem.protect(base, 0x3000, PAGE_READONLY)
    assert nt.protect(base, 0x3000, PAGE_WRITECOPY)[0] == NtStatus.SUCCESS
    _store(nt.proc, base + 0x1000, 0x1234)
    for asked, copied, clean in (
        (PAGE_READWRITE, PAGE_READWRITE, PAGE_WRITECOPY),
        (PAGE_WRITECOPY, PAGE_READWRITE, PAGE_WRITECOPY),
        (PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY),
        (PAGE_EXECUTE_WRITECOPY, PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY),
        (PAGE_READONLY, PAGE_READONLY, PAGE_READONLY),
    ):
        assert nt.protect(base, 0x3000, asked)[0] == NtStatus.SUCCESS
        protections = [nt.query(base + i * 0x1000)[1]["Protect"] for i in range(3)]
        assert protections == [clean, copied, clean], hex(asked)
    assert nt.proc.read_u32(base + 0x1000) == 0x1234  # the copy kept its contents


# ---------------------------------------------------------------------------------- write watch
class Watch:
    def __init__(self, nt: Nt):
        self.nt = nt
        self.results = nt.buf + 0x100
        self.count, self.gran = nt.scratch + 0x40, nt.scratch + 0x48

    def get(self, base: int, size: int, reset: bool = False, count: int = 64) -> tuple:
        nt, p = self.nt, self.nt.proc
        p.write_ptr(self.count, count)
        st = nt.NtGetWriteWatch(CURRENT, int(reset), base, size, self.results, self.count,
                                self.gran)  # fmt: skip
        n = p.read_ptr(self.count)
        if st:
            return st, []
        assert p.read_u32(self.gran) == 0x1000
        return st, [p.read_ptr(self.results + i * p.arch.ptr_size) for i in range(n)]


def test_write_watch(nt: Nt) -> None:
    p = nt.proc
    w = Watch(nt)
    st, base, size = nt.alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH)
    assert (st, size) == (NtStatus.SUCCESS, 0x10000)
    assert nt.query(base)[1]["RegionSize"] == 0x10000  # one run: watching splits nothing
    assert w.get(base, size) == (0, [])
    _store(p, base + 0x1001)
    assert w.get(base, size) == (0, [base + 0x1000])
    assert w.get(base, size, reset=True) == (0, [base + 0x1000])
    assert w.get(base, size) == (0, [])
    _store(p, base + 0x2003)
    _store(p, base + 0x4008)
    _store(p, base + 0x4010)  # a page is reported once
    assert w.get(base, size) == (0, [base + 0x2000, base + 0x4000])
    assert w.get(base + 0x3000, 0x2000) == (0, [base + 0x4000])
    assert nt.NtResetWriteWatch(CURRENT, base, 0x3000) == NtStatus.SUCCESS
    assert w.get(base, size) == (0, [base + 0x4000])
    assert w.get(base, size, reset=True, count=1) == (0, [base + 0x4000])
    # a protection change keeps the watch; a write by the kernel counts (ReadFile does)
    assert nt.protect(base, 0x3000, PAGE_READONLY)[0] == NtStatus.SUCCESS
    assert nt.protect(base, 0x3000, PAGE_READWRITE)[0] == NtStatus.SUCCESS
    assert nt.NtQueryVirtualMemory(CURRENT, base, 0, base + 0x5000, 0x30, 0) == 0
    assert w.get(base, size) == (0, [base + 0x5000])
    # decommitted pages forget their writes
    assert nt.free(base + 0x5000, 0x1000, MEM_DECOMMIT)[0] == NtStatus.SUCCESS
    assert w.get(base, size) == (0, [])
    # invalid requests
    assert w.get(base, 0)[0] == NtStatus.INVALID_PARAMETER
    assert w.get(base, size * 2)[0] == NtStatus.INVALID_PARAMETER
    assert w.get(base, size, count=0)[0] == NtStatus.INVALID_PARAMETER
    assert nt.NtGetWriteWatch(CURRENT, 2, base, size, w.results, w.count, w.gran) == (
        NtStatus.INVALID_PARAMETER
    )
    assert nt.NtGetWriteWatch(CURRENT, 0, base, size, w.results, 0, w.gran) == (
        NtStatus.ACCESS_VIOLATION
    )
    assert nt.NtGetWriteWatch(CURRENT, 0, base, size, w.results, w.count, 0) == (
        NtStatus.ACCESS_VIOLATION
    )
    _, plain, _ = nt.alloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT)
    assert w.get(plain, 0x1000)[0] == NtStatus.INVALID_PARAMETER
    assert nt.NtResetWriteWatch(CURRENT, plain, 0x1000) == NtStatus.INVALID_PARAMETER
    # the initial protection does not matter
    _, late, _ = nt.alloc(0, 0x10000, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS)
    nt.alloc(late, 0x10000, MEM_COMMIT, PAGE_NOACCESS)
    nt.protect(late, 0x6000, PAGE_READWRITE)
    _store(p, late + 0x5000 + 200)
    nt.protect(late, 0x6000, PAGE_NOACCESS)
    assert w.get(late, 0x10000) == (0, [late + 0x5000])


# ---------------------------------------------------------------------------------- Ex, hints
class Ex:
    """NtAllocateVirtualMemoryEx with extended parameters built in the scratch page."""

    def __init__(self, nt: Nt):
        self.nt = nt
        self.params = nt.scratch + 0x200
        self.req = nt.scratch + 0x300

    def requirements(self, lowest: int = 0, highest: int = 0, alignment: int = 0) -> None:
        p = self.nt.proc
        n = p.arch.ptr_size
        for i, v in enumerate((lowest, highest, alignment)):
            p.write_ptr(self.req + i * n, v)

    def call(
        self, base: int, size: int, typ: int, prot: int, params: list[tuple[int, int]]
    ) -> tuple:
        nt, p = self.nt, self.nt.proc
        for i, (kind, value) in enumerate(params):
            p.write(self.params + 16 * i, struct.pack("<QQ", kind, value))
        p.write_ptr(nt.pbase, base)
        p.write_ptr(nt.psize, size)
        st = nt.NtAllocateVirtualMemoryEx(CURRENT, nt.pbase, nt.psize, typ, prot,
                                          self.params if params else 0, len(params))  # fmt: skip
        return st, p.read_ptr(nt.pbase), p.read_ptr(nt.psize)


def test_allocate_virtual_memory_ex(nt: Nt) -> None:
    ex = Ex(nt)
    rc = MEM_RESERVE | MEM_COMMIT
    st, base, _ = ex.call(0, 0x1000, rc, PAGE_EXECUTE_READWRITE, [])
    assert st == NtStatus.SUCCESS and nt.query(base)[1]["State"] == MEM_COMMIT
    nt.proc.write_ptr(nt.pbase, 0)
    assert nt.NtAllocateVirtualMemoryEx(CURRENT, nt.pbase, nt.psize, rc, PAGE_READWRITE, 0, 1) == (
        NtStatus.INVALID_PARAMETER
    )  # a count with no array
    assert nt.NtAllocateVirtualMemoryEx(0, nt.pbase, nt.psize, rc, PAGE_READWRITE, 0, 0) == (
        NtStatus.INVALID_HANDLE
    )
    assert ex.call(0, 0x1000, rc, PAGE_READWRITE, [(0, 0)])[0] == NtStatus.INVALID_PARAMETER
    assert ex.call(0, 0x1000, rc, PAGE_READWRITE, [(7, 0)])[0] == NtStatus.INVALID_PARAMETER
    ex.requirements()
    assert ex.call(0, 0x1000, rc, PAGE_READWRITE, [(1, ex.req)])[0] == NtStatus.SUCCESS
    assert ex.call(0, 0x1000, rc, PAGE_READWRITE, [(1, ex.req), (1, ex.req)])[0] == (
        NtStatus.INVALID_PARAMETER
    )
    assert ex.call(0, 0x1000, MEM_RESERVE, PAGE_READWRITE, [(5, 0)])[0] == NtStatus.SUCCESS
    assert ex.call(0, 0x1000, MEM_RESERVE, PAGE_READWRITE, [(5, 0x40)])[0] == (
        NtStatus.INVALID_PARAMETER
    )  # MEM_EXTENDED_PARAMETER_EC_CODE: not on this machine
    for highest in (0x20001000 + 1, 0x20001000 - 2, 0x20000800 - 1, nt.proc.arch.user_max + 0x1000):
        ex.requirements(highest=highest)
        assert ex.call(0, 0x10000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])[0] == (
            NtStatus.INVALID_PARAMETER
        ), hex(highest)
    ex.requirements(highest=0x20001000 - 1)
    st, addr, size = ex.call(0, 0x40000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])
    assert st == NtStatus.SUCCESS and addr % 0x10000 == 0 and addr + size <= 0x20001000
    assert ex.call(addr, 0x40000, MEM_COMMIT, PAGE_READWRITE, [(1, ex.req)])[0] == (
        NtStatus.INVALID_PARAMETER
    )  # requirements only place new reservations
    ex.requirements(highest=0x20001000 - 1, alignment=0x20000000)
    assert ex.call(0, 0x2000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])[0] == NtStatus.NO_MEMORY
    for alignment in (0x8000, 0x30000):
        ex.requirements(alignment=alignment)
        assert ex.call(0, 0x1000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])[0] == (
            NtStatus.INVALID_PARAMETER
        )
    ex.requirements(alignment=0x40000)
    st, addr, _ = ex.call(0, 0x1000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])
    assert st == NtStatus.SUCCESS and addr % 0x40000 == 0


def test_placeholders(nt: Nt) -> None:
    """Reserve a placeholder, replace it, give it back, split it in three, coalesce it."""
    ex = Ex(nt)
    ph = MEM_RESERVE | MEM_RESERVE_PLACEHOLDER
    assert ex.call(0, 0x10000, ph, PAGE_READWRITE, [])[0] == NtStatus.INVALID_PARAMETER
    st, a, size = ex.call(0, 0x10000, ph, PAGE_NOACCESS, [])
    assert (st, size) == (NtStatus.SUCCESS, 0x10000)
    mbi = nt.query(a)[1]
    assert (mbi["State"], mbi["AllocationProtect"], mbi["Type"]) == (
        MEM_RESERVE,
        PAGE_NOACCESS,
        MEM_PRIVATE,
    )
    assert ex.call(a, 0x10000, MEM_COMMIT, PAGE_READWRITE, [])[0] == NtStatus.CONFLICTING_ADDRESSES
    assert ex.call(a, 0x10000, MEM_REPLACE_PLACEHOLDER, PAGE_READWRITE, [])[0] == (
        NtStatus.INVALID_PARAMETER
    )
    assert ex.call(a, 0x1000, MEM_RESERVE | MEM_REPLACE_PLACEHOLDER, PAGE_NOACCESS, [])[0] == (
        NtStatus.CONFLICTING_ADDRESSES
    )  # a replacement covers the whole placeholder
    rcp = MEM_RESERVE | MEM_COMMIT | MEM_REPLACE_PLACEHOLDER
    assert ex.call(a, 0x10000, rcp, PAGE_READWRITE, [])[0] == NtStatus.SUCCESS
    nt.proc.write(a, b"\xcc" * 4)
    assert nt.free(a, 0x10000, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER)[0] == NtStatus.SUCCESS
    assert ex.call(a, 0x10000, rcp, PAGE_READONLY, [])[0] == NtStatus.SUCCESS
    assert nt.proc.read_u32(a) == 0  # a fresh allocation
    assert nt.query(a)[1]["AllocationProtect"] == PAGE_READONLY
    assert nt.free(a, 0x10000, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER)[0] == NtStatus.SUCCESS
    # split in three, then one piece replaced
    assert nt.free(a, 0x10000, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER)[0] == (
        NtStatus.CONFLICTING_ADDRESSES
    )
    assert nt.free(a + 0x8000, 0x4000, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER) == (
        NtStatus.SUCCESS,
        a + 0x8000,
        0x4000,
    )
    sizes = [nt.query(x)[1]["RegionSize"] for x in (a, a + 0x8000, a + 0xC000)]
    assert sizes == [0x8000, 0x4000, 0x4000]
    assert nt.free(a, 0, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER)[0] == NtStatus.INVALID_PARAMETER_3
    coalesce = MEM_RELEASE | MEM_COALESCE_PLACEHOLDERS
    for start, length in ((a, 0x11000), (a, 0xF000), (a + 0x1000, 0xF000)):
        assert nt.free(start, length, coalesce)[0] == NtStatus.CONFLICTING_ADDRESSES
    assert nt.free(a, 0x10000, MEM_COALESCE_PLACEHOLDERS)[0] == NtStatus.INVALID_PARAMETER_4
    assert nt.free(a, 0, coalesce)[0] == NtStatus.INVALID_PARAMETER_3
    assert nt.free(a, 0x10000, MEM_RELEASE)[0] == NtStatus.UNABLE_TO_FREE_VM
    assert nt.free(a, 0x10000, coalesce) == (NtStatus.SUCCESS, a, 0x10000)
    assert nt.query(a)[1]["RegionSize"] == 0x10000
    assert nt.free(a, 0, MEM_RELEASE) == (NtStatus.SUCCESS, a, 0x10000)
    # a plain reservation is no placeholder
    _, plain, _ = nt.alloc(0, 0x10000, MEM_RESERVE, PAGE_NOACCESS)
    assert nt.free(plain, 0x10000, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER)[0] == (
        NtStatus.CONFLICTING_ADDRESSES
    )


def test_memory_region_information(nt: Nt) -> None:
    p = nt.proc
    info = MEMORY_REGION_INFORMATION
    _, base, _ = nt.alloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
    nt.alloc(base + 0x2000, 0x3000, MEM_COMMIT, PAGE_READONLY)
    p.write(nt.buf, b"\x11" * 0x40)
    assert (
        nt.NtQueryVirtualMemory(CURRENT, base + 0x4000, 3, nt.buf, info.size(p.arch), nt.psize) == 0
    )
    fields = {f: info.read(p, p.arch, nt.buf, f) for f in info.fields}
    assert fields["AllocationBase"] == base and fields["AllocationProtect"] == PAGE_READWRITE
    assert fields["RegionType"] == 0
    assert (fields["RegionSize"], fields["CommitSize"]) == (0x10000, 0x3000)
    assert p.read_ptr(nt.psize) == info.size(p.arch)
    short = info.offset(p.arch, "CommitSize")  # older, shorter layouts are accepted
    assert nt.NtQueryVirtualMemory(CURRENT, base, 3, nt.buf, short, nt.psize) == 0
    assert nt.NtQueryVirtualMemory(CURRENT, base, 3, nt.buf, short - p.arch.ptr_size, 0) == (
        NtStatus.INFO_LENGTH_MISMATCH
    )
    assert nt.NtQueryVirtualMemory(CURRENT, base + 0x10000, 3, nt.buf, 0x40, 0) == (
        NtStatus.INVALID_ADDRESS
    )
    # Wine's own class: Windows has none, heapemu serves Wine's PE side only
    assert nt.NtQueryVirtualMemory(CURRENT, base, 1000, nt.buf, 8, 0) == NtStatus.INVALID_INFO_CLASS


def test_set_information_virtual_memory(nt: Nt) -> None:
    """Prefetch hints, checked in Windows' order (Wine's test_prefetch)."""
    p = nt.proc
    entries = nt.buf + 0x80
    arg = nt.buf + 0x40
    n = p.arch.ptr_size
    p.write(entries, bytes(4 * n))
    call = nt.NtSetInformationVirtualMemory
    assert call(CURRENT, 0xFFFFFFFF, 1, entries, 0, 32) == NtStatus.INVALID_PARAMETER_2
    assert call(CURRENT, 0xFFFFFFFF, 0, 0, 0, 0) == NtStatus.INVALID_PARAMETER_2
    assert call(CURRENT, 0, 1, entries, 0, 0) == NtStatus.INVALID_PARAMETER_5
    assert call(CURRENT, 0, 1, entries, arg, 8) == NtStatus.INVALID_PARAMETER_6
    assert call(CURRENT, 0, 1, entries, arg, 2) == NtStatus.INVALID_PARAMETER_6
    assert call(CURRENT, 0, 0, 0, arg, 4) == NtStatus.INVALID_PARAMETER_3
    assert call(CURRENT, 0, 1, 0, arg, 4) == NtStatus.ACCESS_VIOLATION
    assert call(CURRENT, 0, 1, entries, arg, 4) == NtStatus.INVALID_PARAMETER_4  # empty entry
    p.write_ptr(entries + n, 0x1000)  # {NULL, one page}: a hint, even for free memory
    assert call(CURRENT, 0, 1, entries, arg, 4) == NtStatus.SUCCESS
    p.write_ptr(entries, nt.buf)
    p.write_ptr(entries + 2 * n, nt.buf & ~0xFFF)
    p.write_ptr(entries + 3 * n, 0x1000)
    assert call(CURRENT, 0, 2, entries, arg, 4) == NtStatus.SUCCESS
    assert call(CURRENT, 3, 1, entries, arg, 4) == NtStatus.NOT_SUPPORTED  # not emulated


# ---------------------------------------------------------------------------------- scale
class _NoCpu:
    """Maps nothing: the memory manager's bookkeeping alone."""

    def ensure_backed(self, addr: int, size: int) -> None: ...
    def decommit(self, addr: int, size: int) -> None: ...
    def protect(self, addr: int, size: int, protect: int) -> None: ...


class _CountingDict(dict):  # type: ignore[type-arg]
    lookups = 0

    def __getitem__(self, key: object) -> object:
        type(self).lookups += 1
        return super().__getitem__(key)


def test_finding_room_does_not_walk_every_region() -> None:
    """Issue 20 D15: each reservation walked every region to find a gap. With 10,000 small
    reservations leaving 10,000 unusable 60 KiB gaps, finding room for a heap looks at a
    handful of gaps (by usable size), bottom-up and top-down."""
    from emu.arch import X64
    from emu.nt.memory import MemoryManager

    mem = MemoryManager(_NoCpu(), X64)  # type: ignore[arg-type]
    for _ in range(10_000):
        mem.allocate(0, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    counting = _CountingDict(mem.free_space.end)
    mem.free_space.end = counting
    for flags in (MEM_RESERVE, MEM_RESERVE | MEM_TOP_DOWN):
        _CountingDict.lookups = 0
        base, _ = mem.allocate(0, 0x110000, flags, PAGE_READWRITE)
        assert base % 0x10000 == 0 and mem.region_at(base).size == 0x110000
        assert _CountingDict.lookups < 50, _CountingDict.lookups
    assert len(mem.regions()) == 10_002


def test_page_runs_match_a_page_list() -> None:
    """The run-length page states behave as one entry per page would (random operations)."""
    import random

    from emu.nt.memory import PageRuns

    rng = random.Random(16)
    for _ in range(50):
        n = rng.randint(1, 40)
        runs, pages = PageRuns(n), [0] * n
        for _ in range(60):
            i0 = rng.randrange(n)
            i1 = rng.randint(i0 + 1, n)
            state = rng.choice((0, 2, 4, 0x104))
            runs.set(i0, i1, state)
            pages[i0:i1] = [state] * (i1 - i0)
            assert list(runs) == pages
            assert all(a != b for a, b in zip(runs.states, runs.states[1:], strict=False))
            k = rng.randrange(n)
            end = k
            while end < n and pages[end] == pages[k]:
                end += 1
            assert runs.get(k) == pages[k] and runs.run_end(k) == end
            a = rng.randrange(n)
            b = rng.randint(a, n)
            assert list(runs.slice(a, b)) == pages[a:b]
            assert runs.count_reserved(a, b) == pages[a:b].count(0)


def test_address_requirements_asking_nothing_go_with_a_base(nt: Nt) -> None:
    """MEM_ADDRESS_REQUIREMENTS that ask for nothing (all zero) are accepted with a base
    address or a commit; any real requirement there is STATUS_INVALID_PARAMETER (Wine's ntdll
    virtual.c test_NtAllocateVirtualMemoryEx_address_requirements, on Windows)."""
    ex = Ex(nt)
    st, base, _ = nt.alloc(0, 0x10000, MEM_RESERVE)
    assert st == NtStatus.SUCCESS and nt.free(base, 0, MEM_RELEASE)[0] == NtStatus.SUCCESS
    ex.requirements()
    assert ex.call(base, 0x10000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])[:2] == (
        NtStatus.SUCCESS,
        base,
    )
    assert ex.call(base, 0x1000, MEM_COMMIT, PAGE_READWRITE, [(1, ex.req)])[0] == NtStatus.SUCCESS
    for requirement in ({"highest": 0x20000FFF}, {"alignment": 0x40000}, {"lowest": 0x10000}):
        ex.requirements(**requirement)
        assert ex.call(base, 0x1000, MEM_COMMIT, PAGE_READWRITE, [(1, ex.req)])[0] == (
            NtStatus.INVALID_PARAMETER
        ), requirement
        assert ex.call(base + 0x20000, 0x1000, MEM_RESERVE, PAGE_READWRITE, [(1, ex.req)])[0] == (
            NtStatus.INVALID_PARAMETER
        ), requirement


# ---------------------------------------------------------------------------------- locking
def _lock(nt: Nt, name: str, base: int, size: int, map_type: int = 1) -> tuple[int, int, int]:
    p = nt.proc
    p.write_ptr(nt.pbase, base)
    p.write_ptr(nt.psize, size)
    st = getattr(nt, name)(CURRENT, nt.pbase, nt.psize, map_type)
    return st, p.read_ptr(nt.pbase), p.read_ptr(nt.psize)


def test_lock_virtual_memory(nt: Nt) -> None:
    """NtLockVirtualMemory / NtUnlockVirtualMemory (VirtualLock, VirtualUnlock): the range is
    rounded to pages and written back; every page must be committed and accessible; a guard
    page fails the first call with STATUS_GUARD_PAGE_VIOLATION and loses its guard, without
    firing a write watch; unlocking pages not locked is STATUS_NOT_LOCKED; MAP_SYSTEM needs a
    privilege (Wine's kernel32 virtual.c test_guard_page, as on Windows)."""
    w = Watch(nt)
    st, base, _ = nt.alloc(0, 0x4000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH)
    assert st == NtStatus.SUCCESS
    assert _lock(nt, "NtUnlockVirtualMemory", base, 0x1000)[0] == NtStatus.NOT_LOCKED
    assert _lock(nt, "NtLockVirtualMemory", base + 0x10, 0x1000) == (
        NtStatus.SUCCESS,
        base,
        0x2000,
    )
    assert _lock(nt, "NtLockVirtualMemory", base, 0x2000)[0] == NtStatus.WAS_LOCKED
    assert _lock(nt, "NtUnlockVirtualMemory", base, 0x3000)[0] == NtStatus.NOT_LOCKED
    assert _lock(nt, "NtUnlockVirtualMemory", base, 0x2000) == (NtStatus.SUCCESS, base, 0x2000)
    assert _lock(nt, "NtUnlockVirtualMemory", base, 0x1000)[0] == NtStatus.NOT_LOCKED
    for map_type, status in ((0, NtStatus.INVALID_PARAMETER), (4, NtStatus.INVALID_PARAMETER),
                             (2, NtStatus.PRIVILEGE_NOT_HELD)):  # fmt: skip
        assert _lock(nt, "NtLockVirtualMemory", base, 0x1000, map_type)[0] == status
    # a guard page: the first lock fails and clears the guard, the second succeeds
    assert nt.protect(base + 0x2000, 0x1000, PAGE_READWRITE | PAGE_GUARD)[0] == NtStatus.SUCCESS
    assert _lock(nt, "NtLockVirtualMemory", base, 0x4000)[0] == NtStatus.GUARD_PAGE_VIOLATION
    assert nt.query(base + 0x2000)[1]["Protect"] == PAGE_READWRITE
    assert _lock(nt, "NtUnlockVirtualMemory", base, 0x1000)[0] == NtStatus.NOT_LOCKED
    assert _lock(nt, "NtLockVirtualMemory", base, 0x4000)[0] == NtStatus.SUCCESS
    assert w.get(base, 0x4000) == (NtStatus.SUCCESS, [])  # probing is not writing
    # uncommitted or inaccessible pages cannot be locked; a decommit unlocks
    assert nt.protect(base + 0x3000, 0x1000, PAGE_NOACCESS)[0] == NtStatus.SUCCESS
    assert _lock(nt, "NtLockVirtualMemory", base + 0x3000, 1)[0] == NtStatus.ACCESS_VIOLATION
    assert nt.free(base, 0x1000, MEM_DECOMMIT)[0] == NtStatus.SUCCESS
    assert _lock(nt, "NtLockVirtualMemory", base, 1)[0] == NtStatus.ACCESS_VIOLATION
    assert _lock(nt, "NtUnlockVirtualMemory", base + 0x1000, 0x1000)[0] == NtStatus.SUCCESS
