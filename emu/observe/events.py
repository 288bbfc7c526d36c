"""Allocation events: every call into a watched allocator entry point, as it happens.

One block hook (the CPU's ``BlockCounter``) does all the work while a recorder is active.
Function entries and return addresses always start a translation block (they are jump targets),
so it sees: an entry point being reached (an event opens: arguments read by the architecture's
convention, caller, entry stack pointer), the return address of an open event being reached
with the stack popped past the entry (it closes: return value, optional convention checks), and
every block in between (instruction and block counts; each block's instruction count is found
once with capstone and cached). With the native fast path the counter is C: at entries, at the
return addresses they leave and at the call gate's tail it appends the registers and stack
this module needs to a log, and Python reads the log in batches (when it is full, at a thread
switch, when the events are read, at a system call, when a run stops short): recording a call
that completes costs no Python. An event's counts are the difference of the global counters
between its entry and its return. System calls made while an event is open are attached to it.
Nested calls nest. No per-call hook is added or removed (that flushes Unicorn's translation
cache).
"""

from __future__ import annotations

import ctypes
import gc
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from emu.cpu.cpu import BlockCounter
from emu.cpu.native import RECORD_KEPT
from emu.nt.kernel import SyscallRecord
from emu.observe.stackwalk import Frame, StackWalker
from emu.win.conventions import get_convention
from emu.win.ntdefs import MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE
from emu.win.prototypes import DEFAULT_WATCHED, Prototype, prototype_for

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

_XMM = tuple(f"xmm{i}" for i in range(6, 16))  # callee-saved on x64
DF = 1 << 10  # EFLAGS.DF


@dataclass(slots=True)
class AllocationEvent:
    """One call of a watched function."""

    seq: int
    function: str  # "ntdll!RtlAllocateHeap"
    address: int
    args: dict[str, int]
    return_address: int
    caller: str
    depth: int
    entry_sp: int
    start: int  # instructions executed by the process before the call (a deterministic clock)
    ret: int | None = None
    end: int | None = None
    instructions: int = 0
    blocks: int = 0
    syscalls: list[SyscallRecord] = field(default_factory=list)
    syscall_times: list[int] = field(default_factory=list)  # instruction clock at each
    children: list[AllocationEvent] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    stack: list[Frame] = field(default_factory=list)  # the allocating call stack (stacks=N)
    finished: bool = False
    prototype: Prototype | None = field(default=None, repr=False)
    _saved: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _opened(
        cls,
        seq: int,
        function: str,
        address: int,
        args: dict[str, int],
        return_address: int,
        caller: str,
        depth: int,
        entry_sp: int,
        start: int,
        prototype: Prototype,
        saved: dict[str, Any],
    ) -> AllocationEvent:
        """An event at its entry, as the recorder makes thousands of them: the fields set
        directly (the dataclass's __init__, with its six default factories and keyword
        handling, costs twice as much)."""
        ev = cls.__new__(cls)
        ev.seq, ev.function, ev.address, ev.args = seq, function, address, args
        ev.return_address, ev.caller, ev.depth = return_address, caller, depth
        ev.entry_sp, ev.start, ev.prototype, ev._saved = entry_sp, start, prototype, saved
        ev.ret = ev.end = None
        ev.instructions = ev.blocks = 0
        ev.syscalls, ev.syscall_times, ev.children, ev.violations, ev.stack = [], [], [], [], []
        ev.finished = False
        return ev

    @property
    def name(self) -> str:
        return self.function.split("!")[-1]

    @property
    def committed(self) -> list[tuple[int, int]]:
        """(base, size) of the pages the call committed."""
        return [
            (r.details["base"], r.details["size"])
            for r in self.syscalls
            if r.name == "NtAllocateVirtualMemory"
            and r.status == 0
            and r.details["type"] & MEM_COMMIT
        ]

    @property
    def released(self) -> list[tuple[int, int, str]]:
        """(base, size, "decommit"|"release") of the pages the call gave back."""
        out = []
        for r in self.syscalls:
            if r.name == "NtFreeVirtualMemory" and r.status == 0:
                kind = {MEM_DECOMMIT: "decommit", MEM_RELEASE: "release"}.get(
                    r.details["type"], "?"
                )
                out.append((r.details["base"], r.details["size"], kind))
        return out

    def describe_args(self) -> str:
        p = self.prototype
        return ", ".join(f"{k}={p.show(k, v) if p else hex(v)}" for k, v in self.args.items())

    def walk(self) -> Iterator[AllocationEvent]:
        """This event and all nested ones, in call order."""
        yield self
        for c in self.children:
            yield from c.walk()

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "function": self.function,
            "address": self.address,
            "args": self.args,
            "flags": self.prototype.show("Flags", self.args["Flags"])
            if self.prototype and "Flags" in self.args
            else None,
            "ret": self.ret,
            "finished": self.finished,
            "instructions": self.instructions,
            "blocks": self.blocks,
            "caller": self.caller,
            "return_address": self.return_address,
            "depth": self.depth,
            "start": self.start,
            "end": self.end,
            "syscalls": [
                {
                    "seq": r.seq,
                    "name": r.name,
                    "status": r.status,
                    "args": r.args,
                    "details": {k: v for k, v in r.details.items() if isinstance(v, int | str)},
                }
                for r in self.syscalls
            ],
            "committed": self.committed,
            "released": self.released,
            "violations": self.violations,
            "children": [c.seq for c in self.children],
            "stack": [{"pc": f.pc, "symbol": f.symbol} for f in self.stack],
        }


