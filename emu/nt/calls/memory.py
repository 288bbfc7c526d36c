"""Nt*VirtualMemory system calls, with the phnt prototypes and Windows' NTSTATUS semantics.

The rules are Windows 10's, as its own behaviour shows them (Wine's ntdll and kernel32
conformance tests, which pass on Windows, are the reference where MSDN is silent):

- ZeroBits 1-21 keep a new allocation below 2^(32-ZeroBits); 22 and more are refused, except on
  x64 where a value of 32 or more is a mask of the highest address.
- MEM_RESET needs no committed page (reserved ones are fine) but one allocation; placeholders
  come only through NtAllocateVirtualMemoryEx.
- NtFreeVirtualMemory rounds the base down to a page: with a size of 0 that page must be the
  allocation's first; a range releases part of an allocation (what remains on each side is an
  allocation of its own) but never crosses into the next one.
- Copy-on-write is refused for private memory, caching attributes stay with the allocation.
- Pages the kernel owns (KUSER_SHARED_DATA, heapemu's trap page) cannot be freed or
  reprotected: STATUS_INVALID_PAGE_PROTECTION, as for a secured VAD.
"""

from __future__ import annotations

import struct
from struct import pack_into, unpack_from

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
from emu.nt.memory import PLAIN_PROTECTIONS, Region, align_down, align_up
from emu.nt.objects import put_buffer
from emu.nt.stack import guard_set
from emu.win.layouts import (
    MEM_ADDRESS_REQUIREMENTS,
    MEM_EXTENDED_PARAMETER,
    MEMORY_BASIC_INFORMATION,
    MEMORY_RANGE_ENTRY,
    MEMORY_REGION_INFORMATION,
)
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    MEM_COALESCE_PLACEHOLDERS,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_EXTENDED_PARAMETER_TYPE,
    MEM_LARGE_PAGES,
    MEM_PRESERVE_PLACEHOLDER,
    MEM_RELEASE,
    MEM_REPLACE_PLACEHOLDER,
    MEM_RESERVE,
    MEM_RESERVE_PLACEHOLDER,
    MEM_RESET,
    MEM_RESET_UNDO,
    MEM_TOP_DOWN,
    MEM_WRITE_WATCH,
    MEMORY_INFORMATION_CLASS,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_SIZE,
    VIRTUAL_MEMORY_INFORMATION_CLASS,
    WRITE_WATCH_FLAG_RESET,
    NtStatus,
    invalid_parameter,
    is_valid_protection,
)

_MM_MAXIMUM_ZERO_BITS = 21  # larger ZeroBits values are masks, accepted on x64 only
_ALLOCATION_TYPES = (
    MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_TOP_DOWN | MEM_RESET_UNDO | MEM_WRITE_WATCH
    | MEM_LARGE_PAGES
)  # fmt: skip


def zero_bits_limit(k: Kernel, zero_bits: int, param: int) -> int | None:
    """The highest address ZeroBits allows (None: no limit); a bad value is
    STATUS_INVALID_PARAMETER_<param>."""
    if zero_bits == 0:
        return None
    if zero_bits <= _MM_MAXIMUM_ZERO_BITS:
        return (1 << (32 - zero_bits)) - 1
    if k.arch.ptr_size == 8 and zero_bits >= 32:  # a mask: only its leading zeroes count
        return (1 << zero_bits.bit_length()) - 1
    raise NtStatusError(invalid_parameter(param), f"ZeroBits 0x{zero_bits:x}")


def _read_in_out(k: Kernel, BaseAddress: int, RegionSize: int) -> tuple[int, int]:
    """The in/out base and size, probed for writing before anything changes."""
    n = k.arch.ptr_size
    plain = k.memory.plain_access
    if plain(BaseAddress, n, write=True) and plain(RegionSize, n, write=True):
        # the common case: both writable plain private memory, where writing the values back
        # would change nothing (no write watch to see it): read them, done
        read, unpack = k.proc.cpu.read, k.arch.unpack_ptr
        return unpack(read(BaseAddress, n)), unpack(read(RegionSize, n))
    base = k.read_ptr(BaseAddress)
    size = k.read_ptr(RegionSize)
    k.write_ptr(BaseAddress, base)
    k.write_ptr(RegionSize, size)
    return base, size


