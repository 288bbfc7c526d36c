"""Exceptions dispatched to the program as Windows does (issue 16, cause 2; emu.nt.exceptions).

Flat code checks the kernel's side exactly: the frame a fault leaves on the stack for
KiUserExceptionDispatcher (a dispatcher of our own reads it), NtContinue with the whole CONTEXT,
the second chance. tests/programs/exceptions.c checks the rest through Wine's real dispatcher:
structured and vectored handlers, guard pages, IsBadReadPtr, RaiseException, traps, and an
exception nothing handles.
"""

from __future__ import annotations

import json
import struct

import pytest
from asmutil import syscall_stubs
from programbuild import build, runtime_dlls

from emu import EmulationError, Module, Process
from emu.cli.exec import exec_main
from emu.facade import load_program
from emu.observe.breakpoints import BreakContext
from emu.win.layouts import CONTEXT, CONTEXT_ARCH_BIT, EXCEPTION_RECORD
from emu.win.ntdefs import NtStatus

XMM5 = int.from_bytes(struct.pack("<I", 0x11223344) * 4, "little")
XMM6 = int.from_bytes(struct.pack("<I", 0x55667788) * 4, "little")
# cs, ss, ds, es, fs, gs of 32-bit user code on Windows (KGDT_R3_CODE, KGDT_R3_DATA,
# KGDT_R3_TEB, | 3; gs unused)
WIN32_SEGMENTS = [0x1B, 0x23, 0x23, 0x23, 0x3B, 0]


def _flat(proc: Process, *, second_chance: bool = False) -> Module:
    """``site`` loads a pattern into xmm5, then faults at ``load`` (`mov eax, [ecx/rcx]`, 8B 01)
    reading 0x10. ``dispatcher`` (entered as KiUserExceptionDispatcher is) resumes 2 bytes
    further with eax 42, xmm6 and MXCSR changed in the CONTEXT, IOPL asked for, xmm5 clobbered,
    through NtContinue; or raises the second chance."""
    stubs = syscall_stubs(proc)
    a, x64 = proc.arch, proc.arch.ptr_size == 8
    xmm6 = CONTEXT.offset(a, "FxSave") + 160 + 6 * 16
    pc, ax = CONTEXT.offset(a, a.pc.capitalize()), CONTEXT.offset(a, a.ret.capitalize())
    cx = "rcx" if x64 else "ecx"
    lines = ["site:", "mov eax, 0x11223344", "movd xmm5, eax", "pshufd xmm5, xmm5, 0"]
    if x64:  # null ds/es (allowed in 64-bit mode): a CONTEXT still shows Windows' constants
        lines += ["xor ecx, ecx", "mov ds, cx", "mov es, cx"]
    lines += [f"mov {cx}, 0x10", "load:", f"mov eax, dword ptr [{cx}]", "ret", "dispatcher:"]
    if x64:  # rsp -> CONTEXT, the EXCEPTION_RECORD after it and its CONTEXT_EX
        lines += ["mov rcx, rsp", "lea rdx, [rsp + 0x4f0]"]
    else:  # esp -> [EXCEPTION_RECORD*, CONTEXT*]
        lines += ["mov ecx, [esp + 4]", "mov edx, [esp]"]
    lines += [f"add dword ptr [{cx} + {pc}], 2", f"mov dword ptr [{cx} + {ax}], 42"]
    lines += [f"mov dword ptr [{cx} + {xmm6 + 4 * i}], 0x55667788" for i in range(4)]
    lines += [f"mov dword ptr [{cx} + {CONTEXT.offset(a, 'MxCsr')}], 0x9fc0",
              f"or dword ptr [{cx} + {CONTEXT.offset(a, 'EFlags')}], 0x3000",
              "pxor xmm5, xmm5"]  # fmt: skip
    name = "NtRaiseException" if second_chance else "NtContinue"
    if x64:
        lines += ["xchg rcx, rdx", "xor r8d, r8d"] if second_chance else ["xor edx, edx"]
        lines += ["sub rsp, 0x28", f"mov rax, {stubs[name]}", "call rax", "int3"]
    else:
        lines += ["push 0", "push ecx"] + (["push edx"] if second_chance else [])
        lines += [f"mov eax, {stubs[name]}", "call eax", "int3"]
    return proc.load_flat("\n".join(lines), "faulty")


