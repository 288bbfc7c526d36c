"""What the program writes to its standard output and error: captured once, with a bound.

Each stream is one :class:`OutputCapture`: the first ``limit`` bytes are kept in memory
(``DEFAULT_OUTPUT_LIMIT``, 16 MiB per stream; ``None`` keeps everything), the rest are counted
(``truncated``) and dropped, unless a ``sink`` is given: a binary file every byte also goes to
as it is written (``heapemu exec`` passes the host's own stdout/stderr through this way;
``load_program(..., stdout_sink=open(PATH, "wb"))`` spills to a file), so nothing is lost and
memory stays bounded. System-call records keep only a short preview of what was written.
"""

from __future__ import annotations

import copy
from typing import IO, Any

DEFAULT_OUTPUT_LIMIT = 16 << 20  # bytes of each stream kept in memory
PREVIEW_BYTES = 64  # what a SyscallRecord of NtWriteFile keeps of the data


def preview(data: bytes) -> str:
    """The start of ``data`` as text, for a system-call record."""
    text = data[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    return text + "..." if len(data) > PREVIEW_BYTES else text


class OutputCapture:
    """One standard stream: the first ``limit`` bytes in memory (None: all), every byte to
    ``sink`` too when there is one."""

    def __init__(self, limit: int | None = DEFAULT_OUTPUT_LIMIT, sink: IO[bytes] | None = None):
        if limit is not None and limit < 0:
            raise ValueError(f"output limit: a number of bytes >= 0, or None (got {limit})")
        self.limit = limit
        self.sink = sink
        self._kept = bytearray()
        self.total = 0  # bytes written, kept or not

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = len(data) if self.limit is None else max(0, self.limit - len(self._kept))
        if room:
            self._kept += data[:room]
        if self.sink is not None:
            self.sink.write(data)
            self.sink.flush()

    @property
    def truncated(self) -> int:
        """Bytes written but not kept in memory (they went to the sink, if any)."""
        return self.total - len(self._kept)

    def getvalue(self) -> bytes:
        """The kept bytes (the first ``limit``)."""
        return bytes(self._kept)

    def __bytes__(self) -> bytes:
        return self.getvalue()

    def __len__(self) -> int:
        return len(self._kept)

    def __deepcopy__(self, memo: dict[int, Any]) -> OutputCapture:
        # snapshots copy the bytes; the sink is outside the process and stays shared
        other = copy.copy(self)
        other._kept = bytearray(self._kept)
        return other

    def __repr__(self) -> str:
        return f"<OutputCapture {self.total} bytes written, {len(self._kept)} kept>"
