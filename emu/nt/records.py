"""What the kernel keeps about the system calls it served: ``proc.syscalls``.

Every call is counted, by name and by failure, for the life of the process; the records
themselves are a ring of the last ``keep`` calls (``DEFAULT_SYSCALL_LOG``), so a long run costs
the same host memory after 10,000 calls as after 10 million. ``keep=None`` is the full log
(opt-in: ``Process(arch, syscall_log=None)`` or ``proc.syscalls.keep = None``).

Records are numbered from 0 in the order they were made (``SyscallRecord.seq``), and the log is
indexed by those numbers: ``len(proc.syscalls)`` is the number of calls made so far, so the
usual ``n = len(proc.syscalls); ...; proc.syscalls[n:]`` gives the calls made since, as long as
the ring still holds them. A slice starting before the oldest kept record starts there
(``proc.syscalls.first`` says where); an int index of a dropped record is an IndexError.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, overload

from emu.win.ntdefs import status_name

DEFAULT_SYSCALL_LOG = 10_000  # records kept by default (about 1 KiB each: ~10 MiB at most)


@dataclass
class SyscallRecord:
    """One system call as the kernel saw it: ``proc.syscalls`` keeps them in order."""

    seq: int
    name: str
    number: int
    args: dict[str, int]
    status: int
    pc: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    def __str__(self) -> str:
        a = ", ".join(f"{k}=0x{v:x}" for k, v in self.args.items())
        d = "".join(
            f" {k}={v:#x}" if isinstance(v, int) else f" {k}={v}" for k, v in self.details.items()
        )
        return f"#{self.seq} {self.name}({a}) -> {self.status_name}{d}"


def _check_keep(keep: int | None) -> int | None:
    if keep is not None and (not isinstance(keep, int) or keep < 0):
        raise ValueError(f"syscall_log: a number of records >= 0, or None for all (got {keep!r})")
    return keep


class SyscallLog:
    """``proc.syscalls``: per-call counters for the whole run and a ring of the last ``keep``
    records (None: every record). See the module docstring for the indexing."""

    def __init__(self, keep: int | None = DEFAULT_SYSCALL_LOG):
        self._keep = _check_keep(keep)
        self._records: deque[SyscallRecord] = deque(maxlen=keep)
        self._total = 0
        self.counts: dict[str, int] = {}  # name -> calls, for the whole run
        self.failed: dict[str, int] = {}  # name -> calls answered with an error NTSTATUS
        self.last: SyscallRecord | None = None  # the newest record, even with keep=0

    @property
    def keep(self) -> int | None:
        return self._keep

    @keep.setter
    def keep(self, keep: int | None) -> None:
        self._keep = _check_keep(keep)
        self._records = deque(self._records, maxlen=keep)  # keeps the newest that fit

    @property
    def first(self) -> int:
        """The number (seq) of the oldest record still kept."""
        return self._total - len(self._records)

    @property
    def dropped(self) -> int:
        """Records the ring has let go (their calls are still counted)."""
        return self.first

    def append(self, record: SyscallRecord) -> None:
        self._total += 1
        self.counts[record.name] = self.counts.get(record.name, 0) + 1
        if record.status & 0xC0000000 == 0xC0000000:  # severity "error"
            self.failed[record.name] = self.failed.get(record.name, 0) + 1
        self._records.append(record)
        self.last = record

    def __len__(self) -> int:
        """System calls made so far (the next record's seq), kept or not."""
        return self._total

    def __iter__(self) -> Iterator[SyscallRecord]:
        return iter(self._records)

    def __bool__(self) -> bool:
        return self._total > 0

    @overload
    def __getitem__(self, index: int) -> SyscallRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[SyscallRecord]: ...
    def __getitem__(self, index: int | slice) -> SyscallRecord | list[SyscallRecord]:
        first = self.first
        if isinstance(index, slice):
            start, stop, step = index.indices(self._total)
            if step == 1:
                lo = max(start, first)
                return list(islice(self._records, lo - first, max(lo, stop) - first))
            return [self._records[i - first] for i in range(start, stop, step) if i >= first]
        i = index + self._total if index < 0 else index
        if not 0 <= i < self._total:
            raise IndexError(f"system call #{index}: {self._total} made so far")
        if i < first:
            raise IndexError(
                f"system call #{i} was dropped: proc.syscalls keeps the last {self._keep} records "
                "(Process(syscall_log=None) keeps them all)"
            )
        return self._records[i - first]

    def copy(self) -> SyscallLog:
        """An independent log with the same counters and records (records are never changed
        once made, so they are shared)."""
        other = SyscallLog(self._keep)
        other.assign(self)
        return other

    def assign(self, other: SyscallLog) -> None:
        """Become a copy of ``other`` (snapshot restore: in place, observers may hold us)."""
        self._keep = other._keep
        self._records = deque(other._records, maxlen=other._keep)
        self._total = other._total
        self.counts = dict(other.counts)
        self.failed = dict(other.failed)
        self.last = other.last

    def __repr__(self) -> str:
        return f"<SyscallLog {self._total} calls, {len(self._records)} kept (keep={self._keep})>"