def _plain_in_out(k: Kernel, BaseAddress: int, RegionSize: int) -> tuple[int, int, int] | None:
    """The common shape of the in/out base and size: two pointers at most 64 bytes apart
    (a caller's locals) in one run of writable plain private memory, read as they are, as
    ``_read_in_out`` does: (base, size, lowest address of the two); None for any other
    shape."""
    n = k.arch.ptr_size
    lo, hi = (BaseAddress, RegionSize) if BaseAddress < RegionSize else (RegionSize, BaseAddress)
    hi += n
    if hi - lo > 64 or not k.memory.plain_access(lo, hi - lo, write=True):
        return None
    raw = k.proc.cpu.read(lo, hi - lo)
    fmt = k.arch.ptr_fmt
    return unpack_from(fmt, raw, BaseAddress - lo)[0], unpack_from(fmt, raw, RegionSize - lo)[0], lo


def _write_out(k: Kernel, BaseAddress: int, RegionSize: int, lo: int, base: int, size: int) -> None:
    """Write back an in/out pair ``_plain_in_out`` read (from ``lo``), when the service left
    the memory holding it as it was (plain writable memory: nothing to probe or record):
    the pair's span at once (what lies between the two is written back as it is)."""
    fmt, n, cpu = k.arch.ptr_fmt, k.arch.ptr_size, k.proc.cpu
    span = bytearray(cpu.read(lo, max(BaseAddress, RegionSize) + n - lo))
    pack_into(fmt, span, BaseAddress - lo, base)
    pack_into(fmt, span, RegionSize - lo, size)
    cpu.write(lo, bytes(span))


def _whole_pages(
    k: Kernel, BaseAddress: int, RegionSize: int
) -> tuple[int, int, int, int, int] | None:
    """The in/out pair read from plain memory (``_plain_in_out``) and the whole pages it
    names: (base, size, lo, start, end); None when the pair is not in plain memory, names no
    page, or may lie in those pages (it must not change with them)."""
    inout = _plain_in_out(k, BaseAddress, RegionSize)
    if inout is None:
        return None
    base, size, lo = inout
    start, end = base & ~(PAGE_SIZE - 1), (base + size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if start >= end or (start < lo + 64 and lo < end):
        return None
    return base, size, lo, start, end


def _commit_fast(
    k: Kernel, BaseAddress: int, RegionSize: int, AllocationType: int, Protect: int
) -> bool:
    """NtAllocateVirtualMemory's common shape, a heap growing: MEM_COMMIT alone of whole
    pages inside one private allocation (MemoryManager.commit_private), the in/out pair in
    plain memory outside those pages. Served as the general path would serve it, without
    its decoding; False (nothing changed) for any other shape."""
    if Protect not in PLAIN_PROTECTIONS:
        return False  # (an invalid one is refused before anything is read)
    pages = _whole_pages(k, BaseAddress, RegionSize)
    if pages is None or not pages[0]:
        return False  # base 0 asks for a reservation
    base, size, lo, start, end = pages
    details = k.details
    details.update(type=AllocationType, protect=Protect, base_in=base, size_in=size)
    if not k.memory.commit_private(start, end, Protect):
        return False
    _write_out(k, BaseAddress, RegionSize, lo, start, end - start)
    details.update(base=start, size=end - start)
    return True


def _decommit_fast(k: Kernel, BaseAddress: int, RegionSize: int) -> bool:
    """NtFreeVirtualMemory's common shape, a heap shrinking: MEM_DECOMMIT of whole pages
    inside one private allocation (MemoryManager.decommit_private), the in/out pair in
    plain memory outside those pages; False (nothing changed) for any other shape."""
    pages = _whole_pages(k, BaseAddress, RegionSize)
    if pages is None or not pages[1]:
        return False  # size 0 names the whole allocation
    base, size, lo, start, end = pages
    details = k.details
    details.update(type=MEM_DECOMMIT, base_in=base, size_in=size)
    if not k.memory.decommit_private(start, end):
        return False
    _write_out(k, BaseAddress, RegionSize, lo, start, end - start)
    details.update(base=start, size=end - start)
    return True


def _reset(k: Kernel, base: int, size: int) -> tuple[int, int]:
    """MEM_RESET / MEM_RESET_UNDO: the contents may be discarded (keeping them is a valid
    implementation); reserved pages are fine, protections stay, but the range must lie in one
    allocation (STATUS_CONFLICTING_ADDRESSES otherwise)."""
    start, end = align_down(base, PAGE_SIZE), align_up(base + size, PAGE_SIZE)
    region = k.memory.region_at(start)
    if region is None or end > region.end or end <= start:
        raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x}-0x{end:x}")
    return start, end - start


