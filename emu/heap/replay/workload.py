"""Allocation traces: heapemu's operations, a plain text format, and a synthetic generator.

An operation names blocks by *ID*: a small non-negative integer, the slot of a table of block
pointers that a replay maintains (``alloc`` fills a slot, ``free`` empties it, ``realloc`` moves
a block from one slot to another on success). Operations, with their tuple and text forms::

    Op(ALLOC, id, size, flags=f)       ("alloc", SIZE, ID[, FLAGS])        alloc SIZE -> ID
    Op(FREE, id, flags=f)              ("free", ID[, FLAGS])               free ID
    Op(REALLOC, id, size, new_id, f)   ("realloc", ID, SIZE, NEW[, FLAGS]) realloc ID SIZE -> NEW
    Op(SIZE, id, flags=f)              ("size", ID[, FLAGS])               size ID
    Op(VALIDATE, flags=f)              ("validate"[, FLAGS])               validate

Text lines may end with ``flags=N``; ``#`` starts a comment; numbers are decimal or ``0x`` hex.
:func:`parse_trace` names the line of every error, and by default (``strict``) also refuses
IDs used while not live, so a trace means what it says. :func:`synthetic` generates a seeded
workload (size distribution, exponential/uniform/fixed lifetimes, reallocs, size queries).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple, TextIO

import asm

MAX_ID = 0xFFFF_FFFE  # IDs are 32-bit in the tape; 0xFFFFFFFF is reserved
MAX_SIZE = (1 << 64) - 1
MAX_FLAGS = 0xFFFF_FFFF


class OpKind(IntEnum):
    """Operation codes; also the tape's opcodes (the driver branches on them)."""

    ALLOC = 0
    FREE = 1
    REALLOC = 2
    SIZE = 3
    VALIDATE = 4


KIND_NAMES = {k: k.name.lower() for k in OpKind}
_KIND_BY_NAME = {v: k for k, v in KIND_NAMES.items()}


class Op(NamedTuple):
    """One operation: ``id`` is the new block's slot (alloc) or the block operated on.
    (A NamedTuple: immutable, and ~4x cheaper to create than a frozen dataclass, which counts
    when a synthetic trace has a million of them.)"""

    kind: OpKind
    id: int = 0
    size: int = 0
    new_id: int = 0  # realloc: the slot the (possibly moved) block goes to
    flags: int = 0

    def __str__(self) -> str:
        return format_op(self)


OpLike = Op | tuple[object, ...]


class TraceError(ValueError):
    """A malformed trace; ``line`` is 1-based (text) or the 0-based op index (tuples)."""

    def __init__(self, message: str, *, where: str = "", line: int | None = None, text: str = ""):
        self.line = line
        self.text = text
        prefix = f"{where}:{line}: " if line is not None else f"{where}: " if where else ""
        suffix = f"\n    {text.strip()}" if text.strip() else ""
        super().__init__(f"{prefix}{message}{suffix}")


# ---------------------------------------------------------------------- constructors
def alloc(size: int, id: int, flags: int = 0) -> Op:
    return Op(OpKind.ALLOC, id, size, 0, flags)


def free(id: int, flags: int = 0) -> Op:
    return Op(OpKind.FREE, id, 0, 0, flags)


def realloc(id: int, size: int, new_id: int, flags: int = 0) -> Op:
    return Op(OpKind.REALLOC, id, size, new_id, flags)


def size(id: int, flags: int = 0) -> Op:
    return Op(OpKind.SIZE, id, 0, 0, flags)


def validate(flags: int = 0) -> Op:
    return Op(OpKind.VALIDATE, 0, 0, 0, flags)


# tuple arguments after the name, per kind (the last, flags, is optional)
_ARITY = {
    OpKind.ALLOC: ("size", "id", "flags"),
    OpKind.FREE: ("id", "flags"),
    OpKind.REALLOC: ("id", "size", "new_id", "flags"),
    OpKind.SIZE: ("id", "flags"),
    OpKind.VALIDATE: ("flags",),
}
_LIMITS = {"size": MAX_SIZE, "id": MAX_ID, "new_id": MAX_ID, "flags": MAX_FLAGS}


