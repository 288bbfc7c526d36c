"""The Windows 7 NT heap + LFH (``asm/src/win7heap.c``) as an allocator: ``load_c_heap`` with
its keys.

The heap draws ``_HEAP.Encoding`` and the process-wide LFH and pointer keys from a record at
PEB + 0xF00 (signature "W7HK", Encoding u32, LFHKey, PointerKey: 0x10 bytes on x86, 0x18 on
x64), read by every RtlCreateHeap, which then advances Encoding (xorshift32) for the next heap.
The options write that record before the process heap is created; keys not given keep the
C's defaults (seed 002's LFH key 0x3C18DB66 and pointer key 0x0C58FA9C, Encoding 0x5F1C3A69).
The process heap takes the first Encoding, so a heap created afterwards gets the next one; call
``set_win7_keys`` right before the RtlCreateHeap that should get a given Encoding.
"""

from __future__ import annotations

import struct

from emu.load.builtin_heap import load_c_heap
from emu.modules import Module
from emu.process.core import ProcessCore

UNIT = "win7heap"
KEYS_PEB_OFFSET = 0xF00
KEYS_SIGNATURE = 0x4B483757  # "W7HK"
DEFAULT_ENCODING = 0x5F1C3A69
DEFAULT_LFH_KEY = 0x3C18DB66
DEFAULT_POINTER_KEY = 0x0C58FA9C


def set_win7_keys(
    proc: ProcessCore,
    encoding: int = DEFAULT_ENCODING,
    lfh_key: int = DEFAULT_LFH_KEY,
    pointer_key: int = DEFAULT_POINTER_KEY,
) -> None:
    """Write the key record the next RtlCreateHeap reads (what Win7HeapSetKeys does)."""
    fmt = "<II" + ("QQ" if proc.arch.ptr_size == 8 else "II")
    mask = (1 << (8 * proc.arch.ptr_size)) - 1
    record = struct.pack(
        fmt, KEYS_SIGNATURE, encoding & 0xFFFFFFFF, lfh_key & mask, pointer_key & mask
    )
    proc.write(proc.peb + KEYS_PEB_OFFSET, record)


def load_win7_heap(
    proc: ProcessCore,
    *,
    encoding: int | None = None,
    lfh_key: int | None = None,
    pointer_key: int | None = None,
    create_process_heap: bool = True,
) -> Module:
    """Map the win7 heap; ``encoding``/``lfh_key``/``pointer_key`` seed the key record first
    (the process heap gets ``encoding``, the next heap its xorshift32 successor)."""
    if (encoding, lfh_key, pointer_key) != (None, None, None):
        set_win7_keys(
            proc,
            DEFAULT_ENCODING if encoding is None else encoding,
            DEFAULT_LFH_KEY if lfh_key is None else lfh_key,
            DEFAULT_POINTER_KEY if pointer_key is None else pointer_key,
        )
    return load_c_heap(proc, UNIT, create_process_heap=create_process_heap)
