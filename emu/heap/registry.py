"""The allocator kinds heapemu runs, one ``AllocatorKind`` entry each.

Every front end reads this table instead of comparing names: the CLI's ``--allocator`` choices,
the scenario schema, the pytest plugin's parameters, the views (through the kind's walker, which
also describes its structures), the benchmarks and the docs generator. Adding an allocator is
its code and loader, a walker, and one entry in ``ALLOCATORS`` (docs/architecture.md lists the
files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emu.heap.allocator import Allocator
from emu.heap.walkers import BuiltinWalker, HeapReport, HeapWalker, SegmentWalker, WineWalker
from emu.heap.walkers.segment_layout import (
    PARAMETERS_PEB_OFFSET,
    PARAMETERS_SIGNATURE,
    SEGHEAP_PARAMETERS,
)
from emu.heap.walkers.win7 import Win7Walker
from emu.load.builtin_heap import MODULE_NAME as BUILTIN_MODULE
from emu.load.builtin_heap import load_builtin_heap, load_c_heap
from emu.load.win7_heap import UNIT as WIN7_MODULE
from emu.load.win7_heap import load_win7_heap
from emu.load.wine_ntdll import load_wine_ntdll
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.ntdefs import HEAP_GROWABLE, MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE

SEGMENT_MODULE = "segheap"
# load_segment_heap's options: SEGHEAP_PARAMETERS fields (asm/src/segheap.h)
SEGMENT_OPTIONS = {
    "heap_key": "HeapKey",  # VS chunk headers, segment signatures
    "lfh_key": "LfhKey",  # LFH subsegments' BlockOffsets, free slots
    "seed": "RandomSeed",  # LFH slot choice (xorshift32)
    "lfh_max_size": "LfhMaxSize",  # largest LFH request (default 0x3FF0)
    "vs_max_size": "VsMaxSize",  # largest VS request (default 0x20000)
    "backend_max_size": "BackendMaxSize",  # larger ones are large blocks (default 0x7F000)
    "lfh_activation_live": "LfhActivationLive",  # live blocks activating a bucket (17)
    "lfh_activation_total": "LfhActivationTotal",  # requests activating a bucket (2040)
    "free_commit_limit": "FreeCommitLimit",  # freed back-end bytes kept committed (0x10000)
}


def load_segment_heap(
    proc: ProcessCore, *, create_process_heap: bool = True, **options: int
) -> Module:
    """heapemu's Windows 10 segment heap (``asm/src/segheap.c``) with its process heap.

    Options (``SEGMENT_OPTIONS``; none: segheap.h's defaults) become the process heap's
    SEGHEAP_PARAMETERS, passed as RtlCreateHeap's last argument (or, with
    ``create_process_heap=False``, left at PEB + PARAMETERS_PEB_OFFSET for the first
    RtlCreateHeap, a program's start-up's); heaps created later without parameters copy them
    from the process heap, as Windows' keys are process-wide. A threshold
    of 0 means its default; keys are taken as given."""
    unknown = sorted(set(options) - set(SEGMENT_OPTIONS))
    if unknown:
        raise TypeError(f"segment heap: no option {', '.join(unknown)}")
    if not options:
        return load_c_heap(proc, "segheap", SEGMENT_MODULE, create_process_heap=create_process_heap)
    module = load_c_heap(proc, "segheap", SEGMENT_MODULE, create_process_heap=False)
    layout = SEGHEAP_PARAMETERS
    values = {SEGMENT_OPTIONS[k]: v for k, v in options.items()}
    values |= {"Length": layout.size(proc.arch), "Signature": PARAMETERS_SIGNATURE}
    if not create_process_heap:
        # a program's start-up creates the process heap (without parameters): the first
        # RtlCreateHeap takes them from the PEB record (segheap.h)
        proc.write(proc.peb + PARAMETERS_PEB_OFFSET, layout.pack(proc.arch, values))
        return module
    page, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    try:
        proc.write(page, layout.pack(proc.arch, values))
        heap = proc.call(module.exports["RtlCreateHeap"], HEAP_GROWABLE, 0, 0, 0, 0, page)
    finally:
        proc.memory.free(page, 0, MEM_RELEASE)
    if not heap:
        raise ValueError(f"segment heap: RtlCreateHeap refused the options {options}")
    proc.set_process_heap(heap)
    return module


@dataclass(frozen=True)
class AllocatorKind:
    name: str  # what users type: --allocator NAME, allocator: NAME
    title: str  # how docs and reports name it
    module_name: str  # the module its code is loaded as
    walker: type[HeapWalker]  # reads its heaps from memory and describes its structures
    loader: Callable[..., Module]  # loader(proc, **options): maps it, creates the process heap
    downloads: bool  # needs Wine's DLLs (`make wine-dlls`, cached per user)
    heaps_in_peb: bool  # its RtlGetProcessHeaps reads PEB.ProcessHeaps (else: ask the allocator)
    options: tuple[str, ...] = ()  # keyword options its loader accepts
    # RtlCreateHeap honours a caller's base, reserve and commit (a heap without HEAP_GROWABLE
    # keeps to its reservation); the segment heap ignores them and always grows (segheap.c)
    honours_sizes: bool = True
    # it is Wine's ntdll itself: a program run through Wine's DLLs already uses it, nothing is
    # routed (the others take over ntdll's Rtl*Heap entry points: load_for_program)
    is_program_ntdll: bool = False
    # the C unit (asm/src/UNIT.c) its code is assembled from; None for a DLL. The same C also
    # builds for the host (tests/native), so what it does can be checked natively
    c_unit: str | None = None

    def load(self, proc: ProcessCore, **options: Any) -> Module:
        """Map this allocator into ``proc`` (and create the process heap, as Windows does)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"allocator {self.name!r} takes no option {', '.join(unknown)}")
        return self.loader(proc, **options)

    def load_for_program(self, proc: ProcessCore, **options: Any) -> Module:
        """Map this allocator's code into a program's process without creating a heap: the
        program's own start-up (Wine's ntdll, routed to it) creates the process heap."""
        if self.is_program_ntdll:
            raise ValueError(f"{self.name} is the program's own ntdll: there is nothing to load")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"allocator {self.name!r} takes no option {', '.join(unknown)}")
        return self.loader(proc, create_process_heap=False, **options)

    def allocator(self, proc: ProcessCore, **options: Any) -> Allocator:
        """Load it and return its entry points as an ``Allocator``."""
        return Allocator(proc, self.load(proc, **options), name=self.name)

    def list_heaps(self, proc: ProcessCore, allocator: Allocator | None = None) -> list[int]:
        """Every heap of the process, in the allocator's order (index = WinDbg's heap ID)."""
        if self.heaps_in_peb:
            return proc.process_heaps
        if allocator is None:
            module = proc.modules.get(self.module_name)
            if module is None:
                raise ValueError(f"{self.module_name} is not loaded")
            allocator = Allocator(proc, module, name=self.name)
        return allocator.process_heaps()