def _checked(kind: OpKind, fields: dict[str, int]) -> Op:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TraceError(f"{KIND_NAMES[kind]}: {name} must be an integer, not {value!r}")
        if not 0 <= value <= _LIMITS[name]:
            raise TraceError(f"{KIND_NAMES[kind]}: {name} {value} out of range 0..{_LIMITS[name]}")
    return Op(kind, **fields)


def as_op(item: OpLike) -> Op:
    """An Op from an Op or a tuple such as ``("alloc", 0x100, 3)`` (see the module doc)."""
    if isinstance(item, Op):
        return item
    if not isinstance(item, tuple) or not item:
        raise TraceError(f"an operation must be an Op or a non-empty tuple, not {item!r}")
    head = item[0]
    kind = _KIND_BY_NAME.get(head) if isinstance(head, str) else None
    if kind is None and isinstance(head, int):
        kind = OpKind(head) if head in OpKind._value2member_map_ else None
    if kind is None:
        raise TraceError(f"unknown operation {head!r} (expected {', '.join(_KIND_BY_NAME)})")
    names = _ARITY[kind]
    args = item[1:]
    need = len(names) - 1  # flags is optional
    if not need <= len(args) <= len(names):
        usage = " ".join(n.upper() for n in names[:-1])
        raise TraceError(f"{KIND_NAMES[kind]} takes {usage} [FLAGS], got {args!r}")
    return _checked(kind, dict(zip(names, args, strict=False)))  # type: ignore[arg-type]


def as_ops(items: Iterable[OpLike]) -> Iterator[Op]:
    """Normalise a sequence of Ops/tuples; errors name the operation's index."""
    for i, item in enumerate(items):
        try:
            yield as_op(item)
        except TraceError as e:
            raise TraceError(str(e), where="op", line=i) from None


# ---------------------------------------------------------------------- text format
def format_op(op: Op) -> str:
    """One line of the text format (no newline)."""
    k = op.kind
    if k == OpKind.ALLOC:
        s = f"alloc {op.size:#x} -> {op.id}"
    elif k == OpKind.FREE:
        s = f"free {op.id}"
    elif k == OpKind.REALLOC:
        s = f"realloc {op.id} {op.size:#x} -> {op.new_id}"
    elif k == OpKind.SIZE:
        s = f"size {op.id}"
    else:
        s = "validate"
    return f"{s} flags={op.flags:#x}" if op.flags else s


def format_trace(ops: Iterable[OpLike]) -> Iterator[str]:
    """Lines of the text format, each with its newline."""
    for op in as_ops(ops):
        yield format_op(op) + "\n"


def write_trace(ops: Iterable[OpLike], path: str | Path) -> int:
    """Write ops as a text trace; returns the number of operations written."""
    n = 0
    with open(path, "w") as f:
        for line in format_trace(ops):
            f.write(line)
            n += 1
    return n


def _number(tok: str, what: str) -> int:
    try:
        value = int(tok, 0)
    except ValueError:
        raise ValueError(f"{what}: {tok!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{what}: {tok!r} is negative")
    return value


# text syntax per kind: the tokens after the name, with "->" where it must appear
_SYNTAX = {
    OpKind.ALLOC: ("size", "->", "id"),
    OpKind.FREE: ("id",),
    OpKind.REALLOC: ("id", "size", "->", "new_id"),
    OpKind.SIZE: ("id",),
    OpKind.VALIDATE: (),
}


