"""TEB/PEB/KUSER_SHARED_DATA: real offsets, reachable through fs/gs as Windows code reads them."""

from __future__ import annotations

import ctypes

import pytest
from asmutil import assemble

from emu import Process
from emu.win.layouts import KUSER_SHARED_DATA, PEB, TEB
from emu.win.ntdefs import MEM_COMMIT, MEM_PRIVATE, PAGE_READONLY


def test_segment_reads_return_teb_and_peb(proc: Process) -> None:
    if proc.arch.name == "x86":
        teb = assemble(proc, "mov eax, fs:[0x18]; ret")
        peb = assemble(proc, "mov eax, fs:[0x30]; ret")
    else:
        teb = assemble(proc, "mov rax, gs:[0x30]; ret")
        peb = assemble(proc, "mov rax, gs:[0x60]; ret")
    assert proc.call(teb) == proc.teb
    assert proc.call(peb) == proc.peb


def test_x86_stack_stays_32_bit_after_loading_fs() -> None:
    # loading FS alone would leave SS with a 16-bit default: push/pop/ret use SP then
    proc = Process("x86")
    f = assemble(proc, "push 0x12345678; mov eax, fs:[0x18]; pop ecx; add eax, ecx; ret")
    assert proc.call(f) == (proc.teb + 0x12345678) & 0xFFFFFFFF


def test_fields_written_at_their_offsets(proc: Process) -> None:
    a = proc.arch
    ps = a.ptr_size
    raw_teb = proc.read(proc.teb, 0x70)
    assert a.unpack_ptr(raw_teb, 6 * ps) == proc.teb  # NT_TIB.Self is the 7th pointer
    assert a.unpack_ptr(raw_teb, 12 * ps) == proc.peb  # ProcessEnvironmentBlock
    assert a.unpack_ptr(raw_teb, 1 * ps) == proc.thread_stack.top  # NT_TIB.StackBase
    assert PEB.read(proc, a, proc.peb, "MaximumNumberOfHeaps") == 16
    heaps = PEB.read(proc, a, proc.peb, "ProcessHeaps")
    assert proc.memory.is_accessible(heaps, 16 * ps, write=True)
    assert PEB.read(proc, a, proc.peb, "OSMajorVersion") == 10


# Independent derivation: the published field order and C types, laid out by ctypes for each
# pointer size, must give the offsets declared in emu.win.layouts.
def _ctypes_peb(ptr: type) -> type:
    class PEBPrefix(ctypes.Structure):
        _fields_ = [
            ("InheritedAddressSpace", ctypes.c_uint8),
            ("ReadImageFileExecOptions", ctypes.c_uint8),
            ("BeingDebugged", ctypes.c_uint8),
            ("BitField", ctypes.c_uint8),
            ("Mutant", ptr),
            ("ImageBaseAddress", ptr),
            ("Ldr", ptr),
            ("ProcessParameters", ptr),
            ("SubSystemData", ptr),
            ("ProcessHeap", ptr),
            ("FastPebLock", ptr),
            ("AtlThunkSListPtr", ptr),
            ("IFEOKey", ptr),
            ("CrossProcessFlags", ctypes.c_uint32),
            ("KernelCallbackTable", ptr),
            ("SystemReserved", ctypes.c_uint32),
            ("AtlThunkSListPtr32", ctypes.c_uint32),
            ("ApiSetMap", ptr),
            ("TlsExpansionCounter", ctypes.c_uint32),
            ("TlsBitmap", ptr),
            ("TlsBitmapBits", ctypes.c_uint32 * 2),
            ("ReadOnlySharedMemoryBase", ptr),
            ("SharedData", ptr),
            ("ReadOnlyStaticServerData", ptr),
            ("AnsiCodePageData", ptr),
            ("OemCodePageData", ptr),
            ("UnicodeCaseTableData", ptr),
            ("NumberOfProcessors", ctypes.c_uint32),
            ("NtGlobalFlag", ctypes.c_uint32),
            ("CriticalSectionTimeout", ctypes.c_int64),
            ("HeapSegmentReserve", ptr),
            ("HeapSegmentCommit", ptr),
            ("HeapDeCommitTotalFreeThreshold", ptr),
            ("HeapDeCommitFreeBlockThreshold", ptr),
            ("NumberOfHeaps", ctypes.c_uint32),
            ("MaximumNumberOfHeaps", ctypes.c_uint32),
            ("ProcessHeaps", ptr),
            ("GdiSharedHandleTable", ptr),
            ("ProcessStarterHelper", ptr),
            ("GdiDCAttributeList", ctypes.c_uint32),
            ("LoaderLock", ptr),
            ("OSMajorVersion", ctypes.c_uint32),
            ("OSMinorVersion", ctypes.c_uint32),
            ("OSBuildNumber", ctypes.c_uint16),
            ("OSCSDVersion", ctypes.c_uint16),
            ("OSPlatformId", ctypes.c_uint32),
            ("ImageSubsystem", ctypes.c_uint32),
            ("ImageSubsystemMajorVersion", ctypes.c_uint32),
            ("ImageSubsystemMinorVersion", ctypes.c_uint32),
        ]

    return PEBPrefix


