"""PEB.Ldr: the loader's three module lists, kept in emulated memory as Windows keeps them.

Code that walks ``PEB->Ldr->InLoadOrderModuleList`` (GetModuleHandle, shellcode, Wine's own
loader) finds an LDR_DATA_TABLE_ENTRY per module with DllBase, SizeOfImage, EntryPoint and the
full and base names as UNICODE_STRINGs. The records live in a region of our own ("loader
data"), handed out by a bump allocator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.memory import align_up
from emu.win.layouts import LDR_DATA_TABLE_ENTRY, PEB, PEB_LDR_DATA, UNICODE_STRING
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE, PAGE_SIZE

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

_REGION = 0x100000  # room for a few thousand modules
LDRP_IMAGE_DLL = 0x4  # LDR_DATA_TABLE_ENTRY.Flags: the entry is a DLL, not the executable
LDRP_ENTRY_PROCESSED = 0x4000

LISTS = (
    ("InLoadOrderModuleList", "InLoadOrderLinks"),
    ("InMemoryOrderModuleList", "InMemoryOrderLinks"),
    ("InInitializationOrderModuleList", "InInitializationOrderLinks"),
)


class LoaderData:
    def __init__(self, proc: ProcessCore):
        self.proc = proc
        a = proc.arch
        self.base, _ = proc.memory.allocate(
            0, _REGION, MEM_RESERVE, PAGE_READWRITE, usage="loader data (PEB.Ldr)"
        )
        self._committed = 0
        self._next = self.base
        self.ldr = self._alloc(PEB_LDR_DATA.size(a))
        PEB_LDR_DATA.write(proc, a, self.ldr, "Length", PEB_LDR_DATA.size(a))
        PEB_LDR_DATA.write(proc, a, self.ldr, "Initialized", 1)
        for head, _ in LISTS:
            h = PEB_LDR_DATA.address(a, self.ldr, head)
            proc.write_ptr(h, h)  # empty list: Flink = Blink = the head itself
            proc.write_ptr(h + a.ptr_size, h)
        PEB.write(proc, a, proc.peb, "Ldr", self.ldr)
        self.entries: dict[int, int] = {}  # DllBase -> LDR_DATA_TABLE_ENTRY

    def _alloc(self, size: int) -> int:
        addr = self._next
        end = align_up(addr + size, 16)
        while end > self.base + self._committed:
            self.proc.memory.allocate(
                self.base + self._committed, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE
            )
            self._committed += PAGE_SIZE
        self._next = end
        return addr

    def _unicode_string(self, at: int, text: str) -> None:
        data = text.encode("utf-16-le")
        buf = self._alloc(len(data) + 2)
        self.proc.write(buf, data + b"\0\0")
        a = self.proc.arch
        UNICODE_STRING.write(self.proc, a, at, "Length", len(data))
        UNICODE_STRING.write(self.proc, a, at, "MaximumLength", len(data) + 2)
        UNICODE_STRING.write(self.proc, a, at, "Buffer", buf)

    def add(
        self,
        base: int,
        size: int,
        entry_point: int,
        full_name: str,
        base_name: str,
        *,
        is_dll: bool,
        timestamp: int = 0,
    ) -> int:
        """Append a module to the three lists (the executable is not in the init-order list)."""
        proc, a = self.proc, self.proc.arch
        e = self._alloc(LDR_DATA_TABLE_ENTRY.size(a))
        LDR_DATA_TABLE_ENTRY.write(proc, a, e, "DllBase", base)
        LDR_DATA_TABLE_ENTRY.write(proc, a, e, "EntryPoint", entry_point)
        LDR_DATA_TABLE_ENTRY.write(proc, a, e, "SizeOfImage", size)
        LDR_DATA_TABLE_ENTRY.write(
            proc, a, e, "Flags", (LDRP_IMAGE_DLL if is_dll else 0) | LDRP_ENTRY_PROCESSED
        )
        LDR_DATA_TABLE_ENTRY.write(proc, a, e, "ObsoleteLoadCount", 0xFFFF)  # static load
        LDR_DATA_TABLE_ENTRY.write(proc, a, e, "TimeDateStamp", timestamp)
        hash_links = LDR_DATA_TABLE_ENTRY.address(a, e, "HashLinks")
        proc.write_ptr(hash_links, hash_links)
        proc.write_ptr(hash_links + a.ptr_size, hash_links)
        self._unicode_string(LDR_DATA_TABLE_ENTRY.address(a, e, "FullDllName"), full_name)
        self._unicode_string(LDR_DATA_TABLE_ENTRY.address(a, e, "BaseDllName"), base_name)
        for i, (head_field, link_field) in enumerate(LISTS):
            link = LDR_DATA_TABLE_ENTRY.address(a, e, link_field)
            if i == 2 and not is_dll:
                proc.write_ptr(link, link)
                proc.write_ptr(link + a.ptr_size, link)
                continue
            self._insert_tail(PEB_LDR_DATA.address(a, self.ldr, head_field), link)
        self.entries[base] = e
        return e

    def _insert_tail(self, head: int, link: int) -> None:
        proc, ps = self.proc, self.proc.arch.ptr_size
        last = proc.read_ptr(head + ps)  # head.Blink
        proc.write_ptr(link, head)  # link.Flink
        proc.write_ptr(link + ps, last)  # link.Blink
        proc.write_ptr(last, link)  # last.Flink
        proc.write_ptr(head + ps, link)  # head.Blink

    def walk(self, list_name: str = "InLoadOrderModuleList") -> list[tuple[int, str]]:
        """(DllBase, BaseDllName) in list order, read back from emulated memory."""
        proc, a = self.proc, self.proc.arch
        link_field = dict(LISTS)[list_name]
        link_off = LDR_DATA_TABLE_ENTRY.offset(a, link_field)
        head = PEB_LDR_DATA.address(a, self.ldr, list_name)
        out: list[tuple[int, str]] = []
        link = proc.read_ptr(head)
        while link != head and len(out) < 100_000:
            e = link - link_off
            name_at = LDR_DATA_TABLE_ENTRY.address(a, e, "BaseDllName")
            n = UNICODE_STRING.read(proc, a, name_at, "Length")
            buf = UNICODE_STRING.read(proc, a, name_at, "Buffer")
            out.append(
                (
                    LDR_DATA_TABLE_ENTRY.read(proc, a, e, "DllBase"),
                    proc.read(buf, n).decode("utf-16-le"),
                )
            )
            link = proc.read_ptr(link)
        return out
