"""The replay tape: operations as fixed 24-byte records, the form the driver reads in place.

Record (little-endian, the same bytes on x86 and x64)::

    +0  u32 kind     OpKind (the driver branches on it)
    +4  u32 flags    HEAP_* flags passed to the call
    +8  u32 id       alloc: the new block's slot; otherwise the block's slot
    +12 u32 new_id   realloc: the slot the block goes to on success
    +16 u64 size     alloc/realloc (x86 reads the low dword; larger sizes are refused there)

A Tape is built once from any operations (Ops, tuples, a parsed or synthetic trace, consumed
lazily, so a million operations never exist as Python objects at once) and holds only its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from emu.heap.replay.driver import RECORD_SIZE
from emu.heap.replay.workload import KIND_NAMES, MAX_ID, Op, OpKind, OpLike, TraceError, as_op

RECORD = struct.Struct("<IIIIQ")
assert RECORD.size == RECORD_SIZE


class Tape:
    """Encoded operations: ``data`` (count * 24 bytes), the largest ID and size used."""

    __slots__ = ("count", "data", "max_id", "max_size")

    def __init__(self, data: bytes | bytearray, count: int, max_id: int, max_size: int):
        self.data = data
        self.count = count
        self.max_id = max_id  # -1 when no op names a block
        self.max_size = max_size

    @classmethod
    def from_ops(cls, ops: Iterable[OpLike] | Tape) -> Tape:
        """Encode ops (Ops or tuples); errors name the operation's index."""
        if isinstance(ops, Tape):
            return ops
        buf = bytearray()
        pack = RECORD.pack
        max_id = -1
        max_size = 0
        n = 0
        for n, item in enumerate(ops, 1):
            try:
                op = item if isinstance(item, Op) else as_op(item)
                buf += pack(op.kind, op.flags, op.id, op.new_id, op.size)
            except (TraceError, struct.error, TypeError, ValueError) as e:
                raise TraceError(f"cannot encode {item!r}: {e}", where="op", line=n - 1) from None
            if op.kind != OpKind.VALIDATE:
                if op.id > max_id:
                    max_id = op.id
                if op.kind == OpKind.REALLOC and op.new_id > max_id:
                    max_id = op.new_id
            if op.size > max_size:
                max_size = op.size
        if max_id > MAX_ID:
            raise TraceError(f"id {max_id} out of range 0..{MAX_ID}", where="op")
        return cls(buf, n, max_id, max_size)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"<Tape {self.count} ops, ids < {self.max_id + 1}, {len(self.data)} bytes>"

    def head(self, n: int) -> Tape:
        """The first ``n`` operations (limits kept: the table stays large enough)."""
        n = max(0, min(n, self.count))
        return Tape(self.data[: n * RECORD_SIZE], n, self.max_id, self.max_size)

    def op(self, index: int) -> Op:
        if not 0 <= index < self.count:
            raise IndexError(f"op {index} of a {self.count}-op tape")
        kind, flags, id_, new_id, size = RECORD.unpack_from(self.data, index * RECORD_SIZE)
        return Op(OpKind(kind), id_, size, new_id, flags)

    def __iter__(self) -> Iterator[Op]:
        for kind, flags, id_, new_id, size in RECORD.iter_unpack(self.data):
            yield Op(OpKind(kind), id_, size, new_id, flags)

    def kinds(self) -> bytes:
        """The opcode of every record, one byte each (for summaries without decoding Ops)."""
        return bytes(self.data[0::RECORD_SIZE])

    def first_size_over(self, limit: int) -> int:
        """Index of the first op whose size exceeds ``limit`` (-1 if none)."""
        for i, (_, _, _, _, size) in enumerate(RECORD.iter_unpack(self.data)):
            if size > limit:
                return i
        return -1

    def describe(self, index: int) -> str:
        """``op #12 (free 7)`` for messages."""
        try:
            return f"op #{index} ({self.op(index)})"
        except (IndexError, ValueError):
            return f"op #{index}"


__all__ = ["KIND_NAMES", "RECORD", "Tape"]
