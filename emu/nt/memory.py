"""The process address space, modelled on NT's virtual memory manager.

A :class:`Region` is one allocation (a VAD): its base (64 KiB-aligned when reserved; a piece
left by a partial release starts on a page), page-granular size, a type (private, mapped,
image) and per-page state: reserved, or committed with a protection. Page states are kept
run-length (:class:`PageRuns`), so a reservation costs the same host memory whatever its size:
a 16 GiB reservation is one run, not four million list slots.

The CPU backs the address space with host memory in large aligned windows, each mapped into
Unicorn once, on the first commit inside it (``Cpu.ensure_backed``); committing is then
bookkeeping, and decommitting or releasing is bookkeeping plus zeroing the pages
(``Cpu.decommit``: the host takes them back, they read zero when committed again) and
flushing the TLB. Which accesses are allowed is not the backing's business: the CPU
asks on each TLB miss (``ProcessCore._on_page_fault``: ``page_state`` and
``cpu_protection_at``), so backed pages that are reserved, free or guard pages fault exactly as
unbacked ones, and every change of protection here flushes the TLB (``Cpu.protect``).
The CPU protection of a page can be narrower than its Windows protection
(:meth:`MemoryManager.cpu_protection`): copy-on-write pages and write-watched pages not yet
written translate read-only, and the first write turns them into
what Windows shows after a write (PAGE_WRITECOPY -> PAGE_READWRITE; a dirty write-watch page).

Free address space is indexed by the usable size of each gap (:class:`FreeSpace`), so finding
room for a reservation costs about the same with 10 or 10,000 regions.

Errors are :class:`NtStatusError` with the status Windows' NtAllocateVirtualMemory,
NtFreeVirtualMemory, NtProtectVirtualMemory and NtQueryVirtualMemory return. Requests from
emulated code (``user=True``, the system calls) get Windows' rules in full; heapemu's own
loaders are the kernel and may, for example, commit inside an image.

Limits (documented, checked): at most ``region_limit`` regions (STATUS_NO_MEMORY beyond,
about 1 KiB of host memory each), ``commit_limit`` committed bytes (STATUS_COMMITMENT_LIMIT);
reservations themselves are limited only by the user address space.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from emu.arch import Arch
from emu.cpu.cpu import Cpu, CpuError
from emu.errors import NtStatusError
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_IMAGE,
    MEM_MAPPED,
    MEM_PRIVATE,
    MEM_RELEASE,
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
    NtStatus,
    is_valid_protection,
    protection_allows,
)

RESERVED = 0  # page state value meaning "reserved, not committed"
COMMITTED = 1  # a section page's state in ViewInfo.commits
CACHE_ATTRIBUTES = PAGE_NOCACHE | PAGE_WRITECOMBINE

# what a protection lets a page do, for the compatibility rules of views (R=1, W=2, X=4)
_ACCESS = {
    PAGE_NOACCESS: 0,
    PAGE_READONLY: 1,
    PAGE_WRITECOPY: 1,
    PAGE_READWRITE: 3,
    PAGE_EXECUTE: 5,
    PAGE_EXECUTE_READ: 5,
    PAGE_EXECUTE_WRITECOPY: 5,
    PAGE_EXECUTE_READWRITE: 7,
}
# copy-on-write pages read as these until written, and become the writable variant
# protections a private commit takes as they are (no modifier, no copy-on-write)
PLAIN_PROTECTIONS = frozenset(
    (PAGE_NOACCESS, PAGE_READONLY, PAGE_READWRITE, PAGE_EXECUTE, PAGE_EXECUTE_READ,
     PAGE_EXECUTE_READWRITE)
)  # fmt: skip
_COPY_ON_WRITE = {PAGE_WRITECOPY: PAGE_READWRITE, PAGE_EXECUTE_WRITECOPY: PAGE_EXECUTE_READWRITE}
_READ_ONLY_VARIANT = {
    PAGE_READWRITE: PAGE_READONLY,
    PAGE_WRITECOPY: PAGE_READONLY,
    PAGE_EXECUTE_READWRITE: PAGE_EXECUTE_READ,
    PAGE_EXECUTE_WRITECOPY: PAGE_EXECUTE_READ,
}
# an image page asked to be writable is copy-on-write (Windows' MiMakeProtectionMask for images)
IMAGE_WRITE_AS_COPY = {
    PAGE_READWRITE: PAGE_WRITECOPY,
    PAGE_EXECUTE_READWRITE: PAGE_EXECUTE_WRITECOPY,
}


def align_down(value: int, alignment: int) -> int:
    return value & ~(alignment - 1)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def protection_compatible(allowed: int, wanted: int) -> bool:
    """Can a page of a view whose protection is ``allowed`` be given ``wanted``? (The access
    ``wanted`` needs is a subset of what ``allowed`` grants; copy-on-write needs only read.)"""
    return _ACCESS[wanted & 0xFF] & ~_ACCESS[allowed & 0xFF] == 0


# ---------------------------------------------------------------------------------- page runs
class PageRuns:
    """Run-length states of a region's pages: run ``k`` covers pages ``starts[k]`` up to the
    next start with ``states[k]``. Host memory grows with the number of runs, never with the
    number of pages."""

    __slots__ = ("count", "starts", "states")

    def __init__(self, count: int, state: int = RESERVED):
        self.count = count
        self.starts = [0]
        self.states = [state]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        """Every page's state, in order (for small regions and tests)."""
        for _, a, b, state in self.runs(0, self.count):
            yield from [state] * (b - a)

    def get(self, i: int) -> int:
        return self.states[bisect.bisect_right(self.starts, i) - 1]

    def uniform(self, i0: int, i1: int) -> int | None:
        """The state of pages [i0, i1) when one run holds them all (else None): the common
        case of the kernel's probes, answered without walking runs."""
        starts = self.starts
        k = bisect.bisect_right(starts, i0) - 1
        end = starts[k + 1] if k + 1 < len(starts) else self.count
        return self.states[k] if i1 <= end else None

    def run_end(self, i: int) -> int:
        """The first page after the run holding page ``i``."""
        k = bisect.bisect_right(self.starts, i)
        return self.starts[k] if k < len(self.starts) else self.count

    def runs(self, i0: int, i1: int) -> Iterator[tuple[int, int, int, int]]:
        """(run index, first, end, state) of the runs over pages [i0, i1), clipped."""
        starts, states, n = self.starts, self.states, len(self.starts)
        k = bisect.bisect_right(starts, i0) - 1
        while k < n and starts[k] < i1:
            end = starts[k + 1] if k + 1 < n else self.count
            yield k, max(starts[k], i0), min(end, i1), states[k]
            k += 1

    def set(self, i0: int, i1: int, state: int) -> None:
        """Pages [i0, i1) take ``state``; neighbouring runs of the same state merge."""
        if i0 >= i1:
            return
        starts, states = self.starts, self.states
        if i0 == 0 and i1 >= self.count:  # every page: one run (a whole allocation)
            del starts[1:], states[1:]
            states[0] = state
            return
        # the state that continues after i1, then drop every run start inside (i0, i1]
        after = self.get(i1) if i1 < self.count else None
        k0 = bisect.bisect_right(starts, i0)
        k1 = bisect.bisect_right(starts, i1)
        del starts[k0:k1]
        del states[k0:k1]
        if starts[k0 - 1] == i0:  # the run starting at i0 is replaced
            states[k0 - 1] = state
            k = k0 - 1
        else:
            starts.insert(k0, i0)
            states.insert(k0, state)
            k = k0
        if after is not None and after != state:
            starts.insert(k + 1, i1)
            states.insert(k + 1, after)
        # merge with the previous and next runs
        if k > 0 and states[k - 1] == state:
            del starts[k]
            del states[k]
            k -= 1
        if k + 1 < len(starts) and states[k + 1] == state:
            del starts[k + 1]
            del states[k + 1]

    def slice(self, i0: int, i1: int) -> PageRuns:
        """A new PageRuns for pages [i0, i1), rebased to 0."""
        out = PageRuns(max(i1 - i0, 0))
        if i1 <= i0:
            return out
        out.starts, out.states = [], []
        for _, a, _b, state in self.runs(i0, i1):
            if out.states and out.states[-1] == state:
                continue
            out.starts.append(a - i0)
            out.states.append(state)
        return out

    def count_reserved(self, i0: int, i1: int) -> int:
        return sum(b - a for _, a, b, s in self.runs(i0, i1) if s == RESERVED)

    def all(self, i0: int, i1: int, predicate: Any) -> bool:
        return all(predicate(s) for _, _, _, s in self.runs(i0, i1))


