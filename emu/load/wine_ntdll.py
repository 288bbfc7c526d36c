"""Wine 8.0's ntdll.dll, unmodified, made to run in a heapemu process.

What Wine's PE ntdll needs from its surroundings (found by probing these binaries):

- It has no imports. Its Nt* exports are system-call stubs. On x64 they execute ``syscall``
  (when bit 0 of KUSER_SHARED_DATA+0x308 is clear, which it is here). On x86 they are
  ``mov eax, N; mov edx, THUNK; call edx`` and THUNK is ``jmp [__wine_syscall_dispatcher]``, a
  pointer in ntdll's data that is zero on disk: we point it at a trap of ours
  (``lea edx, [esp+8]; int 0x2e; ret``: the arguments sit above the two return addresses).
- The service numbers are read from the stubs themselves (``loader.wine.wine_syscall_numbers``)
  and registered for the code that issues them: ntdll's range on x64, our trap on x86.
- Calls into Wine's Unix side go through ``__wine_unix_call``'s indirect ``call [ptr]``; the
  pointer is aimed at a trap that stops with a clear EmulationError (heap code never calls it),
  except x64's unwind of a pc outside every module (an exception after a jump to NULL), which
  it answers as a Unix side without host unwind tables does: nothing found, a leaf function.
- Debug channels read an option table at PEB+0x2000 (x64) / PEB+0x1000 (x86), inside our PEB
  region: zero means every channel off. ``set_debug_channels("heap=warn+err")`` fills it; messages
  arrive through the ``__wine_dbg_write`` system call and are kept in ``proc.debug_output``.
- The first RtlCreateHeap needs no process heap; every later one allocates its bookkeeping
  from PEB.ProcessHeap. As on Windows, a process heap is created before any user heap.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from emu.arch import get_arch
from emu.cpu.disasm import Disassembler
from emu.errors import EmulationError, Fault
from emu.load.pe import load_pe
from emu.modules import Module
from emu.process.core import ProcessCore
from emu.win.ntdefs import NtStatus
from loader.errors import LoaderError
from loader.peimage import PeImage
from loader.wine import find_wine_dir, wine_syscall_numbers, wine_syscall_stubs

log = logging.getLogger("heapemu.wine")

DEBUG_OPTIONS_OFFSET = {"x64": 0x2000, "x86": 0x1000}  # from the PEB
DEBUG_CLASSES = {"fixme": 1, "err": 2, "warn": 4, "trace": 8}
_X86_SYSCALL_TRAP = bytes.fromhex("8d542408cd2ec3")  # lea edx,[esp+8]; int 0x2e; ret


def _indirect_call_target(module: Module, export: str, arch: str) -> int:
    """The pointer slot that ``export``'s first indirect ``call``/``jmp`` reads."""
    image: PeImage = module.image
    rva = module.exports[export] - module.base
    code = image.read(rva, 64)
    disasm = Disassembler(get_arch(arch), detail=True)
    for insn in disasm.disasm(code, module.exports[export]):
        if insn.mnemonic in ("call", "jmp"):
            target = disasm.memory_operand_target(insn)
            if target is not None:
                return target
    raise LoaderError(f"{module.name}: no indirect call found in {export}")


# __wine_unix_call(handle, code, args): x64 ntdll's virtual_unwind asks its Unix side to
# unwind a pc no PE module covers (struct unwind_builtin_dll_params {ULONG type;
# DISPATCHER_CONTEXT *dispatch; CONTEXT *context}); code 1 in Wine 8.0
_UNIX_UNWIND_BUILTIN_DLL = 1
_DISPATCHER_ESTABLISHER_FRAME = 0x18  # DISPATCHER_CONTEXT.EstablisherFrame (x64)


