"""Test helper: assemble a snippet with keystone into fresh executable memory of a process."""

from __future__ import annotations

import keystone

from emu import Process
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_EXECUTE_READWRITE

# Our own system-call numbers for test stubs (Windows 10 x64 numbering)
NUMBERS = {
    0x18: "NtAllocateVirtualMemory",
    0x1E: "NtFreeVirtualMemory",
    0x50: "NtProtectVirtualMemory",
    0x23: "NtQueryVirtualMemory",
    0x2A: "NtRaiseException",
}
ARGC = {
    "NtAllocateVirtualMemory": 6,
    "NtFreeVirtualMemory": 4,
    "NtProtectVirtualMemory": 5,
    "NtQueryVirtualMemory": 6,
    "NtRaiseException": 3,
}


def assemble(proc: Process, text: str, size: int = 0x10000) -> int:
    base, _ = proc.memory.allocate(0, size, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE)
    ks = keystone.Ks(keystone.KS_ARCH_X86, proc.arch.ks_mode)
    code, _ = ks.asm(text, base)
    proc.write(base, bytes(code))
    return base


def syscall_stubs(proc: Process, x86_path: str = "int2e") -> dict[str, int]:
    """One stub per Nt service, in the architecture's real system-call style; the stubs' range
    registers our number table with the process."""
    lines = ["kifast:", "mov edx, esp", "sysenter", "ret"]  # first: prefixes see it defined
    order = []
    for number, name in NUMBERS.items():
        order.append(name)
        lines.append(f"{name}:")
        if proc.arch.ptr_size == 8:
            lines += ["mov r10, rcx", f"mov eax, {number}", "syscall", "ret"]
        elif x86_path == "int2e":
            lines += [f"mov eax, {number}", "lea edx, [esp+4]", "int 0x2e", f"ret {4 * ARGC[name]}"]
        else:  # KiFastSystemCall style
            lines += [f"mov eax, {number}", "call kifast", f"ret {4 * ARGC[name]}"]
    ks = keystone.Ks(keystone.KS_ARCH_X86, proc.arch.ks_mode)
    base, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE)
    addrs = {}
    for name in order:  # label addresses: assemble the prefix up to each label
        prefix = "\n".join(lines[: lines.index(f"{name}:")])
        addrs[name] = base + len(ks.asm(prefix, base)[0])
    code, _ = ks.asm("\n".join(lines), base)
    proc.write(base, bytes(code))
    proc.register_syscall_table(base, base + 0x10000, NUMBERS)
    return addrs