# ---------------------------------------------------------------------------------- regions
@dataclass
class ViewInfo:
    """What a mapped view (MEM_MAPPED) or image view (MEM_IMAGE) was made from."""

    section: Any = None  # the SectionObject (emu.nt.objects), when a system call mapped it
    file_key: str | None = None  # identity of the backing file (None: pagefile-backed)
    image: bool = False
    module: Any = None  # the Module record of an image view, if any
    shared: bool = False  # its pages are the section's (Cpu.share), not a copy of them
    offset: int = 0  # where in the section the view starts
    # a SEC_RESERVE section's committed pages (one PageRuns over the section, COMMITTED or
    # RESERVED, shared by all its views): on Windows committing is the section's business
    # (its prototype PTEs), so a page committed through one view is committed in every view
    commits: PageRuns | None = None


@dataclass(eq=False)
class Region:
    """One allocation (VAD). ``pages`` holds each page's state: RESERVED or its protection."""

    base: int
    size: int
    allocation_protect: int
    type: int = MEM_PRIVATE
    usage: str = ""
    pages: PageRuns = field(default_factory=lambda: PageRuns(0))
    secured: bool = False  # kernel-owned (KUSER_SHARED_DATA, heapemu's trap page)
    write_watch: bool = False  # MEM_WRITE_WATCH: ``dirty`` holds the pages written since reset
    dirty: set[int] = field(default_factory=set)
    view: ViewInfo | None = None
    placeholder: bool = False  # MEM_RESERVE_PLACEHOLDER (NtAllocateVirtualMemoryEx)
    from_placeholder: bool = False  # an allocation that replaced a placeholder
    # pages of a view that have their own copy (written while copy-on-write): a later
    # PAGE_WRITECOPY on them is PAGE_READWRITE, as Windows reports
    copied: set[int] = field(default_factory=set)
    locked: set[int] = field(default_factory=set)  # NtLockVirtualMemory'd pages

    @property
    def end(self) -> int:
        return self.base + self.size

    def page_index(self, addr: int) -> int:
        return (addr - self.base) // PAGE_SIZE

    @property
    def committed_bytes(self) -> int:
        return PAGE_SIZE * (self.pages.count - self.pages.count_reserved(0, self.pages.count))

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """(start address, size, page state) of each run of identical pages."""
        for _, a, b, state in self.pages.runs(0, self.pages.count):
            yield self.base + a * PAGE_SIZE, (b - a) * PAGE_SIZE, state


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


