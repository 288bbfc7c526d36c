"""Run a Windows console program from its entry point to NtTerminateProcess through Wine's DLLs.

Start-up is Wine's own: heapemu maps only the executable and ntdll.dll (as Windows' kernel does
before the first user instruction), fills the PEB, the process parameters (command line,
environment, image path, current directory, standard handles) and the thread's initial
CONTEXT at the top of its stack, and calls ``ntdll!LdrInitializeThunk(context)``. Wine's loader
then creates the process heap, loads kernel32, kernelbase, msvcrt and the program's other
imports through NtOpenFile / NtCreateSection / NtQuerySection / NtMapViewOfSection (served by
``emu.nt.calls.file`` and ``emu.nt.calls.section`` over the sandbox of ``emu.nt.objects``),
keeps PEB.Ldr itself, runs the DllMains and TLS callbacks, and NtContinue()s into
RtlUserThreadStart -> kernel32!BaseThreadInitThunk -> mainCRTStartup. The run ends at
NtTerminateProcess.

The program sees one drive::

    C:\\heapemu\\<program>.exe        the program (its directory is the current directory)
    C:\\heapemu\\*.dll                the DLLs beside it on the host (listed once, by name)
    C:\\windows\\system32\\*.dll, *.nls  Wine's DLL directory and locale files
    <whatever files= maps>           e.g. {"C:\\heapemu\\alloc.dll": "build/alloc.dll"}

and nothing else: any other name is STATUS_OBJECT_NAME_NOT_FOUND, files are read-only, and
what it writes to stdout/stderr is captured (``ProgramResult.stdout``).

    proc = Process.from_program("t.exe", ["t.exe", "arg"])
    with proc.record() as rec:
        result = proc.program.run()
    result.exit_code, result.stdout, rec.events

Another allocator can serve the program's heaps: ``load_program(heap=loader)`` maps its code
(``loader(proc)``, no process heap) and routes ntdll's ``Rtl*Heap`` entry points to it
(``emu.load.heap_route``) before ntdll's first instruction, so Wine's start-up creates the
process heap with it and every block Wine's DLLs or the program allocate or free is its own.
Otherwise ``ProcessHeapList`` keeps PEB.ProcessHeaps true to the heaps the program creates
(Wine's ntdll does not maintain it; our heaps do). Seed 001's cross-heap frees are
``emu.heap.crossheap``; ``heapemu exec`` is ``emu.cli.exec``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from emu.errors import EmulationError
from emu.load.heap_route import HeapRoute, route_heap
from emu.modules import Module
from emu.nt.calls import section as nt_section
from emu.nt.exceptions import ExceptionEvent
from emu.nt.objects import STD_HANDLES, MainImage, ObjectManager
from emu.nt.output import DEFAULT_OUTPUT_LIMIT, OutputCapture
from emu.nt.records import DEFAULT_SYSCALL_LOG
from emu.nt.threads import (
    STACK_COMMIT,
    STACK_RESERVE_MIN,
    STATIC_UNICODE,
    STATIC_UNICODE_BUFFER,
    loader_registers,
    write_start_context,
)
from emu.observe.breakpoints import add_breakpoint
from emu.process.core import KUSER_SHARED_DATA_ADDRESS, ProcessCore
from emu.win.layouts import KUSER_SHARED_DATA, PEB, TEB, UNICODE_STRING, Field, Struct
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE

if TYPE_CHECKING:
    from emu.observe.breakpoints import BreakContext

PROGRAM_DIR = "C:\\heapemu"
SYSTEM_DIR = "C:\\windows\\system32"
WINDOWS_DIR = "C:\\windows"
DEFAULT_ENVIRONMENT = {
    "PATH": f"{SYSTEM_DIR};{WINDOWS_DIR}",
    "SystemRoot": WINDOWS_DIR,
    "WINDIR": WINDOWS_DIR,
    "SystemDrive": "C:",
    "COMPUTERNAME": "HEAPEMU",
    "USERNAME": "heapemu",
}
PROCESS_PARAMS_FLAG_NORMALIZED = 0x1

RTL_USER_PROCESS_PARAMETERS = Struct(
    "_RTL_USER_PROCESS_PARAMETERS",
    0x2A0,
    0x440,
    [
        Field("MaximumLength", 0x00, 0x00, "u32"),
        Field("Length", 0x04, 0x04, "u32"),
        Field("Flags", 0x08, 0x08, "u32"),
        Field("ConsoleHandle", 0x10, 0x10),
        Field("StandardInput", 0x18, 0x20),
        Field("StandardOutput", 0x1C, 0x28),
        Field("StandardError", 0x20, 0x30),
        Field("CurrentDirectory", 0x24, 0x38),  # CURDIR.DosPath (a UNICODE_STRING)
        Field("DllPath", 0x30, 0x50),
        Field("ImagePathName", 0x38, 0x60),
        Field("CommandLine", 0x40, 0x70),
        Field("Environment", 0x48, 0x80),
        Field("ShowWindowFlags", 0x6C, 0xA8, "u32"),
        Field("WindowTitle", 0x70, 0xB0),
        Field("DesktopInfo", 0x78, 0xC0),
        Field("ShellInfo", 0x80, 0xD0),
        Field("RuntimeData", 0x88, 0xE0),
        Field("EnvironmentSize", 0x290, 0x3F0),
    ],
)


@dataclass
class ProgramResult:
    """How a program run ended."""

    exit_code: int | None  # NtTerminateProcess's status; None if the run did not get there
    stdout: bytes  # what the program wrote, up to the output limit (emu.nt.output)
    stderr: bytes
    error: EmulationError | None = None  # the fault, when the run did not end normally
    exceptions: list[ExceptionEvent] = field(default_factory=list)  # dispatched, in order
    # the exception that ended the program: its second chance, or the one whose code the
    # process exited with (Windows' top-level handler ends the process with the code)
    unhandled: ExceptionEvent | None = None
    denied: list[tuple[str, str]] = field(default_factory=list)  # names the sandbox refused
    stdout_truncated: int = 0  # bytes written beyond the limit (kept only by a sink)
    stderr_truncated: int = 0
    # what went wrong in heapemu's kernel (unhandled system calls, handler bugs):
    # SyscallDispatcher.warnings(), reported apart from the program's own stderr
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code is not None

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


def command_line(argv: Sequence[str]) -> str:
    """argv joined with the quoting the C runtime's argument parser undoes."""
    return subprocess.list2cmdline(list(argv))


