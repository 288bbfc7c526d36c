"""The CPU layer: with ``callgate``, ``segments`` and ``disasm`` beside it, the only code that
talks to Unicorn and capstone (the architecture contract checks it).

Windows logic (memory manager, system calls, calls) uses this small interface:
ensure_backed/decommit/protect, read/write (``CpuError`` when Unicorn refuses), registers and
batch register readers, ``run(begin, until)``, hooks whose callbacks never see Unicorn
(``fn(address, size)``, ``fn(intno)``, ``fn()``), ``flush_translations``, and a record of why a
run stopped. Hot-path operations (register writes, ``emu_start``) go through Unicorn's C API
via ctypes directly, because the Python binding's wrappers cost ~2 µs per register access
(measured on Unicorn 2.1.4).

Memory faults without memory hooks. Any Unicorn memory hook, even one that only fires on unmapped
or protected accesses, sends every guest load and store through Unicorn's slow path (~10x slower
stores). So the engine runs in ``UC_TLB_VIRTUAL`` mode and decides accesses where a real CPU
does, on a TLB miss: a ``UC_HOOK_TLB_FILL`` callback asks the layer above
(``page_fault_handler``, the memory manager's view: committed? protection? a guard page to grow
the stack into?) and installs an identity translation with the page's permissions. Loads and
stores that hit the TLB never leave generated code. A denied access is translated into a physical
window nothing maps (``_DENIED``): the access itself then reaches Unicorn's unmapped-memory path,
where one hook limited to that window learns its exact address and, with the CPU state restored,
the faulting instruction's pc. Unicorn's own mappings are the backing windows (see _NORESERVE's
comment), all with full permissions; protection lives in the TLB, so every change of it flushes
the TLB. The TLB refills that Python already answered, and the block counting of event
recording, run in C when ``native`` could build ``fastpath.c``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import mmap
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Any

import capstone
import unicorn
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uc_tlb_entry, uclib

from emu.arch import Arch, register_names
from emu.cpu import native, shared
from emu.cpu.disasm import Disassembler
from emu.cpu.shared import SharedMemory
from emu.errors import CpuState, Fault
from emu.win.ntdefs import (
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
    NtStatus,
)

log = logging.getLogger("heapemu.cpu")

UC_R, UC_W, UC_X = unicorn.UC_PROT_READ, unicorn.UC_PROT_WRITE, unicorn.UC_PROT_EXEC

# x86 has no execute-only or write-only pages: PAGE_EXECUTE is readable on real hardware too.
_UC_PERMS = {
    PAGE_NOACCESS: unicorn.UC_PROT_NONE,
    PAGE_READONLY: UC_R,
    PAGE_READWRITE: UC_R | UC_W,
    PAGE_WRITECOPY: UC_R | UC_W,
    PAGE_EXECUTE: UC_R | UC_X,
    PAGE_EXECUTE_READ: UC_R | UC_X,
    PAGE_EXECUTE_READWRITE: UC_R | UC_W | UC_X,
    PAGE_EXECUTE_WRITECOPY: UC_R | UC_W | UC_X,
}


def _span_with(span: tuple[int, int], addr: int, size: int) -> tuple[int, int]:
    """[lo, hi) grown to cover [addr, addr+size) (an empty span is (0, 0))."""
    lo, hi = span
    return (addr, addr + size) if lo == hi else (min(lo, addr), max(hi, addr + size))


_UC_MODES = {"x86": unicorn.UC_MODE_32, "x64": unicorn.UC_MODE_64}


def register_ids(arch: Arch) -> dict[str, int]:
    """Map register names valid on ``arch`` to Unicorn register ids."""
    return {
        n: getattr(ux, f"UC_X86_REG_{'EFLAGS' if n == 'rflags' else n.upper()}")
        for n in register_names(arch)
    }


class CpuError(Exception):
    """Unicorn refused a memory operation: the range is unmapped, or the host cannot back it
    (``nomem``). Raised by the Cpu's memory methods instead of Unicorn's error."""

    def __init__(self, message: str, *, nomem: bool = False):
        super().__init__(message)
        self.nomem = nomem


def _cpu_error(e: unicorn.UcError, what: str) -> CpuError:
    return CpuError(f"{what}: {e}", nomem=e.errno == unicorn.UC_ERR_NOMEM)


def uc_perms(protect: int) -> int:
    """Unicorn permissions for a Windows page protection (modifiers other than GUARD ignored)."""
    return _UC_PERMS[protect & 0xFF]


# CPU exceptions delivered through the interrupt hook, with the NTSTATUS Windows raises for them
_CPU_EXCEPTIONS = {
    0: ("divide error", NtStatus.INTEGER_DIVIDE_BY_ZERO),
    1: ("single step", NtStatus.SINGLE_STEP),
    3: ("breakpoint (int3)", NtStatus.BREAKPOINT),
    4: ("overflow (into)", NtStatus.INTEGER_OVERFLOW),
    5: ("bound range exceeded", NtStatus.ARRAY_BOUNDS_EXCEEDED),
    6: ("invalid instruction", NtStatus.ILLEGAL_INSTRUCTION),
    13: ("general protection fault", NtStatus.PRIVILEGED_INSTRUCTION),
    14: ("page fault", NtStatus.ACCESS_VIOLATION),
}

_PORT_IO = frozenset({"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"})

# Hook callbacks, as heapemu code writes them: Unicorn's handle never reaches them
CodeHook = Callable[[int, int], object]  # (address, size)
MemWriteHook = Callable[[int, int, int], object]  # (address, size, value)

_HOOK_CODE_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)
_HOOK_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_HOOK_INSN_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_HOOK_INSN_INVALID_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_HOOK_IN_CB = ctypes.CFUNCTYPE(
    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
)
_HOOK_OUT_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
)
_HOOK_TSC_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_HOOK_MEM_CB = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_void_p,
)

# How a TLB miss is answered (the page-fault handler of the layer above), for the page at the
# address and the access ("read", "write", "fetch"): the page's Windows protection, None when
# nothing is committed there, or a Fault to raise (a guard page, a stack overflow). The CPU checks
# the protection against the access and fills in the fault's pc, exact address, access and size.
PageFaultHandler = Callable[[int, str], "int | Fault | None"]

_TLB_FILL_CB = ctypes.CFUNCTYPE(
    ctypes.c_bool,
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.POINTER(uc_tlb_entry),
    ctypes.c_void_p,
)
_MEM_INVALID_CB = ctypes.CFUNCTYPE(
    ctypes.c_bool,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_void_p,
)
# Denied pages are translated to _DENIED + their address's low 48 bits: physical memory nothing
# maps (every mapping is an identity translation below 2**48, x64's user space ends below 2**47;
# the high bits of a wild pointer are kept with the reason for the denial)
_DENIED = 1 << 48
_DENIED_OFFSET = _DENIED - 1
_PAGE_MASK = ~0xFFF
_FILL_ACCESS = {
    unicorn.UC_MEM_READ: ("read", UC_R),
    unicorn.UC_MEM_WRITE: ("write", UC_W),
    unicorn.UC_MEM_FETCH: ("fetch", UC_X),
}
_DENIED_ACCESS = {
    unicorn.UC_MEM_READ_UNMAPPED: "read",
    unicorn.UC_MEM_WRITE_UNMAPPED: "write",
    unicorn.UC_MEM_FETCH_UNMAPPED: "fetch",
}
_emu_start = uclib.uc_emu_start  # (one global look-up on the hot path)
_monotonic = time.monotonic
_UC_CTL_TLB_FLUSH = (unicorn.UC_CTL_IO_WRITE << 30) | unicorn.UC_CTL_TLB_FLUSH
_UC_CTL_REMOVE_CACHE = (unicorn.UC_CTL_IO_WRITE << 30) | (2 << 26) | unicorn.UC_CTL_TB_REMOVE_CACHE


# Unicorn hands CPU exceptions to the interrupt hook without delivering them, so QEMU never
# marks them delivered: its CPUX86State.old_exception keeps the last fault, and the next one
# becomes a double fault, the one after a triple fault that halts the CPU (a #DE, then a second
# #DE reported as "interrupt 0x8", then nothing; measured on Unicorn 2.1.4). The field has no
# register id: its offset in a saved context is found once per mode, on a throwaway engine, by
# a fault whose recording it must show; the CPU then clears it after each fault.
_OLD_EXCEPTION_OFFSET: dict[int, int | None] = {}


def _old_exception_offset(mode: int) -> int | None:
    """Offset of old_exception in a ``context_save`` image for ``mode`` (None: not found)."""
    if mode in _OLD_EXCEPTION_OFFSET:
        return _OLD_EXCEPTION_OFFSET[mode]
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, mode)
    # (two instructions to translate: the smallest buffer, not another 1 GiB near Unicorn's
    # helpers, where it would push the next engines' buffers away: TCG_BUFFER_SIZE)
    uc.ctl_set_tcg_buffer_size(1 << 20)  # type: ignore[attr-defined]
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x31\xc9\xf7\xf1")  # xor ecx, ecx; div ecx
    seen: list[int] = []

    def on_interrupt(uc: unicorn.Uc, intno: int, user: object) -> None:
        seen.append(intno)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    ctx = uc.context_save()
    before = bytes(ctx)
    uc.emu_start(0x1000, 0x1004)
    uc.context_update(ctx)
    after = bytes(ctx)
    found = None
    for off in range(0, len(before) - 3, 4):
        if before[off : off + 4] != b"\xff" * 4 or after[off : off + 4] != b"\0" * 4:
            continue
        _poke_int(ctx, off, -1)  # a candidate: cleared, a second #DE must stay a #DE
        uc.context_restore(ctx)
        seen.clear()
        uc.emu_start(0x1000, 0x1004)
        if seen == [0]:
            found = off
            break
        uc.context_restore(ctx)
    _OLD_EXCEPTION_OFFSET[mode] = found
    if found is None:
        log.warning(
            "heapemu: Unicorn's pending-exception field not found: a second CPU fault "
            "in one process will be reported as a double fault"
        )
    return found


def _poke_int(ctx: Any, offset: int, value: int) -> None:
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value
    ctypes.c_int32.from_address(base + offset).value = value  # type: ignore[operator]


_REG_WRITE_BATCH = ctypes.PyDLL(uclib._name).uc_reg_write_batch
_REG_WRITE_BATCH.restype = ctypes.c_int


# Backing: the process's address space is backed by host memory in aligned windows (256 MiB on
# x86, 1 GiB on x64), each one Unicorn mapping made on the first commit inside it and kept:
# commits, decommits and releases never map or unmap (Unicorn keeps mappings in a sorted array,
# rebuilds its address map on every map/unmap and looks code pages up in a list of them).
# Anonymous host memory takes RAM only for pages touched (a decommit hands them back with
# MADV_DONTNEED), and MAP_NORESERVE keeps a window from counting against overcommit limits.
_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0


class _Watchdog:
    """One background thread for all CPUs: stops a run that exceeds its wall-clock limit.

    A run only stores its deadline on its Cpu (no per-call thread, unlike
    ``emu_start(timeout=)`` at ~150 µs per call). ``uc_emu_stop`` is called through PyDLL so
    the GIL stays held from the check to the stop.
    """

    def __init__(self) -> None:
        self._cpus: weakref.WeakSet[Cpu] = weakref.WeakSet()
        self._lock = threading.Lock()  # processes are made in any thread while this one checks
        self._thread: threading.Thread | None = None
        self._stop_fn = ctypes.PyDLL(uclib._name).uc_emu_stop
        self._stop_fn.argtypes = [ctypes.c_void_p]
        self._stop_fn.restype = ctypes.c_int

    def watch(self, cpu: Cpu) -> None:
        with self._lock:
            self._cpus.add(cpu)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="heapemu-watchdog", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(0.02)
            try:
                self._check(time.monotonic())
            except Exception:  # the watchdog must outlive anything: time limits depend on it
                log.exception("heapemu watchdog: check failed")

    def _check(self, now: float) -> None:
        # a function of its own, so no Cpu stays referenced while the thread sleeps
        with self._lock:
            cpus = list(self._cpus)
        for cpu in cpus:
            with cpu._run_lock:  # run() cannot start its next run meanwhile
                if cpu._running and cpu._deadline and now > cpu._deadline:
                    cpu.timed_out = cpu._incident = True
                    self._stop_fn(cpu._uch)  # a no-op if that run has just ended


_WATCHDOG: _Watchdog | None = None


_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    with _WATCHDOG_LOCK:
        if _WATCHDOG is None:
            _WATCHDOG = _Watchdog()
        return _WATCHDOG


# Unicorn's translated-code buffer (its default: 1 GiB each). The generated code calls
# Unicorn's helpers (TLB misses, `helper_lookup_tb_ptr` on every return) directly only when
# they are within 2 GiB of it, else through a register: a second engine's 1 GiB buffer,
# placed below the first one's and its backed windows, was 3.6 GiB from the library and
# its replays ran ~3% slower (measured on Wine's heap, x64 after x86). 64 MiB buffers sit
# within 1 GiB of it; a heap replay translates less than 1 MiB, and a full buffer only
# starts translation over.
TCG_BUFFER_SIZE = 64 << 20


def _page_flush(uch: object) -> tuple[int | None, int | None]:
    """(QEMU's ``tlb_flush_page``, the engine's CPUState) for fastpath.c, or (None, None).
    Unicorn 2's API flushes only the whole TLB, which drops every translation and the jump
    cache; its library also exports QEMU's own one-page flush (``tlb_flush_page_x86_64``:
    the one x86 target serves both modes) and ``qemu_get_cpu_x86_64(uc, index)`` (its single
    CPU is never numbered: its index stays QEMU's UNASSIGNED_CPU_INDEX, -1, as measured on
    2.1.4), which Unicorn itself calls from inside hooks. Without them (another Unicorn
    build) a range flush flushes everything, as before."""
    try:
        flush_page = ctypes.cast(uclib.tlb_flush_page_x86_64, ctypes.c_void_p).value
        get_cpu = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)(
            ("qemu_get_cpu_x86_64", uclib)
        )
    except AttributeError:
        return None, None
    cpu = get_cpu(uch, -1) or get_cpu(uch, 0)
    return (flush_page, cpu) if flush_page and cpu else (None, None)


class Cpu:
    """A Unicorn x86/x64 engine with Windows-flavoured fault reporting."""

    def __init__(self, arch: Arch):
        self.arch = arch
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, _UC_MODES[arch.name])
        # (before anything makes Unicorn build its CPU) see TCG_BUFFER_SIZE
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)  # type: ignore[attr-defined]
        # Sandy Bridge: no RDRAND/RDSEED, so they are #UD (STATUS_ILLEGAL_INSTRUCTION) and CPUID
        # says so. Unicorn's default (Haswell) runs them with the host's randomness, and offers
        # no hook for them: a run could not be reproduced.
        self.uc.ctl_set_cpu_model(ux.UC_CPU_X86_SANDYBRIDGE)
        self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        self._uch = self.uc._uch
        # Unicorn's C API straight from Python (emu/cpu/direct.c, a CPython extension: ~0.6 µs
        # less per call than ctypes), or through ctypes when it could not be built; both take
        # the engine as an integer
        self._direct = native.direct()
        self._uca: int = self._uch.value or 0
        self._emu_start = self._direct.emu_start if self._direct is not None else _emu_start
        self.disasm = Disassembler(arch)
        self._detail: Disassembler | None = None  # with operands (made on first use)
        self.reg_ids = register_ids(arch)
        self._pc_id = self.reg_ids[arch.pc]
        self._sp_id = self.reg_ids[arch.sp]
        self._ret_id = self.reg_ids[arch.ret]
        self._c_u64 = ctypes.c_uint64()
        self._c_ref = ctypes.byref(self._c_u64)
        self._c_raw = ctypes.create_string_buffer(16)  # vector and x87 registers
        self.fault: Fault | None = None
        self.stop_reason: str | None = None
        self._running = False
        self._run_lock = threading.Lock()
        self.timed_out = False
        self._deadline = 0.0
        self._counting = False
        self._raw_hooks: dict[int, object] = {}  # handle -> ctypes callback (kept alive)
        self._raw_exception: BaseException | None = None
        # set with fault, stop_reason, timed_out or _raw_exception: the run needs a look after
        self._incident = False
        self.page_fault_handler: PageFaultHandler | None = None
        # whether the process may read [addr, addr+size) (committed pages): backed windows
        # also hold memory that is not, which fault reports must not show as code
        self.readable: Callable[[int, int], bool] | None = None
        self._system_pages: dict[int, int] = {}  # page -> protection, mapped by map_system
        self._system_span = (0, 0)  # [lowest, end) of the system pages
        # page -> Unicorn permissions, as the page-fault handler last answered: a TLB flush
        # refills from here without asking again. With the native fast path
        # (emu/cpu/native.py) the cache is its C map alone (_native_perms: the refill does not
        # even enter Python, and forgetting a range is one C call), else this dict
        self._native = native.library()
        self._perms: dict[int, int] = {}
        self._native_perms: native.NativeMap | None = None
        self._tlb_state: native.TlbState | None = None
        self._host_memory: list[tuple[mmap.mmap, ctypes.Array[ctypes.c_char]]] = []
        # backed windows: start -> (first address, end, host memory, its exported buffer)
        self._windows: dict[int, tuple[int, int, mmap.mmap, ctypes.c_char]] = {}
        self._window = 1 << 28 if arch.ptr_size == 4 else 1 << 30
        # ranges whose host pages are a SharedMemory's: address -> (size, memory, offset)
        self._shares: dict[int, tuple[int, SharedMemory, int]] = {}
        self._aliased = False  # some memory shows at two addresses: see _canonical
        self._user = (arch.user_min, arch.user_max + 1)
        # pages translated to _DENIED: by offset in the window, the page and why
        self._denied: dict[int, tuple[int, Fault]] = {}
        self._tlb_stale = False  # a denied translation may be wrong now: flush after the run
        self._invalidating = False  # Unicorn looks code pages up: let it see every page
        self._code_pages: set[int] = set()  # pages ever translated executable
        # [lowest, highest + 1 page) of _code_pages (never narrowed when pages leave it): a
        # range outside it has no code to drop, whatever its size
        self._code_lo, self._code_hi = 1 << 64, 0
        self._exception_taken = False  # a CPU fault reached the interrupt hook this run
        self._fault_registers: list[tuple[int, int]] = []  # put back after the run
        # registers written from outside a run (proc.regs, a debugger, NtContinue, a restored
        # context): the next call puts back its whole starting state, not only what the call
        # gate's stub resets
        self.state_dirty = False
        self._old_exception = _old_exception_offset(_UC_MODES[arch.name])
        _watchdog().watch(self)
        self.symbolizer: Callable[[int], str] = lambda addr: ""
        slow_fill = _TLB_FILL_CB(self._on_tlb_fill)
        if self._native is not None:
            self._native_perms = perms = native.NativeMap(self._native)
            # the pages filled since the last flush (fastpath.c: a range flush needs only
            # those of them flushed)
            self._tlb_filled = native.NativeMap(self._native)
            self._tlb_state = native.TlbState(
                perms.ptr,
                ctypes.cast(slow_fill, ctypes.c_void_p),
                filled=self._tlb_filled.ptr,
                ctl=ctypes.cast(uclib.uc_ctl, ctypes.c_void_p),
                flush_control=_UC_CTL_TLB_FLUSH,
            )
            # (its address: a byref object would hide a reference cycle from the collector)
            self._tlb_ref = ctypes.addressof(self._tlb_state)
            fast = native.function_address(self._native, "heapemu_tlb_fill")
            self._slow_fill = slow_fill  # kept alive: the C callback calls it
            self._register_hook(
                unicorn.UC_HOOK_TLB_FILL,
                fast,
                1,
                0,
                flush=False,
                user=ctypes.addressof(self._tlb_state),
            )
            # (the hook made Unicorn build its CPU: it has one to flush pages of now)
            self._tlb_state.flush_page, self._tlb_state.cpu = _page_flush(self._uch)
        else:
            self._register_hook(unicorn.UC_HOOK_TLB_FILL, slow_fill, 1, 0, flush=False)
        # How a run ends at ``until`` (see run): a native block hook there, and Unicorn's own
        # exit at ``run_exit``, an address no code reaches (0: Unicorn's exit at ``until``)
        self._run_exit = 0
        self._stop_state: native.StopState | None = None
        self._stop_hooks: dict[int, int] = {}  # until -> hook
        self._stop_until = -1  # the stop hooks' until, as last written
        self._exit = 0  # uc_emu_start's until for runs ending at _stop_until
        if self._native is not None:
            self._stop_state = native.StopState(ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p))
        self._register_hook(
            unicorn.UC_HOOK_MEM_UNMAPPED,
            _MEM_INVALID_CB(self._on_denied_access),
            _DENIED,
            2 * _DENIED - 1,
            flush=False,
        )
        self._register_hook(
            unicorn.UC_HOOK_INSN_INVALID,
            _HOOK_INSN_INVALID_CB(self._on_invalid_insn),
            1,
            0,
            flush=False,
        )

    # ------------------------------------------------------------------ memory
    # ------------------------------------------------------------------ backing
    def ensure_backed(self, addr: int, size: int) -> None:
        """Make [addr, addr+size) (in the process's address space) backed: each window it
        touches gets host memory mapped into Unicorn, once. Fresh backing reads zero.
        Accesses are still decided by the page-fault handler: backed memory that is not
        committed faults like unbacked memory."""
        w = self._window
        for start in range(addr - addr % w, addr + size, w):
            if start not in self._windows:
                self._back(start)

    def _back(self, start: int) -> None:
        lo, hi = max(start, self._user[0]), min(start + self._window, self._user[1])
        try:
            mem = mmap.mmap(-1, hi - lo, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE)
        except OSError as e:
            raise CpuError(f"back 0x{lo:x}+0x{hi - lo:x}: {e}", nomem=True) from None
        anchor = ctypes.c_char.from_buffer(mem)
        status = uclib.uc_mem_map_ptr(
            self._uch, lo, hi - lo, unicorn.UC_PROT_ALL, ctypes.addressof(anchor)
        )
        if status:
            del anchor  # the buffer's export must go before the mapping can close
            mem.close()
            raise _cpu_error(unicorn.UcError(status), f"map 0x{lo:x}+0x{hi - lo:x}")
        self._windows[start] = (lo, hi, mem, anchor)

    def decommit(self, addr: int, size: int) -> None:
        """The pages of [addr, addr+size) are no longer committed (decommitted or released):
        their contents go (the host gets the memory back; they read zero when committed
        again), so do their cached translations and any code translated from them."""
        code = self._may_hold_code(addr, size)
        if code or self._native is None:
            self._forget(addr, size)
            self.invalidate_code(addr, size)
            self._forget_code(addr, size)
        w, end = self._window, addr + size
        for start in range(addr - addr % w, end, w):
            window = self._windows.get(start)
            if window is not None:
                lo, hi, mem, _ = window
                a, b = max(lo, addr), min(hi, end)
                if a < b:  # zero: the host takes the pages back, gives zeros when touched
                    mem.madvise(mmap.MADV_DONTNEED, a - lo, b - a)
        if code or self._native is None:
            self.flush_tlb_range(addr, size)
        elif self._native.heapemu_tlb_forget_range(self._tlb_ref, self._uch, addr, addr + size) > 1:
            # (no code there: the page-fault handler's answers and the translations in one
            # call, as _forget and flush_tlb_range would)
            self._denied.clear()  # the whole TLB went
            self._tlb_stale = False

    def host_view(self, addr: int, size: int) -> memoryview:
        """The host memory backing [addr, addr+size) (inside one window), writable: what
        Python writes there emulated code reads at once (its translations point at it), with
        no C call. For the few bytes the kernel updates all the time (KUSER_SHARED_DATA's
        clocks); code is never written this way."""
        self.ensure_backed(addr, size)
        lo, hi, mem, _ = self._windows[addr - addr % self._window]
        if addr + size > hi:
            raise CpuError(f"0x{addr:x}+0x{size:x} crosses a backing window")
        return memoryview(mem)[addr - lo : addr - lo + size]

    def backing(self) -> list[int]:
        """The windows backed (their starts), in address order (for snapshots)."""
        return sorted(self._windows)

    # ------------------------------------------------------------------ shared pages
    def share(self, addr: int, size: int, memory: SharedMemory, offset: int) -> None:
        """Show ``memory``'s [offset, offset+size) at [addr, addr+size) (page-aligned): the
        host pages behind those addresses become the memfd's, mapped shared, so every range
        sharing the same bytes sees every write at once (a section's views). Unicorn's
        mapping keeps its host pointer: only translations are dropped. CpuError when the host
        refuses (the range is then private memory again)."""
        self.ensure_backed(addr, size)
        try:
            for host, a, b in self._host_pieces(addr, size):
                shared.map_fixed(host, b - a, memory.fd, offset + a - addr)
        except OSError as e:
            self._put_private(addr, size)
            raise CpuError(f"share 0x{addr:x}+0x{size:x}: {e}", nomem=True) from None
        self._dropped(addr, size)  # code translated from the private pages there
        self._shares[addr] = (size, memory, offset)
        self._realias(memory, 2)

    def unshare(self, addr: int, size: int) -> None:
        """[addr, addr+size) is private memory again (zero), whatever shared it; the shared
        bytes stay in their ``SharedMemory``."""
        end = addr + size
        gone = [s for s, (n, _, _) in self._shares.items() if s < end and addr < s + n]
        # code translated here went to another range's physical pages when aliased
        ran = bool(self._aliased and self._pages_within(addr, size, self._code_pages))
        memories = {id(m): m for s in gone for m in [self._shares.pop(s)[1]]}
        self._put_private(addr, size)
        self._dropped(addr, size)
        for memory in memories.values():
            self._realias(memory, 1, ran)

    def shares(self) -> list[tuple[int, int, SharedMemory, int]]:
        """The shared ranges as (address, size, memory, offset), in address order (what a
        snapshot puts back)."""
        return [(a, n, m, o) for a, (n, m, o) in sorted(self._shares.items())]

    def aliases(self, addr: int, size: int) -> list[tuple[int, int]]:
        """(address, size) of the other ranges that show the bytes of [addr, addr+size): the
        other views of the same section's pages."""
        out, end = [], addr + size
        shares = list(self._shares.items())
        for start, (n, memory, offset) in shares:
            a, b = max(start, addr), min(start + n, end)
            if a >= b:
                continue
            lo, hi = offset + a - start, offset + b - start  # in the memory
            for other, (n2, memory2, offset2) in shares:
                if memory2 is memory and other != start:
                    c, d = max(lo, offset2), min(hi, offset2 + n2)
                    if c < d:
                        out.append((other + c - offset2, d - c))
        return out

    def _realias(self, memory: SharedMemory, threshold: int, ran: bool = False) -> None:
        """``memory``'s ranges changed. Where bytes show at several addresses, every address
        is translated to one physical page, the lowest address showing them (``_canonical``):
        QEMU tracks translated code by physical page, so a store through any view then drops
        code translated through any other, as on a real CPU. Which page that is may have
        changed when ``memory`` is left with ``threshold`` ranges or more (2 after a share: it
        is aliased now; 1 after an unshare: it was): no cached translation or translated code
        of its ranges is kept then (``ran``: code ran from a range just unshared)."""
        counts: dict[int, int] = {}
        for _, m, _ in self._shares.values():
            counts[id(m)] = counts.get(id(m), 0) + 1
        self._aliased = any(n > 1 for n in counts.values())
        ranges = [(s, n) for s, (n, m, _) in self._shares.items() if m is memory]
        if len(ranges) < threshold:
            return
        for start, size in ranges:
            self._forget(start, size)
        if ran or any(self._pages_within(s, n, self._code_pages) for s, n in ranges):
            # code ran from these pages (rare: a JIT's double mapping): drop all of it, which
            # also drops what was translated at a physical page that is no longer theirs
            self.flush_translations()
            self._code_pages.clear()
        self.flush_tlb()

    def _canonical(self, page: int) -> int:
        """The physical page ``page`` is translated to: itself, or for a page of a shared
        range, the lowest address showing the same bytes."""
        for start, (n, memory, offset) in self._shares.items():
            if start <= page < start + n:
                at, best = offset + page - start, page
                for other, (n2, memory2, offset2) in self._shares.items():
                    if memory2 is memory and offset2 <= at < offset2 + n2:
                        best = min(best, other + at - offset2)
                return best
        return page

    def _host_pieces(self, addr: int, size: int) -> list[tuple[int, int, int]]:
        """(host address, first, end) of [addr, addr+size) in each backed window it crosses."""
        out, w, end = [], self._window, addr + size
        for start in range(addr - addr % w, end, w):
            lo, hi, _, anchor = self._windows[start]
            a, b = max(lo, addr), min(hi, end)
            if a < b:
                out.append((ctypes.addressof(anchor) + a - lo, a, b))
        return out

    def _put_private(self, addr: int, size: int) -> None:
        for host, a, b in self._host_pieces(addr, size):
            try:
                shared.map_fixed(host, b - a, -1, 0)
            except OSError:  # cannot happen short of exhaustion: at least zero what is there
                lo, _, mem, _ = self._windows[a - a % self._window]
                mem.madvise(mmap.MADV_DONTNEED, a - lo, b - a)
                log.error("cannot put private memory back at 0x%x+0x%x", a, b - a)

    def _dropped(self, addr: int, size: int) -> None:
        """Other bytes show at [addr, addr+size): code translated from it and cached
        translations go."""
        self._forget(addr, size)
        self.invalidate_code(addr, size)
        self._forget_code(addr, size)
        self.flush_tlb()

    def map_system(self, addr: int, size: int, protect: int) -> None:
        """Map pages the CPU itself needs outside the process's address space (x86's GDT):
        their protection is answered here, not by the page-fault handler."""
        try:
            self.uc.mem_map(addr, size, unicorn.UC_PROT_ALL)  # Unicorn flushes the TLB
        except unicorn.UcError as e:
            raise _cpu_error(e, f"map 0x{addr:x}+0x{size:x}") from None
        for page in range(addr, addr + size, 0x1000):
            self._system_pages[page] = protect
        self._system_span = _span_with(self._system_span, addr, size)

    def map_host(self, addr: int, size: int) -> ctypes.Array[ctypes.c_char]:
        """Map zeroed host memory at [addr, addr+size), outside the process's address space
        (read-write), and return it: Python reads and writes it without a C call."""
        mem = mmap.mmap(-1, size)
        buf = (ctypes.c_char * size).from_buffer(mem)
        status = uclib.uc_mem_map_ptr(
            self._uch, addr, size, unicorn.UC_PROT_ALL, ctypes.addressof(buf)
        )
        if status:
            raise _cpu_error(unicorn.UcError(status), f"map 0x{addr:x}+0x{size:x}")
        self._host_memory.append((mem, buf))
        for page in range(addr, addr + size, 0x1000):
            self._system_pages[page] = PAGE_READWRITE
        self._system_span = _span_with(self._system_span, addr, size)
        return buf

    def protect(self, addr: int, size: int, protect: int) -> None:
        """The protection of [addr, addr+size) changed: translations cached in the TLB go (the
        next access asks the page-fault handler again). Code translated there goes too when
        the pages are no longer executable: blocks jump to each other directly, without a TLB
        lookup."""
        self._forget(addr, size)
        if not uc_perms(protect) & UC_X:
            self.invalidate_code(addr, size)
            self._forget_code(addr, size)
        self.flush_tlb_range(addr, size)

    @staticmethod
    def _pages_within(addr: int, size: int, pages: Collection[int]) -> list[int]:
        """The members of ``pages`` (page addresses) in [addr, addr+size), ascending."""
        start, end = addr & _PAGE_MASK, addr + size
        if size >> 12 <= len(pages):
            return [p for p in range(start, end, 0x1000) if p in pages]
        return sorted(p for p in pages if start <= p < end)

    def prime(self, addr: int, size: int, protect: int) -> None:
        """The pages of [addr, addr+size) were just committed with ``protect``, which is what
        the page-fault handler will answer for each of them until they change again (the
        caller knows: no guard page, no first write to watch): cache that answer now, so the
        first access to each needs no Python. Executable protections, shared (aliased) ranges
        and the system's pages are left to the handler (it keeps their bookkeeping)."""
        perms = _UC_PERMS.get(protect & 0xFF, 0)
        if not perms or perms & UC_X or self._shares:
            return
        start, end = addr & _PAGE_MASK, addr + size
        lo, hi = self._system_span
        if start < hi and end > lo:  # (never: the system's pages are outside the process's)
            return
        if self._native_perms is not None:
            self._native_perms.put_range(start, end, 0x1000, perms)
        else:
            for page in range(start, end, 0x1000):
                self._perms[page] = perms

    def _forget(self, addr: int, size: int) -> None:
        """The page-fault handler's answers for [addr, addr+size) may change: ask again."""
        if self._native_perms is not None:
            self._native_perms.delete_range(addr & _PAGE_MASK, addr + size, 0x1000)
            return
        for page in self._pages_within(addr, size, self._perms):
            del self._perms[page]

    def _forget_code(self, addr: int, size: int) -> None:
        """No translated code is left in [addr, addr+size)."""
        if self._may_hold_code(addr, size):
            self._code_pages.difference_update(self._pages_within(addr, size, self._code_pages))

    def _may_hold_code(self, addr: int, size: int) -> bool:
        return addr < self._code_hi and addr + size > self._code_lo

    def tlb_counters(self) -> tuple[int, int] | None:
        """(TLB misses, misses answered in Python) since the CPU was made, when the native
        fast path counts them (None without it): for benchmarks and profiles."""
        st = self._tlb_state
        return None if st is None else (int(st.fills), int(st.slow_fills))

    def flush_tlb(self) -> None:
        """Forget every cached translation: the next access to each page asks again."""
        if self._native is not None:  # (it also forgets which pages it filled)
            self._native.heapemu_tlb_flush(self._tlb_ref, self._uch)
        elif self._direct is not None:
            self._direct.ctl(self._uca, _UC_CTL_TLB_FLUSH)
        else:
            uclib.uc_ctl(self._uch, _UC_CTL_TLB_FLUSH)
        self._denied.clear()
        self._tlb_stale = False

    def flush_tlb_range(self, addr: int, size: int) -> None:
        """Forget the cached translations of [addr, addr+size). The native fill remembers
        the pages it filled since the last whole flush: only those of the range are flushed,
        one by one (none: nothing to do); denied translations elsewhere stay, with their
        faults. Without the native fast path, or when it lost count, the whole TLB."""
        if self._native is None:
            self.flush_tlb()
        elif self._native.heapemu_tlb_flush_range(self._tlb_ref, self._uch, addr, addr + size) > 1:
            self._denied.clear()  # the whole TLB went
            self._tlb_stale = False

    def tlb_flushes(self) -> tuple[int, int, int] | None:
        """(whole-TLB flushes, pages flushed one by one, range flushes that found none of
        their pages in the TLB) since the CPU was made, with the native fast path (None
        without it): for benchmarks and tests."""
        st = self._tlb_state
        if st is None:
            return None
        return int(st.flushes), int(st.page_flushes), int(st.ranges_skipped)

    def read(self, addr: int, size: int) -> bytes:
        # inside a backed window, the host memory Unicorn reads is ours: a slice of it, no C
        # call (the system calls read and write user memory a few times each)
        window = self._windows.get(addr - addr % self._window)
        if window is not None and size > 0:
            lo, hi, mem, _ = window
            if lo <= addr and addr + size <= hi:
                return mem[addr - lo : addr - lo + size]
        # elsewhere the C API directly
        if self._direct is not None:
            data = self._direct.mem_read(self._uca, addr, size)
            if type(data) is bytes:
                return data
        buf = ctypes.create_string_buffer(size)
        status = uclib.uc_mem_read(self._uch, addr, buf, size)
        if status:
            raise _cpu_error(unicorn.UcError(status), f"read 0x{addr:x}+0x{size:x}")
        return buf.raw

    def write(self, addr: int, data: bytes) -> None:
        """Write like a debugger (protections do not apply). Code translated from the range
        is dropped, so code written over code that already ran takes effect."""
        data = data if type(data) is bytes else bytes(data)
        window = self._windows.get(addr - addr % self._window)
        if window is not None and window[0] <= addr and addr + len(data) <= window[1]:
            # the window's host memory is what Unicorn maps there (uc_mem_write would only
            # copy into it: Unicorn 2.1.4 neither marks dirty pages nor drops code for a write);
            # a shared view's pages there are its section's memory
            lo = window[0]
            window[2][addr - lo : addr - lo + len(data)] = data
        else:
            if self._direct is not None:
                status = self._direct.mem_write(self._uca, addr, data)
            else:
                status = uclib.uc_mem_write(self._uch, addr, data, len(data))
            if status:
                raise _cpu_error(unicorn.UcError(status), f"write 0x{addr:x}+0x{len(data):x}")
        if self._code_pages:
            if self._may_hold_code(addr, len(data)):
                self._drop_written_code(addr, len(data))
            if self._shares:  # the same bytes show elsewhere too (another view)
                for alias, size in self.aliases(addr, len(data)):
                    self._drop_written_code(alias, size)

    def _drop_written_code(self, addr: int, size: int) -> None:
        page, end = addr & _PAGE_MASK, addr + size
        while page < end:
            if page in self._code_pages:
                self.invalidate_code(addr, size)
                return
            page += 0x1000

    def read_into(self, addr: int, buf: ctypes.Array[ctypes.c_char], size: int) -> bool:
        """Read ``size`` bytes into ``buf`` through the C API (no bytes object, no exception:
        False when the range is unreadable). For observers that read on every event."""
        if self._direct is not None:
            return bool(self._direct.read_into(self._uca, addr, ctypes.addressof(buf), size))
        return not uclib.uc_mem_read(self._uch, addr, buf, size)

    def invalidate_code(self, addr: int, size: int) -> None:
        """Drop translated blocks over [addr, addr+size): code written there runs anew. Only
        pages ever translated executable can hold any; each is dropped on its own (Unicorn
        finds a page's blocks by its host memory, contiguous within one mapping only)."""
        end = addr + size
        if size <= 0 or not self._code_pages or not self._may_hold_code(addr, size):
            return
        pages = self._pages_within(addr, size, self._code_pages)
        if not pages:
            return
        self._invalidating = True  # Unicorn finds the page through the TLB, as a fetch
        try:
            for page in pages:
                uclib.uc_ctl(
                    self._uch,
                    _UC_CTL_REMOVE_CACHE,
                    ctypes.c_uint64(max(page, addr)),
                    ctypes.c_uint64(min(page + 0x1000, end)),
                )
        finally:
            self._invalidating = False
            self.flush_tlb()

    def flush_translations(self) -> None:
        """Drop every translated block (hooks and counters are instrumented at translation)."""
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ registers
    def reg(self, name: str) -> int:
        if name.startswith("xmm"):  # 128 bits: the binding packs them into one int
            return int(self.uc.reg_read(self.reg_ids[name]))
        return self.reg_by_id(self.reg_ids[name])

    def set_reg(self, name: str, value: int) -> None:
        self.state_dirty = True
        if name.startswith("xmm"):
            self.uc.reg_write(self.reg_ids[name], value)
        else:
            self.set_reg_by_id(self.reg_ids[name], value)

    def reg_by_id(self, reg_id: int) -> int:
        """A register of at most 64 bits, by Unicorn id (narrower ones zero-extended)."""
        if self._direct is not None:
            return int(self._direct.reg_read(self._uca, reg_id))
        self._c_u64.value = 0  # 8/16/32-bit registers fill only their own bytes
        uclib.uc_reg_read(self._uch, reg_id, self._c_ref)
        return self._c_u64.value

    def set_reg_by_id(self, reg_id: int, value: int) -> None:
        if self._direct is not None:
            self._direct.reg_write(self._uca, reg_id, value)
            return
        self._c_u64.value = value
        uclib.uc_reg_write(self._uch, reg_id, self._c_ref)

    @property
    def pc(self) -> int:
        return self.reg_by_id(self._pc_id)

    @pc.setter
    def pc(self, value: int) -> None:
        self.set_reg_by_id(self._pc_id, value)

    @property
    def sp(self) -> int:
        return self.reg_by_id(self._sp_id)

    @sp.setter
    def sp(self, value: int) -> None:
        self.set_reg_by_id(self._sp_id, value)

    @property
    def ret(self) -> int:
        return self.reg_by_id(self._ret_id)

    def _register_batch(
        self, write: bool, ids: ctypes.Array[ctypes.c_int], ptrs: ctypes.Array[ctypes.c_void_p]
    ) -> Callable[[], int]:
        """One ``uc_reg_read_batch`` / ``uc_reg_write_batch`` of the registers ``ids`` into /
        from the slots ``ptrs`` point at, ready to call (it returns Unicorn's status); the
        caller keeps the arrays alive. Through direct.c, else ctypes: a write through PyDLL
        without argtypes, the arguments already C objects (0.6 µs a call instead of 1.4 µs for
        the binding's prototype; the GIL stays held, and the only callback a register write can
        cause, a TLB fill, runs in this same thread)."""
        n = len(ids)
        if self._direct is not None:
            fn = self._direct.write_batch if write else self._direct.read_batch
            return partial(fn, self._uca, ctypes.addressof(ids), ctypes.addressof(ptrs), n)
        if write:
            return partial(_REG_WRITE_BATCH, self._uch, ids, ptrs, ctypes.c_int(n))
        return partial(uclib.uc_reg_read_batch, self._uch, ids, ptrs, n)

    def register_reader(self, names: tuple[str, ...]) -> Callable[[], tuple[int, ...]]:
        """A function reading ``names`` in one ``uc_reg_read_batch`` (for hot observers)."""
        n = len(names)
        ids = (ctypes.c_int * n)(*(self.reg_ids[r] for r in names))
        vals = (ctypes.c_uint64 * n)()
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 8 * i for i in range(n)))
        batch = self._register_batch(False, ids, ptrs)

        def read(_keep: object = (ids, ptrs)) -> tuple[int, ...]:
            batch()
            return tuple(vals)

        return read

    def register_writer(self, pairs: list[tuple[int, int]]) -> Callable[[], None]:
        """A function writing fixed values to registers (Unicorn ids) in one
        ``uc_reg_write_batch``, in the given order: the state every call starts from."""
        n = len(pairs)
        ids = (ctypes.c_int * n)(*(r for r, _ in pairs))
        # every value in an 8-byte slot: Unicorn reads each at its register's width
        vals = (ctypes.c_uint64 * n)(*(v for _, v in pairs))
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 8 * i for i in range(n)))
        batch = self._register_batch(True, ids, ptrs)

        def apply(_keep: object = (ids, ptrs, vals)) -> None:  # they must outlive it
            status = batch()
            if status:
                raise CpuError(f"register batch {pairs}: {unicorn.UcError(status)}")

        return apply

    def write_registers(self, pairs: list[tuple[int, int]]) -> None:
        """Write registers by Unicorn id, in order (segment selectors are checked by the CPU
        as a `mov` would check them: CpuError when it refuses one)."""
        self.register_writer(pairs)()

    @property
    def cpl(self) -> int:
        """The current privilege level (3 once segments.setup_segments entered user mode)."""
        return self.reg_by_id(ux.UC_X86_REG_CS) & 3

    def raw_register_reader(self, names: tuple[str, ...]) -> Callable[[], bytes]:
        """A function reading ``names`` in one batch as 16-byte little-endian slots (vector
        registers whole), for checks that compare register state before and after a call."""
        n = len(names)
        ids = (ctypes.c_int * n)(*(self.reg_ids[r] for r in names))
        buf = ctypes.create_string_buffer(16 * n)
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(buf) + 16 * i for i in range(n)))
        batch = self._register_batch(False, ids, ptrs)

        def read(_keep: object = (ids, ptrs)) -> bytes:
            batch()
            return buf.raw

        return read

    # ------------------------------------------------------------------ x87/SSE state
    def _raw_read(self, reg_id: int, size: int) -> bytes:
        """A register's bytes through the C API (the binding costs ~20 µs per vector read)."""
        uclib.uc_reg_read(self._uch, reg_id, self._c_raw)
        return self._c_raw.raw[:size]

    def _raw_write(self, reg_id: int, data: bytes) -> None:
        ctypes.memmove(self._c_raw, data, len(data))
        uclib.uc_reg_write(self._uch, reg_id, self._c_raw)

    def fx_state(self) -> bytes:
        """The x87/SSE state as FXSAVE stores it (Intel SDM vol. 1, 10.5.1; 512 bytes, the
        64-bit form on x64): what a CONTEXT carries in FltSave / ExtendedRegisters."""
        wide = self.arch.ptr_size == 8

        def u64(reg_id: int) -> int:
            self._c_u64.value = 0  # narrower registers fill only their own bytes
            return self.reg_by_id(reg_id)

        fsw = u64(ux.UC_X86_REG_FPSW) & 0xFFFF
        top = (fsw >> 11) & 7
        tags = u64(ux.UC_X86_REG_FPTAG) & 0xFFFF
        buf = bytearray(512)
        # abridged tag word: bit i set when physical register i is in use (FXSAVE keeps tags in
        # physical order, the registers in stack order); Unicorn's 2-bit tags read with bit 0
        # set for an empty register
        ftw = sum(1 << i for i in range(8) if not (tags >> (2 * i)) & 1)
        fcw, fop = u64(ux.UC_X86_REG_FPCW) & 0xFFFF, u64(ux.UC_X86_REG_FOP) & 0xFFFF
        struct.pack_into("<HHBxH", buf, 0, fcw, fsw, ftw, fop)
        fip, fdp = u64(ux.UC_X86_REG_FIP), u64(ux.UC_X86_REG_FDP)
        if not wide:
            fip, fdp = fip & 0xFFFFFFFF, fdp & 0xFFFFFFFF
        struct.pack_into("<QQ" if wide else "<IxxxxIxxxx", buf, 8, fip, fdp)
        struct.pack_into("<II", buf, 24, u64(ux.UC_X86_REG_MXCSR) & 0xFFFFFFFF, 0xFFFF)
        for i in range(8):  # 80-bit registers: {u64 mantissa; u16 exponent}
            raw = self._raw_read(ux.UC_X86_REG_FP0 + ((top + i) & 7), 10)
            buf[32 + 16 * i : 42 + 16 * i] = raw
        for i in range(16 if wide else 8):
            buf[160 + 16 * i : 176 + 16 * i] = self._raw_read(ux.UC_X86_REG_XMM0 + i, 16)
        return bytes(buf)

    def set_fx_state(self, data: bytes) -> None:
        """Load an FXSAVE image (``fx_state``'s form), as FXRSTOR does; MXCSR as given (the
        caller sanitises it)."""
        wide, put = self.arch.ptr_size == 8, self.set_reg_by_id
        fcw, fsw, ftw, fop = struct.unpack_from("<HHBxH", data, 0)
        top = (fsw >> 11) & 7
        put(ux.UC_X86_REG_FPCW, fcw)
        put(ux.UC_X86_REG_FPSW, fsw)
        put(ux.UC_X86_REG_FOP, fop)
        fip, fdp = struct.unpack_from("<QQ" if wide else "<IxxxxIxxxx", data, 8)
        put(ux.UC_X86_REG_FIP, fip)
        put(ux.UC_X86_REG_FDP, fdp)
        put(ux.UC_X86_REG_MXCSR, struct.unpack_from("<I", data, 24)[0])
        tags = 0
        for i in range(8):
            physical = (top + i) & 7
            self._raw_write(ux.UC_X86_REG_FP0 + physical, data[32 + 16 * i : 42 + 16 * i])
            if not (ftw >> physical) & 1:
                tags |= 3 << (2 * physical)  # empty
        put(ux.UC_X86_REG_FPTAG, tags)
        for i in range(16 if wide else 8):
            self._raw_write(ux.UC_X86_REG_XMM0 + i, data[160 + 16 * i : 176 + 16 * i])

    def snapshot_registers(self) -> dict[str, int]:
        return {n: self.reg(n) for n in self.arch.gprs}

    # ------------------------------------------------------------------ whole-CPU context
    def save_context(self) -> object:
        """The CPU's whole state as Unicorn keeps it (every register, flags, segment
        descriptors and bases, FPU/SSE, MSRs), for ``restore_context``; memory is not in it."""
        return self.uc.context_save()

    def restore_context(self, context: object) -> None:
        """Put back a state from ``save_context`` (not during a run)."""
        self.uc.context_restore(context)
        self.state_dirty = True

    def save_memory(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int, bytes]]:
        """The contents of ``ranges`` (address, size) as (address, size, bytes): what
        ``restore_memory`` writes back."""
        return [(a, n, bytes(self.uc.mem_read(a, n))) for a, n in ranges]

    def restore_memory(
        self,
        image: list[tuple[int, int, bytes]],
        backing: list[int],
        shares: Iterable[tuple[int, int, SharedMemory, int]] = (),
    ) -> None:
        """Make the process's memory zero except what ``image`` (from ``save_memory``) holds,
        with at least the windows ``backing`` (from ``backing()``) backed and exactly the
        ranges ``shares`` (from ``shares()``) shared; translated code dropped. The CPU
        layer's own pages (the call gate, x86's GDT) stay as they are. The shared memories'
        own bytes are their owner's to put back (``SharedMemory.load``): writing ``image``
        through a shared range writes them too."""
        for start in backing:
            if start not in self._windows:
                self._back(start)
        for addr, (size, _, _) in list(self._shares.items()):
            self.unshare(addr, size)  # private again before the windows are zeroed
        for lo, hi, mem, _ in self._windows.values():
            mem.madvise(mmap.MADV_DONTNEED, 0, hi - lo)
        for addr, size, memory, offset in shares:
            self.share(addr, size, memory, offset)
        for addr, _, data in image:
            self.uc.mem_write(addr, data)
        # every answer of the page-fault handler may have changed with the bookkeeping
        self._perms.clear()
        if self._native_perms is not None:
            self._native_perms.clear()
        self._code_pages.clear()
        self._code_lo, self._code_hi = 1 << 64, 0
        self.flush_tlb()
        self.flush_translations()

    # ------------------------------------------------------------------ running
    def run(self, begin: int, until: int, count: int = 0, time_limit: float | None = None) -> None:
        """Run from ``begin`` until pc reaches ``until`` (or a fault, a stop, ``count``
        instructions, ``time_limit`` seconds). Never raises for emulated faults: ``fault``,
        ``stop_reason`` and ``timed_out`` say what happened; the caller knows whether the code
        got where it was going. Exceptions raised by Python hooks are re-raised.

        The hot path of every call: one lock (the watchdog must not stop the next run for
        the last one), one C call, and nothing else unless something happened.

        How the run ends at ``until``: Unicorn 2.1.4 translates a fresh block at the address
        given as uc_emu_start's ``until`` on every run, and keeps the old one until its 1 GiB
        translation buffer is full: ~250 bytes of host memory and a translation per run (a
        million calls: ~250 MiB). With the native fast path a block hook at ``until`` (in C,
        added once per address: ``end_runs_at``) stops the run before the instruction there
        and before any other hook sees it, and Unicorn's own exit is ``run_exit``, an address
        no code reaches (the GDT's page, set up by ``segments``: a user-mode jump exactly there
        would end the run like ``until``)."""
        if (count != 0) is not self._counting:
            # Unicorn instruments instruction counting at translation time: blocks translated
            # without it ignore a new budget (and vice versa), so start from a clean cache.
            self.flush_translations()
            self._counting = bool(count)
        if until != self._stop_until:
            self._end_at(until)
        lock = self._run_lock
        lock.acquire()  # (not `with`: this is the hot path of every call)
        if self._incident:
            self.fault = None
            self.stop_reason = None
            self.timed_out = False
            self._raw_exception = None
            self._incident = False
        self._deadline = _monotonic() + time_limit if time_limit else 0.0
        self._running = True
        lock.release()
        status = self._emu_start(self._uca, begin, self._exit, 0, count)
        self._running = False
        if status or self._incident or self._tlb_stale:
            self._after_run(status)

    @property
    def run_exit(self) -> int:
        """Where Unicorn's own exit is when runs end at the stop hook (0: at ``until``)."""
        return self._run_exit

    @run_exit.setter
    def run_exit(self, address: int) -> None:
        self._run_exit = address
        self._stop_until = -1  # the next run finds its exit again

    def _end_at(self, until: int) -> None:
        """Runs end at ``until`` from now on (until another is asked): the stop hook's address
        (a C field written only when it changes) and Unicorn's exit (``_exit``)."""
        self._stop_until = until
        if self._run_exit and self._stop_state is not None:
            if until not in self._stop_hooks:
                self._add_stop_hook(until)
            self._stop_state.until = until
            self._exit = self._run_exit
        else:
            self._exit = until

    def end_runs_at(self, until: int) -> None:
        """Prepare runs that end at ``until`` (see run): call it before observers add block
        hooks, so that the stop comes first and they never see the block at ``until``."""
        if self._stop_state is not None and until not in self._stop_hooks:
            self._add_stop_hook(until)

    def _add_stop_hook(self, until: int) -> None:
        # a block hook, Unicorn calls it before the block's first instruction; the hooks after
        # it (counters, tracers) do not run once it stopped, nor does the instruction
        assert self._native is not None and self._stop_state is not None
        self._stop_hooks[until] = self._register_hook(
            unicorn.UC_HOOK_BLOCK,
            native.function_address(self._native, "heapemu_stop"),
            until,
            until,
            user=ctypes.addressof(self._stop_state),
        )

    def _after_run(self, status: int) -> None:
        if self._fault_registers:
            self.write_registers(self._fault_registers)
            self._fault_registers = []
        if self._exception_taken:
            self._exception_taken = False
            self._forget_exception()
        if self.timed_out:
            # The watchdog stops the run from another thread, at any point of Unicorn's loop;
            # such a stop can leave translated blocks' jump lists inconsistent, and the next
            # walk of them (dropping code: an unhook, a write over code, an unmap) crashed
            # the interpreter (issue 20, D1; 6 of 25 x64 runs). A full flush walks none.
            self.flush_translations()
        if self._tlb_stale:
            # a fault, or a page-fault handler that acted (a one-shot guard page is now an
            # ordinary page): its translation to _DENIED must not outlive the run
            self.flush_tlb()
        exc = self._raw_exception
        if exc is not None:
            self._raw_exception = None
            raise exc
        if status and self.fault is None:
            self.fault = self._fault_from_status(status)
            self._incident = True

    def why_stopped(self, count: int = 0) -> str:
        """A reason for a run that did not reach its ``until`` address."""
        if self.fault is not None:
            return self.fault.kind
        if self.stop_reason:
            return self.stop_reason
        if self.timed_out:
            return "timeout"
        return "budget" if count else "stopped"

    def stop(self, reason: str) -> None:
        """Stop the current run from inside a hook."""
        self.stop_reason = reason
        self._incident = True
        uclib.uc_emu_stop(self._uch)

    def raise_fault(self, fault: Fault) -> None:
        """Record a fault from inside a hook and stop."""
        if self.fault is None:
            self.fault = fault
        self._incident = True
        uclib.uc_emu_stop(self._uch)

    def raise_fault_in_instruction(self, fault: Fault) -> None:
        """``raise_fault`` from an instruction hook (port I/O): Unicorn cannot abort the
        instruction from there and still runs the straight-line rest of its block, so the
        registers as they were at the instruction are put back when the run ends (stores in
        that rest of the block stay done)."""
        if self.fault is None:
            self._fault_registers = [(self.reg_ids[n], self.reg(n)) for n in self.arch.gprs]
        self.raise_fault(fault)

    def fail(self, exc: BaseException) -> None:
        """A Python hook raised: stop, and re-raise it when emu_start returns (exceptions
        cannot cross Unicorn's C frames)."""
        if self._raw_exception is None:
            self._raw_exception = exc
        self._incident = True
        uclib.uc_emu_stop(self._uch)

    def _fault_from_status(self, status: int) -> Fault:
        pc = self.pc
        if status == unicorn.UC_ERR_INSN_INVALID:
            return Fault("invalid instruction", pc=pc, status=NtStatus.ILLEGAL_INSTRUCTION)
        if status == unicorn.UC_ERR_EXCEPTION:
            return Fault("unhandled CPU exception", pc=pc, status=NtStatus.ACCESS_VIOLATION)
        return Fault(f"emulator error: {unicorn.UcError(status)}", pc=pc)

    # ------------------------------------------------------------------ page faults
    def _on_tlb_fill(self, uch: int, page: int, access: int, entry: object, user: int) -> bool:
        """A TLB miss on ``page`` (Unicorn has restored pc to the accessing instruction).
        Always installs a translation: the page itself, or its _DENIED twin, whose access
        stops emulation in _on_denied_access with the exact address."""
        e = entry[0]  # type: ignore[index]
        if self._invalidating:  # not an access: Unicorn looking for code to drop
            e.paddr = self._canonical(page) if self._aliased else page
            e.perms = unicorn.UC_PROT_ALL
            return True
        rw, need = _FILL_ACCESS.get(access, ("read", UC_R))
        # the common refill after a TLB flush (the native fill has looked in its map already)
        perms = self._perms.get(page) if self._native_perms is None else None
        if perms is not None and perms & need:
            e.paddr, e.perms = page, perms
            return True
        why: Fault
        try:
            answer: int | Fault | None = self._system_pages.get(page)
            if answer is None and self.page_fault_handler is not None:
                answer = self.page_fault_handler(page, rw)
            if answer is None:
                why = Fault(f"unmapped {rw}", status=NtStatus.ACCESS_VIOLATION)
            elif isinstance(answer, Fault):
                why = answer
                self._tlb_stale = True
            else:
                perms = _UC_PERMS[answer & 0xFF]
                paddr = self._canonical(page) if self._aliased else page
                if paddr == page:  # cached answers (and the native refill) are identities
                    if self._native_perms is not None:
                        self._native_perms.put(page, perms)
                    else:
                        self._perms[page] = perms
                if perms & need:
                    e.paddr, e.perms = paddr, perms
                    if perms & UC_X:
                        self._code_pages.add(page)
                        self._code_lo = min(self._code_lo, page)
                        self._code_hi = max(self._code_hi, page + 0x1000)
                    return True
                why = Fault(f"protected {rw}", status=NtStatus.ACCESS_VIOLATION)
        except BaseException as exc:  # re-raised after emu_start; the access stops emulation
            if self._raw_exception is None:
                self._raw_exception = exc
            self._incident = True
            why = Fault(f"{rw} of 0x{page:x} raised {type(exc).__name__}")
            self._tlb_stale = True
        self._denied[page & _DENIED_OFFSET] = (page, why)
        e.paddr, e.perms = _DENIED + (page & _DENIED_OFFSET), need
        return True

    def _on_denied_access(
        self, uch: int, access: int, address: int, size: int, value: int, user: int
    ) -> bool:
        """An access through a _DENIED translation: the fault, with its exact address and
        (Unicorn restores the CPU state first) the faulting instruction's pc."""
        rw = _DENIED_ACCESS.get(access, "access")
        self._tlb_stale = True
        if self.fault is None:
            key = (address - _DENIED) & _PAGE_MASK
            page, why = self._denied.get(key) or (
                key,
                Fault(f"unmapped {rw}", status=NtStatus.ACCESS_VIOLATION),
            )
            self.fault = dataclasses.replace(
                why, pc=self.pc, address=page | (address & 0xFFF), access=rw, size=size
            )
            self._incident = True
        return False

    def _on_invalid_insn(self, uch: int, user: int) -> bool:
        self.fault = Fault("invalid instruction", pc=self.pc, status=NtStatus.ILLEGAL_INSTRUCTION)
        self._incident = True
        return False

    def _forget_exception(self) -> None:
        """Mark the last CPU fault delivered (see _old_exception_offset): ~3 µs, after a fault."""
        if self._old_exception is not None:
            ctx = self.uc.context_save()
            _poke_int(ctx, self._old_exception, -1)
            self.uc.context_restore(ctx)

    def cpu_exception_fault(self, intno: int) -> Fault:
        self._exception_taken = True
        kind, status = _CPU_EXCEPTIONS.get(intno, (f"interrupt 0x{intno:x}", NtStatus.UNSUCCESSFUL))
        pc = self.pc
        if intno in (3, 4):  # traps: pc is past the instruction; Windows reports its address
            pc -= 1  # int3 (CC) and into (CE) are one byte
        if intno == 0 and self._divisor(pc):
            # #DE with a divisor: the quotient does not fit (INT_MIN / -1), which Windows
            # raises as STATUS_INTEGER_OVERFLOW
            kind, status = "divide overflow", NtStatus.INTEGER_OVERFLOW
        return Fault(kind, pc=pc, status=status)

    def _divisor(self, pc: int) -> int:
        """The divisor of the div/idiv at ``pc`` (0 when it cannot be read)."""
        try:
            code = self.read(pc, 16)
        except CpuError:
            return 0
        if self._detail is None:
            self._detail = Disassembler(self.arch, detail=True)
        insn = next(iter(self._detail.disasm(code, pc, 1)), None)
        if insn is None or insn.mnemonic not in ("div", "idiv") or not insn.operands:
            return 0
        op = insn.operands[0]
        if op.type == capstone.CS_OP_REG:
            name = insn.reg_name(op.reg)
            return self.reg(name) if name in self.reg_ids else 0
        if op.type != capstone.CS_OP_MEM or op.mem.segment:
            return 0
        mem, rip = op.mem, capstone.x86.X86_REG_RIP
        address = mem.disp + (insn.address + insn.size if mem.base == rip else 0)
        if mem.base and mem.base != rip:
            address += self.reg(insn.reg_name(mem.base))
        if mem.index:
            address += self.reg(insn.reg_name(mem.index)) * mem.scale
        try:
            return int.from_bytes(self.read(address & self.arch.ptr_mask, op.size), "little")
        except CpuError:
            return 0

    def _register_hook(
        self,
        kind: int,
        cb: Any,
        begin: int,
        end: int,
        *extra: int,
        flush: bool = True,
        user: int | None = None,
    ) -> int:
        """Register a ctypes callback (or a C function's address, with ``user`` its data)
        with Unicorn's C API (kept alive until unhooked). The binding's own wrappers cost
        ~1.4 µs per callback; this ~0.2 µs (measured on block hooks)."""
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            self._uch,
            ctypes.byref(handle),
            kind,
            ctypes.c_void_p(cb) if isinstance(cb, int) else ctypes.cast(cb, ctypes.c_void_p),
            ctypes.c_void_p(user),
            ctypes.c_uint64(begin),
            ctypes.c_uint64(end),
            *(ctypes.c_int(x) for x in extra),
        )
        if status:
            raise unicorn.UcError(status)
        self._raw_hooks[handle.value] = cb
        if flush:
            # Unicorn instruments hooks when it translates code: blocks translated before
            # this hook existed would never call it, so translation starts over
            self.flush_translations()
        return handle.value

    def _add_raw_hook(self, kind: int, fn: Callable[..., object], begin: int, end: int) -> int:
        """A code/block hook; exceptions are kept and re-raised by run()."""

        def trampoline(uc: int, address: int, size: int, user: int) -> None:
            try:
                fn(address, size)
            except BaseException as e:  # re-raised after emu_start
                self.fail(e)

        return self._register_hook(kind, _HOOK_CODE_CB(trampoline), begin, end)

    def hook_code(self, fn: CodeHook, begin: int = 1, end: int = 0) -> int:
        """``fn(address, size)`` before each instruction in [begin, end]."""
        return self._add_raw_hook(unicorn.UC_HOOK_CODE, fn, begin, end)

    def hook_block(self, fn: CodeHook, begin: int = 1, end: int = 0) -> int:
        """``fn(address, size)`` at each basic block starting in [begin, end]."""
        return self._add_raw_hook(unicorn.UC_HOOK_BLOCK, fn, begin, end)

    def hook_block_direct(
        self, fn: Callable[[int, int, int, int], None], begin: int = 1, end: int = 0
    ) -> int:
        """``hook_block`` for the hottest observers: ``fn(uc, address, size, user)`` is the C
        callback itself (no trampoline frame, ~0.15 µs less per block). It must catch its own
        exceptions and hand them to ``fail``."""
        return self._register_hook(unicorn.UC_HOOK_BLOCK, _HOOK_CODE_CB(fn), begin, end)

    def hook_mem_write(self, fn: MemWriteHook, begin: int = 1, end: int = 0) -> int:
        """``fn(address, size, value)`` on every write into [begin, end]. Memory hooks slow
        every load and store: keep one only while it is needed."""

        def on_write(uc: int, access: int, address: int, size: int, value: int, user: int) -> None:
            try:
                fn(address, size, value)
            except BaseException as e:
                self.fail(e)

        return self._register_hook(unicorn.UC_HOOK_MEM_WRITE, _HOOK_MEM_CB(on_write), begin, end)

    def hook_mem_read(self, fn: MemWriteHook, begin: int = 1, end: int = 0) -> int:
        """``fn(address, size, 0)`` on every read from [begin, end] (as ``hook_mem_write``: slow,
        keep it only while it is needed)."""

        def on_read(
            uc: unicorn.Uc, access: int, address: int, size: int, value: int, _: object
        ) -> None:
            fn(address, size, 0)

        handle = int(self.uc.hook_add(unicorn.UC_HOOK_MEM_READ, on_read, None, begin, end))
        self.flush_translations()
        return handle

    def hook_interrupt(self, fn: Callable[[int], object]) -> int:
        """``fn(intno)`` on ``int N`` and CPU exceptions."""

        def on_interrupt(uc: int, intno: int, user: int) -> None:
            try:
                fn(intno)
            except BaseException as e:
                self.fail(e)

        return self._register_hook(unicorn.UC_HOOK_INTR, _HOOK_INTR_CB(on_interrupt), 1, 0)

    def hook_syscall_insn(self, fn: Callable[[], object], insn: str) -> int:
        """``fn()`` on each ``syscall`` or ``sysenter`` instruction."""
        ins = {"syscall": ux.UC_X86_INS_SYSCALL, "sysenter": ux.UC_X86_INS_SYSENTER}[insn]

        def on_insn(uc: int, user: int) -> None:
            try:
                fn()
            except BaseException as e:
                self.fail(e)

        return self._register_hook(unicorn.UC_HOOK_INSN, _HOOK_INSN_CB(on_insn), 1, 0, ins)

    def hook_port_io(self, fn: Callable[[int, int, int], object]) -> None:
        """``fn(port, size, pc)`` on every ``in``/``out``/``ins``/``outs`` at ``pc``.
        Unicorn lets port I/O run at any privilege level (it skips the I/O permission check),
        so these hooks are the only way to refuse it."""

        def on_in(uc: int, port: int, size: int, user: int) -> int:
            try:
                fn(port, size, self._port_io_pc())
            except BaseException as e:
                self.fail(e)
            return 0

        def on_out(uc: int, port: int, size: int, value: int, user: int) -> None:
            try:
                fn(port, size, self._port_io_pc())
            except BaseException as e:
                self.fail(e)

        self._register_hook(unicorn.UC_HOOK_INSN, _HOOK_IN_CB(on_in), 1, 0, ux.UC_X86_INS_IN)
        self._register_hook(unicorn.UC_HOOK_INSN, _HOOK_OUT_CB(on_out), 1, 0, ux.UC_X86_INS_OUT)

    def _port_io_pc(self) -> int:
        """The port-I/O instruction a hook is called for. QEMU does not store pc before
        `in`/`out` (the I/O permission check that would is skipped), so pc reads an earlier
        instruction of the block (its start, or the last one that stored pc): the first
        port-I/O instruction from there on is the one (the block runs straight through, and
        the first such hook of a run's block is the one that faults)."""
        pc = self.pc
        for size in (0x400, 0x1000 - (pc & 0xFFF)):
            try:
                code = self.read(pc, size)
            except CpuError:
                continue
            for address, _size, mnemonic, _ops in self.disasm.lite(code, pc):
                if mnemonic.split()[-1] in _PORT_IO:
                    return address
            break
        return pc

    def hook_rdtsc(self, fn: Callable[[], int]) -> None:
        """``rdtsc``/``rdtscp`` read ``fn()`` instead of the host's time-stamp counter (rdtscp's
        TSC_AUX, the processor number, is 0: the process has one processor)."""
        # the whole registers: in 64-bit mode rdtsc clears the upper halves
        names = ("rax", "rdx", "rcx") if self.arch.ptr_size == 8 else ("eax", "edx", "ecx")
        eax, edx, ecx = (self.reg_ids[r] for r in names)

        def on_tsc(aux: bool) -> Callable[[int, int], int]:
            def cb(uc: int, user: int) -> int:
                try:
                    value = fn()
                    self.set_reg_by_id(eax, value & 0xFFFFFFFF)
                    self.set_reg_by_id(edx, (value >> 32) & 0xFFFFFFFF)
                    if aux:
                        self.set_reg_by_id(ecx, 0)
                except BaseException as e:
                    self.fail(e)
                return 1  # skip Unicorn's own value

            return cb

        for aux, ins in ((False, ux.UC_X86_INS_RDTSC), (True, ux.UC_X86_INS_RDTSCP)):
            self._register_hook(unicorn.UC_HOOK_INSN, _HOOK_TSC_CB(on_tsc(aux)), 1, 0, ins)

    def unhook(self, handle: int) -> None:
        # Unicorn drops the code translated with the hook, looking its pages up through the
        # TLB: not an access of the process (it must not consume a guard page), and the
        # translations it installs meanwhile must not outlive it
        self._invalidating = True
        try:
            uclib.uc_hook_del(self._uch, ctypes.c_size_t(handle))
        finally:
            self._invalidating = False
            self.flush_tlb()
        del self._raw_hooks[handle]
        self.flush_translations()

    # ------------------------------------------------------------------ inspection
    def disassemble_one(self, addr: int) -> tuple[str, int]:
        """(text, length) of the instruction at addr, or ("<unreadable>", 0)."""
        for n in (16, 8, 4, 2, 1):
            if self.readable is not None and not self.readable(addr, n):
                continue  # backed but not committed: not the process's memory
            try:
                code = self.read(addr, n)
            except CpuError:
                continue
            return self.disasm.first_text(code, addr) or (f"(bad) {code.hex()}", 0)
        return "<unreadable>", 0

    def state(self, pc: int | None = None) -> CpuState:
        pc = self.pc if pc is None else pc
        return CpuState(
            pc=pc,
            instruction=self.disassemble_one(pc)[0],
            symbol=self.symbolizer(pc),
            registers=self.snapshot_registers(),
        )