def parse_line(line: str) -> Op | None:
    """One line of the text format; None for blank and comment lines. Raises ValueError."""
    toks = line.split("#", 1)[0].split()
    if not toks:
        return None
    kind = _KIND_BY_NAME.get(toks[0].lower())
    if kind is None:
        raise ValueError(f"unknown operation {toks[0]!r} (expected {', '.join(_KIND_BY_NAME)})")
    args = toks[1:]
    fields = {"flags": 0}
    if args and args[-1].lower().startswith("flags="):
        fields["flags"] = _number(args.pop()[6:], "flags")
    syntax = _SYNTAX[kind]
    usage = " ".join([KIND_NAMES[kind], *(s.upper() if s != "->" else s for s in syntax)])
    if len(args) != len(syntax):
        raise ValueError(f"expected '{usage} [flags=N]'")
    for tok, want in zip(args, syntax, strict=True):
        if want == "->":
            if tok != "->":
                raise ValueError(f"expected '->' where {tok!r} is (syntax: '{usage}')")
        else:
            fields[want] = _number(tok, want)
    try:
        return _checked(kind, fields)
    except TraceError as e:
        raise ValueError(str(e)) from None


def _open(source: str | Path | TextIO | Iterable[str]) -> tuple[Iterable[str], str, bool]:
    """(lines, name for messages, whether we opened a file that we must close)."""
    if isinstance(source, Path):
        return source.open(), str(source), True
    if isinstance(source, str):
        # a single line naming an existing file is a path; anything else is trace text
        if "\n" not in source and source.strip() and Path(source).is_file():
            return Path(source).open(), source, True
        return source.splitlines(), "<trace>", False
    return source, str(getattr(source, "name", "<trace>")), False


def iter_trace(source: str | Path | TextIO | Iterable[str], *, strict: bool = True) -> Iterator[Op]:
    """Parse a text trace lazily: a Path, an open file, lines, or a string (trace text, or
    the name of an existing file).

    ``strict``: also refuse an ID used while not live, allocated while live, or a realloc
    onto another live ID — each error names the line and, for IDs, where it was defined."""
    lines, where, owned = _open(source)
    live: dict[int, int] = {}  # id -> line that made it live
    try:
        for lineno, text in enumerate(lines, 1):
            try:
                op = parse_line(text)
            except ValueError as e:
                raise TraceError(str(e), where=where, line=lineno, text=text) from None
            if op is None:
                continue
            if strict:
                problem = _liveness(op, live, lineno)
                if problem:
                    raise TraceError(problem, where=where, line=lineno, text=text)
            yield op
    finally:
        if owned:
            lines.close()  # type: ignore[attr-defined]


def _liveness(op: Op, live: dict[int, int], lineno: int) -> str:
    k = op.kind
    if k in (OpKind.FREE, OpKind.SIZE, OpKind.REALLOC) and op.id not in live:
        return f"{KIND_NAMES[k]}: id {op.id} is not live (never allocated, or already freed)"
    if k == OpKind.ALLOC:
        if op.id in live:
            return f"alloc: id {op.id} is already live (since line {live[op.id]})"
        live[op.id] = lineno
    elif k == OpKind.FREE:
        del live[op.id]
    elif k == OpKind.REALLOC:
        if op.new_id != op.id and op.new_id in live:
            return f"realloc: id {op.new_id} is already live (since line {live[op.new_id]})"
        del live[op.id]
        live[op.new_id] = lineno
    return ""


def parse_trace(source: str | Path | TextIO | Iterable[str], *, strict: bool = True) -> list[Op]:
    """:func:`iter_trace` into a list."""
    return list(iter_trace(source, strict=strict))


def check_liveness(ops: Iterable[OpLike]) -> None:
    """The ``strict`` checks of :func:`iter_trace` for Ops/tuples (errors name the op index)."""
    live: dict[int, int] = {}
    for i, op in enumerate(as_ops(ops)):
        problem = _liveness(op, live, i)
        if problem:
            raise TraceError(problem.replace("since line", "since op"), where="op", line=i)


