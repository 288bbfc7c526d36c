"""Real programs, start to exit, through Wine's ntdll, kernel32, kernelbase and msvcrt.

The programs (tests/programs/) are built here with mingw-w64 (tests/programbuild.py, cached
under .build/programs/). Each test runs on x86 and x64.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from programbuild import build

from emu import Process
from emu.cli.exec import exec_main
from emu.facade import load_program
from emu.heap.crossheap import CrossHeapFreeDetector
from emu.nt.objects import Namespace, normalize_nt_path
from emu.observe.breakpoints import BreakContext
from emu.observe.stackwalk import Frame
from emu.win.layouts import PEB
from emu.win.ntdefs import NtStatus


def _no_unhandled_syscalls(proc: Process) -> None:
    # the kernel's warnings cover the whole run (the ring of records keeps only the last ones)
    assert not proc.syscall_dispatcher.warnings(), proc.syscall_dispatcher.warnings()
    unhandled = [r for r in proc.syscalls if r.status == NtStatus.NOT_IMPLEMENTED]
    assert not unhandled, [str(r) for r in unhandled]


def _symbols(frames: list[Frame]) -> list[str]:
    return [f.symbol.split("+")[0] for f in frames]


def _in_order(wanted: list[str | tuple[str, ...]], symbols: list[str]) -> bool:
    """``wanted`` appear in ``symbols`` in this order (other frames may sit between); a tuple
    is a choice of names."""
    it = iter(symbols)
    return all(any(s in ((w,) if isinstance(w, str) else w) for s in it) for w in wanted)


def test_arguments_environment_streams_and_exit_code(arch: str) -> None:
    program = load_program(
        build("args.exe", arch),
        ["args.exe", "one", "two words"],
        {"HEAPEMU_GREETING": "hi"},
        stdin=b"typed in\n",
    )
    result = program.run()
    assert result.ok, result.error
    assert result.exit_code == 43
    assert result.text.splitlines() == [
        "argv[0]=args.exe",
        "argv[1]=one",
        "argv[2]=two words",
        "greeting=hi",
        "stdin=typed in",
    ]
    assert result.stderr == b"to stderr\r\n"
    names = {m.short_name for m in program.proc.modules}
    assert {"ntdll", "kernel32", "kernelbase", "msvcrt", "args"} <= names
    _no_unhandled_syscalls(program.proc)


def test_seed003_breakpoints_stacks_and_conventions(arch: str) -> None:
    """Seed 003: each RtlAllocateHeap of 8 bytes, its arguments and its call stack; the
    convention checker runs over the whole program."""
    proc = Process.from_program(build("alloc.exe", arch))
    assert proc.program is not None
    exe = proc.program.exe.short_name
    current: list[str] = []
    hits: list[tuple[str, list[int], list[str]]] = []

    def entering(name: str) -> Callable[[BreakContext], None]:
        return lambda ctx: current.append(name)

    def on_alloc(ctx: BreakContext) -> None:
        if not current:
            return
        if arch == "x64":  # seed 003 reads rcx / rdx / r8
            args = [ctx.regs["rcx"], ctx.regs["rdx"], ctx.regs["r8"]]
        else:  # stdcall: the arguments above the return address
            args = [proc.read_u32(ctx.sp + 4 * i) for i in (1, 2, 3)]
        assert args == ctx.args(3)
        hits.append((current.pop(), args, _symbols(ctx.stack())))

    for fn in ("alloc_malloc", "alloc_new", "alloc_heap"):
        proc.breakpoint(f"{exe}!{fn}", entering(fn))
    proc.breakpoint("ntdll!RtlAllocateHeap", on_alloc, argc=3)
    with proc.record(check_conventions=True) as rec:
        result = proc.program.run()
    assert result.ok, result.error
    assert rec.violations == []
    process_heap = PEB.read(proc, proc.arch, proc.peb, "ProcessHeap")
    heaps = proc.process_heaps
    assert heaps[0] == process_heap and len(heaps) == 2
    crt_heap = heaps[1]  # msvcrt's own heap, created in its DllMain

    assert [h[0] for h in hits] == ["alloc_malloc", "alloc_new", "alloc_heap"]
    (_, malloc_args, malloc_stack), (_, new_args, new_stack), (_, heap_args, heap_stack) = hits
    assert malloc_args == [crt_heap, 0, 8]
    assert new_args == [crt_heap, 0, 8]
    assert heap_args == [process_heap, 0, 8]
    start = f"{exe}!mainCRTStartup" if arch == "x64" else f"{exe}!__tmainCRTStartup"
    chain: list[str | tuple[str, ...]] = ["ntdll!RtlAllocateHeap", "msvcrt!malloc"]
    tail = [f"{exe}!main", start, "kernel32!BaseThreadInitThunk"]
    assert _in_order([*chain, f"{exe}!alloc_malloc", *tail], malloc_stack), malloc_stack
    # libstdc++'s operator new[] tail-calls operator new: either may be the frame
    new = (f"{exe}!operator new", f"{exe}!operator new[]")
    assert _in_order([*chain, new, f"{exe}!alloc_new", *tail], new_stack), new_stack
    assert _in_order(["ntdll!RtlAllocateHeap", f"{exe}!alloc_heap", *tail], heap_stack)
    assert not any("kernel32!HeapAlloc" in s for s in heap_stack)  # a forwarder: no frame

    # the recorder saw the same three calls, and the program printed what they returned
    eights = [
        e for e in rec.all if e.name == "RtlAllocateHeap" and e.args["Size"] == 8 and e.depth == 0
    ][-3:]
    printed = [int(p, 16) for p in result.text.split()]
    assert [e.ret for e in eights] == printed
    _no_unhandled_syscalls(proc)


def test_cross_module_free_is_reported(arch: str) -> None:
    """Seed 001: runtime.dll allocates with its CRT (ucrtbase's heap); the program frees
    with its own (msvcrt's heap). Both heaps, and the process heap, are in PEB.ProcessHeaps."""
    runtime = build("runtime.dll", arch)
    proc = Process.from_program(
        build("crossfree.exe", arch), files={"C:\\heapemu\\runtime.dll": runtime}
    )
    assert proc.program is not None
    with CrossHeapFreeDetector(proc) as detector:
        result = proc.program.run()
    assert result.ok, result.error
    heaps = proc.process_heaps
    assert len(heaps) == 3  # process heap, msvcrt's, ucrtbase's
    assert detector.frees_checked > 10
    assert len(detector.reports) == 1, [str(r) for r in detector.reports]
    report = detector.reports[0]
    assert result.text.splitlines()[0] == f"block {report.block:0{2 * proc.arch.ptr_size}x}"
    # the two CRT heaps (their creation order follows Wine's DLL initialisation order)
    assert report.owner == report.alloc_heap and report.owner in heaps[1:]
    assert report.freed_through in heaps[1:] and report.freed_through != report.owner
    text = str(report)
    assert text.startswith(
        f"block 0x{report.block:x} belongs to heap 0x{report.owner:x}, "
        f"freed through heap 0x{report.freed_through:x}"
    )
    assert _in_order(["ntdll!RtlFreeHeap", "msvcrt!free", "crossfree!main"],
                     _symbols(report.free_stack))  # fmt: skip
    assert report.alloc_stack is not None
    assert _in_order(
        ["ntdll!RtlAllocateHeap", "runtime!runtime_alloc", "crossfree!main"],
        _symbols(report.alloc_stack),
    )


def test_sandbox_answers_not_found_outside_it(arch: str, tmp_path: Path) -> None:
    given = tmp_path / "input.txt"
    given.write_text("hello from the host\n")
    before = given.stat().st_mtime_ns
    program = load_program(build("sandbox.exe", arch), files={"C:\\data\\input.txt": given})
    result = program.run()
    assert result.ok, result.error
    lines = dict(line.split(" ", 1) for line in result.text.splitlines() if line)
    assert lines["mapped"] == "ok hello from the host"
    assert lines["mapped-write"] == "error 5"  # ERROR_ACCESS_DENIED
    for what in ("unix-drive", "unix-prefix", "dotdot", "win-ini"):
        assert lines[what] == "error 2", what  # ERROR_FILE_NOT_FOUND
    # files the program creates exist in memory only (emu.nt.objects.MemoryFile)
    assert lines["create"] == lines["create-rel"] == "write ok"
    assert lines["fopen"] == "hello from the host"
    assert lines["fopen-write"] == "failed"
    denied = [name for name, _ in result.denied]
    assert "\\??\\Z:\\etc\\passwd" in denied
    # nothing on the host changed: the given file, its directory, the working directory
    assert given.read_text() == "hello from the host\n"
    assert given.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]
    assert not list(Path.cwd().glob("created*"))
    opened = {r.details.get("host") for r in program.proc.syscalls if r.name == "NtOpenFile"}
    allowed = {str(given.resolve()), str(program.path), "<directory>", None}
    wine = {p for p in opened if p and ("wine-8.0" in p or "/wine/" in p)}
    assert opened - allowed - wine == set()


def test_namespace_normalises_and_refuses() -> None:
    assert normalize_nt_path("\\??\\C:\\Windows\\.\\System32\\X.DLL") == (
        "c:\\windows\\system32\\x.dll"
    )
    assert normalize_nt_path("\\??\\C:\\a\\..\\..\\etc") is None
    for name in ("\\??\\unix\\etc\\passwd", "\\Device\\HarddiskVolume1\\x", "\\??\\UNC\\h\\s",
                 "\\??\\C:\\a\\b:stream", "\\??\\C:\\a\\*"):  # fmt: skip
        assert normalize_nt_path(name) is None, name
    ns = Namespace()
    ns.add_file("C:\\data\\in.txt", __file__)
    assert ns.lookup("\\??\\c:\\DATA\\in.txt") is not None
    assert ns.lookup("\\??\\C:\\data\\..\\data\\in.txt") is not None
    directory = ns.lookup("\\??\\C:\\data")
    assert directory is not None and directory.host_path is None
    assert ns.lookup("\\??\\C:\\data\\other.txt") is None
    assert ns.lookup("\\??\\C:\\data\\in.txt\\..\\..\\..\\etc\\passwd") is None


def test_heapemu_exec(capsys: pytest.CaptureFixture[str]) -> None:
    code = exec_main(["--events", str(build("args.exe", "x64")), "a b", "c"])
    out = capsys.readouterr()
    assert code == 43
    assert "argv[1]=a b\r\nargv[2]=c" in out.out
    assert "ntdll!RtlAllocateHeap(HeapHandle=" in out.err


def test_heapemu_exec_reports_the_faulting_instruction(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """fault.exe (-O0) loads through a pointer to 0x10 a few instructions after fflush returns:
    the fault names that load, not the start of its basic block."""
    code = exec_main([str(build("fault.exe", arch))])
    out = capsys.readouterr()
    assert code == 125 and "before the fault" in out.out  # exec: 125 = the program crashed
    reg = "rax" if arch == "x64" else "eax"
    m = re.search(
        r"unmapped read at address 0x10 \(4-byte read\); "
        rf"pc=0x([0-9a-f]+) \[fault!main\+0x[0-9a-f]+\]: mov edx, dword ptr \[{reg}\]\s",
        out.err,
    )
    assert m, out.err
    registers = dict(re.findall(r"(\w+)=([0-9a-f]+)", out.err.split("registers:")[1]))
    assert int(registers[reg], 16) == 0x10
    assert int(registers["rip" if arch == "x64" else "eip"], 16) == int(m.group(1), 16)
