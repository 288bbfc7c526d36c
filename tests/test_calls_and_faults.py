"""Calls into emulated code with every convention; faults raise EmulationError and the process
keeps working; the thread stack grows through its guard page and overflows cleanly."""

from __future__ import annotations

import pytest
from asmutil import assemble

from emu import EmulationError, Process
from emu.win.layouts import TEB
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_RESERVE,
    PAGE_GUARD,
    PAGE_READONLY,
    PAGE_READWRITE,
    NtStatus,
)

# f(a..f) = a + 2b + 3c + 4d + 5e + 6f: every argument lands where the convention says
X64_SUM6 = """
    mov rax, rcx
    lea rax, [rax + rdx*2]
    lea r10, [r8 + r8*2]
    add rax, r10
    lea rax, [rax + r9*4]
    mov r10, [rsp + 0x28]
    lea r10, [r10 + r10*4]
    add rax, r10
    mov r10, [rsp + 0x30]
    imul r10, r10, 6
    add rax, r10
    ret
"""


ARGS = (3, 5, 7, 11, 13, 17)
EXPECTED = sum((i + 1) * a for i, a in enumerate(ARGS))


def test_x64_convention_registers_stack_and_alignment() -> None:
    proc = Process("x64")
    f = assemble(proc, X64_SUM6)
    assert proc.call(f, *ARGS) == EXPECTED
    probe = assemble(proc, "mov rax, rsp; ret")
    assert proc.call(probe) % 16 == 8  # rsp = 8 mod 16 at entry (aligned before the call)
    neg = assemble(proc, "mov rax, rcx; ret")
    assert proc.call(neg, -1) == 2**64 - 1


@pytest.mark.parametrize(
    ("convention", "regs", "ret"),
    [
        ("stdcall", (), "ret 24"),
        ("cdecl", (), "ret"),
        ("fastcall", ("ecx", "edx"), "ret 16"),
        ("thiscall", ("ecx",), "ret 20"),
    ],
)
def test_x86_conventions(convention: str, regs: tuple[str, ...], ret: str) -> None:
    proc = Process("x86")
    src = ["xor eax, eax"]
    stack_index = 0
    for i in range(6):
        if i < len(regs):
            src.append(f"mov ebx, {regs[i]}")
        else:
            src.append(f"mov ebx, [esp + {4 + 4 * stack_index}]")
            stack_index += 1
        src += [f"imul ebx, ebx, {i + 1}", "add eax, ebx"]
    f = assemble(
        proc, "push ebx\n" + "\n".join(src).replace("[esp + ", "[esp + 4 + ") + f"\npop ebx\n{ret}"
    )
    assert proc.call(f, *ARGS, convention=convention) == EXPECTED


def test_x86_stack_imbalance_is_reported() -> None:
    proc = Process("x86")
    f = assemble(proc, "mov eax, [esp+4]; ret 4")  # pops one argument
    assert proc.call(f, 9, convention="stdcall") == 9
    with pytest.raises(EmulationError) as e:
        proc.call(f, 9, 10, convention="stdcall")  # two arguments but `ret 4`
    assert e.value.kind == "stack imbalance" and "off by -4 bytes" in str(e.value)
    with pytest.raises(EmulationError):
        proc.call(f, 9, convention="cdecl")  # cdecl: the callee must not pop
    assert proc.call(f, 1, convention="stdcall") == 1  # still usable


def test_call_by_symbol_name_and_unknown_convention(proc: Process) -> None:
    with pytest.raises(KeyError, match="no module 'nope'"):
        proc.call("nope!Func")
    with pytest.raises(ValueError, match="unknown calling convention"):
        proc.call(0x1000, convention="pascal")


def test_registers_by_name(proc: Process) -> None:
    reg = "rcx" if proc.arch.name == "x64" else "ecx"
    proc.regs[reg] = 0x1234
    assert proc.regs[reg] == 0x1234
    if proc.arch.name == "x86":
        with pytest.raises(KeyError, match="no register 'rcx' on x86"):
            proc.regs["rcx"]
    assert proc.arch.pc in list(proc.regs)