def test_a_fault_is_dispatched_with_the_kernels_frame_and_nt_continue_restores_it(
    arch: str,
) -> None:
    proc = Process(arch, time_limit=10.0)
    code = _flat(proc)
    load, a = code.symbols["load"], proc.arch
    proc.exception_dispatcher = code.symbols["dispatcher"]
    seen: dict[str, int] = {}

    def at_dispatcher(ctx: BreakContext) -> None:
        sp = ctx.sp
        if a.ptr_size == 8:
            context, record = sp, sp + 0x4F0
            all_offset, all_length = struct.unpack("<iI", proc.read(sp + 0x4D0, 8))
            seen["context_ex"] = all_offset == -0x4D0 and all_length == 0x4F0
            machine = struct.unpack("<5Q", proc.read(sp + 0x590, 40))
            seen["machine_rip"], seen["machine_rsp"] = machine[0], machine[3]
        else:
            record, context = struct.unpack("<II", proc.read(sp, 8))
            seen["record_follows"] = record == sp + 8
            seen["context_follows"] = context == record + 0x14 + 2 * 4  # two parameters
        seen["aligned"] = context % (16 if a.ptr_size == 8 else 4) == 0
        seen["code"] = EXCEPTION_RECORD.read(proc, a, record, "ExceptionCode")
        seen["address"] = EXCEPTION_RECORD.read(proc, a, record, "ExceptionAddress")
        seen["params"] = EXCEPTION_RECORD.read(proc, a, record, "NumberParameters")
        seen["info0"] = EXCEPTION_RECORD.read(proc, a, record, "ExceptionInformation", 0)
        seen["info1"] = EXCEPTION_RECORD.read(proc, a, record, "ExceptionInformation", 1)
        seen["pc"] = CONTEXT.read(proc, a, context, a.pc.capitalize())
        seen["cx"] = CONTEXT.read(proc, a, context, "Rcx" if a.ptr_size == 8 else "Ecx")
        seen["sp"] = CONTEXT.read(proc, a, context, a.sp.capitalize())
        xmm5 = CONTEXT.offset(a, "FxSave") + 160 + 5 * 16
        seen["xmm5"] = int.from_bytes(proc.read(context + xmm5, 16), "little")
        for seg in ("Cs", "Ss", "Ds", "Es", "Fs", "Gs"):
            seen[seg] = CONTEXT.read(proc, a, context, f"Seg{seg}")

    proc.breakpoint(code.symbols["dispatcher"], at_dispatcher)
    before = proc.snapshot()
    assert proc.call(code.symbols["site"]) == 42
    assert seen["code"] == NtStatus.ACCESS_VIOLATION and seen["address"] == seen["pc"] == load
    assert (seen["params"], seen["info0"], seen["info1"]) == (2, 0, 0x10)  # a read of 0x10
    assert seen["cx"] == 0x10 and seen["xmm5"] == XMM5 and seen["aligned"]
    # the user selectors Windows reports (x64: constants, whatever ds/es held)
    segs = [seen[s] for s in ("Cs", "Ss", "Ds", "Es", "Fs", "Gs")]
    assert segs == ([0x33, 0x2B, 0x2B, 0x2B, 0x53, 0x2B] if a.ptr_size == 8 else WIN32_SEGMENTS)
    if a.ptr_size == 8:
        assert seen["context_ex"] and seen["machine_rip"] == load
        assert seen["machine_rsp"] == seen["sp"]
    else:
        assert seen["record_follows"] and seen["context_follows"]
    # NtContinue: XMM registers and MXCSR from the CONTEXT, EFLAGS sanitised (no IOPL, IF on)
    assert proc.regs["xmm5"] == XMM5 and proc.regs["xmm6"] == XMM6
    assert proc.regs["mxcsr"] == 0x9FC0
    assert proc.regs["eflags"] & 0x3000 == 0 and proc.regs["eflags"] & 0x200
    assert [e.code for e in proc.exceptions] == [NtStatus.ACCESS_VIOLATION]
    proc.restore(before)
    assert proc.exceptions == []