# ---------------------------------------------------------------------------------- free space
class FreeSpace:
    """The gaps between regions, indexed by usable size.

    A gap's usable size is what a reservation aligned to the allocation granularity can take
    from it. Gaps are kept in address order, and in one sorted list per size class (the bit
    length of the usable size): a search looks at the first candidate of each class large
    enough, so its cost depends on the number of size classes, not on the number of regions.
    Gaps too small for any reservation (the rest of a 64 KiB granule) are in class 0 and never
    looked at.
    """

    def __init__(self, lo: int, hi: int):
        self.starts: list[int] = []  # every gap, by address
        self.end: dict[int, int] = {}
        self.by_end: dict[int, int] = {}
        self.classes: dict[int, list[int]] = {}  # size class -> sorted gap starts
        self.add(lo, hi)

    @staticmethod
    def usable(start: int, end: int) -> int:
        return max(0, end - align_up(start, ALLOCATION_GRANULARITY))

    def add(self, start: int, end: int) -> None:
        """Free [start, end), merging with the gaps on either side."""
        left = self.by_end.get(start)
        if left is not None:
            self._drop(left)
            start = left
        if end in self.end:
            right_end = self.end[end]
            self._drop(end)
            end = right_end
        bisect.insort(self.starts, start)
        self.end[start] = end
        self.by_end[end] = start
        bisect.insort(self.classes.setdefault(self.usable(start, end).bit_length(), []), start)

    def take(self, start: int, end: int) -> None:
        """[start, end) is no longer free (it must lie in one gap)."""
        i = bisect.bisect_right(self.starts, start) - 1
        gap = self.starts[i]
        gap_end = self.end[gap]
        assert gap <= start and end <= gap_end, "taking space that is not free"
        self._drop(gap)
        if gap < start:
            self._insert(gap, start)
        if end < gap_end:
            self._insert(end, gap_end)

    def _insert(self, start: int, end: int) -> None:
        bisect.insort(self.starts, start)
        self.end[start] = end
        self.by_end[end] = start
        bisect.insort(self.classes.setdefault(self.usable(start, end).bit_length(), []), start)

    def _drop(self, start: int) -> None:
        end = self.end.pop(start)
        del self.by_end[end]
        del self.starts[bisect.bisect_left(self.starts, start)]
        cls = self.classes[self.usable(start, end).bit_length()]
        del cls[bisect.bisect_left(cls, start)]

    def find(self, size: int, lo: int, hi: int, align: int, top_down: bool) -> int | None:
        """The lowest (or highest) ``align``-aligned address ``a`` with [a, a+size) free and
        inside [lo, hi)."""
        best: int | None = None
        need = size.bit_length()
        for cls_id, gaps in self.classes.items():
            if cls_id < need or not gaps:
                continue
            if top_down:
                k = bisect.bisect_left(gaps, hi) - 1
                while k >= 0:
                    start = gaps[k]
                    if best is not None and self.end[start] <= best:
                        break
                    cand = align_down(min(self.end[start], hi) - size, align)
                    if cand >= max(start, lo) and cand + size <= hi:
                        if best is None or cand > best:
                            best = cand
                        break
                    if self.end[start] <= lo:
                        break
                    k -= 1
            else:
                k = bisect.bisect_right(gaps, lo) - 1
                k = max(k, 0)
                while k < len(gaps):
                    start = gaps[k]
                    if start >= hi or (best is not None and start >= best):
                        break
                    cand = align_up(max(start, lo), align)
                    if cand + size <= min(self.end[start], hi):
                        if best is None or cand < best:
                            best = cand
                        break
                    k += 1
        return best


