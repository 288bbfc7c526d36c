"""Exceptions dispatched to the program as Windows does (issue 16, cause 2; emu.nt.exceptions).

Flat code checks the kernel's side exactly: the frame a fault leaves on the stack for
KiUserExceptionDispatcher (a dispatcher of our own reads it), NtContinue with the whole CONTEXT,
the second chance. tests/programs/exceptions.c checks the rest through Wine's real dispatcher:
structured and vectored handlers, guard pages, IsBadReadPtr, RaiseException, traps, and an
exception nothing handles.
"""

from __future__ import annotations

import struct

import pytest
from asmutil import syscall_stubs
from programbuild import build

from emu import EmulationError, Module, Process
from emu.cli.exec import exec_main
from emu.facade import load_program
from emu.observe.breakpoints import BreakContext
from emu.win.layouts import CONTEXT, EXCEPTION_RECORD
from emu.win.ntdefs import NtStatus

XMM5 = int.from_bytes(struct.pack("<I", 0x11223344) * 4, "little")
XMM6 = int.from_bytes(struct.pack("<I", 0x55667788) * 4, "little")


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
    lines = ["site:", "mov eax, 0x11223344", "movd xmm5, eax", "pshufd xmm5, xmm5, 0",
             f"mov {cx}, 0x10", "load:", f"mov eax, dword ptr [{cx}]", "ret", "dispatcher:"]  # fmt: skip
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

    proc.breakpoint(code.symbols["dispatcher"], at_dispatcher)
    assert proc.call(code.symbols["site"]) == 42
    assert seen["code"] == NtStatus.ACCESS_VIOLATION and seen["address"] == seen["pc"] == load
    assert (seen["params"], seen["info0"], seen["info1"]) == (2, 0, 0x10)  # a read of 0x10
    assert seen["cx"] == 0x10 and seen["xmm5"] == XMM5 and seen["aligned"]
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