def renumber(ops: Iterable[OpLike]) -> Iterator[Op]:
    """The same trace with dense IDs (freed IDs reused), e.g. for traces whose IDs are pointer
    values: a replay's table then holds only as many slots as blocks were ever live at once.

    Slot 0 stands for every ID that is not live (it is never allocated into, so it always holds
    NULL, as a dead ID's slot does); reallocs are assumed to succeed."""
    dead = 0
    slot: dict[int, int] = {}
    pool: list[int] = []
    top = 1

    def take(old: int) -> int:
        nonlocal top
        if pool:
            new = pool.pop()
        else:
            new, top = top, top + 1
        slot[old] = new
        return new

    def release(old: int) -> int:
        new = slot.pop(old, dead)
        if new != dead:
            pool.append(new)
        return new

    for op in as_ops(ops):
        k = op.kind
        if k == OpKind.ALLOC:
            release(op.id)
            yield Op(k, take(op.id), op.size, 0, op.flags)
        elif k == OpKind.FREE:
            yield Op(k, release(op.id), 0, 0, op.flags)
        elif k == OpKind.SIZE:
            yield Op(k, slot.get(op.id, dead), 0, 0, op.flags)
        elif k == OpKind.REALLOC:
            src = slot.get(op.id, dead)
            if op.new_id == op.id:
                dst = src if src != dead else take(op.id)
            else:
                release(op.new_id)
                dst = take(op.new_id)
                if src != dead:
                    release(op.id)
            yield Op(k, src, op.size, dst, op.flags)
        else:
            yield op


# ---------------------------------------------------------------------- synthetic workloads
def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))) if hi > lo else lo


def size_sampler(spec: str, rng: random.Random) -> Callable[[], int]:
    """A function drawing sizes from a named distribution:

    ``small``    log-uniform 8..512 bytes
    ``typical``  85% log-uniform 8..1 KiB, 13% 1..32 KiB, 2% 32..256 KiB (no system calls
                 after warm-up: the usual shape of a program's allocations)
    ``mixed``    as the native differential scripts: 55% 1..0x100, 30% ..0x2000, 12% ..0x40000,
                 3% at or above the large-block threshold (own regions: system calls)
    ``fixed:N``, ``uniform:LO:HI``, ``loguniform:LO:HI``
    """
    name, _, rest = spec.partition(":")
    try:
        p = [int(x, 0) for x in rest.split(":")] if rest else []
    except ValueError:
        p = [-1, -1, -1]  # falls through to the error below
    if name == "fixed" and len(p) == 1 and p[0] >= 0:
        return lambda: p[0]
    if name == "uniform" and len(p) == 2 and 0 <= p[0] <= p[1]:
        return lambda: rng.randint(p[0], p[1])
    if name == "loguniform" and len(p) == 2 and 1 <= p[0] <= p[1]:
        return lambda: _log_uniform(rng, p[0], p[1])
    if name == "small" and not p:
        return lambda: _log_uniform(rng, 8, 512)
    if name == "typical" and not p:

        def typical() -> int:
            r = rng.random()
            if r < 0.85:
                return _log_uniform(rng, 8, 1024)
            if r < 0.98:
                return _log_uniform(rng, 1024, 32 * 1024)
            return _log_uniform(rng, 32 * 1024, 256 * 1024)

        return typical
    if name == "mixed" and not p:
        large = asm.CONSTANTS["HEAP_MIN_LARGE_BLOCK_SIZE"]  # the builtin heap's threshold

        def mixed() -> int:
            r = rng.random()
            if r < 0.55:
                return rng.randint(1, 0x100)
            if r < 0.85:
                return rng.randint(0x100, 0x2000)
            if r < 0.97:
                return rng.randint(0x2000, 0x40000)
            return rng.randint(large - 8, 0x120000)

        return mixed
    raise ValueError(
        f"unknown size distribution {spec!r}: expected small, typical, mixed, fixed:N, "
        "uniform:LO:HI or loguniform:LO:HI"
    )