def _allocate(
    k: Kernel,
    base: int,
    size: int,
    AllocationType: int,
    Protect: int,
    *,
    highest: int | None = None,
    lowest: int | None = None,
    alignment: int = ALLOCATION_GRANULARITY,
    placeholders: bool = False,
) -> tuple[int, int]:
    """What NtAllocateVirtualMemory(Ex) do once the arguments are read."""
    if AllocationType & (MEM_RESET | MEM_RESET_UNDO):
        if AllocationType & ~(MEM_RESET | MEM_RESET_UNDO) or (
            AllocationType & MEM_RESET_UNDO and (AllocationType & MEM_RESET)
        ):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "MEM_RESET with other flags")
        return _reset(k, base, size)
    if (
        placeholders
        and AllocationType & MEM_REPLACE_PLACEHOLDER
        and not AllocationType & MEM_RESERVE
    ):
        raise NtStatusError(
            NtStatus.INVALID_PARAMETER, "MEM_REPLACE_PLACEHOLDER without MEM_RESERVE"
        )
    if not AllocationType & (MEM_COMMIT | MEM_RESERVE):
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "neither MEM_COMMIT nor MEM_RESERVE")
    if AllocationType & MEM_WRITE_WATCH and not AllocationType & MEM_RESERVE:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "MEM_WRITE_WATCH without MEM_RESERVE")
    if AllocationType & MEM_LARGE_PAGES:  # needs SeLockMemoryPrivilege, which users lack
        raise NtStatusError(NtStatus.PRIVILEGE_NOT_HELD, "MEM_LARGE_PAGES")
    if size == 0:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "region size is 0")
    write_watch = bool(AllocationType & MEM_WRITE_WATCH)
    mem = k.memory
    if placeholders and AllocationType & MEM_REPLACE_PLACEHOLDER:
        return mem.replace_placeholder(base, size, AllocationType, Protect, write_watch=write_watch)
    placeholder = placeholders and bool(AllocationType & MEM_RESERVE_PLACEHOLDER)
    if placeholder and (
        Protect != PAGE_NOACCESS or AllocationType & (MEM_COMMIT | MEM_WRITE_WATCH)
    ):
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "a placeholder is PAGE_NOACCESS only")
    new_base, new_size = mem.allocate(
        base,
        size,
        AllocationType,
        Protect,
        highest=highest,
        lowest=lowest,
        alignment=alignment,
        write_watch=write_watch,
        placeholder=placeholder,
        user=True,
    )
    if AllocationType & MEM_COMMIT and Protect & PAGE_GUARD:
        guard_set(k.proc, new_base, new_size)
    return new_base, new_size


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
    if (
        AllocationType == MEM_COMMIT
        and not ZeroBits
        and ProcessHandle == k.arch.ptr_mask  # NtCurrentProcess()
        and _commit_fast(k, BaseAddress, RegionSize, AllocationType, Protect)
    ):
        return NtStatus.SUCCESS
    k.check_process_handle(ProcessHandle)
    highest = zero_bits_limit(k, ZeroBits, 3)
    if AllocationType & MEM_RESERVE_PLACEHOLDER:  # placeholders: NtAllocateVirtualMemoryEx only
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "MEM_RESERVE_PLACEHOLDER")
    if AllocationType & ~_ALLOCATION_TYPES:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, f"AllocationType 0x{AllocationType:x}")
    if not is_valid_protection(Protect):
        raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{Protect:x}")
    base, size = _read_in_out(k, BaseAddress, RegionSize)
    k.details.update(type=AllocationType, protect=Protect, base_in=base, size_in=size)
    new_base, new_size = _allocate(k, base, size, AllocationType, Protect, highest=highest)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return NtStatus.SUCCESS


