"""A minimal GDB remote-serial-protocol stub for ``heapemu run --gdb PORT``.

``GdbStub(port)`` binds 127.0.0.1:PORT at once (so a port in use is an error before anything
runs). As a scenario ``Observer`` it stops at the first instruction the first step executes,
accepts one debugger connection and serves it: registers (g/G/p/P), memory (m/M), continue
(c), single step (s), breakpoints (Z0/z0, Z1/z1), ``?``, qSupported, detach (D) and kill (k).
``k`` and ``D`` both let the run go on without the debugger. When the run ends while the
debugger waits in a ``continue``, it gets an exit packet (W00, or W01 for a failed run).

Register layout: gdb's built-in i386 / i386:x86-64 ``g`` packets (general registers, eflags,
segment registers, then x87 state as zeros, xmm0-7/15 and mxcsr), so no target description
is needed: ``set architecture i386`` (or ``i386:x86-64``) then ``target remote``.

Not supported: Ctrl-C (the debugger cannot interrupt a continue), watchpoints, the X packet
(gdb falls back to M), more than one connection.
"""

from __future__ import annotations

import socket
from typing import Any

from emu.cpu.callgate import CallGate
from emu.cpu.cpu import Cpu, CpuError
from emu.scenario.model import Step
from emu.scenario.result import ScenarioResult
from emu.scenario.run import Observer, ScenarioRun

HOST = "127.0.0.1"
SIGTRAP = "S05"

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
        self.first_step_seen = False
        self._buf = b""

    # ------------------------------------------------------------------ observer
    def connect_hint(self, arch: str) -> str:
        return (
            f"heapemu: waiting for a debugger on {HOST}:{self.port} at the first step: "
            f"gdb -ex 'set architecture {GDB_ARCH[arch]}' -ex 'target remote {HOST}:{self.port}'"
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
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        self.conn = None

    # ------------------------------------------------------------------ the code hook
    def _needs_hook(self) -> bool:
        return self.armed or self.stepping or bool(self.breakpoints and self.conn)

    def _install_hook(self) -> None:
        assert self.cpu is not None
        if self.hook is None:
            self.hook = self.cpu.hook_code(self._on_code)  # (it flushes translated code)

    def _on_code(self, address: int, size: int) -> None:
        if self.gate is not None and self.gate.contains(address):
            return  # heapemu's call gate, around every call: not the process's code
        if self.armed:
            self.armed = False
            self._accept()
        elif self.conn is None or not (self.stepping or address in self.breakpoints):
            return
        else:
            self._send(SIGTRAP.encode())
        self.stepping = self.running = False
        self._serve()

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
        """The next packet's payload (acknowledged), or None when the debugger has gone."""
        assert self.conn is not None
        while True:
            start = self._buf.find(b"$")
            end = self._buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self._buf) >= end + 3:
                data = self._buf[start + 1 : end]
                self._buf = self._buf[end + 3 :]
                self.conn.sendall(b"+")
                return data
            try:
                chunk = self.conn.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self._buf += chunk

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
            reply, resume = self._handle(packet.decode("latin-1"))
            if reply is not None and self.conn is not None:
                self._send(reply.encode("latin-1"))
            if resume:
                return

    def _handle(self, p: str) -> tuple[str | None, bool]:
        """(reply or None for no reply, whether execution resumes)."""
        cpu = self.cpu
        assert cpu is not None
        cmd = p[:1]
        if cmd == "?":
            return SIGTRAP, False
        if p.startswith("qSupported"):
            return "PacketSize=4000", False
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
            data, pos = bytes.fromhex(p[1:]), 0
            for i, (_, size) in enumerate(self.regs):
                if pos + size <= len(data):
                    self._reg_write(i, data[pos : pos + size])
                pos += size
            return "OK", False
        if cmd == "p":
            n = int(p[1:], 16)
            return (self._reg_hex(n) if n < len(self.regs) else "E01"), False
        if cmd == "P":
            num, _, value = p[1:].partition("=")
            n = int(num, 16)
            if n >= len(self.regs):
                return "E01", False
            self._reg_write(n, bytes.fromhex(value))
            return "OK", False
        if cmd == "m":
            addr, _, length = p[1:].partition(",")
            try:
                return cpu.read(int(addr, 16), int(length, 16)).hex(), False
            except CpuError:
                return "E01", False
        if cmd == "M":
            where, _, hexdata = p[1:].partition(":")
            try:
                cpu.write(int(where.split(",")[0], 16), bytes.fromhex(hexdata))
            except CpuError:
                return "E01", False
            return "OK", False
        if cmd in ("c", "s"):
            if len(p) > 1:
                cpu.pc = int(p[1:], 16)
            self.stepping = cmd == "s"
            self.running = True
            return None, True
        if cmd in ("Z", "z") and p[1:2] in ("0", "1"):
            bp = int(p[3:].split(",")[0], 16)
            (self.breakpoints.add if cmd == "Z" else self.breakpoints.discard)(bp)
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
