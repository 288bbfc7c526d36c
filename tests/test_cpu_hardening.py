"""Issue 20's CPU rows: emulated code must not crash the interpreter (D1), leave CPU state that
poisons later calls (D5) or run privileged instructions (D6); rdtsc/rdrand are deterministic.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import keystone
import pytest
from asmutil import assemble, syscall_stubs
from programbuild import build

from emu import EmulationError, Process
from emu.win.ntdefs import PAGE_EXECUTE_READ, PAGE_GUARD, NtStatus

ROOT = Path(__file__).resolve().parent.parent

# D1: a program stopped by the wall-clock watchdog, then what drops translated code (the
# recorder's unhook, a debugger write over the code that ran). Before the fix, the watchdog's
# stop left Unicorn's translation-block jump lists inconsistent and walking them crashed the
# interpreter in ~1 of 4 x64 runs (measured: 6 of 25; 11 of 25 with the writes).
_TIMEOUT_SCRIPT = """
import sys
from emu.errors import EmulationError
from emu.facade import load_program

for _ in range(int(sys.argv[2])):
    p = load_program(sys.argv[1], time_limit=0.001)
    with p.proc.record():
        r = p.run()
    assert isinstance(r.error, EmulationError), r.error
    assert r.error.kind == "wall-clock limit exceeded", r.error
    for m in p.proc.modules:  # write over the code that ran: its translations are dropped
        for page in range(m.base, m.end, 0x1000):
            if p.proc.memory.page_state(page):
                p.proc.write(page, p.proc.read(page, 0x1000))
