"""The one system call Wine's ntdll adds to Windows' set: its debug-channel output."""

from __future__ import annotations

import logging

from emu.nt.kernel import PVOID, ULONG, Kernel, syscall

log = logging.getLogger("heapemu.wine")


@syscall
def __wine_dbg_write(k: Kernel, str: PVOID, len: ULONG) -> int:
    """Wine's debug output: ``__wine_dbg_write(const char *str, unsigned int len)``."""
    text = k.read(str, min(len, 0x10000)).decode("utf-8", errors="replace")
    k.proc.debug_output.append(text)
    log.info("wine: %s", text.rstrip("\n"))
    k.details.update(text=text.rstrip("\n"))
    return len
