"""Nt*VirtualMemory system calls, with the phnt prototypes and Windows' NTSTATUS semantics."""

from __future__ import annotations

from emu.errors import NtStatusError
from emu.nt.kernel import (
    HANDLE,
    PSIZE_T,
    PULONG,
    PVOID,
    SIZE_T,
    ULONG,
    ULONG_PTR,
    Kernel,
    syscall,
)
from emu.nt.memory import align_down, align_up
from emu.nt.objects import put_buffer
from emu.win.layouts import MEMORY_BASIC_INFORMATION
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_LARGE_PAGES,
    MEM_RESERVE,
    MEM_RESET,
    MEM_RESET_UNDO,
    MEM_TOP_DOWN,
    MEM_WRITE_WATCH,
    MEMORY_INFORMATION_CLASS,
    PAGE_SIZE,
    NtStatus,
)

_MM_MAXIMUM_ZERO_BITS = 21  # larger ZeroBits values are masks, accepted on x64 only


@syscall
def NtAllocateVirtualMemory(
    k: Kernel,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    ZeroBits: ULONG_PTR,
    RegionSize: PSIZE_T,
    AllocationType: ULONG,
    Protect: ULONG,
) -> int:
    k.check_process_handle(ProcessHandle)
    if ZeroBits > _MM_MAXIMUM_ZERO_BITS and (k.arch.ptr_size == 4 or ZeroBits < 32):
        raise NtStatusError(NtStatus.INVALID_PARAMETER_3, f"ZeroBits {ZeroBits}")
    known = MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_TOP_DOWN | MEM_RESET_UNDO
    if AllocationType & ~known or AllocationType & (MEM_WRITE_WATCH | MEM_LARGE_PAGES):
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, f"AllocationType 0x{AllocationType:x}")
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(RegionSize)
    k.details.update(type=AllocationType, protect=Protect, base_in=base, size_in=size)
    if AllocationType & (MEM_RESET | MEM_RESET_UNDO):
        # the contents may be discarded (keeping them is a valid implementation); the range
        # must be committed, and protections are left as they are
        if AllocationType & (MEM_COMMIT | MEM_RESERVE):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "MEM_RESET with commit/reserve")
        start, end = align_down(base, PAGE_SIZE), align_up(base + size, PAGE_SIZE)
        page = start
        while page < end:
            state = k.proc.memory.page_state(page)
            if state is None:
                raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{page:x} is free")
            if state == 0:
                raise NtStatusError(NtStatus.NOT_COMMITTED, f"0x{page:x} is not committed")
            page += PAGE_SIZE
        k.write_ptr(BaseAddress, start)
        k.write_ptr(RegionSize, end - start)
        return NtStatus.SUCCESS
    if not AllocationType & (MEM_COMMIT | MEM_RESERVE):
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "neither MEM_COMMIT nor MEM_RESERVE")
    # probe the out-parameters before changing anything: nothing half-done on a bad pointer
    k.write_ptr(BaseAddress, base)
    k.write_ptr(RegionSize, size)
    new_base, new_size = k.proc.memory.allocate(base, size, AllocationType, Protect)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return NtStatus.SUCCESS


@syscall
def NtFreeVirtualMemory(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, RegionSize: PSIZE_T, FreeType: ULONG
) -> int:
    k.check_process_handle(ProcessHandle)
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(RegionSize)
    k.details.update(type=FreeType, base_in=base, size_in=size)
    k.write_ptr(BaseAddress, base)
    k.write_ptr(RegionSize, size)
    new_base, new_size = k.proc.memory.free(base, size, FreeType)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return NtStatus.SUCCESS


@syscall
def NtProtectVirtualMemory(
    k: Kernel,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    RegionSize: PSIZE_T,
    NewProtect: ULONG,
    OldProtect: PULONG,
) -> int:
    k.check_process_handle(ProcessHandle)
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(RegionSize)
    k.write_u32(OldProtect, 0)  # probe: OldProtect is required
    k.write_ptr(BaseAddress, base)
    k.write_ptr(RegionSize, size)
    new_base, new_size, old = k.proc.memory.protect(base, size, NewProtect)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.write_u32(OldProtect, old)
    k.details.update(base=new_base, size=new_size, protect=NewProtect, old=old)
    return NtStatus.SUCCESS


@syscall
def NtQueryVirtualMemory(
    k: Kernel,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    MemoryInformationClass: ULONG,
    MemoryInformation: PVOID,
    MemoryInformationLength: SIZE_T,
    ReturnLength: PSIZE_T,
) -> int:
    k.check_process_handle(ProcessHandle)
    if MemoryInformationClass != MEMORY_INFORMATION_CLASS.MemoryBasicInformation:
        raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"class {MemoryInformationClass}")
    mbi_size = MEMORY_BASIC_INFORMATION.size(k.arch)
    if MemoryInformationLength < mbi_size:
        raise NtStatusError(
            NtStatus.INFO_LENGTH_MISMATCH, f"{MemoryInformationLength} < {mbi_size}"
        )
    if BaseAddress > k.arch.user_max:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"0x{BaseAddress:x} not in user space")
    mbi = k.proc.memory.query(BaseAddress)
    values = {name: getattr(mbi, name) for name in MEMORY_BASIC_INFORMATION.fields}
    data = MEMORY_BASIC_INFORMATION.pack(k.arch, values)
    put_buffer(k, MemoryInformation, MemoryInformationLength, data, ReturnLength, size_t=True)
    k.details.update(base=mbi.BaseAddress, size=mbi.RegionSize, state=mbi.State)
    return NtStatus.SUCCESS


__all__ = [
    "PULONG",
    "NtAllocateVirtualMemory",
    "NtFreeVirtualMemory",
    "NtProtectVirtualMemory",
    "NtQueryVirtualMemory",
]
