"""`heapemu run --gdb PORT`: a real gdb (and a hand-driven socket client) attaches to the
emulated process at the first step, reads registers and memory, and lets the run finish."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emu.facade import Process
from emu.win.layouts import PEB

_SCRIPT = Path(sys.executable).with_name("heapemu")
HEAPEMU = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "emu.cli"]
GDB = shutil.which("gdb")
GDB_ARCH = {"x86": "i386", "x64": "i386:x86-64"}


def heapemu(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*HEAPEMU, *args], capture_output=True, text=True, env=env, timeout=60)


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heapemu: "), p.stderr
    return lines[0]


def layout(arch: str) -> tuple[int, int, int, int, bytes]:
    """RtlCreateHeap, RtlAllocateHeap, the stack's bounds and RtlCreateHeap's first bytes, as
    ``heapemu run`` lays them out (the process is built the same way every time)."""
    proc = Process(arch)
    m = proc.load_builtin_heap()
    create, alloc = m.exports["RtlCreateHeap"], m.exports["RtlAllocateHeap"]
    stack = proc.thread_stack
    return create, alloc, stack.base, stack.top, proc.read(create, 4)


class Run:
    """``heapemu run --gdb 0``: the stub binds a port the system picks and names it on stderr
    (a port chosen here and passed on could be taken by another program, or another test
    worker, before heapemu binds it)."""

    def __init__(self, tmp: Path, arch: str) -> None:
        self.err_path = tmp / "stderr.txt"
        self.out_path = tmp / "stdout.txt"
        self.out, self.err = self.out_path.open("w"), self.err_path.open("w")
        self.p = subprocess.Popen(
            [*HEAPEMU, "run", "lec04_growable_heap", "--gdb", "0", "--arch", arch],
            stdout=self.out,
            stderr=self.err,
            env={**os.environ, "COLUMNS": "200"},
        )
        deadline = time.monotonic() + 30
        while not (
            found := re.search(r"target remote 127\.0\.0\.1:(\d+)'", self.err_path.read_text())
        ):
            assert self.p.poll() is None, self.err_path.read_text()
            assert time.monotonic() < deadline, "no connect line from heapemu --gdb"
            time.sleep(0.05)
        self.port = int(found.group(1))
        assert 0 < self.port < 65536 and f"127.0.0.1:{self.port} at the first step" in found.string

    def finish(self) -> tuple[int, str, str]:
        rc = self.p.wait(timeout=30)
        self.out.close()
        self.err.close()
        return rc, self.out_path.read_text(), self.err_path.read_text()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Run]]:
    runs: list[Run] = []
    yield runs
    for r in runs:  # never leave a heapemu behind, whatever failed
        if r.p.poll() is None:
            r.p.kill()
            r.p.wait(timeout=10)


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_gdb_attaches_at_the_first_step(arch: str, tmp_path: Path, started: list[Run]) -> None:
    create, alloc, stack_lo, stack_hi, first_bytes = layout(arch)
    run = Run(tmp_path, arch)
    started.append(run)
    sp, pc = ("esp", "eip") if arch == "x86" else ("rsp", "rip")
    assert GDB is not None
    g = subprocess.run(
        [GDB, "--batch", "-nx"]
        + [
            a
            for cmd in (
                "set remotetimeout 10",
                f"set architecture {GDB_ARCH[arch]}",
                f"target remote 127.0.0.1:{run.port}",
                "info registers",
                "x/4xb $pc",
                f"break *{alloc:#x}",
                "continue",
                f"info registers {pc}",
                "delete",
                "continue",
            )
            for a in ("-ex", cmd)
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    regs: dict[str, str] = {}
    for name, value in re.findall(r"^(\w+)\s+(0x[0-9a-f]+)", g.stdout, re.M):
        regs.setdefault(name, value)  # the first `info registers`, at the first stop
    # stopped at the first instruction of the first step (create_heap -> RtlCreateHeap)
    assert int(regs[pc], 16) == create, g.stdout + g.stderr
    assert stack_lo <= int(regs[sp], 16) < stack_hi, g.stdout
    shown = re.search(rf"{create:#x}:\s+((?:0x[0-9a-f]{{2}}\s*){{4}})", g.stdout)
    assert shown, g.stdout
    assert bytes(int(b, 16) for b in shown.group(1).split()) == first_bytes
    # the breakpoint on RtlAllocateHeap is hit by the next step, then the run finishes
    assert f"Breakpoint 1, {alloc:#0{10 if arch == 'x86' else 18}x}" in g.stdout, g.stdout
    assert "exited normally" in g.stdout, g.stdout + g.stderr
    rc, out, err = run.finish()
    assert rc == 0, err
    assert f"✓ PASS lec04_growable_heap {arch} builtin: 12 steps" in out
    assert "after_100_allocations" in out


def _packet(data: str) -> bytes:
    return f"${data}#{sum(data.encode()) & 0xFF:02x}".encode()


class Client:
    """The remote protocol by hand: send a packet, read the ack and the reply."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def ask(self, data: str, reply: bool = True) -> str:
        self.s.sendall(_packet(data))
        while True:
            m = re.search(rb"\$([^#]*)#[0-9a-f]{2}", self.buf)
            if (m or not reply) and self.buf.startswith(b"+"):
                break
            chunk = self.s.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            self.buf += chunk
        self.buf = self.buf[1:]
        if not reply:
            return ""
        m = re.search(rb"\$([^#]*)#[0-9a-f]{2}", self.buf)
        assert m
        self.buf = self.buf[m.end() :]
        self.s.sendall(b"+")
        return m.group(1).decode()


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_the_protocol_by_hand(arch: str, tmp_path: Path, started: list[Run]) -> None:
    create, alloc, stack_lo, stack_hi, first_bytes = layout(arch)
    run = Run(tmp_path, arch)
    started.append(run)
    ptr = 4 if arch == "x86" else 8
    pc_reg, sp_reg = (8, 4) if arch == "x86" else (16, 7)
    c = Client(run.port)
    assert "PacketSize" in c.ask("qSupported:multiprocess+")
    assert c.ask("?") == "S05"

    def reg(n: int) -> int:
        return int.from_bytes(bytes.fromhex(c.ask(f"p{n:x}")), "little")

    assert reg(pc_reg) == create
    assert stack_lo <= reg(sp_reg) < stack_hi
    g = bytes.fromhex(c.ask("g"))
    assert int.from_bytes(g[pc_reg * ptr : pc_reg * ptr + ptr], "little") == create
    assert bytes.fromhex(c.ask(f"m{create:x},4")) == first_bytes
    assert c.ask("m0,4").startswith("E")  # unmapped
    assert c.ask(f"m{stack_lo:x},4").startswith("E")  # reserved, not committed (yet backed)
    assert c.ask("s") == "S05"  # one instruction (push ebp / push rbp)
    assert create < reg(pc_reg) <= create + 4
    assert reg(sp_reg) == int.from_bytes(g[sp_reg * ptr : sp_reg * ptr + ptr], "little") - ptr
    assert c.ask(f"Z0,{alloc:x},1") == "OK"
    assert c.ask("c") == "S05"
    assert reg(pc_reg) == alloc
    assert c.ask(f"z0,{alloc:x},1") == "OK"
    assert c.ask("D") == "OK"  # detach: the run goes on alone
    c.s.close()
    rc, out, _ = run.finish()
    assert rc == 0 and f"✓ PASS lec04_growable_heap {arch} builtin: 12 steps" in out


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = heapemu("run", "lec04_growable_heap", "--arch", "x64", "--gdb", str(port))
    line = one_line_error(p)
    assert f"--gdb {port}" in line and "pick another port" in line
    assert p.stdout == ""  # nothing ran


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--arch", "x64", "--gdb", "http"], "TCP port number"),
        (["--arch", "x64", "--gdb", "70000"], "TCP port number"),
        (["--arch", "x64", "--gdb", "-1"], "TCP port number"),
        (["--arch", "both", "--gdb", "23946"], "one --arch"),
        (["--gdb", "23946"], "one --arch"),  # the scenario itself asks for both
    ],
)
def test_bad_gdb_options(args: list[str], says: str) -> None:
    line = one_line_error(heapemu("run", "lec04_growable_heap", *args))
    assert says in line


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_gdb_needs_no_set_architecture_and_watches_memory(
    arch: str, tmp_path: Path, started: list[Run]
) -> None:
    """Issue 15: target.xml names the architecture, qXfer:libraries lists the modules, and a
    hardware watchpoint (Z2) stops after the write: PEB.NumberOfHeaps going from 1 to 2 when
    the scenario's heap is created."""
    create, *_ = layout(arch)
    proc = Process(arch)
    proc.load_builtin_heap()
    count = PEB.address(proc.arch, proc.peb, "NumberOfHeaps")
    run = Run(tmp_path, arch)
    started.append(run)
    assert GDB is not None
    commands = (
        "set remotetimeout 10",
        f"target remote 127.0.0.1:{run.port}",
        "p/x $pc",
        "info sharedlibrary",
        f"watch *(int *){count:#x}",
        "continue",
        "delete",
        "continue",
    )
    g = subprocess.run(
        [GDB, "--batch", "-nx", *(a for cmd in commands for a in ("-ex", cmd))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"$1 = {create:#x}" in g.stdout, g.stdout + g.stderr
    assert "ntheap" in g.stdout  # the builtin heap's module, from qXfer:libraries
    assert "Hardware watchpoint 1" in g.stdout
    assert "Old value = 1\nNew value = 2" in g.stdout, g.stdout
    assert "exited normally" in g.stdout
    rc, out, _ = run.finish()
    assert rc == 0 and f"✓ PASS lec04_growable_heap {arch} builtin: 12 steps" in out


def test_malformed_packets_get_errors_and_the_run_goes_on(
    tmp_path: Path, started: list[Run]
) -> None:
    """Issue 20, D10: no packet ends the run or makes the stub hold unbounded memory."""
    run = Run(tmp_path, "x64")
    started.append(run)
    c = Client(run.port)
    assert "PacketSize=4000" in c.ask("qSupported")
    assert "<architecture>i386:x86-64</architecture>" in c.ask(
        "qXfer:features:read:target.xml:0,fff"
    )
    assert c.ask("qXfer:libraries:read::0,fff").startswith('l<library-list version="1.0">')
    for bad in ("pzz", "Pzz=00", "P0=zz", "mzz,4", "m1000,-10", "m0,1000000000000",
                "m0,100000000", "Mzz,1:00", "M0,1:zz", "M0,2:00", "Z0,zz,1", "Z2,1000,0",
                "czz", "Gzz", "qXfer:features:read:target.xml:zz,10"):  # fmt: skip
        assert c.ask(bad) == "E01", bad
    assert c.ask("vUnknownPacket") == ""
    c.s.sendall(b"$g#00")  # a bad checksum: refused, gdb would send it again
    assert c.s.recv(1) == b"-"
    c.s.sendall(b"$" + b"a" * 100_000)  # never a packet: dropped once past PacketSize
    c.s.settimeout(1)
    refused = b""
    with contextlib.suppress(TimeoutError):
        while True:
            refused += c.s.recv(4096)
    assert refused and set(refused) == {ord("-")}
    c.s.settimeout(20)
    c.buf = b""
    assert c.ask("?") == "S05"  # still serving
    assert c.ask("D") == "OK"
    c.s.close()
    rc, out, _ = run.finish()
    assert rc == 0 and "✓ PASS lec04_growable_heap x64 builtin: 12 steps" in out
