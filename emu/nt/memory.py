"""The process address space, modelled on NT's virtual memory manager.

A :class:`Region` is one reservation (a VAD): 64 KiB-aligned base, page-granular size, a type
(private, mapped, image) and per-page state: reserved, or committed with a protection. The CPU's
memory follows the committed pages: a page is backed exactly when it is committed and not a
guard page (whose contents wait in ``Region.guard_data``), so committed pages start zero-filled
and a decommit discards them. Which accesses are allowed is not the backing's business: the CPU
asks ``page_state`` on each TLB miss (``ProcessCore._on_page_fault``), and every change of
protection here flushes its TLB (``Cpu.protect``; mapping and unmapping flush too).

Errors are :class:`NtStatusError` with the status Windows' NtAllocateVirtualMemory,
NtFreeVirtualMemory, NtProtectVirtualMemory and NtQueryVirtualMemory return.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from emu.arch import Arch
from emu.cpu.cpu import Cpu, CpuError
from emu.errors import NtStatusError
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_IMAGE,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_SIZE,
    NtStatus,
    is_valid_protection,
    protection_allows,
)

RESERVED = 0  # page state value meaning "reserved, not committed"
MAX_RESERVATION = 1 << 34  # 16 GiB: 4 M page entries


def align_down(value: int, alignment: int) -> int:
    return value & ~(alignment - 1)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


@dataclass
class Region:
    """One reservation. ``pages[i]`` is RESERVED or the committed page's protection."""

    base: int
    size: int
    allocation_protect: int
    type: int = MEM_PRIVATE
    usage: str = ""
    pages: list[int] = field(default_factory=list)
    # contents of committed pages that are currently guard pages (not mapped in the CPU)
    guard_data: dict[int, bytes] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.base + self.size

    def page_index(self, addr: int) -> int:
        return (addr - self.base) // PAGE_SIZE

    @property
    def committed_bytes(self) -> int:
        return sum(PAGE_SIZE for p in self.pages if p != RESERVED)

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """(start address, size, page state) of each run of identical pages."""
        i = 0
        n = len(self.pages)
        while i < n:
            j = i
            while j < n and self.pages[j] == self.pages[i]:
                j += 1
            yield self.base + i * PAGE_SIZE, (j - i) * PAGE_SIZE, self.pages[i]
            i = j


@dataclass(frozen=True)
class MemoryBasicInformation:
    """NtQueryVirtualMemory(MemoryBasicInformation) for one address."""

    BaseAddress: int
    AllocationBase: int
    AllocationProtect: int
    RegionSize: int
    State: int
    Protect: int
    Type: int


def _mapped(state: int) -> bool:
    return state != RESERVED and not state & PAGE_GUARD