class EventRecorder:
    """Records AllocationEvents for the watched entry points while installed."""

    def __init__(
        self,
        proc: ProcessCore,
        functions: Iterable[str | int] | None = None,
        *,
        check_conventions: bool = False,
        cdecl: Iterable[str] = (),
        argc: dict[str, int] | None = None,
        stacks: int = 0,
    ):
        self.proc = proc
        self.check_conventions = check_conventions
        self.cdecl = {c.split("!")[-1] for c in cdecl}  # x86 functions whose caller pops
        self.watched: dict[int, tuple[str, Prototype]] = {}
        self.stacks = stacks  # frames of the call stack kept per event (0: none)
        self._walker = StackWalker(proc) if stacks > 0 else None
        counts, used = dict(argc or {}), set[str]()
        for target in self._targets(functions):
            addr = proc.resolve(target) if isinstance(target, str) else int(target)
            name = proc.symbolize(addr)
            n = _argc_for(counts, used, name, target)
            self.watched[addr] = (name, prototype_for(name, n))
        unknown = [k for k in counts if k not in used]
        if unknown:  # a key that names nothing watched would be silently ignored
            watched = ", ".join(sorted(n for n, _ in self.watched.values()))
            raise ValueError(
                f"argc: {', '.join(map(repr, unknown))} is not a watched function "
                f"(watched: {watched}; write 'Function' or 'module!Function')"
            )
        self._events: list[AllocationEvent] = []  # top-level events
        self._all: list[AllocationEvent] = []  # every event, in call order
        self._violations: list[tuple[AllocationEvent, str]] = []
        # the counter's logs not read yet, with the thread that ran them: read (made into
        # events) when the events are read, at a system call, or when a run stops
        self._pending: list[tuple[int, bytes]] = []
        # the calls under way, innermost last, per thread (threads interleave their calls)
        self._opens: dict[int, list[AllocationEvent]] = {}
        self._returns: dict[int, int] = {}  # return address -> open events waiting there
        self._conv = conv = get_convention(proc.arch, None)
        arch = proc.arch
        # what the counter logs at entries and returns: stack pointer, return value, the
        # register arguments and, for the convention checks, every callee-saved register;
        # and the stack above the stack pointer (return address, stack arguments, the
        # caller's frame)
        capture = (arch.sp, arch.ret, *conv.reg_args)
        # EFLAGS, read as a number (the record field at _eflags_field), then the callee-saved
        # registers as bytes: compared whole, before and after the call
        self._eflags_field = 4 + len(capture)
        if check_conventions:
            capture += ("eflags",)
        self._saved_slot = len(capture)
        if check_conventions:
            capture += (*arch.nonvolatile, *(_XMM if arch.ptr_size == 8 else ()))
        self._x64 = arch.ptr_size == 8
        frame = 0x80 if check_conventions else self._args_frame_size()
        # a stack walk needs the CPU as it is at the entry: records one at a time, read at once
        self._counter = BlockCounter(
            proc.cpu,
            self._on_records if self._walker is None else self._on_record_now,
            capture,
            frame,
            batch=self._walker is None,
        )
        self._record = struct.Struct(self._counter.record_format(self._saved_slot))
        # entry -> (bytes its return pops beyond the return address, the caller's frame
        # window offset on x64): what the native hook and _kept_convention compare
        self._promised: dict[int, tuple[int, int]] = {}
        for address, (name, proto) in self.watched.items():
            if check_conventions:  # the native hook compares each return with its entry
                pops, window = self._promised[address] = self._promises(name, proto)
                self._counter.special.add_entry(address, pops, window)
            else:
                self._counter.special.add_entry(address)
        if check_conventions:
            self._counter.compare_returns(
                self._saved_slot, len(capture), self._saved_slot - 1, DF, 0x40 if self._x64 else 0
            )
        # where every proc.call returns: the calls it left open end there (_abandon), so a
        # call that completes needs no Python at its end
        self._boundary = proc.call_gate.return_address
        self._counter.special.add(self._boundary)
        self._started = False
        self._frame_buf = ctypes.create_string_buffer(0x80)
        self._callers: dict[int, str] = {}  # return address -> symbol (symbolizing is slow)
        self._unpack_ptr = proc.arch.unpack_ptr
        self._plans: dict[int, _Plan] = {}
        self._ret_masks: dict[int, int] = {}

    # the counter logs entries and returns in batches, read when the events are: what is
    # read is made current first
    @property
    def events(self) -> list[AllocationEvent]:
        """The top-level events (nested calls are their ``children``)."""
        self._read_logs()
        return self._events

    @property
    def all(self) -> list[AllocationEvent]:
        """Every event, in call order."""
        self._read_logs()
        return self._all

    @property
    def violations(self) -> list[tuple[AllocationEvent, str]]:
        """(event, problem) for every convention violation found."""
        self._read_logs()
        return self._violations

    def _promises(self, name: str, proto: Prototype) -> tuple[int, int]:
        """What a watched function's convention promises its return leaves, for the native
        comparison: the bytes it pops beyond the return address and where the caller's frame
        that must not change starts above the entry stack pointer (x64; 0 on x86)."""
        n = len(proto.params)
        if self._x64:
            return 0, 0x28 + 8 * (n - 4) if n > 4 else 0x28
        if self.cdecl and name.split("!")[-1] in self.cdecl:
            return 0, 0
        return 4 * n, 0  # stdcall: the callee pops

    def _args_frame_size(self) -> int:
        """Stack bytes from the entry stack pointer that hold the return address and every
        watched function's stack arguments (at most 0x80: more are read when needed)."""
        arch, conv = self.proc.arch, self._conv
        size = arch.ptr_size
        for _, proto in self.watched.values():
            n = len(proto.params)
            if n > len(conv.reg_args):
                last = conv.stack_arg_address(arch, 0, n - 1) + arch.ptr_size
                size = max(size, last)
        return min((size + 7) & ~7, 0x80)  # the counter logs whole 8-byte words

    def _targets(self, functions: Iterable[str | int] | None) -> list[str | int]:
        if functions is not None:
            return list(functions)
        out: list[str | int] = []
        for mod in self.proc.modules:
            # an entry point rewritten into a jump to another allocator is watched there
            out += [
                f"{mod.short_name}!{n}"
                for n in DEFAULT_WATCHED
                if n in mod.exports and mod.exports[n] not in self.proc.routed_entries
            ]
        if not out:
            raise ValueError("no module exporting the Rtl* heap functions is loaded; name them")
        return out

    # ------------------------------------------------------------------ install
    def start(self) -> EventRecorder:
        if not self._started:
            self._counter.start()
            self._started = True
            self.proc.syscall_observers.append(self._on_syscall)
            self.proc.stop_observers.append(self._on_stop)
            self.proc.switch_observers.append(self._counter.flush)  # (with its thread)
        return self

    def stop(self) -> None:
        if self._started:
            self._counter.stop()
            self._started = False
            self.proc.syscall_observers.remove(self._on_syscall)
            self.proc.stop_observers.remove(self._on_stop)
            self.proc.switch_observers.remove(self._counter.flush)

    @property
    def instructions(self) -> int:
        """Instructions run while recording (the events' clock)."""
        return self._counter.instructions

    @property
    def blocks(self) -> int:
        return self._counter.blocks

    def __enter__(self) -> EventRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the counter's logs
    def _on_records(self, raw: bytes) -> None:
        """A full log (or the log at a thread switch): kept, with the thread that ran it."""
        self._pending.append((self.proc.threads.current.tid, raw))

    def _on_record_now(self, raw: bytes) -> None:
        self._on_records(raw)
        self._read_logs()

    def _read_logs(self) -> None:
        """Every record logged so far, in the order their blocks ran: each starts at a watched
        entry point, at a return address one of them left, or at the call gate's tail."""
        self._counter.flush()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        watched, returns, boundary = self.watched, self._returns, self._boundary
        masks, check, leave = self._ret_masks, self.check_conventions, self._leave
        with _collector_paused():
            for tid, raw in pending:
                opened = self._opens.get(tid)
                if opened is None:
                    opened = self._opens[tid] = []
                for r in self._record.iter_unpack(raw):
                    address = r[0]
                    if address in returns:
                        # the common case inline (as _maybe_return's first branch): the
                        # innermost call returns here, alone, its return address popped
                        ev = opened[-1] if opened else None
                        if (
                            ev is not None
                            and ev.return_address == address
                            and r[4] > ev.entry_sp
                            and (len(opened) == 1 or opened[-2].return_address != address)
                        ):
                            opened.pop()
                            left = returns[address] - 1
                            if left:
                                returns[address] = left
                            else:
                                del returns[address]
                            end = ev.end = r[1]
                            ev.instructions = end - ev.start
                            ev.blocks = r[2] - ev._saved["blocks"]
                            if check and not (r[3] & RECORD_KEPT or self._kept_convention(ev, r)):
                                leave(ev, r)  # the full check: it names the problems
                            else:
                                ev.ret = r[5] & masks[ev.address]
                                ev.finished = True
                                if check:
                                    del ev._saved["entry"]
                        else:
                            self._maybe_return(r, opened)
                    if address in watched:
                        self._enter(r, opened)
                    elif address == boundary and opened:
                        self._abandon(r, opened)

    def _on_syscall(self, record: SyscallRecord) -> None:
        self._read_logs()  # the calls open now
        opened = self._opens.get(self.proc.threads.current.tid)
        if opened:
            now = self.instructions
            for ev in opened:
                ev.syscalls.append(record)
                ev.syscall_times.append(now)

    def _abandon(self, r: tuple[Any, ...], opened: list[AllocationEvent]) -> None:
        """A proc.call returned to the call gate's tail (``r``): the calls it made that are
        still open (below its stack pointer) never returned (a longjmp, an exception
        handler that resumed further up)."""
        while opened and opened[-1].entry_sp < r[4]:
            ev = opened.pop()
            self._forget_return(ev.return_address)
            self._finish_counts(ev, r[1], r[2])

    def _on_stop(self) -> None:
        # a run that returned to the call gate needs nothing here: its calls closed at their
        # returns or at the gate's tail (_abandon); a fault, a stop or the end of the threads
        # left calls open: they never returned
        self._read_logs()
        if any(self._opens.values()):
            now, blocks = self.instructions, self.blocks
            for opened in self._opens.values():
                while opened:
                    self._finish_counts(opened.pop(), now, blocks)
        self._returns.clear()

    # ------------------------------------------------------------------ entry and return
    def _plan(self, address: int) -> _Plan:
        """How to read a watched function's arguments at entry (found once per function):
        name, prototype, where its register arguments end in the record (they start at
        r[6], after the stack pointer and the return value), the frame's layout from the entry
        stack pointer (the return address, then its stack arguments: one unpack), and the
        stack arguments' offset and format to read them from memory when the logged frame
        does not hold them."""
        plan = self._plans.get(address)
        if plan is None:
            arch, conv = self.proc.arch, self._conv
            name, proto = self.watched[address]
            nargs = len(proto.params)
            nreg = min(nargs, len(conv.reg_args))
            nstack = nargs - nreg
            first = conv.stack_arg_address(arch, 0, nreg)
            ptr = "Q" if arch.ptr_size == 8 else "I"
            fmt = "<" + ptr * nstack
            layout = "<" + ptr + (f"{first - arch.ptr_size}x" + ptr * nstack if nstack else "")
            frame = struct.Struct(layout)
            plan = _Plan(name, proto, 6 + nreg, frame, first, fmt if nstack else "")
            self._plans[address] = plan
            # what of the return register the result is (BOOLEAN: al; NTSTATUS: eax)
            mask = {"bool": 0xFF, "status": 0xFFFFFFFF}.get(proto.returns, arch.ptr_mask)
            self._ret_masks[address] = mask & arch.ptr_mask
        return plan

    def _enter(self, r: tuple[Any, ...], opened: list[AllocationEvent]) -> None:
        """A record at a watched entry: (address, instructions, blocks, frame_ok, the
        registers from r[4] — sp, return value, register arguments —,
        [the callee-saved registers' bytes], the frame's bytes)."""
        address, sp = r[0], r[4]
        if opened and opened[-1].address == address and opened[-1].entry_sp == sp:
            # the same entry again: a run stopped by its instruction count right there (after
            # the block hook) and resumed there; a real recursive call has a lower sp
            return
        name, proto, reg_end, frame_layout, first, fmt = self._plans.get(address) or self._plan(
            address
        )
        frame = r[-1] if r[3] else b""
        if frame and frame_layout.size <= len(frame):  # return address, stack arguments logged
            got = frame_layout.unpack_from(frame)
            ret_addr = got[0]
            values = r[6:reg_end] + got[1:]
        else:
            proc = self.proc
            if frame:
                ret_addr = self._unpack_ptr(frame)
            else:  # the counter could not read it: the call's end is not logged either
                ret_addr = proc.read_ptr(sp)
                self._counter.special.add(ret_addr)
            values = r[6:reg_end]
            if fmt:  # read now: stack arguments beyond the logged frame
                values += struct.unpack(fmt, proc.read(sp + first, struct.calcsize(fmt)))
        caller = self._callers.get(ret_addr)
        if caller is None:
            caller = self._callers[ret_addr] = self.proc.symbolize(ret_addr)
        saved = {"blocks": r[2]}
        ev = AllocationEvent._opened(
            len(self._all),
            name,
            address,
            proto.decode(values),
            ret_addr,
            caller,
            len(opened),
            sp,
            r[1],
            proto,
            saved,
        )
        if self._walker is not None:  # (records come one at a time: the CPU is at the entry)
            ev.stack = self._walker.walk(address, max_frames=self.stacks)
        if self.check_conventions:
            saved["entry"] = r  # what the return is compared with (_save_state)
            if self._x64 and (sp % 16 != 8 or not frame or self._promised[address][1] > 0x40):
                self._save_state(ev, r, frame)  # a misaligned stack, a window to read now
        (opened[-1].children if opened else self._events).append(ev)
        self._all.append(ev)
        opened.append(ev)
        returns = self._returns
        returns[ret_addr] = returns.get(ret_addr, 0) + 1

    def _maybe_return(self, r: tuple[Any, ...], opened: list[AllocationEvent]) -> None:
        address, sp = r[0], r[4]
        if opened:  # the common case, inline: the innermost call returns, alone
            ev = opened[-1]
            if (
                ev.return_address == address
                and sp > ev.entry_sp
                and (len(opened) == 1 or opened[-2].return_address != address)
            ):
                opened.pop()
                self._forget_return(address)
                self._finish_counts(ev, r[1], r[2])
                self._leave(ev, r)
                return
        # the innermost open event returning here with its return address popped
        for i in range(len(opened) - 1, -1, -1):
            ev = opened[i]
            if ev.return_address == address and sp > ev.entry_sp:
                break
        else:
            return
        # watched functions that jumped into one another (a routed ntdll entry point) share
        # the return: they all return here
        while i > 0 and (
            opened[i - 1].return_address == address and opened[i - 1].entry_sp == ev.entry_sp
        ):
            i -= 1
        while len(opened) > i:  # anything opened after it never returned normally
            closing = opened.pop()
            self._forget_return(closing.return_address)
            self._finish_counts(closing, r[1], r[2])
            if closing.return_address == address and closing.entry_sp == ev.entry_sp:
                self._leave(closing, r)

    def _forget_return(self, address: int) -> None:
        left = self._returns.get(address, 1) - 1
        if left:
            self._returns[address] = left
        else:
            self._returns.pop(address, None)

    @staticmethod
    def _finish_counts(ev: AllocationEvent, instructions: int, blocks: int) -> None:
        ev.end = instructions
        ev.instructions = instructions - ev.start
        ev.blocks = blocks - ev._saved["blocks"]

    def _leave(self, ev: AllocationEvent, r: tuple[Any, ...]) -> None:
        ev.ret = r[5] & self._ret_masks[ev.address]
        ev.finished = True
        if self.check_conventions:
            for problem in self._check_state(ev, r):
                ev.violations.append(problem)
                self._violations.append((ev, problem))
            ev._saved.pop("entry", None)  # (checked: the entry's record is not needed again)

    # ------------------------------------------------------------------ convention checks
    def _unpack_state(self, raw: bytes) -> tuple[dict[str, int], list[bytes]]:
        arch = self.proc.arch
        names = arch.nonvolatile
        regs = {r: int.from_bytes(raw[16 * i : 16 * i + arch.ptr_size], "little")
                for i, r in enumerate(names)}  # fmt: skip
        k = len(names)
        xmm = [raw[16 * (k + i) : 16 * (k + 1 + i)] for i in range(len(_XMM))]
        return regs, xmm if arch.ptr_size == 8 else []

    def _read_frame(self, address: int, size: int = 0x40) -> bytes:
        """``size`` (<= 0x80) bytes of the stack, read through the C API (no binding
        overhead); empty if they are not all readable."""
        if not self.proc.cpu.read_into(address, self._frame_buf, size):
            return b""
        return self._frame_buf.raw[:size]

    def _save_state(self, ev: AllocationEvent, entry: tuple[Any, ...], stack: bytes) -> None:
        """What the return is compared with: the entry's record (its callee-saved registers'
        16-byte slots and, on x64, the caller's frame above the shadow space and stack
        arguments, in ``stack``: the 0x80 bytes at the entry stack pointer, empty when they
        were unreadable — then, or when the window lies beyond them, it is read now)."""
        saved = ev._saved
        saved["entry"] = entry
        if self._x64:
            sp = ev.entry_sp
            if sp % 16 != 8:
                ev.violations.append(f"misaligned stack at entry: rsp=0x{sp:x} (must be 8 mod 16)")
                self._violations.append((ev, ev.violations[-1]))
            off = self._window_offset(ev)
            if off > 0x40 or not stack:
                saved["frame"] = (sp + off, self._read_frame(sp + off))

    def _window_offset(self, ev: AllocationEvent) -> int:
        """Where the caller's frame that must not change starts, from the entry stack
        pointer (x64): above the return address, the shadow space and stack arguments."""
        return self._promised[ev.address][1]

    def _entry_frame(self, ev: AllocationEvent) -> tuple[int, bytes]:
        """(address, the 0x40 bytes there at the entry) of the caller's frame (x64)."""
        saved = ev._saved
        frame = saved.get("frame")
        if frame is not None:
            return frame
        off = self._window_offset(ev)
        return ev.entry_sp + off, saved["entry"][-1][off : off + 0x40]

    def _expected_sp(self, ev: AllocationEvent) -> int:
        """The stack pointer at the return the convention promises."""
        return ev.entry_sp + self.proc.arch.ptr_size + self._promised[ev.address][0]

    def _kept_convention(self, ev: AllocationEvent, rec: tuple[Any, ...]) -> bool:
        """True when the return ``rec`` shows nothing _check_state would report: the stack
        pointer where the convention leaves it, DF clear, the callee-saved registers' bytes
        as at the entry and (x64) the caller's frame window unchanged in the logged frame.
        False means only "look closer" (the frame may not have been logged)."""
        entry = ev._saved["entry"]
        if rec[4] != self._expected_sp(ev) or rec[self._eflags_field] & DF:
            return False
        if rec[-2] != entry[-2]:
            return False
        if not self._x64:
            return True
        above, data = self._entry_frame(ev)
        if not data:
            return True  # unreadable at the entry: nothing to compare (as _check_state)
        off = above - rec[4]  # (rec[4] is entry_sp + 8 here)
        return bool(rec[3]) and rec[-1][off : off + 0x40] == data

    def _check_state(self, ev: AllocationEvent, rec: tuple[Any, ...]) -> list[str]:
        """What the call changed that its convention says it must not: ``rec`` is the record
        at its return (the frame there covers the caller's frame of a call with up to eight
        arguments; beyond that, or when it was unreadable, the stack is read as it is now)."""
        problems: list[str] = []
        sp, after_raw = rec[4], rec[-2]
        before_raw = ev._saved["entry"][-2]
        if rec[self._eflags_field] & DF:  # EFLAGS may change, except DF
            problems.append("direction flag left set")
        before_regs: dict[str, int] = {}
        after_regs: dict[str, int] = {}
        if after_raw != before_raw:
            before_regs, before_xmm = self._unpack_state(before_raw)
            after_regs, after_xmm = self._unpack_state(after_raw)
            for i, (b, a) in enumerate(zip(before_xmm, after_xmm, strict=True)):
                if a != b:
                    problems.append(f"xmm{i + 6} not preserved")
        for r, before in before_regs.items():
            after = after_regs[r]
            if after != before:
                problems.append(f"{r} not preserved: 0x{before:x} -> 0x{after:x}")
        if self._x64:
            if sp != ev.entry_sp + 8:
                problems.append(f"rsp 0x{sp:x} at return, expected 0x{ev.entry_sp + 8:x}")
            above, data = self._entry_frame(ev)
            off, frame = above - sp, rec[-1] if rec[3] else b""
            now = frame[off : off + 0x40] if off >= 0 and off + 0x40 <= len(frame) else b""
            now = now or self._read_frame(above)
            if now and data and now != data:
                off = next(i for i in range(len(data)) if data[i] != now[i])
                problems.append(
                    f"wrote into the caller's frame at 0x{above + off:x} (above its shadow space)"
                )
        elif self.cdecl and ev.name in self.cdecl:
            if sp != ev.entry_sp + 4:
                problems.append(
                    f"cdecl callee popped its arguments: esp off by {sp - ev.entry_sp - 4:+d}"
                )
        else:
            expected = ev.entry_sp + 4 + 4 * len(ev.args)  # stdcall: the callee pops
            if sp != expected:
                problems.append(
                    f"stdcall stack imbalance: esp 0x{sp:x} at return, expected 0x{expected:x} "
                    f"(`ret {4 * len(ev.args)}`), off by {sp - expected:+d}"
                )
        return problems


