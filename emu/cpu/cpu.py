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
from typing import Any

import capstone
import unicorn
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uc_tlb_entry, uclib

from emu.arch import Arch, register_names
from emu.cpu import native
from emu.cpu.disasm import Disassembler
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


class Cpu:
    """A Unicorn x86/x64 engine with Windows-flavoured fault reporting."""

    def __init__(self, arch: Arch):
        self.arch = arch
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, _UC_MODES[arch.name])
        # Sandy Bridge: no RDRAND/RDSEED, so they are #UD (STATUS_ILLEGAL_INSTRUCTION) and CPUID
        # says so. Unicorn's default (Haswell) runs them with the host's randomness, and offers
        # no hook for them: a run could not be reproduced.
        self.uc.ctl_set_cpu_model(ux.UC_CPU_X86_SANDYBRIDGE)
        self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        self._uch = self.uc._uch
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
            self._tlb_state = native.TlbState(perms.ptr, ctypes.cast(slow_fill, ctypes.c_void_p))
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
        else:
            self._register_hook(unicorn.UC_HOOK_TLB_FILL, slow_fill, 1, 0, flush=False)
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
        self.flush_tlb()

    def backing(self) -> list[int]:
        """The windows backed (their starts), in address order (for snapshots)."""
        return sorted(self._windows)

    def map_system(self, addr: int, size: int, protect: int) -> None:
        """Map pages the CPU itself needs outside the process's address space (x86's GDT):
        their protection is answered here, not by the page-fault handler."""
        try:
            self.uc.mem_map(addr, size, unicorn.UC_PROT_ALL)  # Unicorn flushes the TLB
        except unicorn.UcError as e:
            raise _cpu_error(e, f"map 0x{addr:x}+0x{size:x}") from None
        for page in range(addr, addr + size, 0x1000):
            self._system_pages[page] = protect

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
        self.flush_tlb()

    @staticmethod
    def _pages_within(addr: int, size: int, pages: Collection[int]) -> list[int]:
        """The members of ``pages`` (page addresses) in [addr, addr+size), ascending."""
        start, end = addr & _PAGE_MASK, addr + size
        if size >> 12 <= len(pages):
            return [p for p in range(start, end, 0x1000) if p in pages]
        return sorted(p for p in pages if start <= p < end)

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
        uclib.uc_ctl(self._uch, _UC_CTL_TLB_FLUSH)
        self._denied.clear()
        self._tlb_stale = False

    def read(self, addr: int, size: int) -> bytes:
        # inside a backed window, the host memory Unicorn reads is ours: a slice of it, no C
        # call (the system calls read and write user memory a few times each)
        window = self._windows.get(addr - addr % self._window)
        if window is not None and size > 0:
            lo, hi, mem, _ = window
            if lo <= addr and addr + size <= hi:
                return mem[addr - lo : addr - lo + size]
        # elsewhere the C API directly
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
            # copy into it: Unicorn 2.1.4 neither marks dirty pages nor drops code for a write)
            lo = window[0]
            window[2][addr - lo : addr - lo + len(data)] = data
        else:
            status = uclib.uc_mem_write(self._uch, addr, data, len(data))
            if status:
                raise _cpu_error(unicorn.UcError(status), f"write 0x{addr:x}+0x{len(data):x}")
        if self._code_pages and self._may_hold_code(addr, len(data)):
            page, end = addr & _PAGE_MASK, addr + len(data)
            while page < end:
                if page in self._code_pages:
                    self.invalidate_code(addr, len(data))
                    return
                page += 0x1000

    def read_into(self, addr: int, buf: ctypes.Array[ctypes.c_char], size: int) -> bool:
        """Read ``size`` bytes into ``buf`` through the C API (no bytes object, no exception:
        False when the range is unreadable). For observers that read on every event."""
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
        self._c_u64.value = 0  # 8/16/32-bit registers fill only their own bytes
        return self.reg_by_id(self.reg_ids[name])

    def set_reg(self, name: str, value: int) -> None:
        self.state_dirty = True
        if name.startswith("xmm"):
            self.uc.reg_write(self.reg_ids[name], value)
        else:
            self.set_reg_by_id(self.reg_ids[name], value)

    def reg_by_id(self, reg_id: int) -> int:
        uclib.uc_reg_read(self._uch, reg_id, self._c_ref)
        return self._c_u64.value

    def set_reg_by_id(self, reg_id: int, value: int) -> None:
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

    def register_reader(self, names: tuple[str, ...]) -> Callable[[], tuple[int, ...]]:
        """A function reading ``names`` in one ``uc_reg_read_batch`` (for hot observers)."""
        n = len(names)
        ids = (ctypes.c_int * n)(*(self.reg_ids[r] for r in names))
        vals = (ctypes.c_uint64 * n)()
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 8 * i for i in range(n)))
        uch = self._uch

        def read() -> tuple[int, ...]:
            uclib.uc_reg_read_batch(uch, ids, ptrs, n)
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
        # through PyDLL without argtypes, the arguments already C objects: 0.6 µs a call
        # instead of 1.4 µs for the binding's prototype (measured; the GIL stays held, and the
        # only callback a register write can cause, a TLB fill, runs in this same thread)
        uch, count, write = self._uch, ctypes.c_int(n), _REG_WRITE_BATCH

        def apply(_keep: object = vals) -> None:  # the values must outlive this function
            status = write(uch, ids, ptrs, count)
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
        uch = self._uch

        def read() -> bytes:
            uclib.uc_reg_read_batch(uch, ids, ptrs, n)
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

    def restore_memory(self, image: list[tuple[int, int, bytes]], backing: list[int]) -> None:
        """Make the process's memory zero except what ``image`` (from ``save_memory``) holds,
        with at least the windows ``backing`` (from ``backing()``) backed; translated code
        dropped. The CPU layer's own pages (the call gate, x86's GDT) stay as they are."""
        for start in backing:
            if start not in self._windows:
                self._back(start)
        for lo, hi, mem, _ in self._windows.values():
            mem.madvise(mmap.MADV_DONTNEED, 0, hi - lo)
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
        the last one), one C call, and nothing else unless something happened."""
        if bool(count) != self._counting:
            # Unicorn instruments instruction counting at translation time: blocks translated
            # without it ignore a new budget (and vice versa), so start from a clean cache.
            self.flush_translations()
            self._counting = bool(count)
        with self._run_lock:
            if self._incident:
                self.fault = None
                self.stop_reason = None
                self.timed_out = False
                self._raw_exception = None
                self._incident = False
            self._deadline = time.monotonic() + time_limit if time_limit else 0.0
            self._running = True
        status = uclib.uc_emu_start(self._uch, begin, until, 0, count)
        self._running = False
        if status or self._incident or self._tlb_stale:
            self._after_run(status)

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
            e.paddr, e.perms = page, unicorn.UC_PROT_ALL
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
                if self._native_perms is not None:
                    self._native_perms.put(page, perms)
                else:
                    self._perms[page] = perms
                if perms & need:
                    e.paddr, e.perms = page, perms
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
    """Counts the basic blocks and instructions the CPU runs while installed, and calls
    ``on_special(address)`` before counting a block that starts at an address in ``special``
    (a set the owner edits while the counter runs: ``add``, ``discard``, ``clear``, ``update``).

    For observers that must know how much code ran between two points (allocation events)
    without a Python call per block: with the native fast path the block hook is C and
    Python runs only at the special addresses and on a block's first run (its instructions
    are counted with capstone once); without it, one Python callback per block."""

    def __init__(
        self,
        cpu: Cpu,
        on_special: Callable[[int], None],
        capture: tuple[str, ...] = (),
        frame_size: int = 0,
    ):
        """``capture``: registers read for ``on_special`` before it is called (the first must
        be the stack pointer), found in ``values`` (two 64-bit slots per register, the low one
        first) and ``frame_size`` bytes of the stack from the stack pointer up in ``frame()``:
        the callback needs no C call of its own for them."""
        if len(capture) > native.MAX_REGS or frame_size > native.MAX_FRAME:
            raise ValueError("too many registers or too large a frame to capture")
        self.cpu = cpu
        self.special = _SpecialSet(cpu._native)
        self._on_special = on_special
        self._capture = capture
        self._frame_size = frame_size
        self.values = (ctypes.c_uint64 * (2 * native.MAX_REGS))()
        self._frame = (ctypes.c_char * native.MAX_FRAME)()
        self._frame_ok = False
        self._views()
        self._counts: dict[int, int] = {}  # block address -> instructions (Python path)
        self._state: native.BlockState | None = None
        self._keep: tuple[object, ...] = ()
        self._py_instructions = self._py_blocks = 0
        self._hook: int | None = None

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
        fail, on_special, count = cpu.fail, self._on_special, self._count
        if lib is not None:

            def special_cb(uc: int, address: int, size: int, user: int) -> None:
                try:
                    on_special(address)
                except BaseException as e:  # re-raised when the run ends
                    fail(e)

            def count_cb(uc: int, address: int, size: int, user: int) -> int:
                try:
                    return count(address, size)
                except BaseException as e:
                    fail(e)
                    return 1

            self._native_counts = native.NativeMap(lib)
            special = _HOOK_CODE_CB(special_cb)
            counter = _COUNT_CB(count_cb)
            self._keep = (special, counter, self._native_counts)
            st = self._state = native.BlockState(
                self._native_counts.ptr,
                self.special.native_ptr,
                ctypes.cast(special, ctypes.c_void_p),
                ctypes.cast(counter, ctypes.c_void_p),
                self._py_instructions,
                self._py_blocks,
                ctypes.cast(uclib.uc_reg_read_batch, ctypes.c_void_p),
                ctypes.cast(uclib.uc_mem_read, ctypes.c_void_p),
                len(self._capture),
                0,
                self._frame_size,
            )
            for i, name in enumerate(self._capture):
                st.regs[i] = cpu.reg_ids[name]
            base = ctypes.addressof(st)
            self.values = (ctypes.c_uint64 * (2 * native.MAX_REGS)).from_address(
                base + native.BlockState.values.offset
            )
            self._frame = (ctypes.c_char * native.MAX_FRAME).from_address(
                base + native.BlockState.frame.offset
            )
            self._views()
            self._hook = cpu._register_hook(
                unicorn.UC_HOOK_BLOCK,
                native.function_address(lib, "heapemu_block"),
                1,
                0,
                user=ctypes.addressof(self._state),
            )
            return self
        special_set, counts = self.special, self._counts
        capture = self._capture_in_python()

        def on_block(uc: int, address: int, size: int, user: int) -> None:
            try:
                if address in special_set:
                    capture()
                    on_special(address)
                self._py_instructions += counts.get(address) or count(address, size)
                self._py_blocks += 1
            except BaseException as e:  # re-raised when the run ends
                fail(e)

        self._hook = cpu.hook_block_direct(on_block)
        return self

    def _capture_in_python(self) -> Callable[[], None]:
        """What fastpath.c's capture() does, for the Python block hook."""
        if not self._capture:
            return lambda: None
        read = self.cpu.raw_register_reader(self._capture)
        values, frame, size, cpu = self.values, self._frame, self._frame_size, self.cpu

        def capture() -> None:
            raw = read()
            ctypes.memmove(values, raw, len(raw))
            sp = values[0]
            self._frame_ok = bool(size) and cpu.read_into(sp, frame, size)

        return capture

    def _views(self) -> None:
        """Byte views of the captures (slicing them is cheaper than a C call per read)."""
        self._value_bytes = memoryview(self.values).cast("B")
        self._frame_bytes = memoryview(self._frame).cast("B")[: self._frame_size]

    def captured(self, first: int, count: int) -> bytes:
        """``count`` captured registers from the ``first``-th, as 16-byte slots."""
        return bytes(self._value_bytes[16 * first : 16 * (first + count)])

    def frame_slice(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the captured stack from ``offset`` (empty when not captured)."""
        st = self._state
        ok = st.frame_ok if st is not None else self._frame_ok
        if not ok or offset < 0 or offset + size > self._frame_size:
            return b""
        return bytes(self._frame_bytes[offset : offset + size])

    def frame(self) -> bytes:
        """The stack captured for the current ``on_special`` (empty when unreadable)."""
        st = self._state
        ok = st.frame_ok if st is not None else self._frame_ok
        return bytes(self._frame_bytes) if ok else b""

    def stop(self) -> None:
        if self._hook is None:
            return
        st = self._state
        if st is not None:  # the counts go on from here if started again
            self._py_instructions = int(st.instructions)
            self._py_blocks = int(st.blocks)
            # the captures outlive the C state they point into
            self.values = type(self.values).from_buffer_copy(self.values)
            self._frame = type(self._frame).from_buffer_copy(self._frame)
            self._frame_ok = bool(st.frame_ok)
            self._state = None
            self._views()
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


class _SpecialSet(set[int]):
    """A set of addresses mirrored into a native map (when there is a native library)."""

    def __init__(self, lib: ctypes.CDLL | None):
        super().__init__()
        self._map = native.NativeMap(lib) if lib is not None else None

    @property
    def native_ptr(self) -> int | None:
        return self._map.ptr if self._map is not None else None

    def add(self, address: int) -> None:
        super().add(address)
        if self._map is not None:
            self._map.put(address, 1)

    def discard(self, address: object) -> None:
        super().discard(address)
        if self._map is not None and isinstance(address, int):
            self._map.delete(address)

    def clear(self) -> None:
        super().clear()
        if self._map is not None:
            self._map.clear()

    def update(self, *others: Iterable[int]) -> None:
        for other in others:
            for address in other:
                self.add(address)