class ProcessHeapList:
    """Keeps PEB.ProcessHeaps / NumberOfHeaps true to the heaps the program creates, as
    Windows' RtlCreateHeap / RtlDestroyHeap do (Wine's ntdll keeps a list of its own, which
    only its RtlGetProcessHeaps reads). A breakpoint on RtlCreateHeap plants a one-shot
    breakpoint on its return address to read the new heap."""

    def __init__(self, proc: ProcessCore, ntdll: Module):
        self.proc = proc
        self._create = add_breakpoint(proc, ntdll.exports["RtlCreateHeap"], self._on_create)
        self._destroy = add_breakpoint(proc, ntdll.exports["RtlDestroyHeap"], self._on_destroy)

    def _write(self, heaps: list[int]) -> None:
        proc, arch = self.proc, self.proc.arch
        limit = PEB.read(proc, arch, proc.peb, "MaximumNumberOfHeaps")
        array = PEB.read(proc, arch, proc.peb, "ProcessHeaps")
        heaps = heaps[:limit]
        for i, heap in enumerate(heaps):
            proc.write_ptr(array + i * arch.ptr_size, heap)
        PEB.write(proc, arch, proc.peb, "NumberOfHeaps", len(heaps))

    def _on_create(self, ctx: BreakContext) -> None:
        entry_sp = ctx.sp

        def on_return(rctx: BreakContext) -> None:
            if rctx.proc.cpu.sp <= entry_sp:
                return  # a deeper call returning to the same address
            returned.remove()
            heap = rctx.regs[rctx.proc.arch.ret]
            if heap and heap not in self.proc.process_heaps:
                self._write([*self.proc.process_heaps, heap])

        returned = add_breakpoint(self.proc, ctx.return_address, on_return)

    def _on_destroy(self, ctx: BreakContext) -> None:
        heap = ctx.arg(0)
        heaps = self.proc.process_heaps
        if heap in heaps:
            heaps.remove(heap)
            self._write(heaps)

    def remove(self) -> None:
        self._create.remove()
        self._destroy.remove()