def _unix_call_trap(proc: ProcessCore, *args: int) -> int:
    cpu = proc.cpu
    if proc.arch.name == "x64" and cpu.reg("rdx") == _UNIX_UNWIND_BUILTIN_DLL:
        # heapemu has no Unix libraries, so no host unwind information for any address:
        # "nothing found" is success with no establisher frame, which Wine's virtual_unwind
        # unwinds as a leaf function (rip = [rsp], rsp += 8), as Windows' RtlVirtualUnwind
        # does for a pc without a RUNTIME_FUNCTION. (Was an EmulationError: a program's
        # exception at a pc outside every module, a jump to NULL, could not be dispatched.)
        dispatch = proc.read_ptr(cpu.reg("r8") + 8)
        proc.write_ptr(dispatch + _DISPATCHER_ESTABLISHER_FRAME, 0)
        return NtStatus.SUCCESS
    raise EmulationError(
        Fault(
            "call into Wine's Unix side",
            pc=proc.cpu.pc,
            status=NtStatus.NOT_IMPLEMENTED,
            detail="__wine_unix_call was reached; heapemu runs only Wine's PE code",
        ),
        proc.cpu.state(),
    )


def set_debug_channels(proc: ProcessCore, spec: str) -> None:
    """WINEDEBUG-style ``"heap=warn+err,*=err"``: fill Wine's debug option table. Wine reads
    the table once, at its first debug check, so this must run before any ntdll code does
    (``load_wine_ntdll(debug_channels=...)`` calls it at the right time).

    The table holds sorted 16-byte entries ``{u8 flags; char name[15]}`` ending with an entry
    of empty name whose flags are the default for every other channel. Note that turning the
    heap channel's trace class on changes Wine's block layout (it adds tail/free checking)."""
    entries: list[tuple[bytes, int]] = []
    default = 0
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, classes = item.partition("=")
        flags = 0
        for c in (classes or "trace+warn+err+fixme").split("+"):
            if c not in DEBUG_CLASSES:
                raise ValueError(
                    f"unknown debug class {c!r} in {item!r}; use {sorted(DEBUG_CLASSES)}"
                )
            flags |= DEBUG_CLASSES[c]
        if name == "*":
            default = flags
        else:
            if len(name) > 14:
                raise ValueError(f"debug channel name {name!r} is longer than 14 characters")
            entries.append((name.encode(), flags))
    entries.sort()
    table = proc.peb + DEBUG_OPTIONS_OFFSET[proc.arch.name]
    data = (
        b"".join(bytes([f]) + n.ljust(15, b"\0") for n, f in entries) + bytes([default]) + bytes(15)
    )
    proc.write(table, data)


def load_wine_ntdll(
    proc: ProcessCore,
    wine_dir: str | Path | None = None,
    *,
    debug_channels: str | None = None,
    create_process_heap: bool = True,
) -> Module:
    """Load Wine 8.0's ntdll.dll into ``proc`` and make it runnable; see the module docstring."""
    directory = find_wine_dir(proc.arch.name, wine_dir)
    module = load_pe(proc, str(directory / "ntdll.dll"), "ntdll.dll")
    image: PeImage = module.image
    numbers = wine_syscall_numbers(image)
    if proc.arch.name == "x64":
        proc.register_syscall_table(module.base, module.end, numbers, system=True)
    else:
        stubs = wine_syscall_stubs(image)
        if not stubs or stubs[0].dispatcher_va is None:
            raise LoaderError(f"{image.name}: no x86 system-call stubs found")
        thunk = stubs[0].dispatcher_va - image.image_base + module.base
        thunk_insn = proc.read(thunk, 6)
        if thunk_insn[:2] != b"\xff\x25":  # jmp dword ptr [abs32]
            raise LoaderError(f"{image.name}: unexpected syscall thunk {thunk_insn.hex()}")
        slot = struct.unpack_from("<I", thunk_insn, 2)[0]
        trap = proc.add_trap_code(_X86_SYSCALL_TRAP, "wine_syscall_trap")
        proc.register_syscall_table(trap, trap + len(_X86_SYSCALL_TRAP), numbers, system=True)
        proc.write_ptr(slot, trap)
    unix_slot = _indirect_call_target(module, "__wine_unix_call", proc.arch.name)
    proc.write_ptr(unix_slot, proc.register_callback(_unix_call_trap, 0, name="wine_unix_call"))
    if debug_channels:
        set_debug_channels(proc, debug_channels)
    if create_process_heap:
        proc.create_process_heap(module)
    return module
