"""Calling conventions: where arguments go, who pops them, where the result comes back.

x64 has one convention (Microsoft x64: rcx, rdx, r8, r9, stack arguments above a 32-byte shadow
space, rsp 16-byte aligned at the ``call`` so rsp = 8 mod 16 at entry). x86 has stdcall (the
Win32 API's), cdecl (caller pops), fastcall (ecx, edx) and thiscall (``this`` in ecx).
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Arch


@dataclass(frozen=True)
class Convention:
    name: str
    reg_args: tuple[str, ...]
    callee_pops: bool
    shadow_space: int = 0

    def split(self, args: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(self.reg_args)
        return args[:n], args[n:]

    def frame(
        self, arch: Arch, top: int, return_address: int, args: tuple[int, ...]
    ) -> tuple[int, bytes, list[tuple[str, int]]]:
        """Lay out a call below ``top``: (entry sp, bytes to write at it, register values).

        The bytes are the return address, the shadow space and the stack arguments, so one
        memory write sets up the whole frame."""
        reg_vals, stack_vals = self.split(args)
        ps = arch.ptr_size
        body = self.shadow_space + ps * len(stack_vals)
        # sp + ps (just above the return address) is aligned as the caller's sp was at `call`
        entry_sp = ((top - body) & ~(arch.stack_align - 1)) - ps
        data = arch.pack_ptr(return_address) + b"\0" * self.shadow_space
        data += b"".join(arch.pack_ptr(v) for v in stack_vals)
        return (
            entry_sp,
            data,
            list(zip(self.reg_args, (v & arch.ptr_mask for v in reg_vals), strict=False)),
        )

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
