"""Programs run through Wine's DLLs with every allocator serving their heaps (issues 17, 18):
``Process.from_program(..., allocator=NAME)`` and ``heapemu exec --allocator NAME``.

Wine's ntdll is the reference run; under every other allocator of the registry the mingw test
programs (tests/programs, built by tests/programbuild.py) print the same and exit the same,
every heap walks clean with the allocator's walker, and no instruction of Wine's own heap code
runs. Each test runs on x86 and x64.
"""

from __future__ import annotations

import json
import re
from functools import cache

import pytest
from programbuild import build

from emu import Process
from emu.cli.exec import exec_main
from emu.heap.registry import ALLOCATOR_NAMES, ALLOCATORS, allocator_kind, walk_heap
from emu.load.heap_route import ROUTED_ENTRY_POINTS
from emu.load.program import ProgramResult
from emu.views.common import list_heaps
from emu.win.layouts import PEB

pytestmark = pytest.mark.wine

REFERENCE = next(k.name for k in ALLOCATORS.values() if k.is_program_ntdll)  # Wine's own heap
ADDRESS = re.compile(r"\b[0-9a-f]{8,16}\b")
# what each walker's heap header says its heap is (struct name -> field, value)
ACCESS_VIOLATION = 0xC0000005  # an unhandled exception ends the process with its code
HEAP_SIGNATURES = {
    "_SEGMENT_HEAP": ("Signature", 0xDDEEDDEE),
    "_HEAP": ("Signature", 0xEEFFEEFF),
    "HEAP (heapemu builtin)": ("magic", 0x50414548),
    "HEAP (Wine 8.0)": ("magic", 0x50414548),
}
# Wine 8.0's heap.c: its internals (COFF symbols of ntdll) that must never run when another
# allocator serves the heaps
WINE_HEAP_INTERNALS = (
    "create_subheap",
    "find_subheap",
    "heap_free_block",
    "heap_validate",
    "unsafe_block_from_ptr",
    "unsafe_heap_from_handle",
    "block_init_free",
)

# name -> (argv, env, stdin, expected exit code, addresses printed)
PROGRAMS: dict[str, tuple[list[str], dict[str, str], bytes, int | None, bool]] = {
    "args.exe": (["args.exe", "one", "two words"], {"HEAPEMU_GREETING": "hi"}, b"in\n", 43, False),
    "alloc.exe": (["alloc.exe"], {}, b"", 0, True),
    "heapops.exe": (["heapops.exe"], {}, b"", 0, False),
    "vmrules.exe": (["vmrules.exe"], {}, b"", 0, False),
    "sysinfo.exe": (["sysinfo.exe"], {}, b"", 0, False),
    "sandbox.exe": (["sandbox.exe"], {}, b"", 0, False),
    "crash.exe": (["crash.exe"], {}, b"", 1, False),
    "fault.exe": (["fault.exe"], {}, b"", ACCESS_VIOLATION, False),  # unhandled: its code
    "crossfree.exe": (["crossfree.exe"], {}, b"", 0, True),
}


def _run(name: str, arch: str, kind: str) -> tuple[Process, ProgramResult]:
    argv, env, stdin, _, _ = PROGRAMS.get(name, ([name], {}, b"", 0, False))
    files = {}
    if name == "crossfree.exe":  # seed 001: its DLL beside it
        files["C:\\heapemu\\runtime.dll"] = build("runtime.dll", arch)
    proc = Process.from_program(
        build(name, arch), argv, env, stdin=stdin, files=files, allocator=kind, time_limit=120.0
    )
    assert proc.program is not None
    return proc, proc.program.run()


@cache
def _reference(name: str, arch: str) -> tuple[int | None, bytes, bytes, str]:
    _, result = _run(name, arch, REFERENCE)
    return result.exit_code, result.stdout, result.stderr, _fault(result)


def _fault(result: ProgramResult) -> str:
    """A crash's first line without the call's arguments (their addresses differ)."""
    if result.error is None:
        return ""
    return str(result.error).splitlines()[1]