class Program:
    """A console program mapped into ``proc`` with Wine's ntdll, ready to ``run()``."""

    def __init__(
        self,
        proc: ProcessCore,
        path: Path,
        exe: Module,
        ntdll: Module,
        windows_path: str,
        argv: Sequence[str],
        environment: Mapping[str, str],
        route: HeapRoute | None = None,
    ):
        self.proc = proc
        self.path = path
        self.exe = exe
        self.ntdll = ntdll
        self.windows_path = windows_path
        self.argv = list(argv)
        self.environment = dict(environment)
        self.result: ProgramResult | None = None
        # where ntdll's heap entry points go when another allocator serves the heaps
        self.route = route
        # Wine's heap does not keep PEB.ProcessHeaps; a routed allocator keeps it itself
        self.heap_list = ProcessHeapList(proc, ntdll) if route is None else None

    @property
    def objects(self) -> ObjectManager:
        assert self.proc.objects is not None
        return self.proc.objects

    def run(
        self,
        *,
        time_limit: float | None = None,
        max_instructions: int | None = None,
        stop_on_first_chance: bool | None = None,
    ) -> ProgramResult:
        """Run from LdrInitializeThunk to NtTerminateProcess (once). Exceptions go to the
        program's handlers; ``stop_on_first_chance`` ends the run at the first fault instead
        (default ``proc.stop_on_first_chance``)."""
        if self.result is not None:
            raise RuntimeError("a program runs once; load it again for another run")
        proc = self.proc
        # the main thread starts as every thread does (emu.nt.threads): RtlUserThreadStart(
        # entry point, PEB) through LdrInitializeThunk, on the top of its stack
        entry = self.exe.base + self.exe.image.entry_point_rva
        exports = self.ntdll.exports
        context, stack = write_start_context(
            proc, proc.thread_stack.top, entry, proc.peb, exports["RtlUserThreadStart"]
        )
        main = proc.threads.main
        main.start = entry
        main.start_registers = loader_registers(proc, context, stack, exports["LdrInitializeThunk"])
        error: EmulationError | None = None
        try:
            proc.run_threads(
                time_limit=time_limit,
                max_instructions=max_instructions,
                stop_on_first_chance=stop_on_first_chance,
            )
        except EmulationError as e:  # an unhandled exception ends the run with its report
            if proc.exit_status is None or proc.unhandled_exception is not None:
                error = e
        unhandled = proc.unhandled_exception
        if unhandled is None and proc.exit_status is not None:
            unhandled = next((e for e in proc.exceptions[::-1] if e.code == proc.exit_status), None)
        objects = self.objects
        self.result = ProgramResult(
            exit_code=proc.exit_status,
            stdout=objects.stdout.getvalue(),
            stderr=objects.stderr.getvalue(),
            error=error,
            denied=list(objects.denied),
            exceptions=list(proc.exceptions),
            unhandled=unhandled,
            stdout_truncated=objects.stdout.truncated,
            stderr_truncated=objects.stderr.truncated,
            warnings=proc.syscall_dispatcher.warnings(),
        )
        return self.result