def _extended_parameters(k: Kernel, params: int, count: int, *, view: bool) -> dict[int, int]:
    """MEM_EXTENDED_PARAMETER array -> {type: value}; each type at most once, types this
    emulated machine cannot honour refused (STATUS_INVALID_PARAMETER)."""
    if not count:
        return {}
    if not params:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "ExtendedParameters is NULL")
    if count > 16:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"{count} extended parameters")
    types = MEM_EXTENDED_PARAMETER_TYPE
    out: dict[int, int] = {}
    size = MEM_EXTENDED_PARAMETER.size(k.arch)
    for i in range(count):
        raw_type, value = struct.unpack("<QQ", k.read(params + i * size, size))
        kind = raw_type & 0xFF
        if (
            kind in out
            or not types.MemExtendedParameterInvalidType < kind < types.MemExtendedParameterMax
        ):
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"extended parameter type {kind}")
        if kind == types.MemExtendedParameterAttributeFlags and value & 0xFFFFFFFF:
            # EC code, graphics, non-paged...: nothing this machine offers
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"attribute flags 0x{value:x}")
        if kind == types.MemExtendedParameterNumaNode and value & 0xFFFFFFFF:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"NUMA node {value}")  # one node
        if kind in (types.MemExtendedParameterPartitionHandle,
                    types.MemExtendedParameterUserPhysicalHandle):  # fmt: skip
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"extended parameter type {kind}")
        if kind == types.MemExtendedParameterImageMachine and not view:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, "image machine for private memory")
        out[kind] = value & k.arch.ptr_mask
    return out


def address_requirements(k: Kernel, pointer: int, *, view: bool) -> tuple[int, int, int]:
    """(lowest, highest, alignment) from a MEM_ADDRESS_REQUIREMENTS; as Windows checks it: the
    highest address ends a page and is in user space, the lowest starts a granule, the
    alignment is a power of two of at least the granularity (none at all for views)."""
    a = MEM_ADDRESS_REQUIREMENTS
    raw = k.read(pointer, a.size(k.arch))
    n = k.arch.ptr_size
    lowest, highest, alignment = (k.arch.unpack_ptr(raw, i * n) for i in range(3))
    bad = NtStatusError(NtStatus.INVALID_PARAMETER, "address requirements")
    if highest and ((highest + 1) % PAGE_SIZE or highest > k.arch.user_max):
        raise bad
    if lowest % ALLOCATION_GRANULARITY or (highest and lowest > highest):
        raise bad
    if alignment and (view or alignment & (alignment - 1) or alignment < ALLOCATION_GRANULARITY):
        raise bad
    return lowest, highest or k.arch.user_max, alignment or ALLOCATION_GRANULARITY