class MemoryManager:
    """Reserve, commit, decommit, release, protect and query, at Windows granularity."""

    def __init__(self, cpu: Cpu, arch: Arch):
        self.cpu = cpu
        self.arch = arch
        self._bases: list[int] = []  # sorted region bases
        self.commit_limit = 16 << 30  # bytes; Unicorn backs committed pages with host memory
        self.committed = 0  # bytes committed in the whole address space
        self._regions: dict[int, Region] = {}

    # ------------------------------------------------------------------ lookup
    def regions(self) -> list[Region]:
        return [self._regions[b] for b in self._bases]

    def region_at(self, addr: int) -> Region | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self._regions[self._bases[i]]
            if addr < r.end:
                return r
        return None

    def _overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._bases, end) - 1
        return i >= 0 and self._regions[self._bases[i]].end > start

    def _find_free(self, size: int, top_down: bool) -> int:
        lo, hi = self.arch.user_min, self.arch.user_max + 1
        gaps = []
        prev_end = lo
        for b in self._bases:
            r = self._regions[b]
            gaps.append((prev_end, r.base))
            prev_end = max(prev_end, r.end)
        gaps.append((prev_end, hi))
        order = reversed(gaps) if top_down else iter(gaps)
        for start, end in order:
            if top_down:
                cand = align_down(end - size, ALLOCATION_GRANULARITY)
                if cand >= align_up(start, ALLOCATION_GRANULARITY) and cand >= lo:
                    return cand
            else:
                cand = align_up(start, ALLOCATION_GRANULARITY)
                if cand + size <= end:
                    return cand
        raise NtStatusError(NtStatus.NO_MEMORY, f"no free range of 0x{size:x} bytes")

    # ------------------------------------------------------------------ operations
    @staticmethod
    def _check_reservation(length: int, size: int) -> None:
        if length > MAX_RESERVATION:
            # our per-page model keeps one entry per page: cap what one region may hold
            raise NtStatusError(
                NtStatus.NO_MEMORY,
                f"0x{size:x} bytes: heapemu reserves at most 0x{MAX_RESERVATION:x} bytes "
                "in one region",
            )

    def _check_commit(self, new_bytes: int) -> None:
        """Windows refuses commits beyond the commit limit (RAM + page file) with
        STATUS_COMMITMENT_LIMIT; ours is ``commit_limit`` bytes of committed memory."""
        if self.committed + new_bytes > self.commit_limit:
            raise NtStatusError(
                NtStatus.COMMITMENT_LIMIT,
                f"committing 0x{new_bytes:x} more bytes would pass the "
                f"0x{self.commit_limit:x}-byte commit limit",
            )

    def allocate(
        self,
        base: int,
        size: int,
        allocation_type: int,
        protect: int,
        *,
        type: int = MEM_PRIVATE,
        usage: str = "",
    ) -> tuple[int, int]:
        """NtAllocateVirtualMemory semantics: returns the rounded (base, size)."""
        if not is_valid_protection(protect):
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{protect:x}")
        if size <= 0:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "region size is 0")
        user_end = self.arch.user_max + 1
        if base and not (self.arch.user_min <= base < user_end):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"base 0x{base:x} not in user space")
        reserve = bool(allocation_type & MEM_RESERVE) or (
            # MEM_COMMIT alone at a NULL base reserves and commits (VirtualAlloc behaviour)
            base == 0 and bool(allocation_type & MEM_COMMIT)
        )
        if reserve:
            if base:
                start = align_down(base, ALLOCATION_GRANULARITY)
                end = align_up(base + size, PAGE_SIZE)
                if end > user_end:
                    raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "range past user space")
                self._check_reservation(end - start, size)
                if self._overlaps(start, end):
                    raise NtStatusError(
                        NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x}-0x{end:x} is in use"
                    )
            else:
                length = align_up(size, PAGE_SIZE)
                if length > user_end - self.arch.user_min:
                    raise NtStatusError(NtStatus.NO_MEMORY, f"0x{size:x} bytes cannot fit")
                start = self._find_free(length, bool(allocation_type & MEM_TOP_DOWN))
                end = start + length
            self._check_reservation(end - start, size)
            if allocation_type & MEM_COMMIT:
                self._check_commit(end - start)
            region = Region(
                start, end - start, protect, type, usage, [RESERVED] * ((end - start) // PAGE_SIZE)
            )
            self._insert(region)
            if allocation_type & MEM_COMMIT:
                self._set_pages(region, 0, len(region.pages), protect)
            return start, end - start
        # commit inside an existing reservation
        start = align_down(base, PAGE_SIZE)
        end = align_up(base + size, PAGE_SIZE)
        target = self.region_at(start)
        if target is None:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x} is not reserved")
        region = target
        if end > region.end:
            raise NtStatusError(
                NtStatus.CONFLICTING_ADDRESSES,
                f"0x{start:x}-0x{end:x} runs past the reservation ending at 0x{region.end:x}",
            )
        i0, i1 = region.page_index(start), region.page_index(end)
        self._check_commit(PAGE_SIZE * region.pages[i0:i1].count(RESERVED))
        self._set_pages(region, i0, i1, protect)
        return start, end - start

    def free(self, base: int, size: int, free_type: int) -> tuple[int, int]:
        """NtFreeVirtualMemory semantics for MEM_DECOMMIT and MEM_RELEASE."""
        if free_type not in (MEM_DECOMMIT, MEM_RELEASE):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"free type 0x{free_type:x}")
        region = self.region_at(base)
        if region is None:
            raise NtStatusError(NtStatus.MEMORY_NOT_ALLOCATED, f"0x{base:x} is not allocated")
        if region.type == MEM_IMAGE:
            raise NtStatusError(NtStatus.UNABLE_TO_FREE_VM, f"0x{base:x} is an image view")
        if free_type == MEM_RELEASE:
            if size == 0 and base != region.base:
                raise NtStatusError(
                    NtStatus.FREE_VM_NOT_AT_BASE,
                    f"0x{base:x} is not the allocation base 0x{region.base:x}",
                )
            # Windows documents RegionSize 0 for MEM_RELEASE; a size that names exactly the
            # whole region is accepted, a partial release is refused.
            if size and (base != region.base or align_up(size, PAGE_SIZE) != region.size):
                raise NtStatusError(NtStatus.UNABLE_TO_FREE_VM, "partial release of a region")
            self._set_pages(region, 0, len(region.pages), RESERVED)
            self._remove(region)
            return region.base, region.size
        start = align_down(base, PAGE_SIZE)
        end = region.end if size == 0 else align_up(base + size, PAGE_SIZE)
        if end > region.end:
            raise NtStatusError(NtStatus.UNABLE_TO_FREE_VM, "range runs past the region")
        self._set_pages(region, region.page_index(start), region.page_index(end), RESERVED)
        return start, end - start

    def release_view(self, base: int) -> None:
        """Unmap a whole image/mapped view (NtUnmapViewOfSection, a failed image load):
        NtFreeVirtualMemory refuses these regions."""
        region = self.region_at(base)
        if region is None or region.base != base:
            raise NtStatusError(NtStatus.MEMORY_NOT_ALLOCATED, f"no view at 0x{base:x}")
        self._set_pages(region, 0, len(region.pages), RESERVED)
        self._remove(region)

    def protect(self, base: int, size: int, new_protect: int) -> tuple[int, int, int]:
        """NtProtectVirtualMemory semantics: returns (base, size, old protection of 1st page)."""
        if not is_valid_protection(new_protect):
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{new_protect:x}")
        start = align_down(base, PAGE_SIZE)
        end = align_up(base + max(size, 1), PAGE_SIZE)
        region = self.region_at(start)
        if region is None:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x} is not allocated")
        if end > region.end:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "range runs past the region")
        i0, i1 = region.page_index(start), region.page_index(end)
        if any(p == RESERVED for p in region.pages[i0:i1]):
            raise NtStatusError(NtStatus.NOT_COMMITTED, "range includes uncommitted pages")
        old = region.pages[i0]
        self._set_pages(region, i0, i1, new_protect)
        return start, end - start, old

    def query(self, addr: int) -> MemoryBasicInformation:
        """NtQueryVirtualMemory(MemoryBasicInformation)."""
        if addr > self.arch.user_max:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"0x{addr:x} is not in user space")
        page = align_down(addr, PAGE_SIZE)
        region = self.region_at(page)
        if region is None:
            i = bisect.bisect_right(self._bases, page)
            nxt = self._bases[i] if i < len(self._bases) else self.arch.user_max + 1
            return MemoryBasicInformation(page, 0, 0, nxt - page, MEM_FREE, PAGE_NOACCESS, 0)
        i = region.page_index(page)
        state = region.pages[i]
        j = i
        while j < len(region.pages) and region.pages[j] == state:
            j += 1
        return MemoryBasicInformation(
            BaseAddress=page,
            AllocationBase=region.base,
            AllocationProtect=region.allocation_protect,
            RegionSize=(j - i) * PAGE_SIZE,
            State=MEM_RESERVE if state == RESERVED else MEM_COMMIT,
            Protect=state,
            Type=region.type,
        )

    # ------------------------------------------------------------------ checks
    def page_state(self, addr: int) -> int | None:
        """None if free, RESERVED, or the committed protection of the page holding addr."""
        region = self.region_at(addr)
        return None if region is None else region.pages[region.page_index(addr)]

    def is_accessible(self, addr: int, size: int, *, write: bool = False) -> bool:
        """Would user-mode code be allowed this access (the kernel's ProbeForRead/Write)?"""
        if size <= 0:
            return True
        if addr < self.arch.user_min or addr + size - 1 > self.arch.user_max:
            return False
        page = align_down(addr, PAGE_SIZE)
        while page < addr + size:
            state = self.page_state(page)
            if not state or not protection_allows(state, write=write):
                return False
            page += PAGE_SIZE
        return True

    def clear_guard(self, addr: int) -> bool:
        """Windows clears PAGE_GUARD on first touch (STATUS_GUARD_PAGE_VIOLATION). Returns True
        if the page holding addr was a guard page (now mapped with its base protection)."""
        region = self.region_at(addr)
        if region is None:
            return False
        i = region.page_index(addr)
        state = region.pages[i]
        if state == RESERVED or not state & PAGE_GUARD:
            return False
        self._set_pages(region, i, i + 1, state & ~PAGE_GUARD)
        return True

    # ------------------------------------------------------------------ internals
    def _insert(self, region: Region) -> None:
        bisect.insort(self._bases, region.base)
        self._regions[region.base] = region

    def _remove(self, region: Region) -> None:
        self._bases.remove(region.base)
        del self._regions[region.base]

    def _set_pages(self, region: Region, i0: int, i1: int, new: int) -> None:
        """Set pages [i0, i1) to ``new`` and bring the CPU's mappings in line, run by run
        (a run = consecutive pages in the same old state: one Unicorn call each)."""
        cpu, pages = self.cpu, region.pages
        now = _mapped(new)
        i = i0
        while i < i1:
            old = pages[i]
            j = i + 1
            while j < i1 and pages[j] == old:
                j += 1
            addr, length = region.base + i * PAGE_SIZE, (j - i) * PAGE_SIZE
            was = _mapped(old)
            if was and now:
                if old & 0xFF != new & 0xFF:
                    cpu.protect(addr, length, new)  # flushes the TLB entries it changes
            elif was:
                if new != RESERVED:  # becoming a guard page: keep the contents
                    for k in range(i, j):
                        region.guard_data[k] = cpu.read(region.base + k * PAGE_SIZE, PAGE_SIZE)
                cpu.unmap(addr, length)
            elif now:
                try:
                    cpu.map(addr, length, new)  # fresh Unicorn mappings are zero-filled
                except CpuError as e:  # the host cannot back it
                    raise NtStatusError(
                        NtStatus.COMMITMENT_LIMIT, f"cannot commit 0x{length:x} bytes: {e}"
                    ) from None
                if old != RESERVED and region.guard_data:  # a guard page coming back
                    for k in range(i, j):
                        data = region.guard_data.pop(k, None)
                        if data is not None:
                            cpu.write(region.base + k * PAGE_SIZE, data)
            if new == RESERVED and region.guard_data:
                for k in range(i, j):
                    region.guard_data.pop(k, None)
            if (old == RESERVED) != (new == RESERVED):
                self.committed += length if old == RESERVED else -length
            pages[i:j] = [new] * (j - i)
            i = j