class _Arena:
    """A bump allocator in a region of its own, for the process parameters and strings."""

    def __init__(self, proc: ProcessCore, size: int = 0x20000):
        self.proc = proc
        self.base, _ = proc.memory.allocate(
            0, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, usage="process parameters"
        )
        self.next = self.base
        self.end = self.base + size

    def alloc(self, size: int) -> int:
        addr = self.next
        self.next = (addr + size + 15) & ~15
        if self.next > self.end:
            raise ValueError("process parameters do not fit (command line or environment too big)")
        return addr

    def string(self, at: int, text: str) -> None:
        """Fill the UNICODE_STRING at ``at`` with a fresh copy of ``text``."""
        proc, arch = self.proc, self.proc.arch
        data = text.encode("utf-16-le")
        buf = self.alloc(len(data) + 2)
        proc.write(buf, data + b"\0\0")
        UNICODE_STRING.write(proc, arch, at, "Length", len(data))
        UNICODE_STRING.write(proc, arch, at, "MaximumLength", len(data) + 2)
        UNICODE_STRING.write(proc, arch, at, "Buffer", buf)


def _write_parameters(
    proc: ProcessCore, windows_path: str, argv: Sequence[str], environment: Mapping[str, str]
) -> int:
    arch, P = proc.arch, RTL_USER_PROCESS_PARAMETERS
    arena = _Arena(proc)
    pp = arena.alloc(P.size(arch))
    P.write(proc, arch, pp, "MaximumLength", P.size(arch))
    P.write(proc, arch, pp, "Length", P.size(arch))
    P.write(proc, arch, pp, "Flags", PROCESS_PARAMS_FLAG_NORMALIZED)
    P.write(proc, arch, pp, "StandardInput", STD_HANDLES["stdin"])
    P.write(proc, arch, pp, "StandardOutput", STD_HANDLES["stdout"])
    P.write(proc, arch, pp, "StandardError", STD_HANDLES["stderr"])
    P.write(proc, arch, pp, "ShowWindowFlags", 1)
    directory = windows_path.rsplit("\\", 1)[0] + "\\"
    strings = {
        "CurrentDirectory": directory,
        "DllPath": f"{directory.rstrip(chr(92))};{SYSTEM_DIR};{WINDOWS_DIR}",
        "ImagePathName": windows_path,
        "CommandLine": command_line(argv),
        "WindowTitle": windows_path,
        "DesktopInfo": "",
        "ShellInfo": "",
        "RuntimeData": "",
    }
    for name, text in strings.items():
        arena.string(P.address(arch, pp, name), text)
    block = "".join(f"{k}={v}\0" for k, v in environment.items()) + "\0"
    data = block.encode("utf-16-le")
    env = arena.alloc(len(data))
    proc.write(env, data)
    P.write(proc, arch, pp, "Environment", env)
    P.write(proc, arch, pp, "EnvironmentSize", len(data))
    return pp


def _fill_process(proc: ProcessCore, exe: Module, params: int) -> None:
    arch, image = proc.arch, exe.image
    PEB.write(proc, arch, proc.peb, "ImageBaseAddress", exe.base)
    PEB.write(proc, arch, proc.peb, "ProcessParameters", params)
    PEB.write(proc, arch, proc.peb, "ImageSubsystem", image.subsystem)
    PEB.write(proc, arch, proc.peb, "ImageSubsystemMajorVersion", 6)
    TEB.write(proc, arch, proc.teb, "CurrentLocale", 0x409)
    # TEB.StaticUnicodeString -> TEB.StaticUnicodeBuffer (kernelbase's ANSI path conversions)
    string, buffer = STATIC_UNICODE[arch.name]
    UNICODE_STRING.write(proc, arch, proc.teb + string, "MaximumLength", STATIC_UNICODE_BUFFER)
    UNICODE_STRING.write(proc, arch, proc.teb + string, "Buffer", proc.teb + buffer)
    k = KUSER_SHARED_DATA_ADDRESS
    root = WINDOWS_DIR.encode("utf-16-le") + b"\0\0"
    proc.write(KUSER_SHARED_DATA.address(arch, k, "NtSystemRoot"), root)