@syscall
def NtAllocateVirtualMemoryEx(
    k: Kernel,
    ProcessHandle: HANDLE,
    BaseAddress: PVOID,
    RegionSize: PSIZE_T,
    AllocationType: ULONG,
    PageProtection: ULONG,
    ExtendedParameters: PVOID,
    ExtendedParameterCount: ULONG,
) -> int:
    """NtAllocateVirtualMemory with extended parameters (address requirements) and
    placeholders (MEM_RESERVE_PLACEHOLDER, MEM_REPLACE_PLACEHOLDER)."""
    k.check_process_handle(ProcessHandle)
    params = _extended_parameters(k, ExtendedParameters, ExtendedParameterCount, view=False)
    known = _ALLOCATION_TYPES | MEM_RESERVE_PLACEHOLDER | MEM_REPLACE_PLACEHOLDER
    if AllocationType & ~known:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"AllocationType 0x{AllocationType:x}")
    if not is_valid_protection(PageProtection):
        raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{PageProtection:x}")
    base, size = _read_in_out(k, BaseAddress, RegionSize)
    k.details.update(type=AllocationType, protect=PageProtection, base_in=base, size_in=size)
    lowest, highest, alignment = None, None, ALLOCATION_GRANULARITY
    requirements = params.get(MEM_EXTENDED_PARAMETER_TYPE.MemExtendedParameterAddressRequirements)
    if requirements:
        # requirements that ask for nothing (all zero) go with a base or a commit; others
        # need a reservation the kernel places (Wine's ntdll virtual.c, on Windows)
        if any(k.read(requirements, MEM_ADDRESS_REQUIREMENTS.size(k.arch))):
            if base or not AllocationType & MEM_RESERVE:
                raise NtStatusError(NtStatus.INVALID_PARAMETER, "address requirements with a base")
            lowest, highest, alignment = address_requirements(k, requirements, view=False)
    elif requirements is not None and (base or not AllocationType & MEM_RESERVE):
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "address requirements with a base")
    new_base, new_size = _allocate(
        k, base, size, AllocationType, PageProtection, highest=highest, lowest=lowest,
        alignment=alignment, placeholders=True,
    )  # fmt: skip
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.details.update(base=new_base, size=new_size)
    return NtStatus.SUCCESS


@syscall
def NtFreeVirtualMemory(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, RegionSize: PSIZE_T, FreeType: ULONG
) -> int:
    if (
        FreeType == MEM_DECOMMIT
        and ProcessHandle == k.arch.ptr_mask  # NtCurrentProcess()
        and _decommit_fast(k, BaseAddress, RegionSize)
    ):
        return NtStatus.SUCCESS
    k.check_process_handle(ProcessHandle)
    base, size = _read_in_out(k, BaseAddress, RegionSize)
    k.details.update(type=FreeType, base_in=base, size_in=size)
    mem = k.memory
    if FreeType & MEM_RELEASE and FreeType & (MEM_PRESERVE_PLACEHOLDER | MEM_COALESCE_PLACEHOLDERS):
        if FreeType & ~MEM_RELEASE not in (MEM_PRESERVE_PLACEHOLDER, MEM_COALESCE_PLACEHOLDERS):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"free type 0x{FreeType:x}")
        if FreeType & MEM_PRESERVE_PLACEHOLDER:
            new_base, new_size = mem.preserve_placeholder(base, size)
        else:
            new_base, new_size = mem.coalesce_placeholders(base, size)
    elif FreeType not in (MEM_DECOMMIT, MEM_RELEASE):
        raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"free type 0x{FreeType:x}")
    else:
        new_base, new_size = mem.free(base, size, FreeType, user=True)
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
    base, size = _read_in_out(k, BaseAddress, RegionSize)
    k.write_u32(OldProtect, 0)  # probe: OldProtect is required
    new_base, new_size, old = k.memory.protect(base, size, NewProtect, user=True)
    if NewProtect & PAGE_GUARD:
        guard_set(k.proc, new_base, new_size)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    k.write_u32(OldProtect, old)
    k.details.update(base=new_base, size=new_size, protect=NewProtect, old=old)
    return NtStatus.SUCCESS


MAP_PROCESS, MAP_SYSTEM = 1, 2  # NtLockVirtualMemory's MapType


def _lock_args(k: Kernel, BaseAddress: int, RegionSize: int, MapType: int) -> tuple[int, int]:
    if not MapType & (MAP_PROCESS | MAP_SYSTEM) or MapType & ~(MAP_PROCESS | MAP_SYSTEM):
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"MapType 0x{MapType:x}")
    if MapType & MAP_SYSTEM:  # locking into physical memory needs SeLockMemoryPrivilege
        raise NtStatusError(NtStatus.PRIVILEGE_NOT_HELD, "MAP_SYSTEM")
    base, size = _read_in_out(k, BaseAddress, RegionSize)
    k.details.update(base_in=base, size_in=size, map_type=MapType)
    return base, size


