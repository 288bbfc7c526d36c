"""An emulated Windows user-mode process: address space, PEB/TEB, threads, system calls, calls.

A call from Python (``proc.call``) goes through the call gate (``emu.cpu.callgate``): the callee
and its arguments are packed into the gate's host-shared page, one ``uc_emu_start`` runs a stub
that builds the frame and jumps to the callee, whose return lands on the gate's tail (result and
stack pointer stored back into the page; the run stops at the sentinel). System calls issued by
emulated code enter Python through Unicorn's instruction/interrupt hooks and are served by the
handlers in ``emu.nt.calls``; memory faults are decided on TLB misses (``_on_page_fault``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from emu.arch import Arch, get_arch
from emu.cpu.callgate import CallGate, Layout
from emu.cpu.cpu import Cpu, CpuError
from emu.errors import BreakpointStop, EmulationError, Fault, NtStatusError
from emu.nt.calls import HANDLERS
from emu.nt.exceptions import (
    ExceptionEvent,
    capture_context,
    deliver,
    event_for_fault,
    record_bytes,
)
from emu.process.ldr import LoaderData
from emu.process.snapshot import Snapshot, restore_snapshot, take_snapshot
from emu.process.threads import run_threads
from emu.win.conventions import Convention, get_convention
from emu.win.layouts import PEB, TEB

if TYPE_CHECKING:
    from emu.load.program import Program
    from emu.observe.breakpoints import Breakpoint
from emu.cpu.segments import setup_segments, user_state
from emu.modules import Module, ModuleList
from emu.nt.kernel import PROCESS_ID, THREAD_ID, SyscallDispatcher, SyscallRecord
from emu.nt.memory import MemoryManager
from emu.nt.objects import ObjectManager
from emu.nt.records import DEFAULT_SYSCALL_LOG, SyscallLog
from emu.nt.shared_data import UPTIME_MS, SharedClock, fill_shared_user_data
from emu.nt.stack import ThreadStack, touch_guard
from emu.nt.threads import Scheduler
from emu.win.ntdefs import (
    HEAP_GROWABLE,
    MEM_COMMIT,
    MEM_RESERVE,
    MEM_TOP_DOWN,
    PAGE_EXECUTE_READ,
    PAGE_GUARD,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_SIZE,
    NtStatus,
)

EXCEPTION_NONCONTINUABLE = 0x1  # ExceptionFlags (winnt.h)
# software interrupts Windows' IDT opens to user mode (DPL 3) beyond int3/into: 0x29 fast
# fail, 0x2c assertion failure, 0x2d debug service, 0x2e system call (heapemu serves 0x2e on
# x86 and 0x29; 0x2c/0x2d stop the run as before)
_USER_GATES = frozenset({0x29, 0x2C, 0x2D, 0x2E})
# rdtsc: a 3 GHz counter; consecutive reads without a system call between them are 10 ns apart
TSC_HZ, TSC_PER_READ = 3_000_000_000, 30
KUSER_SHARED_DATA_ADDRESS = 0x7FFE0000  # fixed on every Windows version and architecture
PROCESS_HEAPS_OFFSET = 0xC00  # our PEB.ProcessHeaps array lives in the PEB's first page
MAX_PROCESS_HEAPS = 16  # MaximumNumberOfHeaps, as seed 001's WinDbg session shows (0x10)
# Wine's debug channels read an option table two pages (x64) / one page (x86) past the PEB;
# the PEB region is committed far enough to hold it (zero = every channel off).
PEB_REGION_SIZE = 0x4000
TEB_REGION_SIZE = 0x10000  # TEB plus room past it (Wine keeps per-thread data there)

# trap region layout: trap code (no hook), Python-callback stubs (one code hook), and
# heapemu's scratch page (out-parameters of the calls heapemu makes for itself). All of it is
# one reservation made before any allocator loads: nothing heapemu does later for itself takes
# address space an allocator could get.
_TRAP_CODE, _CALLBACKS, _SCRATCH, _TRAP_REGION = 0x100, 0x800, 0xF000, 0x10000
_CALLBACK_STUB = 16  # bytes per Python-callback stub
MAX_CALLBACKS = (_SCRATCH - _CALLBACKS) // _CALLBACK_STUB


@dataclass
class Callback:
    """A Python function that emulated code can call like a native one."""

    name: str
    fn: Callable[..., int | None]
    argc: int
    convention: Convention
    address: int


class Registers(MutableMapping[str, int]):
    """``proc.regs["rcx"]``: read and write registers by name (names valid for the arch)."""

    def __init__(self, cpu: Cpu):
        self._cpu = cpu

    def _id(self, name: str) -> int:
        try:
            return self._cpu.reg_ids[name.lower()]
        except KeyError:
            raise KeyError(f"no register {name!r} on {self._cpu.arch.name}") from None

    def __getitem__(self, name: str) -> int:
        self._id(name)
        return self._cpu.reg(name.lower())

    def __setitem__(self, name: str, value: int) -> None:
        self._id(name)
        self._cpu.set_reg(name.lower(), value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("registers cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._cpu.arch.gprs)

    def __len__(self) -> int:
        return len(self._cpu.arch.gprs)


class ProcessCore:
    """One emulated Windows process on x86 or x64: address space, PEB/TEB, its main thread
    (and those a program creates: ``threads``, ``run_threads``), system calls, calls.
    ``emu.facade.Process`` adds the loaders and observers on top."""

    def __init__(
        self,
        arch: str | Arch = "x64",
        *,
        stack_reserve: int | None = None,
        stack_commit: int | None = None,
        time_limit: float = 30.0,
        syscall_log: int | None = DEFAULT_SYSCALL_LOG,
    ):
        self.arch = get_arch(arch)
        self.cpu = Cpu(self.arch)
        self.memory = MemoryManager(self.cpu, self.arch)
        self.regs = Registers(self.cpu)
        self.modules = ModuleList()
        # every call counted, the last `syscall_log` recorded (None: all; emu.nt.records)
        self.syscalls = SyscallLog(syscall_log)
        self.syscall_dispatcher = SyscallDispatcher(self, HANDLERS)
        self.time_limit = time_limit  # seconds per call; None or 0 = no wall-clock limit
        self.instruction_budget: int | None = None  # default per-call budget (slower: see call)
        self.callbacks: dict[int, Callback] = {}
        self._call_layouts: dict[tuple[str | None, int], Layout] = {}  # (convention, argc)
        self.export_hooks: dict[str, int] = {}
        self.trap_names: dict[int, str] = {}
        # observers (emu.observe.events and friends): called on every system call / at each run's
        # end
        self.syscall_observers: list[Callable[[SyscallRecord], None]] = []
        self.run_observers: list[Callable[[bool], None]] = []
        # called when a run ends any other way than a proc.call returning (a fault, a stop, a
        # limit, the end of run_threads: calls may have been left under way), and before the
        # CPU changes threads: observers that batch what they saw (events) flush it there
        self.stop_observers: list[Callable[[], None]] = []
        self.switch_observers: list[Callable[[], None]] = []
        self.breakpoints: list[Breakpoint] = []
        self.breakpoint_stop: str | None = None
        self._ldr: LoaderData | None = None
        self.exit_status: int | None = None
        self.debug_output: list[str] = []  # text emulated code printed (Wine's debug channels)
        self.objects = ObjectManager()  # handles and sandboxed names (emu.nt.objects)
        self.program: Program | None = None  # set by from_program (emu.load.program)
        # exceptions (emu.nt.exceptions): ntdll's KiUserExceptionDispatcher when the process
        # has one (a program's Wine ntdll), else faults end the run as EmulationErrors
        self.exception_dispatcher: int | None = None
        self.stop_on_first_chance = False  # end the run at a fault instead of dispatching it
        # every exception the kernel dispatched, in order: faults and NtRaiseException (Wine's
        # x64 RtlRaiseException dispatches in user mode, without the kernel)
        self.exceptions: list[ExceptionEvent] = []
        self.unhandled_exception: ExceptionEvent | None = None  # its second chance ended it
        self._first_chance_stops = False  # the current run's stop_on_first_chance
        # state the layers above keep per process (declared here, never attached with setattr)
        self.view_allocator: Any = None  # emu.views: the Allocator asked for RtlGetProcessHeaps
        self.failure_recorder: Any = None  # emu.pytest_plugin: events for a failure report
        self._tsc = 0  # the last time-stamp counter value read (_on_rdtsc)
        # emu.heap.registry: the allocator a program's heap calls are routed to (exec
        # --allocator), which walkers and views use although Wine's ntdll is loaded too
        self.heap_kind: str | None = None
        # entry points rewritten into a jump to another module's (emu.load.heap_route):
        # entry -> target; the event recorder watches the target instead
        self.routed_entries: dict[int, int] = {}
        self.cpu.symbolizer = self.symbolize
        self._build_address_space(stack_reserve, stack_commit)
        # the threads (emu.nt.threads): the one made here, and those the program creates
        self.threads = Scheduler(self, self.teb, self.thread_stack, THREAD_ID)
        self._install_hooks()

    # ------------------------------------------------------------------ set-up
    def _build_address_space(self, stack_reserve: int | None, stack_commit: int | None) -> None:
        arch, mem = self.arch, self.memory
        rw, top = MEM_RESERVE | MEM_COMMIT, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN
        # kernel-owned pages: emulated code can read them but not free or reprotect them
        mem.allocate(
            KUSER_SHARED_DATA_ADDRESS,
            PAGE_SIZE,
            rw,
            PAGE_READONLY,
            usage="KUSER_SHARED_DATA",
            secured=True,
        )
        # our trap page: the return sentinel and the stubs through which emulated code calls
        # Python; it is executable user memory, so code can return and jump into it
        self.trap_base, _ = mem.allocate(
            0,
            _TRAP_REGION,
            MEM_RESERVE | MEM_TOP_DOWN,
            PAGE_EXECUTE_READ,
            usage="heapemu traps",
            secured=True,
        )
        mem.allocate(self.trap_base, PAGE_SIZE, MEM_COMMIT, PAGE_EXECUTE_READ)
        self.cpu.write(self.trap_base, b"\xcc" * PAGE_SIZE)
        # a page for the out-parameters of heapemu's own calls (RtlWalkHeap's entry,
        # RtlGetProcessHeaps' array): committed now, so looking never maps anything
        self.scratch = self.trap_base + _SCRATCH
        mem.allocate(self.scratch, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE)
        self._trap_committed = PAGE_SIZE
        self._trap_code_next = self.trap_base + _TRAP_CODE
        self._trap_next = self.trap_base + _CALLBACKS
        # the PEB and TEBs are secured (NoChange) VADs on Windows (MiCreatePebOrTeb): user
        # mode can neither free nor reprotect them (STATUS_INVALID_PAGE_PROTECTION)
        self.peb, _ = mem.allocate(
            0, PEB_REGION_SIZE, top, PAGE_READWRITE, usage="PEB", secured=True
        )
        self.teb, _ = mem.allocate(
            0, TEB_REGION_SIZE, top, PAGE_READWRITE, usage="TEB", secured=True
        )
        self.thread_stack = ThreadStack(
            self,
            stack_reserve or arch.default_stack_reserve,
            stack_commit or arch.default_stack_commit,
        )
        self._fill_teb_peb()
        # the CPU's own pages in the 64 KiB above the highest user address (free on every
        # Windows): the call gate's two (frames below the top of the stack), then the GDT
        gate = arch.user_max + 1
        setup_segments(self.cpu, self.teb, TEB.size(arch), gate + 2 * PAGE_SIZE)
        # every call starts from the ABI's flags, FPU/SSE control and segments, whatever the
        # last one left (issue 20, D5): the call gate's stub resets DF and the FPU/SSE control
        # on every call; after a run that did not return cleanly (a trap flag left set would
        # trap in the stub), a callee the gate's tail caught changing segments or AC/NT, or
        # registers written from outside, one batched register write puts back all of it
        self._reset_user_state = self.cpu.register_writer(user_state(self.cpu, self.teb))
        self.call_gate = CallGate(arch, self.cpu, self.thread_stack.top - 0x80, gate)
        self._gate_data, self._gate_sentinel = self.call_gate.data, self.call_gate.sentinel

    def _fill_teb_peb(self) -> None:
        a, teb, peb = self.arch, self.teb, self.peb
        # no SEH frame yet: the x86 ExceptionList terminator is -1, x64 has no list
        TEB.write(self, a, teb, "ExceptionList", 0xFFFFFFFF if a.ptr_size == 4 else 0)
        TEB.write(self, a, teb, "Self", teb)
        TEB.write(self, a, teb, "UniqueProcess", PROCESS_ID)
        TEB.write(self, a, teb, "UniqueThread", THREAD_ID)
        TEB.write(self, a, teb, "ProcessEnvironmentBlock", peb)
        self.thread_stack.write_teb(teb)
        PEB.write(self, a, peb, "NumberOfProcessors", 1)
        PEB.write(self, a, peb, "NtGlobalFlag", 0)
        # RtlCreateHeap defaults from the PEB, as Windows initialises them (MmHeapSegment*)
        PEB.write(self, a, peb, "HeapSegmentReserve", 0x100000)
        PEB.write(self, a, peb, "HeapSegmentCommit", 0x2000)
        PEB.write(self, a, peb, "HeapDeCommitTotalFreeThreshold", 0x10000)
        PEB.write(self, a, peb, "HeapDeCommitFreeBlockThreshold", 0x1000)
        PEB.write(self, a, peb, "NumberOfHeaps", 0)
        PEB.write(self, a, peb, "MaximumNumberOfHeaps", MAX_PROCESS_HEAPS)
        PEB.write(self, a, peb, "ProcessHeaps", peb + PROCESS_HEAPS_OFFSET)
        PEB.write(self, a, peb, "OSMajorVersion", 10)
        PEB.write(self, a, peb, "OSMinorVersion", 0)
        PEB.write(self, a, peb, "OSBuildNumber", 19045)
        PEB.write(self, a, peb, "OSPlatformId", 2)  # VER_PLATFORM_WIN32_NT
        PEB.write(self, a, peb, "CriticalSectionTimeout", (-2592000 * 10_000_000) & (2**64 - 1))
        fill_shared_user_data(self, a, KUSER_SHARED_DATA_ADDRESS)
        # its clocks follow the kernel's from now on (publish_clock)
        self.shared_clock = SharedClock(self.cpu.host_view(KUSER_SHARED_DATA_ADDRESS, PAGE_SIZE))
        self.shared_clock.publish(0)

    def _install_hooks(self) -> None:
        cpu = self.cpu
        ids = cpu.reg_ids
        self._ret_id = ids[self.arch.ret]
        # what the kernel entry reads, in one batch: the service number, the pc, and the
        # arguments' registers (x64: the stack pointer and the kernel ABI's four; x86: edx,
        # which points at them)
        if self.arch.ptr_size == 8:
            self._syscall_entry = cpu.register_reader(
                ("rax", "rip", "rsp", "r10", "rdx", "r8", "r9")
            )
        else:
            self._syscall_entry = cpu.register_reader(("eax", "eip", "edx"))
        cpu.page_fault_handler = self._on_page_fault
        cpu.readable = self._readable
        cpu.hook_interrupt(self._on_interrupt)
        if self.arch.ptr_size == 8:
            cpu.hook_syscall_insn(self._on_syscall, "syscall")
        else:
            cpu.hook_syscall_insn(self._on_sysenter, "sysenter")
        # port I/O is privileged (Windows user mode has no I/O permission bitmap); the
        # time-stamp counter follows the emulated clock. Instruction hooks cost nothing
        # until their instruction runs.
        cpu.hook_port_io(self._on_port_io)
        cpu.hook_rdtsc(self._on_rdtsc)
        # one address-ranged hook for all Python callbacks: costs nothing elsewhere
        cpu.hook_code(self._on_callback, self.trap_base + _CALLBACKS, self.trap_base + _SCRATCH - 1)

    # ------------------------------------------------------------------ memory access
    def _in_process(self, addr: int, size: int) -> bool:
        """Does [addr, addr+size) touch the process's address space (where the CPU backs
        whole reservations, so committed pages are the memory manager's to say)?"""
        return addr <= self.arch.user_max and addr + size > self.arch.user_min

    def _readable(self, addr: int, size: int) -> bool:
        return not self._in_process(addr, size) or self.memory.is_committed(addr, size)

    def read(self, addr: int, size: int) -> bytes:
        if size > 0 and self._in_process(addr, size) and not self.memory.is_committed(addr, size):
            raise self._python_access_error(addr, size, "read")
        try:
            return self.cpu.read(addr, size)
        except CpuError:
            raise self._python_access_error(addr, size, "read") from None

    def write(self, addr: int, data: bytes) -> None:
        """Write like a debugger: page protections do not apply, but the memory must be
        committed. Code already translated over the range is invalidated if it is executable."""
        n = len(data)
        if n > 0 and self._in_process(addr, n) and not self.memory.is_committed(addr, n):
            raise self._python_access_error(addr, n, "write")
        try:
            self.cpu.write(addr, data)
        except CpuError:
            raise self._python_access_error(addr, n, "write") from None

    def _python_access_error(self, addr: int, size: int, access: str) -> EmulationError:
        """Name the first page of [addr, addr+size) that is not committed and mapped."""
        first = addr
        page = addr & ~(PAGE_SIZE - 1)
        while page < addr + size:
            state = self.memory.page_state(page)
            if state is None or state == 0 or state & PAGE_GUARD:
                first = max(page, addr)
                break
            page += PAGE_SIZE
        state = self.memory.page_state(first)
        what = (
            "free" if state is None else "reserved (not committed)" if state == 0 else "guard-page"
        )
        return EmulationError(
            Fault(
                f"Python {access} of {what} memory",
                address=first,
                access=access,
                size=size,
                status=NtStatus.ACCESS_VIOLATION,
                detail=f"{access} of 0x{size:x} bytes at 0x{addr:x}",
            )
        )

    def read_ptr(self, addr: int) -> int:
        return self.arch.unpack_ptr(self.read(addr, self.arch.ptr_size))

    def write_ptr(self, addr: int, value: int) -> None:
        self.write(addr, self.arch.pack_ptr(value))

    def read_u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    # ------------------------------------------------------------------ modules and symbols
    def add_module(self, module: Module) -> Module:
        self.modules.add(module)
        return module

    def resolve(self, name: str) -> int:
        """``"module!Symbol"`` (or ``"module!Symbol+0x10"``) to an address."""
        return self.modules.resolve(name)

    def symbolize(self, addr: int) -> str:
        """An address as ``module!Symbol+0x1f`` (or ``module+0x1f`` / hex when unknown)."""
        cb = self.callbacks.get(addr)
        if cb is not None:
            return f"heapemu!{cb.name}"
        if self.call_gate.contains(addr):
            return f"heapemu!call_gate+0x{addr - self.call_gate.code_base:x}"
        for start, name in self.trap_names.items():
            if start <= addr < start + 16:
                return f"heapemu!{name}" + (f"+0x{addr - start:x}" if addr != start else "")
        return self.modules.symbolize(addr)

    @property
    def ldr(self) -> LoaderData:
        """PEB.Ldr and its module lists (built on first use)."""
        if self._ldr is None:
            self._ldr = LoaderData(self)
        return self._ldr

    def register_syscall_table(
        self, begin: int, end: int, table: dict[int, str], *, system: bool = False
    ) -> None:
        """System-call numbers used by the code in [begin, end) (the issuer's own table);
        ``system``: the process's ntdll numbering, also used by code in no registered range."""
        self.syscall_dispatcher.register_table(begin, end, table, system=system)

    # ------------------------------------------------------------------ calls
    def call(
        self,
        target: int | str,
        *args: int,
        convention: str | None = None,
        max_instructions: int | None = None,
        time_limit: float | None = None,
        stop_on_first_chance: bool | None = None,
    ) -> int:
        """Call emulated code at ``target`` (address or ``"module!Export"``) and return
        rax/eax. Raises EmulationError on a fault, a runaway loop (``max_instructions``,
        default ``proc.instruction_budget``; ``time_limit`` seconds, default
        ``proc.time_limit``) or an unbalanced stack.

        In a process with an exception dispatcher (``exception_dispatcher``: a program's
        ntdll) a fault is first dispatched to the program's handlers, as Windows does; only an
        exception nothing handles (its second chance) ends the call, reporting the original
        fault. ``stop_on_first_chance`` (default ``proc.stop_on_first_chance``) ends the call
        at the fault itself instead, as a debugger stops there."""
        cpu = self.cpu
        if cpu._running:
            # Unicorn cannot nest emu_start, and the frame would land on the live one
            raise EmulationError(
                Fault(
                    "proc.call is not re-entrant",
                    pc=cpu.pc,
                    detail="a Python callback or breakpoint cannot call into emulated code; "
                    "change registers/memory or use ctx.skip() instead",
                )
            )
        addr = self.resolve(target) if isinstance(target, str) else target
        layout = self._call_layouts.get((convention, len(args)))
        if layout is None:
            layout = self._call_layout(convention, len(args))
        data = self._gate_data
        try:  # (the slots are unsigned pointers: anything else does not pack)
            layout.pack(data, 0, 0, 0, addr, *args)
        except struct.error:  # negative, or wider than a pointer
            mask = self.arch.ptr_mask
            bad = next((a for a in args if a > mask or a < ~(mask >> 1)), None)
            if bad is not None:
                # the register or stack slot would silently keep only the low bits (issue 20,
                # D8); a negative value is its two's complement, as C passes it
                raise ValueError(
                    f"argument {args.index(bad) + 1} of the call to {target!r} is {bad:#x}: it "
                    f"does not fit a {8 * self.arch.ptr_size}-bit register or stack slot "
                    f"({self.arch.name})"
                ) from None
            self.call_gate.prepare_masked(layout, addr, args)
        if max_instructions is None:
            max_instructions = self.instruction_budget
        self.breakpoint_stop = None
        if stop_on_first_chance is None:
            stop_on_first_chance = self.stop_on_first_chance
        self._first_chance_stops = stop_on_first_chance
        if cpu._incident or cpu.state_dirty:
            cpu.state_dirty = False
            self._reset_user_state()
        # the gate's stub and tail run a few instructions of their own: the budget is the callee's
        budget = max_instructions + layout.overhead if max_instructions else 0
        cpu.run(
            layout.stub,
            self._gate_sentinel,
            budget,
            self.time_limit if time_limit is None else time_limit,
        )
        if cpu._incident and cpu.fault is not None and not stop_on_first_chance:
            self._dispatch_faults(budget)  # a no-op without a dispatcher
        ret, sp_after = layout.unpack(data, 0)  # sp 0: the callee never returned
        if sp_after == layout.expected_sp and not cpu._incident and not self.run_observers:
            return ret
        return self._call_ended(addr, args, layout, ret, sp_after, max_instructions, time_limit)

    def _dispatch_faults(self, budget: int) -> None:
        """Hand each fault of the run to the program's exception dispatcher and run on, until
        the call returns or stops for another reason. The wall-clock limit covers the whole
        call; the instruction budget applies to each stretch between two faults."""
        cpu = self.cpu
        if self.exception_dispatcher is None:
            return
        deadline = cpu._deadline  # the call's, set when its first run started (0: no limit)
        while cpu.fault is not None and self._deliver_fault(cpu.fault):
            remaining = max(deadline - time.monotonic(), 1e-6) if deadline else 0.0
            cpu.run(self.exception_dispatcher, self.call_gate.sentinel, budget, remaining)

    def _deliver_fault(self, fault: Fault) -> bool:
        """The fault as its exception on the current thread's stack, the CPU at the dispatcher;
        False when it is not an exception (a budget, a heapemu stop) or cannot be delivered."""
        event = event_for_fault(fault)
        checks = self.call_gate.checks
        if event is None or self.exception_dispatcher is None or checks[0] <= fault.pc < checks[1]:
            # (a fault in the gate's checks is heapemu's: the callee returned with state the
            # next call resets, not the program's exception)
            return False
        cpu = self.cpu
        cpu.pc = fault.pc  # a trap (int3) stopped past its instruction; Windows reports it
        event.state = cpu.state(fault.pc)
        if not deliver(self, record_bytes(self, event), capture_context(self), event=event):
            cpu.fault = self.end_undelivered(event, fault)
            return False
        self.exceptions.append(event)
        return True

    def end_undelivered(self, event: ExceptionEvent, fault: Fault) -> Fault:
        """The kernel found no room on the stack for ``event``'s frame: as Windows'
        KiDispatchException, the second chance, which ends the process with the exception
        code (no debugger, no handler can run). Returns the report to end the run with."""
        chain = " -> ".join(e.describe() for e in self.exceptions[-8:]) or "none"
        detail = f"{fault.detail}; " if fault.detail else ""
        event.first_chance = False
        event.report = replace(
            fault,
            kind=f"unhandled exception: {fault.kind}",
            status=event.code,
            detail=f"{detail}not dispatched: no room on the stack for the exception frame; "
            f"the process ends with its code; before it: {chain}",
            dispatched=True,
        )
        self.unhandled_exception = event  # not in self.exceptions: never dispatched
        self.exit_status = event.code
        return event.report

    def _call_layout(self, convention: str | None, argc: int) -> Layout:
        conv = get_convention(self.arch, convention)
        layout = self._call_layouts[(convention, argc)] = self.call_gate.layout(conv, argc)
        return layout

    def _call_ended(
        self,
        addr: int,
        args: tuple[int, ...],
        layout: Layout,
        ret: int,
        sp_after: int,
        budget: int | None,
        time_limit: float | None,
    ) -> int:
        """The rest of ``call`` when something happened: observers, faults, stops, budget,
        time limit, an unbalanced stack."""
        cpu = self.cpu
        checks = self.call_gate.checks
        if sp_after and cpu.fault is not None and checks[0] <= cpu.fault.pc < checks[1]:
            # the callee returned, leaving segments or flags the gate's checks refuse: the
            # next call puts the process's state back first
            cpu.fault = None
            cpu.state_dirty = True
        completed = sp_after != 0 and cpu.fault is None and not cpu.stop_reason
        for observer in self.run_observers:
            observer(completed)
        if not completed:
            for stopped in self.stop_observers:
                stopped()
            limit = self.time_limit if time_limit is None else time_limit
            error = self._run_error(addr, args, budget, limit)
            # the next call puts back the whole user state (segments.user_state): a trap flag
            # (or DF) left by the code that stopped (NtContinue of a random CONTEXT) would
            # wedge every later call on a single step in the gate (tests/test_syscall_fuzz.py)
            cpu.state_dirty = True
            raise error
        if sp_after != layout.expected_sp:
            conv = layout.convention
            raise EmulationError(
                Fault(
                    "stack imbalance",
                    pc=self.call_gate.return_address,
                    detail=f"{conv.name} call to {self.symbolize(addr)} with {len(args)} "
                    f"arguments returned with {self.arch.sp} off by "
                    f"{sp_after - layout.expected_sp:+d} bytes",
                )
            )
        return ret

    def _run_error(
        self,
        addr: int,
        args: tuple[int, ...],
        budget: int | None,
        limit: float | None,
        *,
        context: str | None = None,
    ) -> EmulationError:
        cpu = self.cpu
        fault = cpu.fault
        if fault is None:
            pc = cpu.pc
            reason = cpu.why_stopped(budget or 0)
            if reason == "timeout":
                fault = Fault("wall-clock limit exceeded", pc=pc, detail=f"limit {limit} s")
            elif reason == "budget":
                fault = Fault("instruction budget exhausted", pc=pc, detail=f"budget {budget}")
            elif reason == "stopped":
                fault = Fault("emulation stopped before returning", pc=pc)
            else:
                fault = Fault(reason, pc=pc)
        state = cpu.state(fault.pc)
        # as Windows' CONTEXT does for a breakpoint trap, pc is the faulting instruction
        state.registers[self.arch.pc] = fault.pc
        unhandled = self.unhandled_exception
        if unhandled is not None and unhandled.report is fault and unhandled.state is not None:
            state = unhandled.state  # the second chance reports where the exception happened
        if self.breakpoint_stop is not None:
            self.breakpoint_stop = None
            where = context or f"in call to {self.symbolize(addr)}"
            return BreakpointStop(fault, state, context=where)
        if fault.status == NtStatus.STACK_OVERFLOW and self.threads.current is self.threads.main:
            self.thread_stack.reset()  # the thread's stack is usable again for the next call
            self.thread_stack.write_teb(self.teb)
        if context is None:
            context = f"in call to {self.symbolize(addr)}({', '.join(hex(a) for a in args)})"
        return EmulationError(fault, state, context=context)

    # ------------------------------------------------------------------ Python callbacks
    def register_callback(
        self,
        fn: Callable[..., int | None],
        argc: int,
        *,
        name: str = "",
        convention: str | None = None,
    ) -> int:
        """Make ``fn(proc, *args)`` callable from emulated code; returns its address.

        The stub pops the return address (and, for callee-pops conventions, the arguments) and
        returns ``fn``'s result in rax/eax. Exceptions raised by ``fn`` stop emulation and
        propagate out of ``proc.call``."""
        addr = self._trap_next
        if addr + _CALLBACK_STUB > self.trap_base + _SCRATCH:
            raise EmulationError(Fault(f"too many Python callbacks ({MAX_CALLBACKS:,} maximum)"))
        while addr + _CALLBACK_STUB > self.trap_base + self._trap_committed:
            page = self.trap_base + self._trap_committed
            self.memory.allocate(page, PAGE_SIZE, MEM_COMMIT, PAGE_EXECUTE_READ)
            self.cpu.write(page, b"\xcc" * PAGE_SIZE)
            self._trap_committed += PAGE_SIZE
        self._trap_next += _CALLBACK_STUB
        conv = get_convention(self.arch, convention)
        self.callbacks[addr] = Callback(name or f"callback_{addr:x}", fn, argc, conv, addr)
        return addr

    def add_trap_code(self, code: bytes, name: str) -> int:
        """Place a few bytes of our own machine code in the trap page; returns their address."""
        addr = self._trap_code_next
        if addr + len(code) > self.trap_base + _CALLBACKS:
            raise EmulationError(Fault("no room left for trap code"))
        self.cpu.write(addr, code)
        self._trap_code_next = (addr + len(code) + 15) & ~15
        self.trap_names[addr] = name
        return addr

    def _on_callback(self, address: int, size: int) -> None:
        cb = self.callbacks.get(address)
        if cb is None:
            return  # an int3 filler byte: it will fault as a breakpoint
        cpu, arch = self.cpu, self.arch
        sp = cpu.sp
        regs, _stack = cb.convention.split(tuple(range(cb.argc)))
        args = [cpu.reg(r) for r in cb.convention.reg_args[: len(regs)]]
        for i in range(len(regs), cb.argc):
            args.append(self.read_ptr(cb.convention.stack_arg_address(arch, sp, i)))
        result = cb.fn(self, *args)
        ret_addr = self.read_ptr(sp)
        cpu.set_reg_by_id(cpu.reg_ids[arch.ret], (result or 0) & arch.ptr_mask)
        cpu.sp = sp + arch.ptr_size + cb.convention.popped_bytes(arch, cb.argc)
        cpu.pc = ret_addr

    # ------------------------------------------------------------------ kernel entry
    def _x64_args(self, regs: tuple[int, ...], sp: int) -> Callable[[int], list[int]]:
        """The first ``n`` arguments of an x64 system call: ``regs`` (r10, rdx, r8, r9, as
        read at the entry), then the stack from [rsp+0x28] (one memory read)."""

        def args(n: int) -> list[int]:
            if n <= 4:
                return list(regs[:n])
            addr, size = sp + 0x28, 8 * (n - 4)
            if self.memory.plain_access(addr, size, write=False):  # the stack: no probe
                raw = self.cpu.read(addr, size)
            else:
                raw = self.read(addr, size)
            return [*regs, *struct.unpack(f"<{n - 4}Q", raw)]

        return args

    def _on_syscall(self) -> None:
        # Unicorn calls this hook with rip on the `syscall` and steps past it afterwards
        rax, rip, rsp, *regs = self._syscall_entry()
        self._serve_syscall(rax & 0xFFFFFFFF, rip, self._x64_args(tuple(regs), rsp))

    def _x86_args_at(self, base: int) -> Callable[[int], list[int]]:
        """The first ``n`` arguments of an x86 system call: the DWORD array at ``base``, read
        at once."""

        def args(n: int) -> list[int]:
            return list(struct.unpack(f"<{n}I", self.read(base, 4 * n))) if n > 0 else []

        return args

    def _on_interrupt(self, intno: int) -> None:
        cpu = self.cpu
        if intno == 0x2E and self.arch.ptr_size == 4:
            # NT's int 0x2e path: eax = service number, edx -> the arguments; the hook sees
            # eip past `int 0x2e` (CD 2E)
            eax, eip, edx = self._syscall_entry()
            self._serve_syscall(eax & 0xFFFFFFFF, eip - 2, self._x86_args_at(edx & 0xFFFFFFFF))
            return
        if intno == 0x29:
            self._fast_fail()
            return
        if intno >= 0x20 and intno not in _USER_GATES:
            # `int n` through a gate user mode may not use (DPL 0) is a #GP at the int, which
            # Windows raises as STATUS_ACCESS_VIOLATION without an address (parameter -1)
            cpu.raise_fault(
                Fault(
                    f"general protection fault (int 0x{intno:x})",
                    pc=cpu.pc - 2,  # past `int imm8` (CD ib) when the hook runs
                    status=NtStatus.ACCESS_VIOLATION,
                    detail=f"interrupt gate 0x{intno:x} is not open to user mode",
                )
            )
            return
        cpu.raise_fault(cpu.cpu_exception_fault(intno))

    def _fast_fail(self) -> None:
        """``int 0x29`` (__fastfail(code), the code in ecx): Windows' KiRaiseSecurityCheckFailure
        raises STATUS_STACK_BUFFER_OVERRUN, non-continuable, with the code as its first
        parameter, and no handler of the process sees it: the process ends with that status
        (MSDN, __fastfail: "no exception handlers are invoked")."""
        cpu = self.cpu
        pc = cpu.pc - 2  # the hook sees pc past `int 0x29` (CD 29); Windows reports the int
        code = cpu.reg("ecx")
        fault = Fault(
            "fast fail (int 0x29)",
            pc=pc,
            status=NtStatus.STACK_BUFFER_OVERRUN,
            detail=f"__fastfail({code}): the process ends, no handler runs",
            dispatched=True,
        )
        event = ExceptionEvent(
            NtStatus.STACK_BUFFER_OVERRUN, pc, (code,), flags=EXCEPTION_NONCONTINUABLE,
            first_chance=False, fault=fault, state=cpu.state(pc), report=fault,
        )  # fmt: skip
        self.exceptions.append(event)
        self.unhandled_exception = event
        self.exit_status = NtStatus.STACK_BUFFER_OVERRUN
        cpu.raise_fault(fault)

    def _on_sysenter(self) -> None:
        # KiFastSystemCall: `mov edx, esp; sysenter`; the arguments start above the two return
        # addresses (stub's caller and KiFastSystemCall's caller). Unicorn calls this hook with
        # eip on the instruction and then steps past it, as KiFastSystemCallRet would resume.
        eax, eip, edx = self._syscall_entry()
        self._serve_syscall(eax & 0xFFFFFFFF, eip, self._x86_args_at((edx & 0xFFFFFFFF) + 8))

    def _serve_syscall(self, number: int, pc: int, args: Callable[[int], list[int]]) -> None:
        observers = self.syscall_observers
        recorded = len(self.syscalls) if observers else 0
        try:
            status = self.syscall_dispatcher.dispatch(number, pc, args)
        except NtStatusError as e:  # strict mode: unknown system call
            self.cpu.raise_fault(
                Fault("unknown system call", pc=pc, status=e.status, detail=str(e))
            )
            return
        except EmulationError:
            # the arguments themselves are unreadable (x64 stack arguments, x86 edx array):
            # the kernel's probe fails and the caller gets STATUS_ACCESS_VIOLATION
            status = NtStatus.ACCESS_VIOLATION
        self.shared_clock.publish(self.threads.clock())  # 1 ms more, or a sleep's worth
        self.cpu.set_reg_by_id(self._ret_id, status)
        if observers and len(self.syscalls) > recorded:
            last = self.syscalls.last
            if last is not None:
                for observer in observers:
                    observer(last)

    def publish_clock(self) -> None:
        """KUSER_SHARED_DATA's clocks show the kernel's clock now (emu.nt.shared_data)."""
        self.shared_clock.publish(self.threads.clock())

    def _on_port_io(self, port: int, size: int, pc: int) -> None:
        cpu = self.cpu
        cpu.raise_fault_in_instruction(
            Fault(
                "privileged instruction",
                pc=pc,
                status=NtStatus.PRIVILEGED_INSTRUCTION,
                detail=f"port I/O ({size} byte(s) at port 0x{port:x}) in user mode",
            )
        )

    def _on_rdtsc(self) -> int:
        """The time-stamp counter: the kernel's deterministic clock (boot an hour ago, 1 ms per
        system call, the scheduler's quanta and sleeps: Scheduler.clock) at TSC_HZ, and at
        least TSC_PER_READ past the last read, so it never stands still or goes back; the same
        run reads the same values."""
        clock = (UPTIME_MS * 10_000 + self.threads.clock()) * (TSC_HZ // 10_000_000)
        self._tsc = max(clock, self._tsc + TSC_PER_READ)
        return self._tsc

    def _on_page_fault(self, page: int, access: str) -> int | Fault | None:
        """The CPU's TLB missed on ``page``: the protection to translate it with (None when
        not committed). A guard page is one-shot, as on Windows; the stack's guard page grows
        the stack instead. Pages the memory manager watches for a first write (copy-on-write,
        write watch) translate read-only until that write, which it then records."""
        state, narrow = self.memory.fault_protections(page)
        if not state:
            return None  # free or reserved
        if state & PAGE_GUARD:
            # the stack grows only within the running thread's stack as its TEB names it;
            # anywhere else it is a guard page violation
            on_stack, fault = touch_guard(self, page)
            if on_stack:
                return self.memory.page_state(page) if fault is None else fault
            self.memory.clear_guard(page)
            return Fault("guard page violation", status=NtStatus.GUARD_PAGE_VIOLATION)
        if access == "write" and narrow != state & 0xFF and self.memory.on_write_fault(page):
            return self.memory.page_state(page)  # what Windows shows after the first write
        return narrow

    # ------------------------------------------------------------------ snapshots
    @property
    def current_stack(self) -> ThreadStack:
        """The stack of the thread that runs now (the main thread's outside threaded runs)."""
        stack = self.threads.current.stack
        return self.thread_stack if stack is None else stack

    def run_threads(
        self,
        *,
        time_limit: float | None = None,
        max_instructions: int | None = None,
        stop_on_first_chance: bool | None = None,
    ) -> None:
        """Run every thread from where it is until the process ends (``emu.process.threads``):
        how a program runs. A fault goes to the program's exception dispatcher on the thread
        that faulted, unless ``stop_on_first_chance`` (default ``proc.stop_on_first_chance``).
        Raises EmulationError when it does not end."""
        if stop_on_first_chance is None:
            stop_on_first_chance = self.stop_on_first_chance
        self._first_chance_stops = stop_on_first_chance
        run_threads(self, time_limit=time_limit, max_instructions=max_instructions)

    def snapshot(self) -> Snapshot:
        """The whole process now: registers, memory, handles, heaps (``emu.process.snapshot``);
        ``proc.restore(snapshot)`` puts it back, as often as wanted. Between calls only."""
        return take_snapshot(self)

    def restore(self, snapshot: Snapshot) -> None:
        """Put the process back as ``snapshot`` saw it (observers stay as they are)."""
        restore_snapshot(self, snapshot)

    # ------------------------------------------------------------------ misc
    def __repr__(self) -> str:
        return f"<Process {self.arch.name} teb=0x{self.teb:x} peb=0x{self.peb:x}>"

    def create_process_heap(self, module: Module) -> int:
        """RtlCreateHeap(HEAP_GROWABLE) from ``module`` recorded as PEB.ProcessHeap: on Windows
        the process heap exists before any user code runs."""
        heap = self.call(module.exports["RtlCreateHeap"], HEAP_GROWABLE, 0, 0, 0, 0, 0)
        if not heap:
            raise EmulationError(
                Fault(f"{module.name}: RtlCreateHeap for the process heap returned NULL")
            )
        self.set_process_heap(heap)
        return heap

    def set_process_heap(self, heap: int) -> None:
        """Record ``heap`` as PEB.ProcessHeap (the heap Windows creates before user code)."""
        PEB.write(self, self.arch, self.peb, "ProcessHeap", heap)

    @property
    def process_heaps(self) -> list[int]:
        """PEB.ProcessHeaps[0:NumberOfHeaps]."""
        n = PEB.read(self, self.arch, self.peb, "NumberOfHeaps")
        arr = PEB.read(self, self.arch, self.peb, "ProcessHeaps")
        return [self.read_ptr(arr + i * self.arch.ptr_size) for i in range(min(n, 1024))]