ALLOCATORS: dict[str, AllocatorKind] = {
    kind.name: kind
    for kind in (
        AllocatorKind(
            name="builtin",
            title="builtin heap (ntheap)",
            module_name=BUILTIN_MODULE,
            walker=BuiltinWalker,
            loader=load_builtin_heap,
            downloads=False,
            heaps_in_peb=True,
            c_unit="ntheap",
        ),
        AllocatorKind(
            name="wine",
            title="Wine 8.0 ntdll.dll",
            module_name="ntdll.dll",
            walker=WineWalker,
            loader=load_wine_ntdll,
            downloads=True,
            heaps_in_peb=False,  # Wine keeps its own list; only its RtlGetProcessHeaps reads it
            options=("wine_dir", "debug_channels"),
            is_program_ntdll=True,
        ),
        AllocatorKind(
            name="segment",
            title="Windows 10 segment heap (segheap)",
            module_name=SEGMENT_MODULE,
            walker=SegmentWalker,
            loader=load_segment_heap,
            downloads=False,
            heaps_in_peb=True,
            honours_sizes=False,
            options=tuple(SEGMENT_OPTIONS),
            c_unit="segheap",
        ),
        AllocatorKind(
            name="win7",
            title="Windows 7 NT heap + LFH",
            module_name=WIN7_MODULE,
            walker=Win7Walker,
            loader=load_win7_heap,  # load_c_heap(unit="win7heap") after writing the key record
            downloads=False,
            heaps_in_peb=True,
            options=("encoding", "lfh_key", "pointer_key"),
            c_unit=WIN7_MODULE,
        ),
    )
}
ALLOCATOR_NAMES: tuple[str, ...] = tuple(ALLOCATORS)


def allocator_kind(name: str) -> AllocatorKind:
    try:
        return ALLOCATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown allocator {name!r}: expected one of {', '.join(ALLOCATOR_NAMES)}"
        ) from None


def detect_kind(proc: ProcessCore) -> AllocatorKind:
    """The allocator serving ``proc``'s heaps: the one a program's heap calls were routed to
    (``proc.heap_kind``), else the one whose module is loaded (exactly one must be)."""
    if proc.heap_kind is not None:
        return allocator_kind(proc.heap_kind)
    loaded = {m.name.lower() for m in proc.modules}
    found = [k for k in ALLOCATORS.values() if k.module_name.lower() in loaded]
    if len(found) != 1:
        what = "more than one" if found else "none"
        names = " / ".join(k.module_name for k in ALLOCATORS.values())
        raise ValueError(f"{what} of {names} is loaded: name the allocator kind")
    return found[0]


def walk_heap(proc: ProcessCore, heap: int, kind: str | None = None) -> HeapReport:
    """Walk the heap at ``heap`` with its allocator's walker (``kind`` defaults to the loaded
    allocator's)."""
    k = detect_kind(proc) if kind is None else allocator_kind(kind)
    return k.walker(proc, heap).walk()