def test_the_second_chance_ends_the_process_and_reports_the_fault(arch: str) -> None:
    proc = Process(arch, time_limit=10.0)
    code = _flat(proc, second_chance=True)
    proc.exception_dispatcher = code.symbols["dispatcher"]
    with pytest.raises(EmulationError) as e:
        proc.call(code.symbols["site"])
    assert e.value.pc == code.symbols["load"] and e.value.address == 0x10
    assert e.value.kind == "unhandled exception: unmapped read"
    assert e.value.status == NtStatus.ACCESS_VIOLATION
    assert e.value.registers["rcx" if arch == "x64" else "ecx"] == 0x10  # as at the fault
    assert "second chance" in str(e.value) and proc.exit_status == NtStatus.ACCESS_VIOLATION


def test_an_exception_with_no_room_for_its_frame_ends_the_process_with_its_code(
    arch: str,
) -> None:
    """NtRaiseException (first chance) of a CONTEXT whose stack pointer is in free memory:
    the kernel cannot write the frame, and Windows ends the process with the exception code
    (KiDispatchException's second chance); no dispatcher runs."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    a, x64 = proc.arch, proc.arch.ptr_size == 8
    buf, _ = proc.memory.allocate(0, 0x2000, 0x3000, 0x04)  # MEM_COMMIT | MEM_RESERVE, RW
    record, context = buf, buf + 0x1000
    nowhere = proc.memory.allocate(0, 0x10000, 0x2000, 0x04)[0] + 0x8000  # reserved only
    values = {"ExceptionCode": 0xE0480001, "ExceptionAddress": 0x1234, "NumberParameters": 0}
    proc.write(record, EXCEPTION_RECORD.pack(a, values))
    ctx = bytearray(CONTEXT.size(a))
    struct.pack_into("<I", ctx, CONTEXT.offset(a, "ContextFlags"), CONTEXT_ARCH_BIT[a.name] | 1)
    for name, value in ((a.sp, nowhere), (a.pc, 0x1234), ("EFlags", 0x202)):
        f = CONTEXT.fields[name[0].upper() + name[1:]]
        struct.pack_into(f.fmt(a), ctx, f.offset(a), value)
    proc.write(context, bytes(ctx))
    stub = stubs["NtRaiseException"]
    if x64:
        code = [f"mov rcx, {record}", f"mov rdx, {context}", "mov r8d, 1", "sub rsp, 0x28"]
        code += [f"mov rax, {stub}", "call rax", "add rsp, 0x28", "ret"]
    else:
        code = ["push 1", f"push {context}", f"push {record}"]
        code += [f"mov eax, {stub}", "call eax", "ret"]
    raiser = proc.load_flat("\n".join(["raiser:", *code, "dispatcher:", "int3"]), "raiser")
    proc.exception_dispatcher = raiser.symbols["dispatcher"]
    with pytest.raises(EmulationError) as e:
        proc.call(raiser.symbols["raiser"])
    assert e.value.status == 0xE0480001 and proc.exit_status == 0xE0480001
    assert "not dispatched: no room on the stack" in str(e.value)
    assert proc.exceptions == []  # never dispatched
    assert proc.unhandled_exception is not None and proc.unhandled_exception.address == 0x1234


@pytest.mark.parametrize("how", ["no dispatcher", "stop on first chance"])
def test_without_dispatch_a_fault_ends_the_call_as_before(arch: str, how: str) -> None:
    proc = Process(arch, time_limit=10.0)
    code = _flat(proc)
    if how == "stop on first chance":
        proc.exception_dispatcher = code.symbols["dispatcher"]
    with pytest.raises(EmulationError) as e:
        proc.call(code.symbols["site"], stop_on_first_chance=how == "stop on first chance")
    assert e.value.kind == "unmapped read" and e.value.pc == code.symbols["load"]
    assert proc.exceptions == [] and proc.exit_status is None


def _run(arch: str, mode: str) -> tuple[Process, str, int | None]:
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", mode])
    result = program.run(time_limit=120)
    assert result.error is None or mode == "unhandled", result.error
    return program.proc, result.text, result.exit_code  # type: ignore[return-value]


@pytest.mark.wine
@pytest.mark.parametrize("mode", ["seh", "veh"])
def test_a_handler_recovers_from_a_bad_pointer(arch: str, mode: str) -> None:
    """seh: x86's fs:[0] registration frame; x64's scope of __C_specific_handler, found by
    unwinding through .pdata. The handler resumes past the load with eax = 42."""
    proc, text, code = _run(arch, mode)
    assert code == 0
    assert text == f"{mode} value=42 code=c0000005 params=2 info0=0 info1=10 calls=1\r\n"
    load = proc.resolve("exceptions!load_through")
    [event] = proc.exceptions
    assert event.code == NtStatus.ACCESS_VIOLATION and load <= event.address < load + 8


@pytest.mark.wine
def test_a_guard_page_raises_once_then_is_plain(arch: str) -> None:
    _proc, text, code = _run(arch, "guard")
    assert code == 0
    assert text.splitlines() == [
        "guard value=14 code=80000001 params=2 info0=0 info1="
        + text.split("info1=")[1].split()[0]
        + " calls=1",
        "guard address_ok=1 protect=4",  # the faulting address; PAGE_READWRITE, no PAGE_GUARD
    ]


@pytest.mark.wine
def test_an_unhandled_exception_ends_the_program_with_its_code(arch: str) -> None:
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "unhandled"])
    result = program.run(time_limit=120)
    assert result.exit_code == NtStatus.ACCESS_VIOLATION and result.text == "before\r\n"
    assert result.unhandled is not None and result.unhandled.state is not None
    load = program.proc.resolve("exceptions!load_through")
    assert load <= result.unhandled.address < load + 8
    assert result.unhandled.state.symbol.startswith("exceptions!load_through")
    assert result.unhandled.params == (0, 0x10)


@pytest.mark.wine
def test_is_bad_read_ptr_and_is_bad_write_ptr(arch: str) -> None:
    """Wine's kernel32 tries the access inside __TRY: a bad pointer is TRUE, a good one FALSE
    (0x10 read, 0x10 written, a constant written, a local read, a local written)."""
    _proc, text, code = _run(arch, "isbad")
    assert (code, text) == (0, "isbad 1 1 1 0 0\r\n")


@pytest.mark.wine
def test_raise_exception_reaches_a_vectored_handler_with_its_arguments(arch: str) -> None:
    _proc, text, code = _run(arch, "raise")
    assert code == 0
    assert text == "raise code=e0481234 flags=0 params=3 args=11,22,33 calls=1\r\n"


@pytest.mark.wine
def test_int3_division_by_zero_division_overflow_and_ud2_are_exceptions(arch: str) -> None:
    """Each reported at its instruction (int3: the CONTEXT's pc is the int3, as Windows
    moves it back), skipped by the handler."""
    proc, text, code = _run(arch, "traps")
    assert code == 0
    assert text.splitlines() == [
        "trap code=80000003 at_pc=1 params=1",
        "trap code=c0000094 at_pc=1 params=0",
        "trap code=c0000095 at_pc=1 params=0",  # STATUS_INTEGER_OVERFLOW: INT_MIN / -1
        "trap code=c000001d at_pc=1 params=0",
        "traps calls=4",
    ]
    int3 = proc.exceptions[0].address
    assert proc.read(int3, 1) == b"\xcc"


@pytest.mark.wine
def test_heapemu_exec_reports_an_unhandled_exception_and_can_stop_at_first_chance(
    arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = str(build("exceptions.exe", arch))
    assert exec_main([exe, "unhandled"]) == 125  # crashed
    err = capsys.readouterr().err
    assert "unhandled exception (exit code 0xc0000005): unmapped read at address 0x10" in err
    assert "[exceptions!load_through" in err and "exceptions dispatched:" in err
    assert exec_main(["--json", exe, "unhandled"]) == 125
    report = json.loads(capsys.readouterr().out)
    assert (report["outcome"], report["exit_code"]) == ("crashed", NtStatus.ACCESS_VIOLATION)
    assert report["unhandled"]["name"] == "STATUS_ACCESS_VIOLATION"
    assert report["unhandled"]["params"] == [0, 0x10]
    assert report["unhandled"]["symbol"].startswith("exceptions!load_through")
    assert exec_main(["--stop-on-first-chance", exe, "veh"]) == 125  # the handler never runs
    out = capsys.readouterr()
    assert "veh value" not in out.out
    assert "the program did not exit: " in out.err and "unmapped read at address 0x10" in out.err


def _overflow_line(what: str) -> str:
    """What exceptions.c prints for a caught overflow: its code, and TEB.StackLimit at the
    bottom of the guaranteed area (one page above DeallocationStack: no guard page left)."""
    return f"{what} caught=1 code=c00000fd limit_at_bottom=1"


@pytest.mark.wine
def test_an_unhandled_stack_overflow_ends_the_program_with_its_code(arch: str) -> None:
    """Unbounded recursion: STATUS_STACK_OVERFLOW at the recursing function's store into the
    guard page above the guaranteed area; the vectored handler sees it, nothing handles it,
    and the process ends with 0xC00000FD, reported as any unhandled exception. (With the one
    page heapemu used to leave, Wine's dispatcher ran out of stack and the run ended with no
    exit code.)"""
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "overflow"])
    result = program.run(time_limit=120)
    assert result.exit_code == NtStatus.STACK_OVERFLOW, result.error
    [first] = result.exceptions
    assert first.code == NtStatus.STACK_OVERFLOW
    assert first.state is not None and first.state.symbol.startswith("exceptions!recurse")
    assert first.params[0] == 1  # a write (the store into the recursing frame)
    assert result.unhandled is first


@pytest.mark.wine
def test_a_stack_overflow_is_caught_and_the_thread_goes_on(arch: str) -> None:
    """A structured handler around the recursion (x64: a __C_specific_handler scope, unwound
    to by RtlUnwindEx; x86: a registration record whose handler leaves as MSVC's __except
    does) catches STATUS_STACK_OVERFLOW and the program goes on. _resetstkoflw (Wine's msvcrt:
    VirtualProtect of its own stack page to PAGE_GUARD, the kernel's write of the
    out-parameters touching it) puts a guard page back, so a second overflow is caught too."""
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "overflow-caught"])
    result = program.run(time_limit=120)
    assert result.exit_code == 0, result.error
    first, second = _overflow_line("first"), _overflow_line("second")
    assert result.text.splitlines() == [first, "reset 1", second]
    assert [e.code for e in result.exceptions] == [NtStatus.STACK_OVERFLOW] * 2


@pytest.mark.wine
def test_a_second_overflow_without_a_guard_page_ends_the_process(arch: str) -> None:
    """Without _resetstkoflw no guard page is left: the second recursion runs into the
    reservation's last page, which is never committed, and the kernel has no stack to write
    that access violation's frame on. Windows ends the process with the exception's code."""
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "overflow-twice"])
    result = program.run(time_limit=120)
    assert result.text.splitlines() == [_overflow_line("first")]  # never "survived"
    assert result.exit_code == NtStatus.ACCESS_VIOLATION
    assert [e.code for e in result.exceptions] == [NtStatus.STACK_OVERFLOW]
    assert result.unhandled is not None and not result.unhandled.first_chance
    assert result.unhandled.state is not None
    assert result.unhandled.state.symbol.startswith("exceptions!recurse")
    assert result.error is not None and result.error.status == NtStatus.ACCESS_VIOLATION
    assert "not dispatched: no room on the stack" in str(result.error)
    stack = program.proc.thread_stack
    assert stack.base <= result.unhandled.params[1] < stack.base + 0x1000  # the last page


@pytest.mark.wine
def test_set_thread_stack_guarantee_leaves_that_much_stack_to_the_handler(arch: str) -> None:
    """SetThreadStackGuarantee(64 KiB) (Wine's kernelbase writes TEB.GuaranteedStackBytes):
    the overflow is raised with at least that much stack below the handler's stack pointer."""
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "overflow-guarantee"])
    result = program.run(time_limit=120)
    assert result.exit_code == 0, result.error
    assert result.text.splitlines() == [_overflow_line("guarantee"), "set 1 now=10000 room_ok=1"]


