"""A minimal GDB remote-serial-protocol stub for ``heapemu run --gdb PORT``.

``GdbStub(port)`` binds 127.0.0.1:PORT at once (so a port in use is an error before anything
runs); port 0 lets the system pick a free port, which ``stub.port`` and the connect hint then
name (no race with another program between choosing a port and binding it). As a scenario
``Observer`` it stops at the first instruction the first step executes, accepts one debugger
connection and serves it: registers (g/G/p/P), memory (m/M), continue
(c), single step (s), breakpoints (Z0/z0, Z1/z1), watchpoints (Z2 write, Z3 read, Z4 access:
the stop is reported after the instruction that touched the range, as ``T05watch:ADDR;``),
``?``, qSupported, the target description (``qXfer:features:read:target.xml``: gdb needs no
``set architecture``), the loaded modules (``qXfer:libraries:read``: ``info sharedlibrary``),
detach (D) and kill (k). ``k`` and ``D`` both let the run go on without the debugger. When
the run ends while the debugger waits in a ``continue``, it gets an exit packet (W00, or W01
for a failed run).

Register layout: gdb's built-in i386 / i386:x86-64 ``g`` packets (general registers, eflags,
segment registers, then x87 state as zeros, xmm0-7/15 and mxcsr), which the target description
names by architecture.

A hostile or broken client cannot stop the run or exhaust memory: a malformed packet gets
``E01`` (an unknown one the empty reply) and the session goes on; a packet with a bad checksum
gets ``-``; reads and writes are capped to the advertised PacketSize; bytes that never become a
packet are dropped once they pass PacketSize.

Not supported: Ctrl-C (the debugger cannot interrupt a continue), the X packet (gdb falls
back to M), more than one connection.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from emu.cpu.callgate import CallGate
from emu.cpu.cpu import Cpu, CpuError
from emu.errors import EmulationError
from emu.scenario.model import Step
from emu.scenario.result import ScenarioResult
from emu.scenario.run import Observer, ScenarioRun

HOST = "127.0.0.1"
SIGTRAP = "S05"
PACKET_SIZE = 0x4000  # advertised in qSupported: the largest packet either side sends
MAX_MEMORY = (PACKET_SIZE - 32) // 2  # bytes one m/M packet moves (hex doubles them)
WATCH_KINDS = {"2": "watch", "3": "rwatch", "4": "awatch"}  # Z2 write, Z3 read, Z4 access
MAX_WATCH = 0x1000  # bytes one watchpoint covers


class PacketError(ValueError):
    """A packet whose arguments do not parse: the reply is E01 and the session goes on."""


# (register name or None for "reads as zero", size in bytes), in gdb's register numbering
_NONE: str | None = None
_X87 = [(_NONE, 10)] * 8 + [(_NONE, 4)] * 8  # st0-7, fctrl..fop
_SEGS = ["cs", "ss", "ds", "es", "fs", "gs"]
REGS_X86: list[tuple[str | None, int]] = [
    *[(r, 4) for r in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags")],
    *[(r, 4) for r in _SEGS],
    *_X87,
    *[(f"xmm{i}", 16) for i in range(8)],
    ("mxcsr", 4),
]
REGS_X64: list[tuple[str | None, int]] = [
    *[(r, 8) for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")],
    *[(f"r{i}", 8) for i in range(8, 16)],
    ("rip", 8),
    ("eflags", 4),
    *[(r, 4) for r in _SEGS],
    *_X87,
    *[(f"xmm{i}", 16) for i in range(16)],
    ("mxcsr", 4),
]
GDB_ARCH = {"x86": "i386", "x64": "i386:x86-64"}


class GdbStubError(Exception):
    """The port cannot be used (one line that says what to do)."""


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def _int(text: str) -> int:
    """A hex number of a packet (PacketError if it is not one)."""
    if not text or len(text) > 16 or text.strip("0123456789abcdefABCDEF"):
        raise PacketError(f"not a hex number: {text[:20]!r}")
    return int(text, 16)


def _address(text: str) -> int:
    return _int(text)


def _length(text: str) -> int:
    """A length of an m/M/qXfer packet: at most MAX_MEMORY bytes."""
    n = _int(text)
    if n > MAX_MEMORY:
        raise PacketError(f"length 0x{n:x} is more than 0x{MAX_MEMORY:x}")
    return n


def _hex(text: str) -> bytes:
    if len(text) > 2 * MAX_MEMORY + 4096:
        raise PacketError("data longer than a packet")
    return bytes.fromhex(text)


class GdbStub(Observer):
    """Serve one GDB connection on the run's CPU; see the module docstring."""

    def __init__(self, port: int, *, accept_timeout: float | None = None) -> None:
        self.port = port
        self.accept_timeout = accept_timeout
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # reuse a port whose last connection is in TIME_WAIT; a listening socket still wins
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((HOST, port))
            self.listener.listen(1)
            self.port = int(self.listener.getsockname()[1])  # the one chosen, for port 0
        except OSError as e:
            self.listener.close()
            raise GdbStubError(
                f"--gdb {port}: cannot listen on {HOST}:{port} ({e.strerror or e}); "
                "pick another port (one no other program is using)"
            ) from None
        self.conn: socket.socket | None = None
        self.run: ScenarioRun | None = None
        self.cpu: Cpu | None = None
        self.gate: CallGate | None = None
        self.regs = REGS_X64
        self.hook: int | None = None
        self.armed = False  # the first stop is still to come
        self.stepping = False
        self.running = False  # the debugger is waiting for a stop reply
        self.breakpoints: set[int] = set()
        # (kind, address, length) -> the memory hooks serving it
        self.watchpoints: dict[tuple[str, int, int], list[int]] = {}
        self.watch_hit: tuple[str, int] | None = None  # reported at the next instruction
        self._dead_hooks: list[int] = []  # removed watchpoints' hooks, unhooked after the step
        self._new_hooks = False  # memory hooks added during this stop
        self._restart_at: int | None = None
        self.first_step_seen = False
        self._buf = b""

    # ------------------------------------------------------------------ observer
    def connect_hint(self, arch: str) -> str:
        return (
            f"heapemu: waiting for a debugger on {HOST}:{self.port} at the first step: "
            f"gdb -ex 'target remote {HOST}:{self.port}'"
        )

    def process_created(self, run: ScenarioRun) -> None:
        self.run = run
        self.cpu = run.proc.cpu
        self.gate = run.proc.call_gate
        self.regs = REGS_X86 if run.arch == "x86" else REGS_X64
        run.proc.time_limit = 0  # a debugger's pauses are not a runaway loop

    def before_step(self, run: ScenarioRun, step: Step) -> None:
        if self.first_step_seen:
            return
        self.first_step_seen = True
        self.armed = True
        self._install_hook()

    def after_step(self, run: ScenarioRun, result: Any) -> None:
        # hooks are removed outside emulation (a callback must not free itself)
        if self.conn is None:
            self._clear_watchpoints()
        for handle in self._dead_hooks:
            assert self.cpu is not None
            self.cpu.unhook(handle)
        self._dead_hooks.clear()
        if self.hook is not None and not self._needs_hook():
            assert self.cpu is not None
            self.cpu.unhook(self.hook)
            self.hook = None

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        if self.conn is not None and self.running:
            self._send(b"W00" if result.ok else b"W01")
        self.close()

    def close(self) -> None:
        if self.hook is not None and self.cpu is not None:
            self.cpu.unhook(self.hook)
            self.hook = None
        self._clear_watchpoints()
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        self.conn = None

    # ------------------------------------------------------------------ the code hook
    def _needs_hook(self) -> bool:
        watching = bool(self.breakpoints or self.watchpoints)
        return self.armed or self.stepping or bool(watching and self.conn)

    def _install_hook(self) -> None:
        assert self.cpu is not None
        if self.hook is None:
            self.hook = self.cpu.hook_code(self._on_code)  # (it flushes translated code)

    def _on_code(self, address: int, size: int) -> None:
        if self.gate is not None and self.gate.contains(address):
            return  # heapemu's call gate, around every call: not the process's code
        if self._restart_at == address:  # the same instruction again, retranslated: go on
            self._restart_at = None
            return
        self._restart_at = None
        if self.armed:
            self.armed = False
            self._accept()
        elif self.watch_hit is not None and self.conn is not None:
            kind, where = self.watch_hit
            self._send(f"T05{kind}:{where:x};".encode())
        elif self.conn is None or not (self.stepping or address in self.breakpoints):
            return
        else:
            self._send(SIGTRAP.encode())
        self.watch_hit = None
        self.stepping = self.running = False
        self._serve()

    # ------------------------------------------------------------------ watchpoints
    def _on_access(self, kind: str, address: int, size: int) -> None:
        if self.watch_hit is not None or self.conn is None:
            return
        for (wkind, start, length), _ in self.watchpoints.items():
            if address < start + length and start < address + size:
                wanted = {"watch": "w", "rwatch": "r", "awatch": "rw"}[wkind]
                if kind in wanted:
                    self.watch_hit = (wkind, start)
                    return

    def _add_watchpoint(self, kind: str, start: int, length: int) -> None:
        assert self.cpu is not None
        key = (kind, start, length)
        if key in self.watchpoints:
            return
        lo, hi = max(start - 15, 0), start + length - 1  # accesses that begin below overlap too
        hooks = []
        if kind in ("watch", "awatch"):
            hooks.append(
                self.cpu.hook_mem_write(lambda a, n, v: self._on_access("w", a, n), lo, hi)
            )
        if kind in ("rwatch", "awatch"):
            hooks.append(self.cpu.hook_mem_read(lambda a, n, v: self._on_access("r", a, n), lo, hi))
        self.watchpoints[key] = hooks
        self._new_hooks = True
        self._install_hook()

    def _remove_watchpoint(self, kind: str, start: int, length: int) -> None:
        # its hooks go after the step, outside emulation (removing one flushes translations)
        self._dead_hooks += self.watchpoints.pop((kind, start, length), [])

    def _clear_watchpoints(self) -> None:
        for key in list(self.watchpoints):
            self._remove_watchpoint(*key)
        if self.cpu is not None and not self.cpu._running:
            for handle in self._dead_hooks:
                self.cpu.unhook(handle)
            self._dead_hooks.clear()

    def _accept(self) -> None:
        self.listener.settimeout(self.accept_timeout)
        try:
            self.conn, _ = self.listener.accept()
        except TimeoutError:
            return
        self.conn.settimeout(None)
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ------------------------------------------------------------------ the protocol
    def _read_packet(self) -> bytes | None:
        """The next packet's payload (acknowledged), or None when the debugger has gone.
        Bytes before a ``$`` are dropped (acks, Ctrl-C); a packet with a bad checksum is
        refused with ``-`` (gdb sends it again); an unterminated packet longer than
        PACKET_SIZE is dropped, so nothing buffers without bound."""
        assert self.conn is not None
        while True:
            start = self._buf.find(b"$")
            if start < 0:
                self._buf = b""
            elif start:
                self._buf = self._buf[start:]
            end = self._buf.find(b"#")
            if end >= 0 and len(self._buf) >= end + 3:
                data, check = self._buf[1:end], self._buf[end + 1 : end + 3]
                self._buf = self._buf[end + 3 :]
                if check.lower() != _checksum(data):
                    self._ack(b"-")
                    continue
                self._ack(b"+")
                return data
            if end < 0 and len(self._buf) > PACKET_SIZE + 4:
                self._buf = b""  # never a packet: drop it (the client's next `$` starts over)
                self._ack(b"-")
            try:
                chunk = self.conn.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self._buf += chunk

    def _ack(self, what: bytes) -> None:
        assert self.conn is not None
        with contextlib.suppress(OSError):
            self.conn.sendall(what)

    def _send(self, data: bytes) -> None:
        assert self.conn is not None
        try:
            self.conn.sendall(b"$" + data + b"#" + _checksum(data))
        except OSError:
            self._hang_up()

    def _hang_up(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.breakpoints.clear()
        self.stepping = self.running = False

    def _serve(self) -> None:
        """Answer packets until the debugger resumes (c/s), detaches, kills or goes away."""
        while self.conn is not None:
            packet = self._read_packet()
            if packet is None:
                self._hang_up()
                return
            try:
                reply, resume = self._handle(packet.decode("latin-1"))
            except (PacketError, ValueError, IndexError, OverflowError, CpuError, EmulationError):
                reply, resume = "E01", False
            if reply is not None and self.conn is not None:
                self._send(reply.encode("latin-1"))
            if resume:
                self._retranslate()
                return
        self._retranslate()

    def _retranslate(self) -> None:
        """Unicorn instruments memory hooks when it translates code: the block running now
        was translated before this stop's watchpoints existed. Writing pc ends it; the same
        instruction runs again from a fresh translation (and its code hook is skipped once)."""
        if self._new_hooks and self.cpu is not None:
            self._new_hooks = False
            pc = self.cpu.pc
            self._restart_at = pc
            self.cpu.pc = pc

    def _handle(self, p: str) -> tuple[str | None, bool]:
        """(reply or None for no reply, whether execution resumes)."""
        cpu = self.cpu
        assert cpu is not None
        cmd = p[:1]
        if cmd == "?":
            return SIGTRAP, False
        if p.startswith("qSupported"):
            features = "qXfer:features:read+;qXfer:libraries:read+;swbreak-;hwbreak+"
            return f"PacketSize={PACKET_SIZE:x};{features}", False
        if p.startswith("qXfer:"):
            return self._xfer(p), False
        if p.startswith("qAttached"):
            return "1", False
        if p == "qfThreadInfo":
            return "m1", False
        if p == "qsThreadInfo":
            return "l", False
        if p == "qC":
            return "QC1", False
        if cmd in ("H", "T"):
            return "OK", False
        if cmd == "g":
            return "".join(self._reg_hex(i) for i in range(len(self.regs))), False
        if cmd == "G":
            data, pos = _hex(p[1:]), 0
            for i, (_, size) in enumerate(self.regs):
                if pos + size <= len(data):
                    self._reg_write(i, data[pos : pos + size])
                pos += size
            return "OK", False
        if cmd == "p":
            n = _int(p[1:])
            return (self._reg_hex(n) if n < len(self.regs) else "E01"), False
        if cmd == "P":
            num, _, value = p[1:].partition("=")
            n = _int(num)
            if n >= len(self.regs):
                return "E01", False
            self._reg_write(n, _hex(value))
            return "OK", False
        if cmd == "m":
            addr, _, length = p[1:].partition(",")
            # through the process: memory that is not committed is an error, as on Windows
            assert self.run is not None
            return self.run.proc.read(_address(addr), _length(length)).hex(), False
        if cmd == "M":
            where, _, hexdata = p[1:].partition(":")
            addr, _, length = where.partition(",")
            data = _hex(hexdata)
            if length and _length(length) != len(data):
                raise PacketError("M: length and data disagree")
            assert self.run is not None
            self.run.proc.write(_address(addr), data)
            return "OK", False
        if cmd in ("c", "s"):
            if len(p) > 1:
                cpu.pc = _address(p[1:].split(";")[0])
            self.stepping = cmd == "s"
            self.running = True
            return None, True
        if cmd in ("Z", "z") and p[1:2] in ("0", "1"):
            bp = _address(p[3:].split(",")[0])
            (self.breakpoints.add if cmd == "Z" else self.breakpoints.discard)(bp)
            if cmd == "Z":
                self._install_hook()
            return "OK", False
        if cmd in ("Z", "z") and p[1:2] in WATCH_KINDS:
            addr, _, length = p[3:].partition(",")
            start, n = _address(addr), _int(length.split(";")[0])
            if not 0 < n <= MAX_WATCH:
                return "E01", False
            kind = WATCH_KINDS[p[1]]
            if cmd == "Z":
                self._add_watchpoint(kind, start, n)
            else:
                self._remove_watchpoint(kind, start, n)
            return "OK", False
        if cmd == "D":
            self._send(b"OK")
            self._hang_up()
            return None, True
        if cmd == "k" or p.startswith("vKill"):
            if p.startswith("vKill"):
                self._send(b"OK")
            self._hang_up()
            return None, True
        return "", False  # unsupported: the empty reply

    # ------------------------------------------------------------------ qXfer objects
    def _xfer(self, p: str) -> str:
        """``qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH``: the target description or the modules,
        a window at a time (``m`` more follows, ``l`` last)."""
        parts = p.split(":")
        if len(parts) != 5 or parts[2] != "read":
            return ""
        obj, annex, window = parts[1], parts[3], parts[4]
        offset_text, _, length_text = window.partition(",")
        offset, length = _int(offset_text), _length(length_text)
        if obj == "features" and annex == "target.xml":
            text = self._target_xml()
        elif obj == "libraries" and annex == "":
            text = self._libraries_xml()
        else:
            return "E00"
        chunk = text[offset : offset + length]
        return ("l" if offset + length >= len(text) else "m") + chunk

    def _target_xml(self) -> str:
        arch = GDB_ARCH["x86" if self.regs is REGS_X86 else "x64"]
        # osabi none: gdb then takes the module list from qXfer:libraries (not from a Linux
        # dynamic linker's structures, which a Windows process does not have)
        return (
            '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
            f"<target><architecture>{arch}</architecture><osabi>none</osabi></target>"
        )

    def _libraries_xml(self) -> str:
        """Each module with its base: for a PE image the address of its first section, as
        Windows' gdbserver reports it (base + 0x1000)."""
        assert self.run is not None
        out = ['<library-list version="1.0">']
        for m in sorted(self.run.proc.modules, key=lambda m: m.base):
            name = xml_escape(m.path or m.name, {'"': "&quot;"})
            text = m.base + 0x1000 if m.kind == "pe" else m.base
            out.append(f'<library name="{name}"><segment address="0x{text:x}"/></library>')
        out.append("</library-list>")
        return "".join(out)

    def _reg_hex(self, n: int) -> str:
        assert self.cpu is not None
        reg, size = self.regs[n]
        value = 0 if reg is None else self.cpu.reg(reg)
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()

    def _reg_write(self, n: int, data: bytes) -> None:
        assert self.cpu is not None
        reg, _ = self.regs[n]
        if reg is not None:
            self.cpu.set_reg(reg, int.from_bytes(data, "little"))