FAULTS = {
    "unmapped read": ("mov eax, [0x10]; ret", "mov eax, [0x10]; ret", 0x10, "read"),
    "unmapped write": (
        "mov dword ptr [0x20], 1; ret",
        "mov dword ptr [0x20], 1; ret",
        0x20,
        "write",
    ),
    "unmapped fetch": ("mov eax, 0x30; jmp eax", "mov rax, 0x30; jmp rax", 0x30, "fetch"),
    "invalid instruction": ("ud2", "ud2", None, None),
    "divide error": ("xor ecx, ecx; div ecx; ret", "xor ecx, ecx; div ecx; ret", None, None),
    "breakpoint (int3)": ("int3; ret", "int3; ret", None, None),
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_fault_kinds_raise_and_process_survives(proc: Process, kind: str) -> None:
    x86, x64, address, access = FAULTS[kind]
    f = assemble(proc, x86 if proc.arch.name == "x86" else x64)
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    err = e.value
    assert err.kind == kind
    if address is not None:
        assert err.address == address and err.access == access
    else:
        assert err.pc >= f and err.instruction
    assert err.registers[proc.arch.pc] == err.pc
    assert f"pc=0x{err.pc:x}" in str(err)
    ok = assemble(proc, "mov eax, 42; ret")
    assert proc.call(ok) == 42


def test_write_to_readonly_and_execute_of_data(proc: Process) -> None:
    ro, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY)
    w = assemble(proc, f"mov dword ptr [{ro:#x}], 1; ret")
    with pytest.raises(EmulationError) as e:
        proc.call(w)
    assert (e.value.kind, e.value.address, e.value.status) == (
        "protected write",
        ro,
        NtStatus.ACCESS_VIOLATION,
    )
    data, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    proc.write(data, b"\xc3")  # `ret`, but on a non-executable page
    with pytest.raises(EmulationError) as e:
        proc.call(data)
    assert e.value.kind == "protected fetch"


def test_runaway_loops_stop_by_budget_and_by_wall_clock(proc: Process) -> None:
    loop = assemble(proc, "l: inc eax; jmp l")
    with pytest.raises(EmulationError) as e:
        proc.call(loop, max_instructions=10_000)
    assert e.value.kind == "instruction budget exhausted"
    with pytest.raises(EmulationError) as e:
        proc.call(loop, time_limit=0.2)
    assert e.value.kind == "wall-clock limit exceeded"
    ok = assemble(proc, "mov eax, 7; ret")
    assert proc.call(ok) == 7
    assert proc.call(ok, max_instructions=100) == 7


def test_stack_grows_through_guard_page(proc: Process) -> None:
    a = proc.arch
    limit0 = TEB.read(proc, a, proc.teb, "StackLimit")
    guard = limit0 - 0x1000
    assert proc.memory.page_state(guard) == PAGE_READWRITE | PAGE_GUARD
    sp, ax = a.sp, a.ret
    # touch the stack page by page (as __chkstk does) 5 pages deep, then return
    f = assemble(
        proc,
        f"""
        mov {ax}, {sp}
        mov ecx, 5
    l:  sub {ax}, 0x1000
        mov dword ptr [{ax}], 1
        dec ecx
        jnz l
        ret
    """,
    )
    proc.call(f)
    limit1 = TEB.read(proc, a, proc.teb, "StackLimit")
    assert limit1 < limit0 - 0x3000
    assert proc.memory.page_state(limit1 - 0x1000) == PAGE_READWRITE | PAGE_GUARD
    assert proc.memory.page_state(limit1) == PAGE_READWRITE


def test_stack_overflow_is_a_clean_error(arch: str) -> None:
    proc = Process(arch, stack_reserve=0x20000)
    push = "push rax" if arch == "x64" else "push eax"
    f = assemble(proc, f"l: {push}\n jmp l")
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert e.value.kind == "stack overflow" and e.value.status == NtStatus.STACK_OVERFLOW
    ok = assemble(proc, f"{push}\n mov eax, 5\n {'pop rcx' if arch == 'x64' else 'pop ecx'}\n ret")
    assert proc.call(ok) == 5  # the stack was reset with its guard page
    assert proc.memory.page_state(proc.thread_stack.limit - 0x1000) == PAGE_READWRITE | PAGE_GUARD


def test_guard_page_outside_the_stack_is_one_shot(proc: Process) -> None:
    g, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)
    f = assemble(proc, f"mov eax, [{g:#x}]; ret")
    with pytest.raises(EmulationError) as e:
        proc.call(f)
    assert e.value.kind == "guard page violation"
    assert e.value.status == NtStatus.GUARD_PAGE_VIOLATION
    assert proc.call(f) == 0  # the guard is gone after the first touch
    assert proc.memory.page_state(g) == PAGE_READWRITE


def test_python_callback_called_from_emulated_code(proc: Process) -> None:
    seen = []

    def add(p: Process, x: int, y: int, z: int) -> int:
        seen.append((x, y, z))
        return x * 100 + y * 10 + z

    cb = proc.register_callback(add, 3, name="add")
    if proc.arch.name == "x64":
        f = assemble(
            proc,
            f"""
            sub rsp, 0x28
            mov ecx, 1
            mov edx, 2
            mov r8d, 3
            mov rax, {cb:#x}
            call rax
            add rsp, 0x28
            ret
        """,
        )
    else:
        f = assemble(proc, f"push 3\n push 2\n push 1\n mov eax, {cb:#x}\n call eax\n ret")
    assert proc.call(f) == 123
    assert seen == [(1, 2, 3)]
    assert proc.symbolize(cb) == "heapemu!add"

    def boom(p: Process) -> int:
        raise RuntimeError("from the callback")

    cb2 = proc.register_callback(boom, 0)
    with pytest.raises(RuntimeError, match="from the callback"):
        proc.call(cb2)
    assert proc.call(f) == 123