@pytest.mark.wine
def test_a_thread_catches_an_overflow_of_its_own_stack(arch: str) -> None:
    """A thread's overflow is raised on its own stack and caught there; the handler's CONTEXT
    carries Windows' user selectors, and NtContinue of one keeps the thread on its own TEB."""
    program = load_program(build("exceptions.exe", arch), ["exceptions.exe", "overflow-thread"])
    result = program.run(time_limit=120)
    assert result.exit_code == 0, result.error
    segs = "33 2b 2b 2b 53 2b" if arch == "x64" else " ".join(f"{s:x}" for s in WIN32_SEGMENTS)
    # x86: fs is KGDT_R3_TEB | 3 on every thread, as on Windows (heapemu's own descriptor
    # for the thread's TEB is not shown)
    assert result.text.splitlines() == [
        _overflow_line("thread"),
        f"thread segs {segs}",
        "thread continued value=42 same_teb=1",
        "thread exit 7",
    ]
    event = result.exceptions[0]
    thread_stack = program.proc.threads.threads[1].stack
    assert thread_stack is not None and event.state is not None
    assert thread_stack.contains(event.state.registers["rsp" if arch == "x64" else "esp"])


@pytest.mark.wine
def test_a_cpp_exception_thrown_in_a_dll_is_caught_by_the_program(arch: str) -> None:
    """x64 g++ unwinds with Windows' SEH (RaiseException, Wine's dispatcher and RtlUnwindEx
    through both modules' .pdata; Wine's x64 RtlRaiseException dispatches in user mode, so no
    NtRaiseException is seen); x86 g++ unwinds with DWARF tables through the shared
    libgcc_s_dw2-1.dll, all in user mode: neither needs more than NtContinue from the kernel."""
    files = {"C:\\heapemu\\thrower.dll": build("thrower.dll", arch)}
    files.update({f"C:\\heapemu\\{n}": p for n, p in runtime_dlls("cxxthrow.exe", arch).items()})
    program = load_program(build("cxxthrow.exe", arch), files=files)
    result = program.run(time_limit=120)
    assert (result.exit_code, result.text) == (0, "caught: thrown in the dll\r\n"), result.error
    assert "thrower.dll" in {m.name for m in program.proc.modules}