raise r.error
"""


@pytest.mark.wine
def test_timeout_with_the_recorder_never_crashes(arch: str) -> None:
    """D1: ``time_limit=0.001`` with the event recorder on ends in an EmulationError (the
    script re-raises it: exit status 1), never a signal, however often it is repeated."""
    exe = build("args.exe", arch)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", _TIMEOUT_SCRIPT, str(exe), "12"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "EmulationError" in out.stderr and "wall-clock limit exceeded" in out.stderr


# ---------------------------------------------------------------------------------- D5
TF, IF, DF, AC, NT, IOPL, VM = 0x100, 0x200, 0x400, 0x40000, 0x4000, 0x3000, 0x20000


def _flags_probe(proc: Process) -> int:
    """A function returning the flags it was called with."""
    x64 = proc.arch.ptr_size == 8
    return assemble(proc, "pushfq; pop rax; ret" if x64 else "pushfd; pop eax; ret")


def _assert_abi_flags(flags: int) -> None:
    assert flags & (TF | DF | AC | NT | IOPL | VM) == 0, hex(flags)
    assert flags & IF, hex(flags)


def test_trap_flag_fails_one_call_only(proc: Process) -> None:
    """D5: code that sets TF faults with STATUS_SINGLE_STEP at its next instruction (as on
    Windows); the calls after it run normally."""
    x64 = proc.arch.ptr_size == 8
    sp = "rsp" if x64 else "esp"
    f = (
        "pushfq; or qword ptr [rsp], 0x100; popfq; ret"
        if x64
        else (f"pushfd; or dword ptr [{sp}], 0x100; popfd; ret")
    )
    trap, probe = assemble(proc, f), _flags_probe(proc)
    with pytest.raises(EmulationError) as e:
        proc.call(trap)
    assert e.value.status == NtStatus.SINGLE_STEP
    for _ in range(3):
        _assert_abi_flags(proc.call(probe))


def test_direction_and_alignment_flags_do_not_leak(proc: Process) -> None:
    """D5: `std` (and AC) left set by one call: the next one starts with DF=0, as the ABI
    requires at every function entry."""
    x64 = proc.arch.ptr_size == 8
    sp = "rsp" if x64 else "esp"
    push, pop = ("pushfq", "popfq") if x64 else ("pushfd", "popfd")
    leave = assemble(proc, f"std; {push}; or dword ptr [{sp}], 0x40000; {pop}; ret")
    probe = _flags_probe(proc)
    proc.call(leave)
    _assert_abi_flags(proc.call(probe))


def test_fpu_and_sse_control_state_is_the_abi_s(proc: Process) -> None:
    """D5: a callee that changes MXCSR (round toward zero, exceptions unmasked), the x87 control
    word and leaves values on the x87 stack: the next call sees MXCSR 0x1F80, FCW 0x27F and an
    empty x87 stack (Windows' state at a function's entry)."""
    x64 = proc.arch.ptr_size == 8
    sp = "rsp" if x64 else "esp"
    mess = assemble(
        proc,
        f"sub {sp}, 16; mov dword ptr [{sp}], 0x6000; ldmxcsr [{sp}]; "
        f"mov word ptr [{sp}], 0x7f; fldcw [{sp}]; fld1; fld1; fld1; add {sp}, 16; ret",
    )
    # MXCSR in bits 0-15, FCW in 16-31, the x87 tag word (fnstenv) in 32-47 on x64 / ebx on x86
    probe = assemble(
        proc,
        f"sub {sp}, 64; stmxcsr [{sp}]; fnstcw [{sp} + 4]; fnstenv [{sp} + 8]; "
        f"movzx eax, word ptr [{sp}]; movzx ecx, word ptr [{sp} + 4]; shl ecx, 16; or eax, ecx; "
        + (
            "movzx ecx, word ptr [rsp + 16]; shl rcx, 32; or rax, rcx; add rsp, 64; ret"
            if x64
            else "movzx edx, word ptr [esp + 16]; add esp, 64; ret"
        ),
    )
    proc.call(mess)
    value = proc.call(probe)
    assert value & 0xFFFF == 0x1F80, hex(value)
    assert (value >> 16) & 0xFFFF == 0x27F, hex(value)
    tags = (value >> 32) & 0xFFFF if x64 else proc.regs["edx"] & 0xFFFF
    assert tags == 0xFFFF, hex(tags)  # every x87 register empty


def test_segment_registers_and_teb_base_are_restored(proc: Process) -> None:
    """D5: a callee that reloads the TEB's segment register (x86 fs, x64 gs: a selector load
    zeroes the x64 GS base) or DS/ES: the next call finds the TEB through fs/gs again."""
    x64 = proc.arch.ptr_size == 8
    if x64:
        clobber = assemble(proc, "xor eax, eax; mov gs, ax; mov ds, ax; mov es, ax; ret")
        teb_self = assemble(proc, "mov rax, qword ptr gs:[0x30]; ret")
    else:
        # the flat user data selector into fs (base 0), null selectors into ds/es
        clobber = assemble(proc, "mov ax, 0x23; mov fs, ax; xor eax, eax; mov es, ax; ret")
        teb_self = assemble(proc, "mov eax, dword ptr fs:[0x18]; ret")
    proc.call(clobber)
    assert proc.call(teb_self) == proc.teb
    proc.call(clobber)
    assert proc.call(teb_self) == proc.teb


def _continue_to(proc: Process, code: int, eflags: int) -> None:
    """NtContinue (through the architecture's real system-call stub) into ``code`` with
    ``eflags``, on a stack of its own; the CONTEXT offsets are Windows' (winnt.h)."""
    x64 = proc.arch.ptr_size == 8
    stubs = syscall_stubs(proc)
    ctx = assemble(proc, "ret", 0x2000) + 0x1000  # 0x1000 bytes of zeroed CONTEXT space
    stack = assemble(proc, "ret", 0x2000) + 0x1800
    pc, sp, flags = (0xF8, 0x98, 0x44) if x64 else (0xB8, 0xC4, 0xC0)
    # ContextFlags: CONTEXT_AMD64/CONTEXT_i386 | CONTROL (pc, sp, flags) | INTEGER
    proc.write_u32(ctx + (0x30 if x64 else 0), 0x100003 if x64 else 0x10003)
    proc.write_ptr(ctx + pc, code)
    proc.write_ptr(ctx + sp, stack)
    proc.write_u32(ctx + flags, eflags)
    proc.call(stubs["NtContinue"], ctx, 0)


def test_nt_continue_sanitises_eflags(proc: Process) -> None:
    """D5: NtContinue keeps only what user mode may set (Windows' SANITIZE_EFLAGS): IOPL 3,
    VM (x86) and a cleared IF in the CONTEXT are ignored, so `cli` stays privileged after it."""
    x64 = proc.arch.ptr_size == 8
    out = assemble(proc, "ret", 0x1000) + 0x800
    ax = "rax" if x64 else "eax"
    code = assemble(
        proc, f"{'pushfq' if x64 else 'pushfd'}; pop {ax}; mov [{out:#x}], eax; cli; ret"
    )
    with pytest.raises(EmulationError) as e:
        _continue_to(proc, code, (IOPL | DF | 0x2) | (0 if x64 else VM))
    assert e.value.status == NtStatus.PRIVILEGED_INSTRUCTION
    flags = proc.read_u32(out)
    assert flags & (IOPL | VM) == 0 and flags & IF, hex(flags)
    assert flags & DF  # user mode may set DF
    _assert_abi_flags(proc.call(_flags_probe(proc)))


def test_nt_continue_with_the_trap_flag_single_steps_once(proc: Process) -> None:
    """D5: TF through NtContinue is the debugger's single step (Windows keeps it): the resumed
    code traps at its first instruction; later calls run normally."""
    code = assemble(proc, "nop; nop; ret")
    with pytest.raises(EmulationError) as e:
        _continue_to(proc, code, TF | 0x202)
    assert e.value.status == NtStatus.SINGLE_STEP
    probe = _flags_probe(proc)
    for _ in range(2):
        _assert_abi_flags(proc.call(probe))


# ---------------------------------------------------------------------------------- D6
# Each runs in user mode on Windows as a #GP (or, for port I/O, the missing I/O permission):
# STATUS_PRIVILEGED_INSTRUCTION at the instruction. {r}: the arch's accumulator, {sp}: its
# stack pointer; ins/outs get valid buffers, so only the privilege check can fail.
PRIVILEGED = [
    "cli",
    "sti",
    "hlt",
    "clts",
    "wbinvd",
    "invd",
    "lmsw ax",
    "invlpg [{sp}]",
    "in al, dx",
    "in eax, dx",
    "in al, 0x60",
    "out dx, al",
    "out dx, eax",
    "out 0x80, al",
    "insb",
    "outsd",
    "rdmsr",
    "wrmsr",
    "mov {r}, cr0",
    "mov cr0, {r}",
    "mov {r}, cr3",
    "mov cr3, {r}",
    "mov {r}, cr4",
    "mov cr4, {r}",
    "mov {r}, cr2",
    "mov {r}, dr0",
    "mov dr0, {r}",
    "mov {r}, dr7",
    "mov dr7, {r}",
    "lgdt [{sp}]",
    "lidt [{sp}]",
    "lldt ax",
    "ltr ax",
    "swapgs",
]


@pytest.mark.parametrize("instruction", PRIVILEGED)
def test_privileged_instructions_fault(proc: Process, instruction: str) -> None:
    """D6: code runs at CPL 3: a privileged instruction raises STATUS_PRIVILEGED_INSTRUCTION
    at its own pc, leaves the registers as they were there, and the process stays usable."""
    x64 = proc.arch.ptr_size == 8
    if instruction == "swapgs" and not x64:
        pytest.skip("swapgs exists in 64-bit mode only (x86: an invalid opcode)")
    r, sp, di, si = ("rax", "rsp", "rdi", "rsi") if x64 else ("eax", "esp", "edi", "esi")
    text = instruction.format(r=r, sp=sp)
    buf = assemble(proc, "ret", 0x1000)  # a writable page for ins/outs
    prefix = f"mov {di}, {buf:#x}; mov {si}, {buf:#x}; mov ecx, 0x1234"
    code = assemble(proc, f"{prefix}; {text}; mov ecx, 0x5678; ret")
    at = code + len(keystone.Ks(keystone.KS_ARCH_X86, proc.arch.ks_mode).asm(prefix, code)[0])
    with pytest.raises(EmulationError) as e:
        proc.call(code)
    assert e.value.status == NtStatus.PRIVILEGED_INSTRUCTION, e.value
    assert e.value.pc == at, (hex(e.value.pc), hex(at))
    assert e.value.registers["rcx" if x64 else "ecx"] == 0x1234  # nothing after it ran
    assert proc.cpu.cpl == 3
    _assert_abi_flags(proc.call(_flags_probe(proc)))


# ------------------------------------------------------------------ rdtsc, rdrand, rdseed
def _tsc_reads(arch: str) -> list[int]:
    """Eight rdtsc and one rdtscp reads in a fresh process, a system call between reads 4 and 5."""
    proc = Process(arch, time_limit=10.0)
    stubs = syscall_stubs(proc)
    out = assemble(proc, "ret", 0x1000)
    x64 = arch == "x64"
    bx = "rbx" if x64 else "ebx"
    lines = [f"push {bx}", f"mov {bx}, {out:#x}"]
    for i in range(9):
        if i == 4:  # NtYieldExecution: no arguments
            lines += [f"call {stubs['NtYieldExecution']:#x}"]
        lines += ["rdtscp" if i == 8 else "rdtsc", f"mov [{bx} + {8 * i}], eax"]
        lines += [f"mov [{bx} + {8 * i + 4}], edx"]
    lines += [f"mov [{bx} + 0x80], ecx", f"pop {bx}", "ret"]
    proc.call(assemble(proc, "\n".join(lines)))
    values = [
        proc.read_ptr(out + 8 * i) if x64 else int.from_bytes(proc.read(out + 8 * i, 8), "little")
        for i in range(9)
    ]
    assert proc.read_u32(out + 0x80) == 0  # rdtscp's TSC_AUX: processor 0
    return values


def test_rdtsc_is_deterministic_and_monotonic(arch: str) -> None:
    """rdtsc/rdtscp follow the emulated clock, not the host: two processes read the same
    values; they always increase, and a system call (1 ms of emulated time) moves them on by
    at least 1 ms at the 3 GHz the counter runs at."""
    first, second = _tsc_reads(arch), _tsc_reads(arch)
    assert first == second
    assert all(b > a for a, b in itertools.pairwise(first)), first
    assert first[4] - first[0] >= 3_000_000  # the system call between reads 4 and 5


@pytest.mark.parametrize("instruction", ["rdrand eax", "rdseed eax", "rdrand cx", "rdseed ecx"])
def test_rdrand_and_rdseed_are_invalid(proc: Process, instruction: str) -> None:
    """The emulated CPU (Sandy Bridge) has no RDRAND/RDSEED, and CPUID says so: the
    instructions raise STATUS_ILLEGAL_INSTRUCTION at their pc instead of returning host
    randomness (Unicorn has no hook for them)."""
    code = assemble(proc, f"{instruction}; ret")
    with pytest.raises(EmulationError) as e:
        proc.call(code)
    assert e.value.status == NtStatus.ILLEGAL_INSTRUCTION
    assert e.value.pc == code
    cpuid = assemble(
        proc,
        "push ebx; mov eax, 7; xor ecx, ecx; cpuid; mov eax, ebx; pop ebx; ret"
        if proc.arch.ptr_size == 4
        else "push rbx; mov eax, 7; xor ecx, ecx; cpuid; mov eax, ebx; pop rbx; ret",
    )
    assert proc.call(cpuid) & (1 << 18) == 0  # CPUID.7.EBX.RDSEED
    leaf1 = assemble(
        proc,
        "push ebx; mov eax, 1; cpuid; mov eax, ecx; pop ebx; ret"
        if proc.arch.ptr_size == 4
        else "push rbx; mov eax, 1; cpuid; mov eax, ecx; pop rbx; ret",
    )
    assert proc.call(leaf1) & (1 << 30) == 0  # CPUID.1.ECX.RDRAND


def test_rdtsc_follows_snapshots(proc: Process) -> None:
    """A restored snapshot reads the time-stamp counter the first run read after it."""
    code = assemble(proc, "rdtsc; ret")
    snap = proc.snapshot()
    first = [proc.call(code) for _ in range(3)]
    proc.restore(snap)
    assert [proc.call(code) for _ in range(3)] == first


def test_removing_a_hook_does_not_touch_guard_pages(proc: Process) -> None:
    """Unhooking drops the code translated with the hook, looking its pages up: that is not an
    access, so a guard page set since on that code stays a guard page."""
    code = assemble(proc, "ret")
    hook = proc.cpu.hook_block(lambda address, size: None)
    proc.call(code)
    proc.memory.protect(code, 0x1000, PAGE_EXECUTE_READ | PAGE_GUARD)
    proc.cpu.unhook(hook)
    assert proc.memory.page_state(code) & PAGE_GUARD


# what each attempt would break if it ran: SSE (CR0.TS: #NM; CR4.OSFXSR: #UD), the TEB's base
CONTROL_ATTEMPTS = {
    "cr0.ts": "mov {r}, cr0; or eax, 8; mov cr0, {r}; ret",
    "cr4.osfxsr": "mov {r}, cr4; and eax, 0xfffffdff; mov cr4, {r}; ret",
    "wrmsr gs base": "mov ecx, 0xc0000101; xor eax, eax; xor edx, edx; wrmsr; ret",
}


@pytest.mark.parametrize("attempt", list(CONTROL_ATTEMPTS))
def test_control_registers_and_msrs_stay_as_created(proc: Process, attempt: str) -> None:
    """D5/D6: changing CR0, CR4 or the GS base MSR faults (privileged) and changes nothing:
    SSE and the TEB behind fs/gs work in the next calls as before."""
    x64 = proc.arch.ptr_size == 8
    code = assemble(proc, CONTROL_ATTEMPTS[attempt].format(r="rax" if x64 else "eax"))
    with pytest.raises(EmulationError) as e:
        proc.call(code)
    assert e.value.status == NtStatus.PRIVILEGED_INSTRUCTION
    sse = assemble(proc, "xorps xmm0, xmm0; addps xmm0, xmm0; cvttss2si eax, xmm0; ret")
    teb = assemble(proc, "mov rax, gs:[0x30]; ret" if x64 else "mov eax, fs:[0x18]; ret")
    assert proc.call(sse) == 0
    assert proc.call(teb) == proc.teb
