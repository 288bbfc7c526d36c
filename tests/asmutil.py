"""Test helper: assemble a snippet into fresh executable memory of a process, and system-call
stubs in each architecture's real style."""

from __future__ import annotations

import asm
from asm.assembler import assemble_code
from emu import Process
from emu.nt.calls import HANDLERS
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_EXECUTE_READWRITE

# Our own system-call numbers for test stubs (Windows 10 x64 numbering): the builtin heap's,
# two more the tests call directly, then every other service the kernel serves (from 0x1000)
NUMBERS = {**asm.SYSCALL_NUMBERS, 0x50: "NtProtectVirtualMemory", 0x23: "NtQueryVirtualMemory"}
NUMBERS.update(
    (0x1000 + i, name)
    for i, name in enumerate(sorted(set(HANDLERS) - set(NUMBERS.values())))
    if name.startswith("Nt")
)


def argc(name: str) -> int:
    """How many arguments the kernel's handler of ``name`` takes."""
    return len(HANDLERS[name].params)


def assemble(proc: Process, text: str, size: int = 0x10000) -> int:
    base, _ = proc.memory.allocate(0, size, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE)
    proc.write(base, assemble_code(text, proc.arch.name, base))
    return base


def syscall_stubs(proc: Process, x86_path: str = "int2e") -> dict[str, int]:
    """One stub per Nt service, in the architecture's real system-call style; the stubs' range
    registers our number table with the process."""
    lines = ["kifast:", "mov edx, esp", "sysenter", "ret"]
    for number, name in NUMBERS.items():
        lines.append(f"{name}:")
        if proc.arch.ptr_size == 8:
            lines += ["mov r10, rcx", f"mov eax, {number}", "syscall", "ret"]
        elif x86_path == "int2e":
            lines += [f"mov eax, {number}", "lea edx, [esp+4]", "int 0x2e", f"ret {4 * argc(name)}"]
        else:  # KiFastSystemCall style
            lines += [f"mov eax, {number}", "call kifast", f"ret {4 * argc(name)}"]
    module = proc.load_flat("\n".join(lines), f"syscall_stubs_{x86_path}")
    proc.register_syscall_table(module.base, module.end, NUMBERS)
    return {name: module.symbols[name] for name in NUMBERS.values()}