def test_a_fault_that_repeats_forever_ends_at_the_calls_time_limit(arch: str) -> None:
    """A dispatcher that resumes at the fault unchanged (as a handler returning
    EXCEPTION_CONTINUE_EXECUTION without fixing anything): the same fault again and again, as on
    Windows, until the wall-clock limit of the whole call."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    x64 = arch == "x64"
    resume = (
        ["mov rcx, rsp", "xor edx, edx", "sub rsp, 0x28"]
        if x64
        else ["push 0", "push dword ptr [esp + 8]"]
    )
    call = f"mov {'rax' if x64 else 'eax'}, {stubs['NtContinue']}"
    code = proc.load_flat(
        "\n".join(["site:", "xor eax, eax", f"mov eax, dword ptr [{'rax' if x64 else 'eax'}]",
                   "ret", "dispatcher:", *resume, call, f"call {'rax' if x64 else 'eax'}"]),
        "loops",
    )  # fmt: skip
    proc.exception_dispatcher = code.symbols["dispatcher"]
    with pytest.raises(EmulationError) as e:
        proc.call(code.symbols["site"], time_limit=1.0)
    assert e.value.kind == "wall-clock limit exceeded"
    assert len(proc.exceptions) > 10 and {x.address for x in proc.exceptions} == {
        code.symbols["site"] + 2
    }


def test_every_cpu_exception_is_its_own(arch: str) -> None:
    """Unicorn left QEMU's "exception in flight" set after a #DE: the next #DE was a double
    fault and the exception after it stopped the CPU. Each is reported as itself, again and
    again; #DE with a divisor (INT_MIN / -1) is STATUS_INTEGER_OVERFLOW, as on Windows."""
    proc = Process(arch, time_limit=10.0)
    code = proc.load_flat(
        "zero:\nxor ecx, ecx\nxor edx, edx\nmov eax, 5\ndiv ecx\nret\n"
        "overflow:\nmov eax, 0x80000000\ncdq\nmov ecx, -1\nidiv ecx\nret\n"
        "undefined:\nud2\nret\n",
        "traps",
    )
    expected = {
        "zero": NtStatus.INTEGER_DIVIDE_BY_ZERO,
        "overflow": NtStatus.INTEGER_OVERFLOW,
        "undefined": NtStatus.ILLEGAL_INSTRUCTION,
    }
    for name in ["zero", "zero", "undefined", "zero", "overflow", "overflow", "zero"]:
        with pytest.raises(EmulationError) as e:
            proc.call(code.symbols[name])
        assert e.value.status == expected[name], (name, e.value)