@syscall
def NtLockVirtualMemory(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, RegionSize: PSIZE_T, MapType: ULONG
) -> int:
    """Lock pages in the working set (VirtualLock): nothing is ever paged out here, so this
    is bookkeeping plus what the caller can see: the pages are probed (a guard page fails the
    call once and loses its guard), NtUnlockVirtualMemory wants them locked."""
    k.check_process_handle(ProcessHandle)
    base, size = _lock_args(k, BaseAddress, RegionSize, MapType)
    status, new_base, new_size = k.memory.lock(base, size)
    if status != NtStatus.GUARD_PAGE_VIOLATION:
        k.write_ptr(BaseAddress, new_base)
        k.write_ptr(RegionSize, new_size)
    return status


@syscall
def NtUnlockVirtualMemory(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, RegionSize: PSIZE_T, MapType: ULONG
) -> int:
    k.check_process_handle(ProcessHandle)
    base, size = _lock_args(k, BaseAddress, RegionSize, MapType)
    new_base, new_size = k.memory.unlock(base, size)
    k.write_ptr(BaseAddress, new_base)
    k.write_ptr(RegionSize, new_size)
    return NtStatus.SUCCESS


def _region_information(k: Kernel, region: Region, length: int) -> bytes:
    """MEMORY_REGION_INFORMATION of the allocation; a buffer shorter than the structure is
    accepted down to CommitSize (the older layouts). RegionType is left 0: Windows 10 does
    not set those flags for private memory or pagefile-backed views (Wine's tests show it)."""
    info = MEMORY_REGION_INFORMATION
    arch = k.arch
    minimum = info.offset(arch, "CommitSize")
    if length < minimum:
        raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} < {minimum}")
    data = info.pack(
        arch,
        {
            "AllocationBase": region.base,
            "AllocationProtect": region.allocation_protect,
            "RegionSize": region.size,
            "CommitSize": region.committed_bytes,
        },
    )
    return data[: min(length, len(data))]


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
    classes = MEMORY_INFORMATION_CLASS
    k.details.update(cls=MemoryInformationClass)
    if MemoryInformationClass == classes.MemoryBasicInformation:
        mbi_size = MEMORY_BASIC_INFORMATION.size(k.arch)
        if MemoryInformationLength < mbi_size:
            raise NtStatusError(
                NtStatus.INFO_LENGTH_MISMATCH, f"{MemoryInformationLength} < {mbi_size}"
            )
        if BaseAddress > k.arch.user_max:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"0x{BaseAddress:x}")
        mbi = k.memory.query(BaseAddress)
        values = {name: getattr(mbi, name) for name in MEMORY_BASIC_INFORMATION.fields}
        data = MEMORY_BASIC_INFORMATION.pack(k.arch, values)
        k.details.update(base=mbi.BaseAddress, size=mbi.RegionSize, state=mbi.State)
    elif MemoryInformationClass == classes.MemoryRegionInformation:
        if BaseAddress > k.arch.user_max:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"0x{BaseAddress:x}")
        region = k.memory.region_at(BaseAddress)
        if region is None:
            raise NtStatusError(NtStatus.INVALID_ADDRESS, f"0x{BaseAddress:x} is free")
        data = _region_information(k, region, MemoryInformationLength)
        k.details.update(base=region.base, size=region.size)
    else:
        # MemoryWineUnixFuncs (1000) included: heapemu runs Wine's PE side only, and Windows
        # knows no such class either
        raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"class {MemoryInformationClass}")
    put_buffer(k, MemoryInformation, MemoryInformationLength, data, ReturnLength, size_t=True)
    return NtStatus.SUCCESS


# ---------------------------------------------------------------------------------- write watch
def _watched_range(k: Kernel, base: int, size: int) -> tuple[Region, int, int]:
    """The write-watched allocation holding [base, base+size) and its page indices."""
    region = k.memory.region_at(base) if size else None
    if region is None or not region.write_watch or base + size > region.end:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"0x{base:x}+0x{size:x} is not watched")
    first = region.page_index(base)
    return region, first, region.page_index(base + size - 1) + 1