class BlockCounter:
    """Counts the basic blocks and instructions the CPU runs while installed, and logs a
    record for every block that starts at a *special* address: an entry point
    (``special.add_entry``: reaching it also makes the return address at [sp] special, so
    the call's end is logged as well) or any other address (``special.add``).

    A record (``record_format``, ``record_size`` bytes) holds the address, the instructions and
    blocks run before that block, whether the stack could be read, the ``capture`` registers
    (16-byte slots; the first is the stack pointer) and ``frame_size`` bytes of the stack from
    the stack pointer up. ``on_records(raw)`` receives whole records: at once when ``batch`` is
    False (an observer that must see the live CPU, e.g. to walk the stack), otherwise when the
    log is full and at ``flush()`` (the owner flushes when its records must be read: at the end
    of a run, before a system call's record is attached, before a thread switch). With the
    native fast path the block hook and the log are C: Python runs once per batch of calls and
    on a block's first run (its instructions are counted with capstone once); without it, one
    Python callback per block, the same records."""

    # a batch's records: 2,048 of an event recorder's (120 bytes on x64), fewer when they are
    # larger (convention checks: 560); a log that stays in the host's cache is measurably
    # cheaper to write (x64 checks: 1.10x -> 1.06x of events alone with 256 KiB against 1 MiB)
    LOG_BYTES = 1 << 18

    def __init__(
        self,
        cpu: Cpu,
        on_records: Callable[[bytes], None] | None = None,
        capture: tuple[str, ...] = (),
        frame_size: int = 0,
        *,
        batch: bool = True,
    ):
        """Without ``on_records`` it only counts (nothing may be made special)."""
        if on_records is not None:
            if not capture or len(capture) > native.MAX_REGS or frame_size > native.MAX_FRAME:
                raise ValueError("no stack pointer, too many registers or too large a frame")
            if frame_size < cpu.arch.ptr_size or frame_size % 8:
                raise ValueError("the frame must hold the return address and be 8-byte sized")
        self.cpu = cpu
        self.special = SpecialAddresses(cpu._native)
        self._on_records = on_records or _no_records
        self._capture = capture
        self._frame_size = frame_size
        self.record_size = 32 + 16 * len(capture) + frame_size
        records = max(16, self.LOG_BYTES // self.record_size) if batch else 1
        self._log_size = self.record_size * records
        self._counts: dict[int, int] = {}  # block address -> instructions (Python path)
        self._state: native.BlockState | None = None
        self._keep: tuple[object, ...] = ()
        self._py_log = bytearray()
        self._py_instructions = self._py_blocks = 0
        self._hook: int | None = None
        # compare_returns: the native state's compare_from/size, flags_at, window_size, mask
        self._compare = (0, 0, 0, 0)
        self._compare_mask = 0

    def record_format(self, first: int) -> str:
        """A ``struct`` format of one record: address, instructions, blocks, frame_ok, the
        first ``first`` captured registers as 64-bit numbers (the low half of their slot: the
        general registers), the others as one bytes value, the frame as bytes."""
        rest = 16 * (len(self._capture) - first)
        regs = "Q8x" * first
        return f"<4Q{regs}{rest}s{self._frame_size}s" if rest else f"<4Q{regs}{self._frame_size}s"

    def compare_returns(
        self, first_slot: int, end_slot: int, flags_slot: int, flags_mask: int, window: int
    ) -> None:
        """Have the native hook pair each return with its entry's record while both are in
        the log, and mark the return's record ``native.RECORD_KEPT`` (a bit of frame_ok) when
        the captured registers ``first_slot`` to ``end_slot`` are byte for byte as at the
        entry, the ``flags_slot`` register has none of ``flags_mask``'s bits, the stack
        pointer is the entry's plus the return address and what the entry says its callee
        pops, and (``window`` bytes, 0: none) the caller's frame at the entry's window offset
        is unchanged. Only the innermost call returning alone is paired; anything else is
        left to the reader. Without the native path no record is marked."""
        self._compare = (16 * first_slot, 16 * (end_slot - first_slot), 16 * flags_slot, window)
        self._compare_mask = flags_mask
        if self._state is not None:
            self._apply_compare(self._state)

    def _apply_compare(self, st: native.BlockState) -> None:
        st.compare_from, st.compare_size, st.flags_at, st.window_size = self._compare
        st.flags_mask, st.depth = self._compare_mask, 0

    def _count(self, address: int, size: int) -> int:
        """Instructions in the block at ``address`` (disassembled once; an unreadable block
        still ran: one instruction)."""
        try:
            n = self.cpu.disasm.count(self.cpu.read(address, size), address)
        except Exception:
            n = 1
        if self._state is not None:
            if n:
                self._native_counts.put(address, n)
        else:
            self._counts[address] = n
        return n

    def start(self) -> BlockCounter:
        if self._hook is not None:
            return self
        cpu, lib = self.cpu, self.cpu._native
        if lib is not None:
            self._start_native(lib)
        else:
            self._hook = cpu.hook_block_direct(self._python_hook())
        return self

    def _start_native(self, lib: ctypes.CDLL) -> None:
        cpu, fail, count = self.cpu, self.cpu.fail, self._count

        def full_cb(uc: int, address: int, size: int, user: int) -> None:
            try:
                self.flush()
            except BaseException as e:  # re-raised when the run ends
                fail(e)

        def count_cb(uc: int, address: int, size: int, user: int) -> int:
            try:
                return count(address, size)
            except BaseException as e:
                fail(e)
                return 1

        self._native_counts = native.NativeMap(lib)
        on_full, counter = _HOOK_CODE_CB(full_cb), _COUNT_CB(count_cb)
        self._log = ctypes.create_string_buffer(self._log_size)
        self._keep = (on_full, counter, self._native_counts, self._log)
        st = self._state = native.BlockState(
            self._native_counts.ptr,
            self.special.native_ptr,
            ctypes.cast(on_full, ctypes.c_void_p),
            ctypes.cast(counter, ctypes.c_void_p),
            self._py_instructions,
            self._py_blocks,
            ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p),
            ctypes.cast(uclib.uc_mem_read, ctypes.c_void_p),
            len(self._capture),
            0,
            self._frame_size,
            cpu.arch.ptr_size,
        )
        for i, name in enumerate(self._capture):
            st.regs[i] = cpu.reg_ids[name]
        st.log = ctypes.addressof(self._log)
        st.log_size = self._log_size
        st.record_size = self.record_size
        self._apply_compare(st)
        self._hook = cpu._register_hook(
            unicorn.UC_HOOK_BLOCK,
            native.function_address(lib, "heapemu_block"),
            1,
            0,
            user=ctypes.addressof(st),
        )

    def _python_hook(self) -> Callable[[int, int, int, int], None]:
        """What heapemu_block does, as a Python block hook."""
        cpu, fail, count, counts = self.cpu, self.cpu.fail, self._count, self._counts
        special, log, log_size = self.special, self._py_log, self._log_size
        read = cpu.raw_register_reader(self._capture) if self._capture else bytes
        frame = ctypes.create_string_buffer(self._frame_size)
        size, ptr = self._frame_size, cpu.arch.ptr_size

        def on_block(uc: int, address: int, size_: int, user: int) -> None:
            try:
                kind = special.get(address)
                if kind is not None:
                    values = read()
                    sp = int.from_bytes(values[:8], "little")
                    ok = cpu.read_into(sp, frame, size)
                    log.extend(
                        struct.pack("<4Q", address, self._py_instructions, self._py_blocks, ok)
                    )
                    log.extend(values)
                    log.extend(frame.raw)
                    if kind & native.SPECIAL_ENTRY and ok:
                        special.add(int.from_bytes(frame.raw[:ptr], "little"))
                    if len(log) + self.record_size > log_size:
                        self.flush()
                self._py_instructions += counts.get(address) or count(address, size_)
                self._py_blocks += 1
            except BaseException as e:  # re-raised when the run ends
                fail(e)

        return on_block

    def flush(self) -> None:
        """Hand the records logged so far to ``on_records`` (nothing when there are none)."""
        st = self._state
        if st is not None:
            used = int(st.log_used)
            if not used:
                return
            raw = ctypes.string_at(self._log, used)
            st.log_used = 0
            st.depth = 0  # (the calls it paired are in the records handed over)
        else:
            if not self._py_log:
                return
            raw = bytes(self._py_log)
            self._py_log.clear()
        self._on_records(raw)

    def stop(self) -> None:
        if self._hook is None:
            return
        self.flush()
        st = self._state
        if st is not None:  # the counts go on from here if started again
            self._py_instructions = int(st.instructions)
            self._py_blocks = int(st.blocks)
            self._state = None
        self.cpu.unhook(self._hook)
        self._hook = None

    @property
    def instructions(self) -> int:
        st = self._state
        return int(st.instructions) if st is not None else self._py_instructions

    @property
    def blocks(self) -> int:
        st = self._state
        return int(st.blocks) if st is not None else self._py_blocks