@dataclass(frozen=True)
class Workload:
    """Parameters of a synthetic workload (every field has a usable default)."""

    ops: int = 10_000
    seed: int = 0
    sizes: str = "typical"  # see size_sampler
    lifetime: float = 200.0  # mean lifetime of a block, in operations
    lifetimes: str = "exp"  # "exp" (exponential), "uniform" (1..2*mean), "fixed"
    max_live: int = 1_000_000  # a block is freed early when this many are live
    realloc: float = 0.05  # share of block deaths that are reallocs (new size, new ID)
    size_queries: float = 0.02  # share of operations that are RtlSizeHeap of a live block
    validate_every: int = 0  # a whole-heap RtlValidateHeap every N operations (0: never)
    flags: int = 0  # flags of every alloc/realloc
    drain: bool = False  # after ``ops`` operations, free every block still live


def _lifetime(w: Workload, rng: random.Random) -> int:
    if w.lifetimes == "exp":
        return 1 + int(rng.expovariate(1.0 / w.lifetime))
    if w.lifetimes == "uniform":
        return rng.randint(1, max(1, int(2 * w.lifetime)))
    if w.lifetimes == "fixed":
        return max(1, int(w.lifetime))
    raise ValueError(f"unknown lifetime distribution {w.lifetimes!r}: exp, uniform or fixed")


def synthetic(workload: Workload | None = None, **fields: object) -> Iterator[Op]:
    """A seeded synthetic trace: ``synthetic(ops=100_000, seed=1, sizes="small")``.

    Each operation either queries a random live block's size, ends the earliest-dying block
    (free, or realloc into a fresh ID), or allocates a block with a drawn lifetime. IDs are
    reused (smallest table); every trace passes :func:`check_liveness`."""
    w = workload or Workload(**fields)  # type: ignore[arg-type]
    if workload is not None and fields:
        raise TypeError("pass a Workload or its fields, not both")
    rng = random.Random(w.seed)
    sizes = size_sampler(w.sizes, rng)
    if w.lifetimes not in ("exp", "uniform", "fixed") or not w.lifetime > 0:
        raise ValueError(f"lifetimes must be exp, uniform or fixed with a mean > 0, not {w}")
    return _synthetic(w, rng, sizes)


def _synthetic(w: Workload, rng: random.Random, sizes: Callable[[], int]) -> Iterator[Op]:
    deaths: list[tuple[int, int]] = []  # (time of death, id)
    live: list[int] = []  # for uniform choice in size queries
    pos: dict[int, int] = {}
    pool: list[int] = []
    top = 0

    def take() -> int:
        nonlocal top
        if pool:
            return pool.pop()
        top += 1
        return top - 1

    def add(i: int, t: int) -> None:
        pos[i] = len(live)
        live.append(i)
        heapq.heappush(deaths, (t + _lifetime(w, rng), i))

    def remove(i: int) -> None:
        j = pos.pop(i)
        last = live.pop()
        if last != i:
            live[j] = last
            pos[last] = j
        pool.append(i)

    for t in range(w.ops):
        if w.validate_every and t % w.validate_every == w.validate_every - 1:
            yield Op(OpKind.VALIDATE, flags=w.flags)
            continue
        if live and rng.random() < w.size_queries:
            yield Op(OpKind.SIZE, live[rng.randrange(len(live))])
        elif live and (deaths[0][0] <= t or len(live) >= w.max_live):
            _, i = heapq.heappop(deaths)
            if rng.random() < w.realloc:
                new = take()
                yield Op(OpKind.REALLOC, i, sizes(), new, w.flags)
                remove(i)
                add(new, t)
            else:
                yield Op(OpKind.FREE, i)
                remove(i)
        else:
            i = take()
            yield Op(OpKind.ALLOC, i, sizes(), 0, w.flags)
            add(i, t)
    if w.drain:
        for _, i in sorted(deaths):
            yield Op(OpKind.FREE, i)