def load_program(
    path: str | Path,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    files: Mapping[str, str | Path] | None = None,
    wine_dir: str | Path | None = None,
    nls_dir: str | Path | None = None,
    debug_channels: str | None = None,
    stdin: bytes = b"",
    time_limit: float = 300.0,
    threads_seed: int | None = None,
    quantum: int | None = None,
    output_limit: int | None = DEFAULT_OUTPUT_LIMIT,
    stdout_sink: IO[bytes] | None = None,
    stderr_sink: IO[bytes] | None = None,
    syscall_log: int | None = DEFAULT_SYSCALL_LOG,
    process_class: type[ProcessCore] = ProcessCore,
    heap: Callable[[ProcessCore], Module] | None = None,
) -> Program:
    """Map the program at ``path`` and Wine's ntdll into a new ProcessCore (arch from the image).

    ``argv`` defaults to ``[program name]``; ``env`` adds to (or overrides) a small default
    environment; ``files`` maps more Windows paths to host files the program may read;
    ``stdin`` is what the program reads from its standard input. Threads the program creates
    share the one CPU: ``quantum`` instructions at most before another ready thread may run,
    the next one drawn with ``threads_seed`` (``emu.nt.threads``: a seed gives one
    interleaving, exactly repeated). Of each output stream the first ``output_limit`` bytes
    are kept in memory (None: all); a sink (a binary file) gets every byte as it is written
    (``emu.nt.output``). ``syscall_log`` records are kept (``emu.nt.records``).
    ``heap(proc)``, when given, maps the allocator that serves every heap of the program (no
    process heap: Wine's start-up creates it through the routed RtlCreateHeap)."""
    from emu.load.wine_ntdll import load_wine_ntdll
    from loader.peimage import PeImage
    from loader.wine import find_wine_dir
    from loader.wine_nls import find_nls_dir

    path = Path(path).resolve()
    image = PeImage.from_file(path)
    if image.is_dll:
        raise ValueError(f"{path.name} is a DLL, not a program")
    arch = image.machine
    proc = process_class(
        arch,
        stack_reserve=max(image.stack_reserve, STACK_RESERVE_MIN),
        stack_commit=STACK_COMMIT,
        time_limit=time_limit,
        syscall_log=syscall_log,
    )
    proc.threads.configure(seed=threads_seed, quantum=quantum)
    objects = proc.objects
    objects.stdout = OutputCapture(output_limit, stdout_sink)
    objects.stderr = OutputCapture(output_limit, stderr_sink)
    windows_path = f"{PROGRAM_DIR}\\{path.name}"
    namespace = objects.namespace
    namespace.add_file(windows_path, path)
    dll_dir = find_wine_dir(arch, wine_dir)
    nls = find_nls_dir(nls_dir)
    # DLLs beside the program are found first, as Windows' search order finds them
    namespace.add_directory_files(PROGRAM_DIR, path.parent, "*.dll")
    namespace.add_directory_files(SYSTEM_DIR, dll_dir, "*.dll")
    namespace.add_directory_files(SYSTEM_DIR, nls, "*.nls")
    for windows, host in (files or {}).items():
        namespace.add_file(windows, host)
    objects.nls_dir = nls
    objects.stdin = stdin

    ntdll = load_wine_ntdll(proc, dll_dir, debug_channels=debug_channels, create_process_heap=False)
    nt_section.add_coff_symbols(proc, ntdll)
    exe, _ = nt_section.map_image(proc, path, image, path.name)
    objects.main_image = MainImage(image, exe.base, path.stat().st_size, windows_path)
    environment = {**DEFAULT_ENVIRONMENT, **(env or {})}
    args = list(argv) if argv else [windows_path]
    params = _write_parameters(proc, windows_path, args, environment)
    _fill_process(proc, exe, params)
    route = route_heap(proc, ntdll, heap(proc)) if heap is not None else None
    program = Program(proc, path, exe, ntdll, windows_path, args, environment, route)
    proc.program = program
    # faults go to the program's handlers through Wine's dispatcher, as Windows hands them over
    proc.exception_dispatcher = ntdll.exports["KiUserExceptionDispatcher"]
    return program
