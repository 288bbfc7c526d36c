"""PE images in a process: preferred base or relocated, exports callable, imports bound to
modules and Python hooks, PEB.Ldr lists as code walking them expects, clean refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pebuild import build

from emu import EmulationError, Process
from emu.win.layouts import PEB
from emu.win.ntdefs import MEM_IMAGE, MEM_RESERVE, PAGE_EXECUTE_READ, PAGE_READONLY, PAGE_READWRITE
from loader.errors import LoaderError


def kernel32_hooks(proc: Process, log: list[tuple[str, tuple[int, ...]]]) -> None:
    """GetProcessHeap/HeapAlloc/HeapFree served by Python, as user.exe imports them."""

    def get_process_heap(p: Process) -> int:
        log.append(("GetProcessHeap", ()))
        return 0x4242

    def heap_alloc(p: Process, heap: int, flags: int, size: int) -> int:
        log.append(("HeapAlloc", (heap, flags, size)))
        base, _ = p.memory.allocate(0, size, 0x3000, PAGE_READWRITE)
        return base

    def heap_free(p: Process, heap: int, flags: int, block: int) -> int:
        log.append(("HeapFree", (heap, flags, block)))
        return 1

    proc.hook_export("kernel32.dll!GetProcessHeap", get_process_heap)
    proc.hook_export("kernel32!HeapAlloc", heap_alloc)
    proc.hook_export("KERNEL32!HeapFree", heap_free)


def test_dll_at_preferred_base_with_section_protections(proc: Process) -> None:
    m = proc.load_pe(str(build("mathlib.dll", proc.arch.name)))
    assert m.base == m.image.image_base
    assert proc.memory.region_at(m.base).type == MEM_IMAGE
    assert proc.memory.query(m.base).Protect == PAGE_READONLY  # headers
    text = next(s for s in m.image.sections if s.name == ".text")
    assert proc.memory.query(m.base + text.rva).Protect == PAGE_EXECUTE_READ
    assert proc.call("mathlib!add", 2, 3, convention="cdecl") == 5
    assert proc.call("mathlib!mul3", 2, 3, 4, convention="cdecl") == 24
    assert proc.call("mathlib!add_std", 10, 20) == 30  # stdcall on x86, win64 on x64
    assert proc.call("mathlib!sum6", 1, 2, 3, 4, 5, 6, convention="cdecl") == 91
    assert proc.call("mathlib!#7", convention="cdecl") == 42  # by ordinal only
    assert proc.read_u32(proc.resolve("mathlib!counter")) == 7
    assert proc.symbolize(m.exports["add"] + 1) == "mathlib!add+0x1"


def test_relocated_when_preferred_range_is_taken(proc: Process) -> None:
    path = str(build("mathlib.dll", proc.arch.name))
    image_base = Process(proc.arch.name).load_pe(path).base
    proc.memory.allocate(image_base, 0x1000, MEM_RESERVE, PAGE_READWRITE)
    m = proc.load_pe(path)
    assert m.base != image_base
    delta = m.base - image_base
    # counter_ptr holds &counter: a base relocation moved it by the delta
    ptr = proc.read_ptr(m.exports["counter_ptr"])
    assert ptr == m.exports["counter"] and ptr - delta == image_base + (ptr - m.base)
    assert proc.call("mathlib!#7", convention="cdecl") == 42  # reads through counter_ptr


def test_imports_bind_to_a_module_and_to_python_hooks(proc: Process) -> None:
    log: list[tuple[str, tuple[int, ...]]] = []
    kernel32_hooks(proc, log)
    proc.load_pe(str(build("mathlib.dll", proc.arch.name)))
    exe = proc.load_pe(str(build("user.exe", proc.arch.name)))
    assert PEB.read(proc, proc.arch, proc.peb, "ImageBaseAddress") == exe.base
    entry = exe.base + exe.image.entry_point_rva
    assert proc.call(entry, convention="cdecl") == 199
    names = [n for n, _ in log]
    assert names == ["GetProcessHeap", "HeapAlloc", "HeapFree"]
    assert log[1][1] == (0x4242, 0, 16)
    assert log[2][1][2] != 0  # the block HeapAlloc returned is freed


def test_missing_imports_are_listed_and_nothing_is_mapped(proc: Process) -> None:
    regions = len(proc.memory.regions())
    with pytest.raises(LoaderError) as e:
        proc.load_pe(str(build("user.exe", proc.arch.name)))
    msg = str(e.value)
    for name in ("kernel32.dll!GetProcessHeap", "kernel32.dll!HeapAlloc", "mathlib.dll!add",
                 "mathlib.dll!#7"):  # fmt: skip
        assert name in msg
    assert len(proc.memory.regions()) == regions and len(proc.modules) == 0


def test_trapping_stubs_name_the_import_when_called(proc: Process) -> None:
    proc.load_pe(str(build("mathlib.dll", proc.arch.name)))
    exe = proc.load_pe(str(build("user.exe", proc.arch.name)), trap_missing=True)
    with pytest.raises(EmulationError) as e:
        proc.call(exe.base + exe.image.entry_point_rva, convention="cdecl")
    assert "unresolved import kernel32.dll!GetProcessHeap" in str(e.value)
    assert proc.call("mathlib!add", 1, 1, convention="cdecl") == 2


def test_machine_mismatch_is_refused(arch: str) -> None:
    other = "x86" if arch == "x64" else "x64"
    proc = Process(arch)
    with pytest.raises(LoaderError, match=f"this process is {arch}"):
        proc.load_pe(str(build("mathlib.dll", other)))


def test_forwarders_resolve_to_the_target_module(proc: Process) -> None:
    m = proc.load_pe(str(build("mathlib.dll", proc.arch.name)))
    assert m.forwarders["fwd_alloc"] == "kernel32.HeapAlloc"
    with pytest.raises(KeyError, match="not loaded"):
        proc.resolve("mathlib!fwd_alloc")
    k32 = proc.load_flat("HeapAlloc:\n ret", "kernel32")
    assert proc.resolve("mathlib!fwd_alloc") == k32.exports["HeapAlloc"]


def ldr_walker(proc: Process) -> int:
    """Emulated code walking PEB->Ldr->InLoadOrderModuleList: DllBase of the n-th entry."""
    if proc.arch.name == "x64":
        src = """
            mov rax, gs:[0x60]
            mov rax, [rax + 0x18]
            lea rdx, [rax + 0x10]
            mov rax, [rdx]
            xor r8d, r8d
        next:
            cmp rax, rdx
            je none
            inc r8
            cmp r8, rcx
            je found
            mov rax, [rax]
            jmp next
        found:
            mov rax, [rax + 0x30]
            ret
        none:
            xor eax, eax
            ret
        """
    else:
        src = """
            mov eax, fs:[0x30]
            mov eax, [eax + 0x0c]
            lea edx, [eax + 0x0c]
            mov eax, [edx]
            xor esi, esi
        next:
            cmp eax, edx
            je none
            inc esi
            cmp esi, [esp + 4]
            je found
            mov eax, [eax]
            jmp next
        found:
            mov eax, [eax + 0x18]
            ret 4
        none:
            xor eax, eax
            ret 4
        """
    return proc.load_flat(src, "walker").base


def test_peb_ldr_lists_modules_for_code_that_walks_them(proc: Process) -> None:
    log: list[tuple[str, tuple[int, ...]]] = []
    kernel32_hooks(proc, log)
    dll = proc.load_pe(str(build("mathlib.dll", proc.arch.name)))
    exe = proc.load_pe(str(build("user.exe", proc.arch.name)))
    walker = ldr_walker(proc)
    assert proc.call(walker, 1) == dll.base
    assert proc.call(walker, 2) == exe.base
    assert proc.call(walker, 3) == 0
    assert proc.ldr.walk() == [(dll.base, "mathlib.dll"), (exe.base, "user.exe")]
    assert proc.ldr.walk("InMemoryOrderModuleList") == proc.ldr.walk()
    assert proc.ldr.walk("InInitializationOrderModuleList") == [(dll.base, "mathlib.dll")]


def test_corrupt_file_is_a_loader_error_and_nothing_is_mapped(
    proc: Process, tmp_path: Path
) -> None:
    src = build("mathlib.dll", proc.arch.name)
    bad = tmp_path / "mathlib.dll"
    shutil.copy(src, bad)
    data = bytearray(bad.read_bytes())
    bad.write_bytes(bytes(data[:0x200]))  # truncated inside the section data
    regions = len(proc.memory.regions())
    with pytest.raises(LoaderError, match=r"mathlib\.dll"):
        proc.load_pe(str(bad))
    assert len(proc.memory.regions()) == regions