def _shown(data: bytes, addresses: bool) -> str:
    text = data.decode("utf-8", errors="replace")
    return ADDRESS.sub("ADDRESS", text) if addresses else text


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
def test_programs_print_and_exit_the_same_under_every_allocator(
    arch: str, kind: str, name: str
) -> None:
    expected_exit, out, err, fault = _reference(name, arch)
    proc, result = _run(name, arch, kind)
    addresses = PROGRAMS[name][4]
    assert result.exit_code == PROGRAMS[name][3] == expected_exit, result.error
    assert _shown(result.stdout, addresses) == _shown(out, addresses)
    assert _shown(result.stderr, addresses) == _shown(err, addresses)
    assert _fault(result) == fault
    if expected_exit == ACCESS_VIOLATION:  # fault.exe's own fault, nothing else
        unhandled = result.unhandled
        assert unhandled is not None and unhandled.code == ACCESS_VIOLATION
        assert unhandled.params[:2] == (0, 0x10), unhandled.describe()  # a read of 0x10
    if addresses:  # the printed blocks are real ones (the masks hide nothing else)
        assert ADDRESS.search(result.text)
    # every heap of the run walks clean with its allocator's walker
    reports = [walk_heap(proc, h) for h in list_heaps(proc)]
    assert reports and all(r.ok for r in reports), [r.corruptions for r in reports]


@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
def test_every_heap_call_is_served_by_the_chosen_allocator(arch: str, kind: str) -> None:
    """heapops.exe (malloc/realloc, HeapCreate/HeapAlloc/HeapReAlloc/HeapDestroy, GlobalAlloc,
    LocalAlloc, HeapCompact, HeapSetInformation/HeapQueryInformation, 100 x 0x100 kept live):
    the process heap is the allocator's from Wine's first RtlCreateHeap on, every block freed
    was allocated by it, and the heaps walk clean afterwards."""
    k = allocator_kind(kind)
    proc = Process.from_program(build("heapops.exe", arch), allocator=kind, time_limit=120.0)
    program = proc.program
    assert program is not None
    internals = {n: 0 for n in WINE_HEAP_INTERNALS}

    def count(name: str) -> None:
        internals[name] += 1

    for name in WINE_HEAP_INTERNALS:
        proc.breakpoint(program.ntdll.symbols[name], lambda ctx, n=name: count(n))
    with proc.record() as rec:
        result = program.run()
    assert result.ok and result.exit_code == 0, (result.error, result.text)
    assert result.text.splitlines()[-1] == "failures: 0"

    module = k.module_name.lower()
    events = [e for e in rec.all if e.finished]
    assert events and {e.function.split("!")[0] + ".dll" for e in events} <= {
        module,
        module + ".dll",
    }  # recorded in the allocator's own module (ntdll.dll for Wine)
    assert {e.function.split("!")[1] for e in events} >= {
        "RtlCreateHeap", "RtlAllocateHeap", "RtlFreeHeap", "RtlReAllocateHeap", "RtlDestroyHeap"
    }  # fmt: skip
    if not k.is_program_ntdll:
        assert not any(internals.values()), internals  # Wine's heap code never ran
        # every entry point Wine implements is served; only Wine's own stubs trap
        assert program.route is not None
        stubs = {n for n in ROUTED_ENTRY_POINTS if f"__wine_stub_{n}" in program.ntdll.symbols}
        assert set(program.route.trapped) == stubs and "RtlUsageHeap" in stubs

    # the process heap: Wine's first RtlCreateHeap, made by the allocator, in PEB.ProcessHeap
    process_heap = PEB.read(proc, proc.arch, proc.peb, "ProcessHeap")
    first = next(e for e in events if e.function.endswith("!RtlCreateHeap"))
    assert first.ret == process_heap and process_heap in list_heaps(proc)
    field, value = HEAP_SIGNATURES[k.walker.heap_struct_name]
    assert walk_heap(proc, process_heap).header[field] == value
    # GetProcessHeap(): HeapAlloc(GetProcessHeap(), 0, 100) went to it
    assert any(
        e.function.endswith("!RtlAllocateHeap") and e.args == {
            "HeapHandle": process_heap, "Flags": 0, "Size": 100
        }
        for e in events
    )  # fmt: skip

    # every block freed (by Wine's DLLs or the program) was one the routed allocator handed out
    live: set[tuple[int, int]] = set()
    for e in events:
        name, args = e.function.split("!")[1], e.args
        if name == "RtlAllocateHeap" and e.ret:
            live.add((args["HeapHandle"], e.ret))
        elif name == "RtlReAllocateHeap" and e.ret:
            live.discard((args["HeapHandle"], args["BaseAddress"]))
            live.add((args["HeapHandle"], e.ret))
        elif name == "RtlFreeHeap" and args["BaseAddress"]:
            # (Wine's own heap also frees blocks its RtlCreateHeap took without an export)
            if not k.is_program_ntdll:
                assert (args["HeapHandle"], args["BaseAddress"]) in live, e.to_json()
                assert e.ret == 1
            live.discard((args["HeapHandle"], args["BaseAddress"]))
        elif name == "RtlDestroyHeap" and e.ret == 0:
            live = {b for b in live if b[0] != args["HeapHandle"]}

    heaps = list_heaps(proc)
    assert len(heaps) == 3  # the process heap, msvcrt's and the one holding 100 x 0x100
    reports = [walk_heap(proc, h) for h in heaps]
    assert all(r.ok for r in reports), [r.corruptions for r in reports]
    # the 100 blocks of 0x100 are live in the last heap created (walker and allocator agree)
    last = [e.ret for e in events if e.function.endswith("!RtlCreateHeap")][-1]
    report = reports[heaps.index(last)]
    assert {b for b in live if b[0] == last} <= {(last, b.user_ptr) for b in report.blocks}
    ours = [b for b in report.busy_blocks() if b.requested == 0x100]
    assert len(ours) == 100
    lfh = [b for b in ours if any(n.startswith("LFH") for n in k.walker.block_flag_names(b))]
    if k.walker.front_end:  # Windows 7: the LFH takes over a size after 17 live blocks
        assert 60 <= len(lfh) < 100, len(lfh)
        assert "LFH at" in k.walker.front_end_line(report)
    else:
        assert lfh == []