def _ctypes_teb(ptr: type) -> type:
    class TEBPrefix(ctypes.Structure):
        _fields_ = [
            ("ExceptionList", ptr),
            ("StackBase", ptr),
            ("StackLimit", ptr),
            ("SubSystemTib", ptr),
            ("FiberData", ptr),
            ("ArbitraryUserPointer", ptr),
            ("Self", ptr),
            ("EnvironmentPointer", ptr),
            ("UniqueProcess", ptr),
            ("UniqueThread", ptr),
            ("ActiveRpcHandle", ptr),
            ("ThreadLocalStoragePointer", ptr),
            ("ProcessEnvironmentBlock", ptr),
            ("LastErrorValue", ctypes.c_uint32),
            ("CountOfOwnedCriticalSections", ctypes.c_uint32),
        ]

    return TEBPrefix


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_layout_offsets_match_published_field_order(arch: str) -> None:
    proc = Process(arch)
    # ctypes aligns 8-byte members to 8 on both (as MSVC does for the x86 PEB's LARGE_INTEGER)
    ptr = ctypes.c_uint64 if arch == "x64" else ctypes.c_uint32
    for struct_decl, ctype in ((PEB, _ctypes_peb(ptr)), (TEB, _ctypes_teb(ptr))):
        for name, _t in ctype._fields_:
            if name in struct_decl.fields:
                expected = getattr(ctype, name).offset
                assert struct_decl.offset(proc.arch, name) == expected, (struct_decl.name, name)


def test_seed_001_x86_peb_offsets() -> None:
    # WinDbg `dt ntdll!_PEB` on 32-bit Windows (seed 001)
    x86 = Process("x86").arch
    assert PEB.offset(x86, "ProcessHeap") == 0x18
    assert PEB.offset(x86, "NumberOfHeaps") == 0x88
    assert PEB.offset(x86, "MaximumNumberOfHeaps") == 0x8C
    assert PEB.offset(x86, "ProcessHeaps") == 0x90


def test_kuser_shared_data_is_read_only_at_its_fixed_address(proc: Process) -> None:
    mbi = proc.memory.query(0x7FFE0000)
    assert (mbi.State, mbi.Protect, mbi.Type) == (MEM_COMMIT, PAGE_READONLY, MEM_PRIVATE)
    assert KUSER_SHARED_DATA.read(proc, proc.arch, 0x7FFE0000, "NtMajorVersion") == 10
    reader = assemble(proc, "mov eax, [0x7ffe026c]; ret")
    assert proc.call(reader) == 10
    writer = assemble(proc, "mov dword ptr [0x7ffe026c], 1; ret")
    with pytest.raises(Exception) as info:
        proc.call(writer)
    assert "protected write" in str(info.value)
