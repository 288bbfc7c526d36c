"""A system-call fuzzer (issue 20): random services with random arguments, issued the way real
code issues them, and a check after each that the process still answers.

Numbers come from Wine 8.0's ntdll of the architecture (``loader.wine.wine_syscall_numbers``,
the table a program's calls use), plus a few numbers outside it. Each call goes through one of
the architecture's kernel entries: ``syscall`` on x64; ``int 0x2e`` or ``sysenter`` (through a
KiFastSystemCall-style stub) on x86. The number is read from a cell Python writes, so one stub
per entry serves every service. Arguments are drawn from a pool: NULL, -1, handles (standard,
first-open, bogus), pointers into committed memory (aligned, odd, at a page's last bytes),
reserved-only and released memory, KUSER_SHARED_DATA, kernel space and wrapping values, and
random sizes; the committed buffers hold more of the same, so pointers to pointers are hostile
too.

After each call the process must answer a fresh NtClose(0) with STATUS_INVALID_HANDLE. The only
exceptions allowed out of ``proc.call`` are heapemu's typed ones (``EmulationError``: a service
that ends the run or a fault its arguments caused); anything else is counted (with the
traceback's last line) as a bug, a wall-clock timeout as a hang, a process that no longer
answers as wedged. A fresh process replaces the old one every ``PROCESS_CALLS`` calls so that
what random allocations commit stays bounded.
"""

from __future__ import annotations

import random
import struct
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from emu import EmulationError
from emu.facade import load_program
from emu.nt.calls import HANDLERS
from emu.win.ntdefs import MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE, NtStatus
from loader.peimage import PeImage
from loader.wine import find_wine_dir, wine_syscall_numbers

MAX_ARGS = 17  # more than any service takes (NtCreateNamedPipeFile: 14)
PROCESS_CALLS = 2000  # calls before the fuzzer starts a fresh process
SCRAMBLED = 0x100  # bytes of each buffer refilled before every call
CALL_LIMIT = 10.0  # seconds per call: a hang, not a slow call, goes past it
_tables: dict[str, dict[int, str]] = {}


def wine_numbers(arch: str) -> dict[int, str]:
    """Wine 8.0's system-call numbers for ``arch`` (read once from its ntdll)."""
    if arch not in _tables:
        image = PeImage.from_file(find_wine_dir(arch) / "ntdll.dll")
        _tables[arch] = wine_syscall_numbers(image)
    return _tables[arch]


@dataclass
class Stats:
    calls: int = 0
    by_entry: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    succeeded: Counter[str] = field(default_factory=Counter)  # services answered SUCCESS
    ended: Counter[str] = field(default_factory=Counter)  # services answered by an EmulationError
    bugs: list[str] = field(default_factory=list)  # Python exceptions that escaped
    hangs: list[str] = field(default_factory=list)
    wedged: list[str] = field(default_factory=list)
    processes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.calls} calls ({dict(self.by_entry)}) in {self.seconds:.1f} s over "
            f"{self.processes} processes: {len(self.bugs)} Python exceptions, {len(self.hangs)} "
            f"hangs, {len(self.wedged)} wedged; {len(self.statuses)} distinct statuses, "
            f"{len(self.succeeded)} services answered SUCCESS, "
            f"{sum(self.ended.values())} run-ending answers"
        )


# names an OBJECT_ATTRIBUTES can carry: files the sandbox holds, directories, named objects,
# devices, odd paths, nothing, and one longer than a UNICODE_STRING allows
NAMES = (
    "\\??\\C:\\windows\\system32\\kernel32.dll",
    "\\??\\C:\\windows\\system32\\l_intl.nls",
    "\\??\\C:\\windows\\system32",
    "\\??\\C:\\heapemu\\args.exe",
    "\\??\\C:\\windows\\system32\\..\\..\\..\\etc\\passwd",
    "\\BaseNamedObjects\\fuzz",
    "\\Registry\\Machine\\Software",
    "\\Device\\Null",
    "\\??\\C:\\*",
    "",
    "\\??\\C:\\" + "a" * 40000,
)