@syscall
def NtGetWriteWatch(
    k: Kernel,
    ProcessHandle: HANDLE,
    Flags: ULONG,
    BaseAddress: PVOID,
    RegionSize: SIZE_T,
    UserAddressArray: PVOID,
    EntriesInUserAddressArray: PULONG,
    Granularity: PULONG,
) -> int:
    """The pages of a MEM_WRITE_WATCH allocation written since the last reset, in address
    order, at most *EntriesInUserAddressArray of them (WRITE_WATCH_FLAG_RESET forgets the ones
    reported)."""
    k.check_process_handle(ProcessHandle)
    if Flags & ~WRITE_WATCH_FLAG_RESET:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, f"flags 0x{Flags:x}")
    count = k.read_ptr(EntriesInUserAddressArray)
    k.write_u32(Granularity, 0)  # probe
    if not count:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "no room for any address")
    region, i0, i1 = _watched_range(k, BaseAddress, RegionSize)
    k.probe_range(UserAddressArray, min(count, i1 - i0) * k.arch.ptr_size)
    pages = k.memory.write_watch_pages(region, i0, i1)[:count]
    out = b"".join(k.arch.pack_ptr(region.base + i * PAGE_SIZE) for i in pages)
    if out:
        k.write(UserAddressArray, out)
    elif not UserAddressArray:
        raise NtStatusError(NtStatus.ACCESS_VIOLATION, "UserAddressArray is NULL")
    k.write_ptr(EntriesInUserAddressArray, len(pages))
    k.write_u32(Granularity, PAGE_SIZE)
    if Flags & WRITE_WATCH_FLAG_RESET:
        k.memory.reset_write_watch(region, pages)
    k.details.update(count=len(pages))
    return NtStatus.SUCCESS


@syscall
def NtResetWriteWatch(
    k: Kernel, ProcessHandle: HANDLE, BaseAddress: PVOID, RegionSize: SIZE_T
) -> int:
    k.check_process_handle(ProcessHandle)
    region, i0, i1 = _watched_range(k, BaseAddress, RegionSize)
    k.memory.reset_write_watch(region, k.memory.write_watch_pages(region, i0, i1))
    return NtStatus.SUCCESS


# ---------------------------------------------------------------------------------- hints
@syscall
def NtSetInformationVirtualMemory(
    k: Kernel,
    ProcessHandle: HANDLE,
    VmInformationClass: ULONG,
    NumberOfEntries: ULONG_PTR,
    VirtualAddresses: PVOID,
    VmInformation: PVOID,
    VmInformationLength: ULONG,
) -> int:
    """Prefetch and page-priority hints: checked as Windows checks them, then nothing to do
    (every committed page is resident). Other classes are not emulated."""
    k.check_process_handle(ProcessHandle)
    classes = VIRTUAL_MEMORY_INFORMATION_CLASS
    k.details.update(cls=VmInformationClass)
    if VmInformationClass not in {c.value for c in classes}:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"class {VmInformationClass}")
    if VmInformationClass not in (
        classes.VmPrefetchInformation,
        classes.VmPagePriorityInformation,
    ):
        raise NtStatusError(NtStatus.NOT_SUPPORTED, f"class {VmInformationClass}")
    if not VmInformation:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_5, "VmInformation is NULL")
    if VmInformationLength != 4:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_6, f"length {VmInformationLength}")
    k.read(VmInformation, 4)
    if not NumberOfEntries:
        raise NtStatusError(NtStatus.INVALID_PARAMETER_3, "no entries")
    entry = MEMORY_RANGE_ENTRY.size(k.arch)
    k.probe_range(VirtualAddresses, NumberOfEntries * entry)
    for i in range(min(NumberOfEntries, 0x10000)):
        raw = k.read(VirtualAddresses + i * entry, entry)
        if not k.arch.unpack_ptr(raw, k.arch.ptr_size):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"entry {i} is empty")
    return NtStatus.SUCCESS


__all__ = [
    "NtAllocateVirtualMemory",
    "NtAllocateVirtualMemoryEx",
    "NtFreeVirtualMemory",
    "NtGetWriteWatch",
    "NtProtectVirtualMemory",
    "NtQueryVirtualMemory",
    "NtResetWriteWatch",
    "NtSetInformationVirtualMemory",
]
