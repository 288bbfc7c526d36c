"""``Process``: the public emulated process. ``ProcessCore`` (``emu.process``) is the machine —
address space, PEB/TEB, system calls, ``call``; the facade adds what a user reaches for on top
of it: loading code (PE images, flat assembly, the allocators of ``emu.heap.registry``) and
watching it (breakpoints, stacks, traces, memory watches, allocation events). Nothing below
this module imports it; the front ends above (views, scenarios, CLI, the pytest plugin) do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from emu.heap.registry import allocator_kind
from emu.load import program as _program
from emu.load.builtin_heap import load_builtin_heap
from emu.load.flat import load_flat
from emu.load.pe import hook_export, load_pe
from emu.load.program import Program
from emu.load.wine_ntdll import load_wine_ntdll
from emu.modules import Module
from emu.observe.breakpoints import BreakContext, Breakpoint, add_breakpoint
from emu.observe.events import EventRecorder
from emu.observe.stackwalk import Frame, walk_stack
from emu.observe.tracer import MemoryWatch, Tracer
from emu.process.core import ProcessCore


class Process(ProcessCore):
    """One emulated Windows process with one thread, on x86 or x64."""

    @classmethod
    def from_program(
        cls,
        path: str | os.PathLike[str],
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        allocator: str = "wine",
        allocator_options: Mapping[str, Any] | None = None,
        **options: object,
    ) -> Process:
        """A process with the Windows program at ``path`` and Wine's ntdll mapped, ready for
        ``proc.program.run()``; ``allocator`` (a name of ``emu.heap.registry.ALLOCATORS``)
        serves all its heaps (see ``load_program`` here and in ``emu.load.program``)."""
        program = load_program(
            Path(path), argv, env, allocator=allocator, allocator_options=allocator_options,
            **options,
        )  # fmt: skip
        return program.proc  # type: ignore[return-value]

    def load_pe(self, path: str, name: str | None = None, *, trap_missing: bool = False) -> Module:
        """Map a PE image (see ``emu.load.pe``): preferred base or relocated, imports bound."""
        return load_pe(self, path, name, trap_missing=trap_missing)

    def hook_export(
        self,
        name: str,
        fn: Callable[..., int | None],
        argc: int | None = None,
        convention: str | None = None,
    ) -> int:
        """Serve imports of ``"dll!Function"`` with ``fn(proc, *args)`` in images loaded later."""
        return hook_export(self, name, fn, argc, convention)

    def breakpoint(
        self,
        target: int | str,
        callback: Callable[[BreakContext], None],
        *,
        convention: str | None = None,
        argc: int = 0,
    ) -> Breakpoint:
        """Call ``callback(ctx)`` whenever execution reaches ``target`` (see
        emu.observe.breakpoints)."""
        return add_breakpoint(self, target, callback, convention=convention, argc=argc)

    def stack(self) -> list[Frame]:
        """The current call stack, innermost first, like WinDbg's ``k``."""
        return walk_stack(self)

    def trace(
        self,
        out: TextIO,
        *,
        function: str | int | None = None,
        call: int | None = None,
        begin: int = 1,
        end: int = 0,
        registers: bool = False,
    ) -> Tracer:
        """Write an instruction trace to ``out`` (see ``emu.observe.tracer``); a context manager."""
        return Tracer(
            self, out, function=function, call=call, begin=begin, end=end, registers=registers
        )

    def watch_memory(self, address: int, size: int) -> MemoryWatch:
        """Record every write to [address, address+size) (``emu.observe.tracer.MemoryWatch``)."""
        return MemoryWatch(self, address, size)

    def record(
        self,
        functions: Iterable[str | int] | None = None,
        *,
        check_conventions: bool = False,
        cdecl: Iterable[str] = (),
        argc: dict[str, int] | None = None,
        stacks: int = 0,
    ) -> EventRecorder:
        """Start recording allocation events (``emu.observe.events``); use as a context manager or
        call ``.stop()``. ``functions`` default to the heap entry points of loaded modules;
        ``argc`` gives argument counts by ``"Function"`` or ``"module!Function"`` (a key that
        names no watched function is refused); ``stacks=N`` keeps each call's stack (N frames)."""
        rec = EventRecorder(
            self,
            functions,
            check_conventions=check_conventions,
            cdecl=cdecl,
            argc=argc,
            stacks=stacks,
        )
        return rec.start()

    def load_allocator(self, kind: str, **options: Any) -> Module:
        """Load an allocator of ``emu.heap.registry.ALLOCATORS`` by name (``"builtin"``: our
        heap, nothing downloaded; ``"wine"``: Wine 8.0's ntdll.dll, options such as
        ``debug_channels``); it creates the process heap."""
        return allocator_kind(kind).load(self, **options)

    def load_builtin_heap(self) -> Module:
        """Assemble and load heapemu's own Wine-style NT heap (``asm/``); creates the process
        heap, as Windows does before user code runs."""
        return load_builtin_heap(self)

    def load_wine_ntdll(
        self, wine_dir: str | None = None, *, debug_channels: str | None = None
    ) -> Module:
        """Load Wine 8.0's real ntdll.dll and make it runnable (see ``emu.load.wine_ntdll``)."""
        return load_wine_ntdll(self, wine_dir, debug_channels=debug_channels)

    def load_flat(self, source_or_path: str, name: str, base: int | None = None) -> Module:
        """Assemble x86/x64 assembly with keystone and map it (see ``emu.load.flat``)."""
        return load_flat(self, source_or_path, name, base)


def load_program(
    path: str | Path,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    allocator: str = "wine",
    allocator_options: Mapping[str, Any] | None = None,
    **options: object,
) -> Program:
    """Map the program at ``path`` and Wine's ntdll into a new ``Process`` (see
    ``emu.load.program.load_program`` for the options); ``program.run()`` runs it.

    ``allocator`` serves the process heap and every heap the program creates: ``"wine"`` is
    Wine's own ntdll heap; any other kind is loaded with ``allocator_options`` and ntdll's
    ``Rtl*Heap`` entry points are routed to it before Wine's start-up runs."""
    kind = allocator_kind(allocator)  # ValueError naming the choices
    heap: Callable[[ProcessCore], Module] | None = None
    if not kind.is_program_ntdll:
        extra = dict(allocator_options or {})
        unknown = sorted(set(extra) - set(kind.options))
        if unknown:  # refused before anything is loaded
            raise TypeError(f"allocator {kind.name!r} takes no option {', '.join(unknown)}")
        heap = partial(kind.load_for_program, **extra)
    elif allocator_options:
        raise TypeError(
            f"allocator {kind.name!r} is the program's own ntdll: give its options "
            "(wine_dir, debug_channels) as load_program's own"
        )
    program = _program.load_program(
        path,
        argv,
        env,
        process_class=Process,
        heap=heap,
        **options,  # type: ignore[arg-type]
    )
    if heap is not None:
        program.proc.heap_kind = kind.name
    return program


def run_program(
    path: str | Path, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
    *, allocator: str = "wine", allocator_options: Mapping[str, Any] | None = None,
    **options: object,
) -> _program.ProgramResult:  # fmt: skip
    """Load and run in one step."""
    program = load_program(
        path, argv, env, allocator=allocator, allocator_options=allocator_options, **options
    )
    return program.run()