class _Plan(NamedTuple):
    """How the recorder reads a watched function's arguments (EventRecorder._plan)."""

    name: str
    prototype: Prototype
    reg_end: int
    frame: struct.Struct
    first_stack_arg: int
    stack_format: str


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a batch of events is made: they hold no
    cycles, and collections triggered by thousands of new objects (each one scanning the
    events kept so far) would cost as much as making them."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _argc_for(counts: dict[str, int], used: set[str], name: str, target: str | int) -> int | None:
    """The argument count given for a watched function under any of its spellings
    (``RtlAllocateHeap``, ``ntdll!RtlAllocateHeap``, ``ntdll.dll!RtlAllocateHeap``, the name it
    was asked by), case-insensitively; the keys that matched go into ``used``."""
    short = name.split("!")[-1]
    spellings = {name, short, str(target)}
    if "!" in name:
        spellings.add(f"{name.split('!')[0].split('.')[0]}!{short}")
    spellings = {k.lower() for k in spellings}
    found = None
    for key, value in counts.items():
        if key.lower() in spellings:
            found = value
            used.add(key)
    return found


@contextmanager
def recording(
    proc: ProcessCore,
    functions: Iterable[str | int] | None = None,
    *,
    check_conventions: bool = False,
) -> Iterator[EventRecorder]:
    """``with recording(proc) as rec: ...``: the recorder is removed afterwards."""
    rec = EventRecorder(proc, functions, check_conventions=check_conventions).start()
    try:
        yield rec
    finally:
        rec.stop()