_COUNT_CB = ctypes.CFUNCTYPE(
    ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)


def _no_records(raw: bytes) -> None:
    raise RuntimeError("a counting BlockCounter was given special addresses")


class SpecialAddresses(dict[int, int]):
    """The addresses a BlockCounter logs, each with its kind (``native.SPECIAL_ENTRY`` or
    ``SPECIAL_RETURN`` bits), mirrored into the native map when there is a native library.
    The native hook adds the return addresses it finds at entries to its map only."""

    def __init__(self, lib: ctypes.CDLL | None):
        super().__init__()
        self._map = native.NativeMap(lib) if lib is not None else None

    @property
    def native_ptr(self) -> int | None:
        return self._map.ptr if self._map is not None else None

    def _put(self, address: int, kind: int) -> None:
        kind |= self.get(address, 0)
        super().__setitem__(address, kind)
        if self._map is not None:
            self._map.put(address, kind)

    def add(self, address: int) -> None:
        self._put(address, native.SPECIAL_RETURN)

    def add_entry(self, address: int, pops: int = 0, window: int = 0) -> None:
        """An entry point; for ``BlockCounter.compare_returns``, the bytes its callee pops
        beyond the return address and where the caller's frame window starts above the entry
        stack pointer (0: no window can be compared: no verdict)."""
        if not (0 <= pops < 1 << 16 and 0 <= window < 1 << 16):
            raise ValueError(f"pops {pops:#x} / window {window:#x} out of range")
        self._put(address, native.SPECIAL_ENTRY | pops << 8 | window << 24)
