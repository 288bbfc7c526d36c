"""Calling conventions: where arguments go, who pops them, where the result comes back.

x64 has one convention (Microsoft x64: rcx, rdx, r8, r9, stack arguments above a 32-byte shadow
space, rsp 16-byte aligned at the ``call`` so rsp = 8 mod 16 at entry). x86 has stdcall (the
Win32 API's), cdecl (caller pops), fastcall (ecx, edx) and thiscall (``this`` in ecx).
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.arch import Arch


@dataclass(frozen=True)
class Convention:
    name: str
    reg_args: tuple[str, ...]
    callee_pops: bool
    shadow_space: int = 0

    def split(self, args: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(self.reg_args)
        return args[:n], args[n:]

    def stack_arg_address(self, arch: Arch, entry_sp: int, index: int) -> int:
        """Address of stack argument ``index`` (0-based among *all* arguments) at entry."""
        return (
            entry_sp
            + arch.ptr_size
            + self.shadow_space
            + arch.ptr_size * (index - len(self.reg_args))
        )

    def popped_bytes(self, arch: Arch, argc: int) -> int:
        """Bytes the callee removes besides the return address (``ret N``)."""
        return arch.ptr_size * max(0, argc - len(self.reg_args)) if self.callee_pops else 0


WIN64 = Convention("win64", ("rcx", "rdx", "r8", "r9"), callee_pops=False, shadow_space=0x20)
STDCALL = Convention("stdcall", (), callee_pops=True)
CDECL = Convention("cdecl", (), callee_pops=False)
FASTCALL = Convention("fastcall", ("ecx", "edx"), callee_pops=True)
THISCALL = Convention("thiscall", ("ecx",), callee_pops=True)

_BY_ARCH = {
    "x64": {
        "win64": WIN64,
        "ms": WIN64,
        "stdcall": WIN64,
        "cdecl": WIN64,
        "fastcall": WIN64,
        "thiscall": WIN64,
    },  # x64 compilers ignore these keywords
    "x86": {"stdcall": STDCALL, "cdecl": CDECL, "fastcall": FASTCALL, "thiscall": THISCALL},
}


def get_convention(arch: Arch, name: str | None) -> Convention:
    table = _BY_ARCH[arch.name]
    if name is None:
        return WIN64 if arch.ptr_size == 8 else STDCALL
    try:
        return table[name]
    except KeyError:
        raise ValueError(
            f"unknown calling convention {name!r} on {arch.name}; choose one of {sorted(table)}"
        ) from None
