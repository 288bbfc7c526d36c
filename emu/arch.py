"""The two architectures heapemu emulates, described once as data.

Everything that differs between 32-bit x86 and x64 (pointer size, register names, calling
conventions, user-space bounds, the keystone mode) lives here, so the rest of the
code is one path parameterised by an :class:`Arch`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import keystone


@dataclass(frozen=True)
class Arch:
    name: str  # "x86" or "x64"
    ptr_size: int
    ks_mode: int
    pc: str
    sp: str
    fp: str
    ret: str  # integer return register
    gprs: tuple[str, ...]  # general-purpose registers, in a stable order for dumps
    # user-mode address space, as Windows lays it out (MmHighestUserAddress)
    user_min: int
    user_max: int  # inclusive
    # x64 Microsoft ABI: first four integer arguments, caller-owned shadow space
    arg_regs: tuple[str, ...]
    shadow_space: int
    # registers a callee must preserve (calling-convention checks)
    nonvolatile: tuple[str, ...]
    # KUSER_SHARED_DATA and the PEB/TEB neighbourhood are at fixed user addresses on both
    default_stack_reserve: int = 0x100000
    default_stack_commit: int = 0x1000

    @cached_property
    def bits(self) -> int:
        return self.ptr_size * 8

    @cached_property
    def ptr_mask(self) -> int:
        return (1 << self.bits) - 1

    @cached_property
    def ptr_fmt(self) -> str:
        return "<Q" if self.ptr_size == 8 else "<I"

    def pack_ptr(self, value: int) -> bytes:
        return struct.pack(self.ptr_fmt, value & self.ptr_mask)

    def unpack_ptr(self, data: bytes, offset: int = 0) -> int:
        return int(struct.unpack_from(self.ptr_fmt, data, offset)[0])

    @property
    def stack_align(self) -> int:
        return 16 if self.ptr_size == 8 else 4


X86 = Arch(
    name="x86",
    ptr_size=4,
    ks_mode=keystone.KS_MODE_32,
    pc="eip",
    sp="esp",
    fp="ebp",
    ret="eax",
    gprs=("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags"),
    user_min=0x00010000,
    user_max=0x7FFEFFFF,
    arg_regs=(),
    shadow_space=0,
    nonvolatile=("ebx", "esi", "edi", "ebp"),
)

X64 = Arch(
    name="x64",
    ptr_size=8,
    ks_mode=keystone.KS_MODE_64,
    pc="rip",
    sp="rsp",
    fp="rbp",
    ret="rax",
    gprs=(
        "rax",
        "rbx",
        "rcx",
        "rdx",
        "rsi",
        "rdi",
        "rbp",
        "rsp",
        "r8",
        "r9",
        "r10",
        "r11",
        "r12",
        "r13",
        "r14",
        "r15",
        "rip",
        "eflags",
    ),
    user_min=0x00010000,
    user_max=0x7FFFFFFEFFFF,
    arg_regs=("rcx", "rdx", "r8", "r9"),
    shadow_space=0x20,
    nonvolatile=("rbx", "rbp", "rdi", "rsi", "r12", "r13", "r14", "r15"),
)

ARCHES: dict[str, Arch] = {"x86": X86, "x64": X64}


def get_arch(name: str | Arch) -> Arch:
    if isinstance(name, Arch):
        return name
    try:
        return ARCHES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}: expected 'x86' or 'x64'") from None


# Register names usable through proc.regs, per architecture. 64-bit-only names are refused on x86.
_COMMON_REGS = [
    "eax",
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "esp",
    "eip",
    "eflags",
    "ax",
    "bx",
    "cx",
    "dx",
    "si",
    "di",
    "bp",
    "sp",
    "al",
    "bl",
    "cl",
    "dl",
    "ah",
    "bh",
    "ch",
    "dh",
    "cs",
    "ds",
    "es",
    "fs",
    "gs",
    "ss",
    "mxcsr",
    # debug registers: stored, never armed (CONTEXT_DEBUG_REGISTERS round-trips through them)
    "dr0",
    "dr1",
    "dr2",
    "dr3",
    "dr6",
    "dr7",
]
_X64_ONLY = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "rip",
    "rflags",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "r8d",
    "r9d",
    "r10d",
    "r11d",
    "r12d",
    "r13d",
    "r14d",
    "r15d",
    "fs_base",
    "gs_base",
]
_VECTOR = [f"xmm{i}" for i in range(8)]
_VECTOR_X64 = [f"xmm{i}" for i in range(8, 16)]


def register_names(arch: Arch) -> list[str]:
    """Every register name valid on ``arch`` (what ``proc.regs`` and traces accept)."""
    names = list(_COMMON_REGS) + _VECTOR
    if arch.ptr_size == 8:
        names += _X64_ONLY + _VECTOR_X64
    return names