# ---------------------------------------------------------------------------------- manager
class MemoryManager:
    """Reserve, commit, decommit, release, protect and query, at Windows granularity."""

    def __init__(self, cpu: Cpu, arch: Arch):
        self.cpu = cpu
        self.arch = arch
        self._bases: list[int] = []  # sorted region bases
        self._regions: dict[int, Region] = {}
        self.free_space = FreeSpace(arch.user_min, arch.user_max + 1)
        self.commit_limit = 16 << 30  # bytes; Unicorn backs committed pages with host memory
        self.region_limit = 1 << 17  # regions; each costs about 1 KiB of host memory
        self.committed = 0  # bytes committed in the whole address space
        self.reserved = 0  # bytes of address space in regions
        self.peak_committed = 0
        self.peak_reserved = 0

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

    def _find_free(
        self,
        size: int,
        top_down: bool,
        lowest: int | None = None,
        highest: int | None = None,
        align: int = ALLOCATION_GRANULARITY,
    ) -> int:
        lo = max(self.arch.user_min, lowest or 0)
        hi = min(self.arch.user_max, self.arch.user_max if highest is None else highest) + 1
        found = self.free_space.find(size, lo, hi, align, top_down)
        if found is None:
            raise NtStatusError(NtStatus.NO_MEMORY, f"no free range of 0x{size:x} bytes")
        return found

    # ------------------------------------------------------------------ checks
    def _check_commit(self, new_bytes: int) -> None:
        """Windows refuses commits beyond the commit limit (RAM + page file) with
        STATUS_COMMITMENT_LIMIT; ours is ``commit_limit`` bytes of committed memory."""
        if self.committed + new_bytes > self.commit_limit:
            raise NtStatusError(
                NtStatus.COMMITMENT_LIMIT,
                f"committing 0x{new_bytes:x} more bytes would pass the "
                f"0x{self.commit_limit:x}-byte commit limit",
            )

    def _check_region_count(self, more: int = 1) -> None:
        if len(self._bases) + more > self.region_limit:
            raise NtStatusError(
                NtStatus.NO_MEMORY,
                f"heapemu keeps at most {self.region_limit} regions (region_limit)",
            )

    @staticmethod
    def _check_protection(protect: int, type: int) -> None:
        if not is_valid_protection(protect):
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{protect:x}")
        if type == MEM_PRIVATE and protect & 0xFF in _COPY_ON_WRITE:
            # copy-on-write needs something to copy from: refused for private memory
            raise NtStatusError(
                NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{protect:x} on private memory"
            )

    # ------------------------------------------------------------------ operations
    def allocate(
        self,
        base: int,
        size: int,
        allocation_type: int,
        protect: int,
        *,
        type: int = MEM_PRIVATE,
        usage: str = "",
        highest: int | None = None,
        lowest: int | None = None,
        alignment: int = ALLOCATION_GRANULARITY,
        secured: bool = False,
        write_watch: bool = False,
        view: ViewInfo | None = None,
        placeholder: bool = False,
        user: bool = False,
    ) -> tuple[int, int]:
        """NtAllocateVirtualMemory semantics: returns the rounded (base, size).

        ``highest``/``lowest`` bound a reservation (ZeroBits, address requirements),
        ``secured`` makes a region emulated code cannot free or reprotect, ``user`` applies
        the rules Windows applies to user-mode requests."""
        reserve = bool(allocation_type & MEM_RESERVE) or (
            # MEM_COMMIT alone at a NULL base reserves and commits (VirtualAlloc behaviour)
            base == 0 and bool(allocation_type & MEM_COMMIT)
        )
        # a commit is checked against the allocation it lands in (copy-on-write is refused
        # for private memory only: a pagefile-backed view commits PAGE_WRITECOPY)
        self._check_protection(protect, type if reserve else MEM_MAPPED)
        if size <= 0:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "region size is 0")
        user_end = self.arch.user_max + 1
        if base and not (self.arch.user_min <= base < user_end):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"base 0x{base:x} not in user space")
        if not reserve:
            return self._commit(base, size, protect, user)
        if base:
            start = align_down(base, alignment)
            end = align_up(base + size, PAGE_SIZE)
            if end > user_end or end < start:
                raise NtStatusError(NtStatus.INVALID_PARAMETER_4, "range past user space")
            if self._overlaps(start, end):
                raise NtStatusError(
                    NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x}-0x{end:x} is in use"
                )
        else:
            length = align_up(size, PAGE_SIZE)
            if length > user_end - self.arch.user_min:
                raise NtStatusError(NtStatus.NO_MEMORY, f"0x{size:x} bytes cannot fit")
            top_down = bool(allocation_type & MEM_TOP_DOWN)
            start = self._find_free(length, top_down, lowest, highest, alignment)
            end = start + length
        self._check_region_count()
        commit = bool(allocation_type & MEM_COMMIT)
        if commit:
            self._check_commit(end - start)
        region = Region(
            start,
            end - start,
            protect,
            type,
            usage,
            PageRuns((end - start) // PAGE_SIZE),
            secured=secured,
            write_watch=write_watch,
            view=view,
            placeholder=placeholder,
        )
        self._insert(region)
        if commit:
            try:
                self._set_pages(region, 0, region.pages.count, protect)
            except NtStatusError:
                self._remove(region)
                raise
        return start, end - start

    def _commit(self, base: int, size: int, protect: int, user: bool) -> tuple[int, int]:
        """MEM_COMMIT inside an existing reservation."""
        start = align_down(base, PAGE_SIZE)
        end = align_up(base + size, PAGE_SIZE)
        region = self.region_at(start)
        if region is None:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x} is not reserved")
        if end > region.end or end < start:
            raise NtStatusError(
                NtStatus.CONFLICTING_ADDRESSES,
                f"0x{start:x}-0x{end:x} runs past the allocation ending at 0x{region.end:x}",
            )
        if user:
            self._check_user_commit(region, protect)
            if region.type != MEM_PRIVATE and protect & 0xFF != PAGE_NOACCESS:
                # a view's caching attribute is its section's: committed pages keep it
                # (Wine's kernel32 virtual.c test_MapViewOfFile, SEC_NOCACHE, on Windows)
                protect |= region.allocation_protect & CACHE_ATTRIBUTES
        self._check_protection(protect, region.type)
        i0, i1 = region.page_index(start), region.page_index(end)
        self._check_commit(PAGE_SIZE * region.pages.count_reserved(i0, i1))
        self._set_pages(region, i0, i1, protect)
        if region.view is not None and region.view.commits is not None:
            self._commit_in_section(region, region.view, i0, i1, protect)
        return start, end - start

    def _commit_in_section(self, region: Region, view: ViewInfo, i0: int, i1: int,
                           protect: int) -> None:  # fmt: skip
        """Pages [i0, i1) of a SEC_RESERVE section's view were committed: the section's pages
        are committed, so the other views show them committed (with the committing
        protection where the view allows it, else the view's own)."""
        commits = view.commits
        assert commits is not None
        first = view.offset // PAGE_SIZE
        s0, s1 = first + i0, min(first + i1, commits.count)
        commits.set(s0, s1, COMMITTED)
        section = view.section
        views = section.extra.get("view_offsets", {}) if section is not None else {}
        for base, offset in views.items():
            other = self.region_at(base)
            if other is None or other is region or other.base != base or other.view is None:
                continue
            if other.view.commits is not commits:
                continue
            o = offset // PAGE_SIZE
            j0, j1 = max(s0, o) - o, min(s1, o + other.pages.count) - o
            if j0 >= j1:
                continue
            prot = protect
            if not protection_compatible(other.allocation_protect, protect):
                prot = other.allocation_protect & ~CACHE_ATTRIBUTES
            for _, a, b, state in list(other.pages.runs(j0, j1)):
                if state == RESERVED:
                    self._check_commit((b - a) * PAGE_SIZE)
                    self._set_pages(other, a, b, prot)

    @staticmethod
    def _check_user_commit(region: Region, protect: int) -> None:
        """Windows' rules for committing in an allocation it did not make private."""
        if region.secured:
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, "kernel-owned page")
        if region.placeholder:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "a placeholder cannot commit")
        if region.type == MEM_PRIVATE:
            return
        view = region.view
        if region.type == MEM_IMAGE or (view is not None and view.file_key is not None):
            # only pagefile-backed sections can be committed (MiAllocateVirtualMemory)
            raise NtStatusError(NtStatus.ALREADY_COMMITTED, "file-backed view or image")
        if protect & CACHE_ATTRIBUTES or not protection_compatible(
            region.allocation_protect, protect
        ):
            raise NtStatusError(
                NtStatus.INVALID_PAGE_PROTECTION,
                f"0x{protect:x} exceeds the view's 0x{region.allocation_protect:x}",
            )

    # ------------------------------------------------------------------ the common shapes
    def commit_private(self, start: int, end: int, protect: int) -> bool:
        """A user's MEM_COMMIT of the whole pages [start, end) (page-aligned, start < end)
        with one of the plain protections (no modifier, no copy-on-write), done as
        ``allocate`` would do it when the pages lie in one private allocation that is
        neither kernel-owned nor a placeholder: every check it makes passes then, and only
        the commit charge is left to check. False, with nothing changed, for any other
        shape or an error: ``allocate`` then answers (the system call's general path)."""
        region = self.region_at(start)
        if (
            protect not in PLAIN_PROTECTIONS
            or region is None
            or end > region.base + region.size
            or region.type != MEM_PRIVATE
            or region.secured
            or region.placeholder
        ):
            return False
        pages = region.pages
        i0, i1 = (start - region.base) >> 12, (end - region.base) >> 12
        state = pages.uniform(i0, i1)
        if state is None:
            charge = pages.count_reserved(i0, i1)
        else:
            charge = i1 - i0 if state == RESERVED else 0
        if self.committed + PAGE_SIZE * charge > self.commit_limit:
            return False
        self._set_pages(region, i0, i1, protect)
        return True

    def decommit_private(self, start: int, end: int) -> bool:
        """A user's MEM_DECOMMIT of the whole pages [start, end) (page-aligned, start < end),
        done as ``free`` would do it when they lie in one private allocation that is not
        kernel-owned; False, with nothing changed, otherwise (``free`` then answers)."""
        region = self.region_at(start)
        if (
            region is None
            or end > region.base + region.size
            or region.type != MEM_PRIVATE
            or region.secured
        ):
            return False
        base = region.base
        self._set_pages(region, (start - base) >> 12, (end - base) >> 12, RESERVED)
        return True

    def free(self, base: int, size: int, free_type: int, *, user: bool = False) -> tuple[int, int]:
        """NtFreeVirtualMemory semantics for MEM_DECOMMIT and MEM_RELEASE: returns the
        (base, size) written back. MEM_DECOMMIT with size 0 answers size 0, as Windows 10."""
        if free_type not in (MEM_DECOMMIT, MEM_RELEASE):
            raise NtStatusError(NtStatus.INVALID_PARAMETER_4, f"free type 0x{free_type:x}")
        if base > self.arch.user_max:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_2, f"0x{base:x} not in user space")
        if size > self.arch.user_max + 1 - base:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_3, f"0x{size:x} bytes at 0x{base:x}")
        start = align_down(base, PAGE_SIZE)
        region = self.region_at(start)
        if region is None:
            raise NtStatusError(NtStatus.MEMORY_NOT_ALLOCATED, f"0x{base:x} is not allocated")
        if region.type != MEM_PRIVATE:
            # views and images go with NtUnmapViewOfSection (MiDeleteVirtualMemory's check)
            raise NtStatusError(NtStatus.UNABLE_TO_DELETE_SECTION, f"0x{base:x} is a view")
        if user and region.secured:
            # a secured (NoChange) VAD: MiCheckSecuredVad refuses the deletion
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, "kernel-owned page")
        if size == 0:
            # the whole allocation, named by its base (any address in its first page)
            if start != region.base:
                raise NtStatusError(
                    NtStatus.FREE_VM_NOT_AT_BASE,
                    f"0x{base:x} is not the allocation base 0x{region.base:x}",
                )
            if free_type == MEM_RELEASE:
                self._release(region)
                return region.base, region.size
            self._set_pages(region, 0, region.pages.count, RESERVED)
            return region.base, 0
        end = align_up(base + size, PAGE_SIZE)
        if end > region.end:
            raise NtStatusError(
                NtStatus.UNABLE_TO_FREE_VM,
                f"0x{start:x}-0x{end:x} runs past the allocation ending at 0x{region.end:x}",
            )
        if free_type == MEM_RELEASE:
            if start == region.base and end == region.end:
                self._release(region)
            else:
                self._release_part(region, start, end)
            return start, end - start
        self._set_pages(region, region.page_index(start), region.page_index(end), RESERVED)
        return start, end - start

    def release_view(self, base: int) -> Region:
        """Unmap a whole view or image (NtUnmapViewOfSection: any address inside names it, a
        failed image load): NtFreeVirtualMemory refuses these regions."""
        region = self.region_at(base)
        if region is None or region.type == MEM_PRIVATE:
            raise NtStatusError(NtStatus.NOT_MAPPED_VIEW, f"no view at 0x{base:x}")
        self._release(region)
        return region

    def protect(
        self, base: int, size: int, new_protect: int, *, user: bool = False
    ) -> tuple[int, int, int]:
        """NtProtectVirtualMemory semantics: returns (base, size, old protection of 1st page)."""
        if not is_valid_protection(new_protect):
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, f"protection 0x{new_protect:x}")
        start = align_down(base, PAGE_SIZE)
        end = align_up(base + max(size, 1), PAGE_SIZE)
        region = self.region_at(start)
        if region is None:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x} is not allocated")
        if end > region.end or end < start:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "range runs past the allocation")
        i0, i1 = region.page_index(start), region.page_index(end)
        if not region.pages.all(i0, i1, lambda s: s != RESERVED):
            raise NtStatusError(NtStatus.NOT_COMMITTED, "range includes uncommitted pages")
        if user:
            new_protect = self._user_protection(region, new_protect)
        old = region.pages.get(i0)
        self._set_pages(region, i0, i1, new_protect)
        private = _COPY_ON_WRITE.get(new_protect & 0xFF)
        if private is not None and region.copied:
            # a page that already has its own copy is not copy-on-write again: asked for
            # PAGE_(EXECUTE_)WRITECOPY it is PAGE_(EXECUTE_)READWRITE (Wine's kernel32
            # virtual.c, test_mappings: map_prot_written, on Windows)
            for i in sorted(i for i in region.copied if i0 <= i < i1):
                self._set_pages(region, i, i + 1, private | (new_protect & ~0xFF))
        return start, end - start, old

    def _lock_range(self, base: int, size: int) -> tuple[Region, int, int]:
        """The allocation and page indices [i0, i1) of a lock or unlock request: one
        allocation, every page committed (else STATUS_ACCESS_VIOLATION: locking probes the
        pages as the program would touch them)."""
        start = align_down(base, PAGE_SIZE)
        end = align_up(base + max(size, 1), PAGE_SIZE)
        region = self.region_at(start)
        if region is None or end > region.end or end < start:
            raise NtStatusError(NtStatus.ACCESS_VIOLATION, f"0x{start:x}-0x{end:x} not allocated")
        i0, i1 = region.page_index(start), region.page_index(end)
        if not region.pages.all(i0, i1, lambda s: s != RESERVED and s & 0xFF != PAGE_NOACCESS):
            raise NtStatusError(NtStatus.ACCESS_VIOLATION, "range includes inaccessible pages")
        return region, i0, i1

    def lock(self, base: int, size: int) -> tuple[int, int, int]:
        """NtLockVirtualMemory(MAP_PROCESS): (status, base, size). Locking touches every page:
        the first guard page met loses its guard and the call fails with
        STATUS_GUARD_PAGE_VIOLATION, nothing locked (Wine's kernel32 virtual.c test_guard_page
        on Windows: a second call succeeds); the touch is a read, no write watch fires.
        STATUS_WAS_LOCKED when every page already was."""
        region, i0, i1 = self._lock_range(base, size)
        for _, a, _b, state in region.pages.runs(i0, i1):
            if state & PAGE_GUARD:
                self._set_pages(region, a, a + 1, state & ~PAGE_GUARD)
                return NtStatus.GUARD_PAGE_VIOLATION, 0, 0
        pages = set(range(i0, i1))
        status = NtStatus.WAS_LOCKED if pages <= region.locked else NtStatus.SUCCESS
        region.locked |= pages
        return status, region.base + i0 * PAGE_SIZE, (i1 - i0) * PAGE_SIZE

    def unlock(self, base: int, size: int) -> tuple[int, int]:
        """NtUnlockVirtualMemory(MAP_PROCESS): STATUS_NOT_LOCKED unless every page is locked."""
        region, i0, i1 = self._lock_range(base, size)
        pages = set(range(i0, i1))
        if not pages <= region.locked:
            raise NtStatusError(NtStatus.NOT_LOCKED, "range includes pages not locked")
        region.locked -= pages
        return region.base + i0 * PAGE_SIZE, (i1 - i0) * PAGE_SIZE

    def _user_protection(self, region: Region, protect: int) -> int:
        """The protection a user-mode NtProtectVirtualMemory really sets, or its refusal."""
        if region.secured:
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, "kernel-owned page")
        base, mods = protect & 0xFF, protect & ~0xFF
        if region.type == MEM_PRIVATE:
            self._check_protection(protect, MEM_PRIVATE)
            # caching is an attribute of the allocation, not of a page: the allocation's
            # NOCACHE/WRITECOMBINE stays, a new one is ignored
            cache = region.allocation_protect & CACHE_ATTRIBUTES
            if base == PAGE_NOACCESS or mods & PAGE_GUARD:
                return protect & ~CACHE_ATTRIBUTES
            return (protect & ~CACHE_ATTRIBUTES) | cache
        if mods & CACHE_ATTRIBUTES:  # "the no cache option is not allowed for sections"
            raise NtStatusError(NtStatus.INVALID_PAGE_PROTECTION, "PAGE_NOCACHE on a view")
        if region.type == MEM_IMAGE:
            base = IMAGE_WRITE_AS_COPY.get(base, base)
        if not protection_compatible(region.allocation_protect, base):
            raise NtStatusError(
                NtStatus.INVALID_PAGE_PROTECTION,
                f"0x{protect:x} exceeds the view's 0x{region.allocation_protect:x}",
            )
        return base | mods

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
        state = region.pages.get(i)
        j = region.pages.run_end(i)
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
        return None if region is None else region.pages.get(region.page_index(addr))

    def is_committed(self, addr: int, size: int) -> bool:
        """Is every page of [addr, addr+size) committed and not a guard page (what Python may
        read and write like a debugger)?"""
        return self._every_page(addr, addr + size, _mapped)

    def _every_page(self, addr: int, end: int, ok: Callable[[int], bool]) -> bool:
        """Does ``ok(state)`` hold for every page of [addr, end) (False where one is free)?"""
        region = self.region_at(addr)
        if region is not None and end <= region.end:  # one region, usually one run
            state = region.pages.uniform(region.page_index(addr), region.page_index(end - 1) + 1)
            if state is not None:
                return ok(state)
        while addr < end:
            region = self.region_at(addr)
            if region is None:
                return False
            i0 = region.page_index(addr)
            i1 = region.page_index(min(end, region.end) - 1) + 1
            for _, _, _, state in region.pages.runs(i0, i1):
                if not ok(state):
                    return False
            addr = region.end
        return True

    def committed_runs(self) -> list[tuple[int, int]]:
        """(address, size) of every run of committed pages, guard pages included (their
        contents are kept), in address order: the process's memory, for snapshots."""
        out = []
        for base in self._bases:
            region = self._regions[base]
            for _, i, j, state in region.pages.runs(0, region.pages.count):
                if state != RESERVED:
                    out.append((base + i * PAGE_SIZE, (j - i) * PAGE_SIZE))
        return out

    def is_accessible(self, addr: int, size: int, *, write: bool = False) -> bool:
        """Would user-mode code be allowed this access (the kernel's ProbeForRead/Write)?"""
        if size <= 0:
            return True
        end = addr + size
        if addr < self.arch.user_min or end - 1 > self.arch.user_max:
            return False
        # the common case inline (a system call's in/out pointers: one region, one run)
        bases = self._bases
        k = bisect.bisect_right(bases, addr) - 1
        if k >= 0:
            region = self._regions[bases[k]]
            base = region.base
            if end <= base + region.size:
                state = region.pages.uniform((addr - base) >> 12, ((end - 1 - base) >> 12) + 1)
                if state is not None:
                    return bool(state) and protection_allows(state, write=write)
        return self._every_page(
            addr, end, lambda state: bool(state) and protection_allows(state, write=write)
        )

    def plain_access(self, addr: int, size: int, *, write: bool) -> bool:
        """True when user mode may access [addr, addr+size) (size > 0) and the range lies in
        one run of one plain private allocation (no write watch; private memory is never
        copy-on-write): the kernel then reads or writes it with no probe failure and nothing
        for ``note_write`` to record. False means: ask ``is_accessible`` and ``note_write``."""
        bases = self._bases
        k = bisect.bisect_right(bases, addr) - 1
        if k < 0 or size <= 0 or addr < self.arch.user_min:
            return False
        region = self._regions[bases[k]]
        base, end = region.base, addr + size
        if end > base + region.size or region.write_watch or region.type != MEM_PRIVATE:
            return False
        state = region.pages.uniform((addr - base) >> 12, ((end - 1 - base) >> 12) + 1)
        return state is not None and state != RESERVED and protection_allows(state, write=write)

    def clear_guard(self, addr: int) -> bool:
        """Windows clears PAGE_GUARD on first touch (STATUS_GUARD_PAGE_VIOLATION). Returns True
        if the page holding addr was a guard page (now mapped with its base protection)."""
        region = self.region_at(addr)
        if region is None:
            return False
        i = region.page_index(addr)
        state = region.pages.get(i)
        if state == RESERVED or not state & PAGE_GUARD:
            return False
        self._set_pages(region, i, i + 1, state & ~PAGE_GUARD)
        return True

    # ------------------------------------------------------------------ writes
    def cpu_protection(self, region: Region, i: int, state: int) -> int:
        """The protection page ``i`` is mapped with in the CPU: its Windows protection, but
        read-only while a first write must be seen (copy-on-write, a clean write-watch page)."""
        base = state & 0xFF
        if base in _COPY_ON_WRITE or (
            region.write_watch and i not in region.dirty and base in _READ_ONLY_VARIANT
        ):
            return _READ_ONLY_VARIANT[base]
        return base

    def cpu_protection_at(self, addr: int) -> int | None:
        """``cpu_protection`` of the page holding addr (None when nothing is committed)."""
        region = self.region_at(addr)
        if region is None:
            return None
        i = region.page_index(addr)
        state = region.pages.get(i)
        return self.cpu_protection(region, i, state) if _mapped(state) else None

    def fault_protections(self, addr: int) -> tuple[int | None, int | None]:
        """``page_state`` and ``cpu_protection_at`` of the page holding addr, in one lookup
        (what a TLB miss asks)."""
        region = self.region_at(addr)
        if region is None:
            return None, None
        i = region.page_index(addr)
        state = region.pages.get(i)
        return state, self.cpu_protection(region, i, state) if _mapped(state) else None

    def on_write_fault(self, addr: int) -> bool:
        """A write hit a page mapped read-only for bookkeeping: do what Windows does on that
        first write (mark it written, copy-on-write becomes writable) and say whether the
        write may proceed. False: a real protection fault."""
        region = self.region_at(addr)
        if region is None:
            return False
        i = region.page_index(addr)
        state = region.pages.get(i)
        if not _mapped(state) or not protection_allows(state, write=True):
            return False
        self._written(region, i, state)
        return True

    def note_write(self, addr: int, size: int) -> None:
        """The kernel wrote [addr, addr+size) on the program's behalf (a system call's output):
        the pages count as written, as they do on Windows (ReadFile triggers write watches)."""
        end = addr + size
        while addr < end:
            region = self.region_at(addr)
            if region is None:
                return
            last = min(end, region.end)
            if region.write_watch or region.type != MEM_PRIVATE:
                for i in range(region.page_index(addr), region.page_index(last - 1) + 1):
                    state = region.pages.get(i)
                    if _mapped(state) and (
                        state & 0xFF in _COPY_ON_WRITE
                        or (region.write_watch and i not in region.dirty)
                    ):
                        self._written(region, i, state)
            addr = last

    def _written(self, region: Region, i: int, state: int) -> None:
        if region.write_watch:
            region.dirty.add(i)
        new = _COPY_ON_WRITE.get(state & 0xFF)
        if new is not None:  # the page now has its own copy: PAGE_WRITECOPY -> PAGE_READWRITE
            region.copied.add(i)
            state = new | (state & ~0xFF)
            region.pages.set(i, i + 1, state)
        self.cpu.protect(
            region.base + i * PAGE_SIZE, PAGE_SIZE, self.cpu_protection(region, i, state)
        )

    def write_watch_pages(self, region: Region, i0: int, i1: int) -> list[int]:
        """Indices of the written pages in [i0, i1), in order."""
        return sorted(i for i in region.dirty if i0 <= i < i1)

    def reset_write_watch(self, region: Region, pages: list[int]) -> None:
        """Forget the writes to ``pages``: the next write to each is seen again."""
        for i in pages:
            region.dirty.discard(i)
            state = region.pages.get(i)
            if _mapped(state):
                addr = region.base + i * PAGE_SIZE
                self.cpu.protect(addr, PAGE_SIZE, self.cpu_protection(region, i, state))

    # ------------------------------------------------------------------ internals
    def _insert(self, region: Region) -> None:
        bisect.insort(self._bases, region.base)
        self._regions[region.base] = region
        self.free_space.take(region.base, region.end)
        self.reserved += region.size
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _remove(self, region: Region) -> None:
        del self._bases[bisect.bisect_left(self._bases, region.base)]
        del self._regions[region.base]
        self.free_space.add(region.base, region.end)
        self.reserved -= region.size

    def _release(self, region: Region) -> None:
        self._set_pages(region, 0, region.pages.count, RESERVED)
        self._remove(region)

    def _release_part(self, region: Region, start: int, end: int) -> None:
        """Release [start, end) of a private allocation: what remains on each side is an
        allocation of its own (its base is where it starts), released piece by piece."""
        i0, i1 = region.page_index(start), region.page_index(end)
        if i0 > 0 and i1 < region.pages.count:
            self._check_region_count()
        self._set_pages(region, i0, i1, RESERVED)
        self._split(region, [(0, i0), (i1, region.pages.count)])

    def _split(self, region: Region, pieces: list[tuple[int, int]]) -> list[Region]:
        """Replace ``region`` by allocations over its page ranges ``pieces`` (empty ones
        dropped); pages outside every piece become free address space."""
        self._remove(region)
        out = []
        for a, b in pieces:
            if a == b:
                continue
            piece = Region(
                region.base + a * PAGE_SIZE,
                (b - a) * PAGE_SIZE,
                region.allocation_protect,
                region.type,
                region.usage,
                region.pages.slice(a, b),
                region.secured,
                region.write_watch,
                {k - a for k in region.dirty if a <= k < b},
                region.view,
                region.placeholder,
                region.from_placeholder,
            )
            self._insert(piece)
            out.append(piece)
        return out

    # ------------------------------------------------------------------ placeholders
    def replace_placeholder(
        self, base: int, size: int, allocation_type: int, protect: int, *, write_watch: bool
    ) -> tuple[int, int]:
        """MEM_RESERVE | MEM_REPLACE_PLACEHOLDER: an allocation takes exactly the place of a
        placeholder."""
        self._check_protection(protect, MEM_PRIVATE)
        start, end = align_down(base, PAGE_SIZE), align_up(base + size, PAGE_SIZE)
        region = self.region_at(start)
        if region is None or not region.placeholder or (region.base, region.end) != (start, end):
            raise NtStatusError(
                NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x}-0x{end:x} is not a placeholder"
            )
        if allocation_type & MEM_COMMIT:
            self._check_commit(end - start)
        region.placeholder, region.from_placeholder = False, True
        region.allocation_protect, region.write_watch = protect, write_watch
        if allocation_type & MEM_COMMIT:
            self._set_pages(region, 0, region.pages.count, protect)
        return start, end - start

    def preserve_placeholder(self, base: int, size: int) -> tuple[int, int]:
        """MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER: split part of a placeholder off as a
        placeholder of its own, or turn an allocation made in a placeholder back into one."""
        if size == 0:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_3, "a placeholder split needs a size")
        start, end = align_down(base, PAGE_SIZE), align_up(base + size, PAGE_SIZE)
        region = self.region_at(start)
        if region is None:
            raise NtStatusError(NtStatus.MEMORY_NOT_ALLOCATED, f"0x{start:x} is not allocated")
        whole = (region.base, region.end) == (start, end)
        if end > region.end or (region.placeholder and whole):
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "not a part of a placeholder")
        if region.placeholder:
            self._check_region_count(2)
            i0, i1 = region.page_index(start), region.page_index(end)
            self._split(region, [(0, i0), (i0, i1), (i1, region.pages.count)])
        elif region.from_placeholder and whole:
            self._set_pages(region, 0, region.pages.count, RESERVED)
            region.placeholder, region.from_placeholder = True, False
            region.allocation_protect, region.write_watch = PAGE_NOACCESS, False
            region.dirty.clear()
        else:
            raise NtStatusError(NtStatus.CONFLICTING_ADDRESSES, "not made in a placeholder")
        return start, end - start

    def coalesce_placeholders(self, base: int, size: int) -> tuple[int, int]:
        """MEM_RELEASE | MEM_COALESCE_PLACEHOLDERS: adjacent placeholders covering exactly
        [base, base+size) become one."""
        if size == 0:
            raise NtStatusError(NtStatus.INVALID_PARAMETER_3, "coalescing needs a size")
        start, end = align_down(base, PAGE_SIZE), align_up(base + size, PAGE_SIZE)
        parts = []
        addr = start
        while addr < end:
            region = self.region_at(addr)
            if region is None or not region.placeholder or region.base != addr:
                break
            parts.append(region)
            addr = region.end
        if not parts or addr != end:
            raise NtStatusError(
                NtStatus.CONFLICTING_ADDRESSES, f"0x{start:x}-0x{end:x} is not placeholders"
            )
        for region in parts:
            self._remove(region)
        merged = Region(start, end - start, PAGE_NOACCESS, MEM_PRIVATE, parts[0].usage,
                        PageRuns((end - start) // PAGE_SIZE), placeholder=True)  # fmt: skip
        self._insert(merged)
        return start, end - start

    def _set_pages(self, region: Region, i0: int, i1: int, new: int) -> None:
        """Set pages [i0, i1) to ``new`` and bring the CPU in line, run by run (a run =
        consecutive pages in the same old state). The backing stays where it is: a commit
        backs its pages (fresh backing and decommitted pages read zero), a decommit zeroes
        them, any other change only drops the CPU's cached translations."""
        cpu = self.cpu
        changed = 0
        plain = region.type == MEM_PRIVATE and not region.write_watch
        pages = region.pages
        alone = pages.uniform(i0, i1)  # usually one run, old state: no generator then
        runs = (
            [(i0, i1, alone)]
            if alone is not None
            else [(i, j, old) for _, i, j, old in pages.runs(i0, i1)]
        )
        for i, j, old in runs:
            addr, length = region.base + i * PAGE_SIZE, (j - i) * PAGE_SIZE
            if new == RESERVED:
                if old != RESERVED:
                    cpu.decommit(addr, length)
                    if region.dirty:  # decommitted pages forget their writes
                        region.dirty.difference_update(range(i, j))
                    if region.locked:  # and are unlocked
                        region.locked.difference_update(range(i, j))
            elif old == RESERVED:
                try:
                    cpu.ensure_backed(addr, length)
                except CpuError as e:  # the host cannot back it
                    raise NtStatusError(
                        NtStatus.COMMITMENT_LIMIT, f"cannot commit 0x{length:x} bytes: {e}"
                    ) from None
                if plain and _mapped(new):
                    # what the page-fault handler will answer for these pages (no guard, no
                    # first write to watch), cached now: their first accesses need no Python
                    cpu.prime(addr, length, new)
            elif _mapped(old) != _mapped(new):  # a guard page set or cleared: ask again
                cpu.protect(addr, length, new)
            else:
                for a, b in self._cpu_runs(region, i, j, old, new):
                    cpu.protect(region.base + a * PAGE_SIZE, (b - a) * PAGE_SIZE,
                                self.cpu_protection(region, a, new))  # fmt: skip
            if (old == RESERVED) != (new == RESERVED):
                changed += length if old == RESERVED else -length
        pages.set(i0, i1, new)
        self.committed += changed
        self.peak_committed = max(self.peak_committed, self.committed)

    def _cpu_runs(
        self, region: Region, i: int, j: int, old: int | None, new: int
    ) -> Iterator[tuple[int, int]]:
        """Sub-runs of pages [i, j) with one CPU protection each under ``new`` (and a changed
        one, when ``old`` is given). Only write-watched regions have more than one."""
        if not region.write_watch:
            if old is None or self.cpu_protection(region, i, old) != self.cpu_protection(
                region, i, new
            ):
                yield i, j
            return
        a = i
        while a < j:
            prot = self.cpu_protection(region, a, new)
            b = a + 1
            while b < j and self.cpu_protection(region, b, new) == prot:
                b += 1
            if old is None or any(self.cpu_protection(region, k, old) != prot for k in range(a, b)):
                yield a, b
            a = b