def test_the_trap_flag_raises_single_step_after_the_next_instruction(arch: str) -> None:
    """popf sets TF: the instruction after it runs, then STATUS_SINGLE_STEP with the next pc;
    the dispatcher clears TF in the CONTEXT and continues (the kernel entered it with TF
    clear, or it would have trapped itself)."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    x64 = arch == "x64"
    eflags = CONTEXT.offset(proc.arch, "EFlags")
    if x64:
        dispatcher = [f"and dword ptr [rsp + {eflags}], 0xfffffeff", "mov rcx, rsp",
                      "xor edx, edx", "sub rsp, 0x28", f"mov rax, {stubs['NtContinue']}",
                      "call rax"]  # fmt: skip
        flags = ["pushfq", "or qword ptr [rsp], 0x100", "popfq"]
    else:
        dispatcher = ["mov ecx, [esp + 4]", f"and dword ptr [ecx + {eflags}], 0xfffffeff"]
        dispatcher += ["push 0", "push ecx", f"mov eax, {stubs['NtContinue']}", "call eax"]
        flags = ["pushfd", "or dword ptr [esp], 0x100", "popfd"]
    code = proc.load_flat(
        "\n".join(["site:", *flags, "nop", "after:", "mov eax, 7", "ret", "dispatcher:",
                   *dispatcher]),
        "stepping",
    )  # fmt: skip
    proc.exception_dispatcher = code.symbols["dispatcher"]
    assert proc.call(code.symbols["site"]) == 7
    [event] = proc.exceptions
    assert (event.code, event.address) == (NtStatus.SINGLE_STEP, code.symbols["after"])