class Target:
    """A process with the fuzzer's stubs and hostile memory: a loaded (not run) console
    program, so the sandbox's files, NLS data and image are there to be reached."""

    def __init__(self, arch: str, program: Path):
        self.proc = proc = load_program(
            program, ["args.exe"], time_limit=CALL_LIMIT, syscall_log=16
        ).proc
        self.arch = proc.arch
        ps = self.arch.ptr_size
        lines = ["number: .long 0", ".long 0"]
        if ps == 8:
            lines += ["syscall_entry:", "mov r10, rcx", "mov eax, [rip + number]", "syscall", "ret"]
        else:
            pops = 4 * MAX_ARGS
            lines += ["int2e_entry:", "mov eax, [number]", "lea edx, [esp+4]", "int 0x2e"]
            lines += [f"ret {pops}", "kifast:", "mov edx, esp", "sysenter", "ret"]
            lines += ["sysenter_entry:", "mov eax, [number]", "call kifast", f"ret {pops}"]
        module = proc.load_flat("\n".join(lines), "fuzz_stubs")
        self.number = module.symbols["number"]
        self.entries = {
            name: module.symbols[f"{name}_entry"]
            for name in (("syscall",) if ps == 8 else ("int2e", "sysenter"))
        }
        self.table = table = wine_numbers(self.arch.name)
        self.close_number = next(n for n, name in table.items() if name == "NtClose")
        proc.register_syscall_table(module.base, module.end, table)
        rw = MEM_RESERVE | MEM_COMMIT
        self.buffers = [proc.memory.allocate(0, 0x10000, rw, PAGE_READWRITE)[0] for _ in range(2)]
        self.reserved, _ = proc.memory.allocate(0, 0x10000, MEM_RESERVE, PAGE_READWRITE)
        freed, _ = proc.memory.allocate(0, 0x10000, rw, PAGE_READWRITE)
        proc.memory.free(freed, 0, MEM_RELEASE)
        self.freed = freed
        # well-formed structures past the scrambled bytes: OBJECT_ATTRIBUTES -> UNICODE_STRING
        # -> a name, an IO_STATUS_BLOCK, a LARGE_INTEGER (rewritten before every call)
        base = self.buffers[1] + 0x1000
        self.oa, self.ustr, self.iosb, self.large = base, base + 0x40, base + 0x80, base + 0xC0
        self.cells = base + 0x100  # in/out pointer cells: NULL, an address, a size
        self.name_buffer = self.buffers[1] + 0x2000  # up to 0xE000 bytes of UTF-16
        self.fixed = self._fixed_values()
        self._open_handles()

    def _fixed_values(self) -> list[int]:
        a, mask = self.arch, self.arch.ptr_mask
        values = [
            0, 1, 4, 8, 0x10, 0x14, 0x18, 0x40, 0x44, 0x48, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
            mask, mask - 1, mask - 7, 1 << (a.bits - 1), 0x7FFE0000, 0x7FFE0FFF, a.user_max,
            a.user_max + 1, a.user_max - 0xFFF, self.reserved, self.freed + 0x10,
        ]  # fmt: skip
        for buf in self.buffers:
            values += [buf, buf + 1, buf + 3, buf + 8, buf + 0x0FF8, buf + 0xFFFC, buf + 0xFFFF]
        values += [self.oa, self.oa, self.ustr, self.iosb, self.large, self.oa + 1]
        return [v & mask for v in values]

    def _write_name(self, name: str, attributes: int = 0x40) -> None:
        """OBJECT_ATTRIBUTES {size, no root, -> UNICODE_STRING -> ``name``, attributes}."""
        ps, proc = self.arch.ptr_size, self.proc
        text = name.encode("utf-16-le")
        proc.write(self.name_buffer, text)
        pack = "<HH4xQ" if ps == 8 else "<HHI"
        proc.write(self.ustr, struct.pack(pack, len(text), len(text), self.name_buffer))
        fmt = "<I4xQQI4xQQ" if ps == 8 else "<IIIIII"
        proc.write(self.oa, struct.pack(fmt, 48 if ps == 8 else 24, 0, self.ustr, attributes, 0, 0))

    def _service(self, name: str, *args: int) -> int:
        number = next(n for n, service in self.table.items() if service == name)
        entry = next(iter(self.entries))
        return self.issue(entry, number, [*args] + [0] * (MAX_ARGS - len(args)))

    def _open_handles(self) -> None:
        """Handles of every kind for the fuzz to pick (arguments named *Handle take open
        ones): a file, an image section of it, a pagefile-backed section, an NLS section."""
        out = self.cells + 24
        ptr = "<Q" if self.arch.ptr_size == 8 else "<I"

        def opened() -> int:
            return int(struct.unpack(ptr, self.proc.read(out, self.arch.ptr_size))[0])

        self._write_name(NAMES[0])  # kernel32.dll
        if self._service("NtOpenFile", out, 0x100021, self.oa, self.iosb, 5, 0x60) == 0:
            file = opened()
            # SEC_IMAGE, PAGE_EXECUTE_WRITECOPY (as Wine's loader maps DLLs)
            self._service("NtCreateSection", out, 0xF001F, 0, 0, 0x80, 0x1000000, file)
        self.proc.write(self.large, struct.pack("<q", 0x10000))
        self._service("NtCreateSection", out, 0xF001F, 0, self.large, 0x4, 0x8000000, 0)
        self._service("NtGetNlsSectionPtr", 11, 1252, 0, self.cells + 32, self.cells + 40)

    def structures(self, rng: random.Random) -> None:
        """Rewrite the well-formed structures with a random name, attributes and values."""
        ps, proc = self.arch.ptr_size, self.proc
        if not proc.memory.is_accessible(self.oa, 0x100, write=True):
            return  # released or reprotected by an earlier call
        text = rng.choice(NAMES).encode("utf-16-le")[:0xE000]
        if proc.memory.is_accessible(self.name_buffer, len(text), write=True):
            proc.write(self.name_buffer, text)
        length = min(len(text), 0xFFFF) if rng.random() < 0.9 else rng.getrandbits(16)
        pack = "<HH4xQ" if ps == 8 else "<HHI"
        buffer = self.name_buffer if rng.random() < 0.9 else self.pool(rng)
        proc.write(self.ustr, struct.pack(pack, length & 0xFFFF, length & 0xFFFF, buffer))
        root = 0 if rng.random() < 0.8 else self.pool(rng)
        attributes = rng.choice((0, 0x40, 0xC0, 0x200, rng.getrandbits(32)))
        size = (48 if ps == 8 else 24) if rng.random() < 0.9 else rng.getrandbits(32)
        fmt = "<I4xQQI4xQQ" if ps == 8 else "<IIIIII"
        proc.write(self.oa, struct.pack(fmt, size, root, self.ustr, attributes, 0, 0))
        proc.write(self.large, struct.pack("<q", rng.choice((0, -1, 1 << 62, -(10**7), 0x1000))))
        address = rng.choice((*self.buffers, self.reserved, self.freed, self.buffers[0] + 0x1234))
        size = rng.choice((0, 1, 0x1000, 0x10000, 0x12345, 0x100000, rng.getrandbits(20)))
        ptr = "<Q" if ps == 8 else "<I"
        for offset, value in ((0, 0), (8, address), (16, size)):
            proc.write(self.cells + offset, struct.pack(ptr, value & self.arch.ptr_mask))

    def pool(self, rng: random.Random) -> int:
        """One hostile argument: a fixed value most of the time, else random bits or a size."""
        r = rng.random()
        if r < 0.75:
            return self.fixed[int(r * len(self.fixed) / 0.75)]
        if r < 0.85:
            return rng.getrandbits(32)
        if r < 0.92:
            return rng.getrandbits(self.arch.bits)
        return rng.randrange(0x2000)

    def argument(self, rng: random.Random, param: str | None) -> int:
        """An argument for ``param`` (the handler's phnt name; None: unknown service): often
        one of the kind it expects (a pseudo-handle, an open handle, a writable buffer, a
        well-formed OBJECT_ATTRIBUTES, a plausible class or flag), else a hostile one."""
        if param is None or rng.random() < 0.2:
            return self.pool(rng)
        mask = self.arch.ptr_mask
        if param in ("ProcessHandle", "SourceProcessHandle", "TargetProcessHandle"):
            return mask  # NtCurrentProcess()
        if param == "ThreadHandle":
            return mask - 1  # NtCurrentThread()
        if param.endswith("Handle") or param in ("Handle", "Event", "SourceHandle"):
            handles = sorted(self.proc.objects.handles())
            return rng.choice(handles) if handles else self.pool(rng)
        if param == "ObjectAttributes":
            return self.oa
        if param == "IoStatusBlock":
            return self.iosb
        if param in ("Timeout", "DelayInterval", "ByteOffset", "MaximumSize", "SectionOffset"):
            return self.large
        if param.endswith("InformationClass") or param in ("Type", "Id"):
            return rng.randrange(0, 80)
        if param == "DesiredAccess":  # generic, specific, MAXIMUM_ALLOWED, nothing
            return rng.choice((0x80000000, 0x120089, 0x100020, 0x02000000, 0xF001F, 0x40000000, 0))
        if param in ("ShareAccess", "CreateDisposition"):
            return rng.randrange(6)
        if param in ("OpenOptions", "CreateOptions"):  # FILE_SYNCHRONOUS_IO_NONALERT, ...
            return rng.choice((0, 0x20, 0x40, 0x60, 0x1, 0x4000))
        if param == "AllocationAttributes":  # SEC_IMAGE, SEC_COMMIT, SEC_RESERVE
            return rng.choice((0x1000000, 0x8000000, 0x4000000, 0x800000))
        if param in ("ZeroBits", "HandleAttributes", "Options", "InheritDisposition", "Index"):
            return rng.choice((0, 0, 1, 2, 0x20))
        if param in ("AllocationType", "FreeType"):
            return rng.choice((0x1000, 0x2000, 0x3000, 0x4000, 0x8000, 0x80000, 0x102000))
        if param.endswith("Protect") or param.endswith("Protection"):
            return rng.choice((0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x104, 0x204))
        if param == "BaseAddress":  # in/out PVOID*: NULL or an address (rewritten per call)
            return self.cells + rng.choice((0, 8))
        if param in ("RegionSize", "ViewSize"):  # in/out SIZE_T*: a size
            return self.cells + 16
        if "Length" in param or "Size" in param or param in ("len", "Count", "DataSize"):
            return rng.choice((0, 4, 8, 0x10, 0x30, 0x100, 0x1000, 0x10000))
        if param in ("OldProtect", "ReturnLength"):
            return rng.choice(self.buffers) + rng.choice((0x200, 0x800))
        if param.startswith(("P", "Buffer")) or "Information" in param or "Buffer" in param:
            return rng.choice(self.buffers) + rng.choice((0x100, 0x400, 0x800))
        return self.pool(rng)

    def scramble(self, rng: random.Random) -> None:
        """Fill the buffers' first bytes with pool values (pointers to pointers are hostile)."""
        ps = self.arch.ptr_size
        for buf in self.buffers:
            if not self.proc.memory.is_accessible(buf, SCRAMBLED, write=False):
                continue  # the fuzz released or decommitted it: fine, it stays a bad pointer
            words = [self.pool(rng) for _ in range(SCRAMBLED // ps)]
            self.proc.write(buf, struct.pack(f"<{len(words)}{'Q' if ps == 8 else 'I'}", *words))

    def issue(self, entry: str, number: int, args: list[int]) -> int:
        self.proc.write(self.number, number.to_bytes(4, "little"))
        return self.proc.call(self.entries[entry], *args, time_limit=CALL_LIMIT)

    def answers(self) -> bool:
        """A fresh simple call gets its ordinary answer."""
        try:
            return self.issue(next(iter(self.entries)), self.close_number, [0] * MAX_ARGS) == (
                NtStatus.INVALID_HANDLE
            )
        except EmulationError:
            return False


def fuzz(arch: str, calls: int, seed: int) -> Stats:
    """``calls`` random system calls on ``arch`` (seeded: the same seed, the same calls)."""
    from programbuild import build

    program = build("args.exe", arch)
    rng = random.Random(seed)
    stats = Stats()
    start = time.monotonic()
    target: Target | None = None
    for i in range(calls):
        if target is None or i % PROCESS_CALLS == 0:
            target = Target(arch, program)
            stats.processes += 1
            numbers = sorted(target.table)
            served = [n for n in numbers if target.table[n] in HANDLERS]
        r = rng.random()
        if r < 0.75:  # mostly the services heapemu serves: their handlers are what is tested
            number = rng.choice(served)
        elif r < 0.97:
            number = rng.choice(numbers)
        else:  # outside the table: the unhandled-service path
            number = rng.choice((len(numbers) + rng.randrange(64), rng.getrandbits(12), 0xFFFF))
        entry = rng.choice(sorted(target.entries))
        name = target.table.get(number, f"0x{number:x}")
        handler = HANDLERS.get(name)
        params = list(handler.params) if handler else []
        args = [
            target.argument(rng, params[k] if k < len(params) else None) for k in range(MAX_ARGS)
        ]
        target.scramble(rng)
        target.structures(rng)
        label = f"seed {seed} call {i}: {entry} {name}({', '.join(hex(a) for a in args[:6])}, ...)"
        stats.calls += 1
        stats.by_entry[entry] += 1
        try:
            status = target.issue(entry, number, args)
            stats.statuses[f"0x{status & 0xFFFFFFFF:08x}"] += 1
            if status == 0:
                stats.succeeded[name] += 1
        except EmulationError as e:  # heapemu's typed answer: a run-ending service or a fault
            if "wall-clock" in e.kind:
                stats.hangs.append(f"{label}: {e.kind}")
            stats.ended[name] += 1
        except Exception as e:  # a bug: a Python exception out of a handler
            line = traceback.format_exception_only(e)[-1].strip()
            stats.bugs.append(f"{label}: {line}")
            target = None
            continue
        if not target.answers():
            stats.wedged.append(label)
            target = None
    stats.seconds = time.monotonic() - start
    return stats