@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
def test_heapemu_exec_allocator_and_views(
    arch: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``heapemu exec --allocator NAME --view ...``: the program's output unchanged, the views
    walked with the allocator's walker (on Windows 7 the LFH shows)."""
    exe = str(build("heapops.exe", arch))
    code = exec_main(["--allocator", kind, "--view", "summary", "--json", exe])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and report["allocator"] == kind
    assert report["stdout"].splitlines()[-1] == "failures: 0"
    summary = report["views"]["summary"]
    assert summary["kind"] == kind and len(summary["rows"]) == 3
    assert all(row["corruptions"] == 0 for row in summary["rows"])
    front_ends = [row["front_end"] for row in summary["rows"]]
    assert any("LFH at" in line for line in front_ends) == allocator_kind(kind).walker.front_end
    modules = {m["name"].lower() for m in report["modules"]}
    assert allocator_kind(kind).module_name.lower() in modules

    code = exec_main(["--allocator", kind, "--view", "entries", "--view", "address", exe])
    out = capsys.readouterr()
    assert code == 0 and out.out.replace("\r\n", "\n").endswith("failures: 0\n")
    assert f"{kind} ({arch})" in out.err  # the entries view names the allocator that walked
    assert "busy (100)" in out.err  # the 0x100-byte blocks, as !heap -h shows them


def test_a_bad_allocator_name_is_one_line_and_exit_2(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        exec_main(["--allocator", "dlmalloc", str(build("args.exe", arch))])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "dlmalloc" in err and all(name in err for name in ALLOCATOR_NAMES)


def test_from_program_refuses_unknown_allocators_and_options(arch: str) -> None:
    exe = build("args.exe", arch)
    with pytest.raises(ValueError, match="unknown allocator 'dlmalloc'"):
        Process.from_program(exe, allocator="dlmalloc")
    routed = next(k for k in ALLOCATORS.values() if not k.is_program_ntdll)
    with pytest.raises(TypeError, match="takes no option"):
        Process.from_program(exe, allocator=routed.name, allocator_options={"colour": 1})
    with pytest.raises(TypeError, match="program's own ntdll"):
        Process.from_program(exe, allocator=REFERENCE, allocator_options={"debug_channels": ""})


# an allocator option -> the process heap's header field that shows it (walker names)
OPTION_FIELDS = {"encoding": "Encoding", "heap_key": "MemStats.HeapKey"}


@pytest.mark.parametrize(
    ("kind", "option"),
    [(k.name, o) for k in ALLOCATORS.values() for o in k.options if o in OPTION_FIELDS],
)
def test_allocator_options_reach_the_process_heap(arch: str, kind: str, option: str) -> None:
    """The options given to from_program (Windows 7's keys, the segment heap's parameters) are
    the ones Wine's first RtlCreateHeap, the process heap, takes."""
    proc = Process.from_program(
        build("args.exe", arch), ["args.exe"], allocator=kind,
        allocator_options={option: 0x12345678}, time_limit=120.0,
    )  # fmt: skip
    assert proc.program is not None
    result = proc.program.run()
    assert result.ok and result.text.startswith("argv[0]=args.exe"), result.error
    process_heap = PEB.read(proc, proc.arch, proc.peb, "ProcessHeap")
    header = walk_heap(proc, process_heap).header
    assert header[OPTION_FIELDS[option]] & 0xFFFFFFFF == 0x12345678
    assert len(list_heaps(proc)) == 2  # the process heap and msvcrt's
