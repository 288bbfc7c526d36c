"""Trace formats and the synthetic generator (emu/workload.py), and the tape encoding."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import (
    Op,
    OpKind,
    TraceError,
    Workload,
    alloc,
    as_op,
    as_ops,
    check_liveness,
    format_trace,
    free,
    iter_trace,
    parse_trace,
    realloc,
    renumber,
    size,
    size_sampler,
    synthetic,
    validate,
    write_trace,
)

SAMPLE = """\
# a comment line
alloc 0x100 -> 0
alloc 32 -> 1          # decimal size, trailing comment
realloc 0 0x200 -> 2
size 2 flags=0x1
free 1
validate
alloc 16 -> 1 flags=0x8
"""


def test_parse_sample() -> None:
    assert parse_trace(SAMPLE) == [
        alloc(0x100, 0),
        alloc(32, 1),
        realloc(0, 0x200, 2),
        size(2, flags=1),
        free(1),
        validate(),
        alloc(16, 1, flags=8),
    ]


def test_text_round_trip(tmp_path: Path) -> None:
    ops = list(synthetic(ops=3000, seed=5, sizes="mixed", validate_every=700, flags=0))
    ops.append(alloc(0x40, 10_000, flags=0x8))
    assert parse_trace("".join(format_trace(ops))) == ops
    path = tmp_path / "trace.txt"
    assert write_trace(ops, path) == len(ops)
    assert parse_trace(path) == ops
    assert parse_trace(str(path)) == ops
    with path.open() as f:
        assert list(iter_trace(f)) == ops


def test_tuples_and_dataclasses_agree() -> None:
    tuples = [("alloc", 0x20, 0), ("size", 0), ("realloc", 0, 0x40, 1, 0x10), ("free", 1),
              ("validate",), (OpKind.ALLOC, 8, 2)]  # fmt: skip
    assert list(as_ops(tuples)) == [
        alloc(0x20, 0),
        size(0),
        realloc(0, 0x40, 1, flags=0x10),
        free(1),
        validate(),
        alloc(8, 2),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("allocate 16 -> 1", "unknown operation 'allocate'"),
        ("alloc 16 1", "expected 'alloc SIZE -> ID [flags=N]'"),
        ("alloc 16 => 1", "expected '->' where '=>' is"),
        ("alloc sixteen -> 1", "size: 'sixteen' is not a number"),
        ("alloc -16 -> 1", "size: '-16' is negative"),
        ("free", "expected 'free ID [flags=N]'"),
        ("free 0 1", "expected 'free ID [flags=N]'"),
        ("realloc 0 16 -> ", "expected 'realloc ID SIZE -> NEW_ID [flags=N]'"),
        ("size 0 flags=zz", "flags: 'zz' is not a number"),
        ("alloc 16 -> 0x1ffffffff", "alloc: id 8589934591 out of range"),
        ("validate 3", "expected 'validate [flags=N]'"),
    ],
)
def test_parse_errors_name_the_line(line: str, message: str) -> None:
    text = f"alloc 8 -> 0\n\n{line}\n"
    with pytest.raises(TraceError) as e:
        parse_trace(text, strict=False)
    assert f"<trace>:3: {message}" in str(e.value)
    assert e.value.line == 3
    assert line.strip() in str(e.value)  # the offending line is quoted


@pytest.mark.parametrize(
    ("text", "lineno", "message"),
    [
        ("free 3", 1, "free: id 3 is not live"),
        ("alloc 8 -> 0\nfree 0\nfree 0", 3, "free: id 0 is not live"),
        ("alloc 8 -> 0\nalloc 8 -> 0", 2, "alloc: id 0 is already live (since line 1)"),
        ("alloc 8 -> 0\nalloc 8 -> 1\nrealloc 0 9 -> 1", 3, "realloc: id 1 is already live"),
        ("size 4", 1, "size: id 4 is not live"),
        ("realloc 2 16 -> 3", 1, "realloc: id 2 is not live"),
    ],
)
def test_strict_liveness(text: str, lineno: int, message: str) -> None:
    with pytest.raises(TraceError) as e:
        parse_trace(text)
    assert f":{lineno}: {message}" in str(e.value)
    parse_trace(text, strict=False)  # lenient: accepted as written


def test_realloc_in_place_id_is_fine() -> None:
    assert parse_trace("alloc 8 -> 0\nrealloc 0 16 -> 0\nfree 0")[1] == realloc(0, 16, 0)


def test_tuple_errors_name_the_index() -> None:
    with pytest.raises(TraceError, match=r"op:1: unknown operation 'malloc'"):
        list(as_ops([("alloc", 8, 0), ("malloc", 8)]))
    with pytest.raises(TraceError, match=r"op:0: free takes ID \[FLAGS\]"):
        list(as_ops([("free",)]))
    with pytest.raises(TraceError, match="size must be an integer"):
        as_op(("alloc", "8", 0))
    with pytest.raises(TraceError, match="an operation must be an Op or a non-empty tuple"):
        as_op([])  # type: ignore[arg-type]
    with pytest.raises(TraceError, match=r"op:2: free: id 5 is not live"):
        check_liveness([alloc(8, 0), free(0), free(5)])


def test_synthetic_is_seeded_and_well_formed() -> None:
    a = list(synthetic(ops=5000, seed=1))
    assert a == list(synthetic(Workload(ops=5000, seed=1)))
    assert a != list(synthetic(ops=5000, seed=2))
    assert len(a) == 5000
    check_liveness(a)
    kinds = {k: sum(1 for op in a if op.kind == k) for k in OpKind}
    assert kinds[OpKind.ALLOC] > 2000 and kinds[OpKind.FREE] > 1500
    assert kinds[OpKind.REALLOC] > 0 and kinds[OpKind.SIZE] > 0
    assert kinds[OpKind.VALIDATE] == 0
    # IDs are reused: the table stays about as large as the live set
    assert max(op.id for op in a) < 1000


def test_synthetic_options() -> None:
    w = Workload(ops=2000, seed=3, sizes="fixed:24", lifetimes="fixed", lifetime=10,
                 validate_every=100, drain=True, realloc=0.0, size_queries=0.0)  # fmt: skip
    ops = list(synthetic(w))
    check_liveness(ops)
    assert {op.size for op in ops if op.kind == OpKind.ALLOC} == {24}
    assert sum(op.kind == OpKind.VALIDATE for op in ops[:2000]) == 20
    live: set[int] = set()
    for op in ops:
        if op.kind == OpKind.ALLOC:
            live.add(op.id)
        elif op.kind == OpKind.FREE:
            live.remove(op.id)
    assert not live  # drained
    capped = list(synthetic(ops=3000, seed=1, lifetime=1e9, max_live=50))
    assert max(op.id for op in capped) < 51
    with pytest.raises(ValueError, match="unknown size distribution 'huge'"):
        synthetic(sizes="huge")
    with pytest.raises(ValueError, match="lifetimes must be"):
        synthetic(lifetimes="forever")


@pytest.mark.parametrize(
    ("spec", "lo", "hi"),
    [("small", 8, 512), ("typical", 8, 256 * 1024), ("mixed", 1, 0x120000),
     ("uniform:5:9", 5, 9), ("loguniform:100:200", 100, 200)],
)  # fmt: skip
def test_size_distributions(spec: str, lo: int, hi: int) -> None:
    import random

    draw = size_sampler(spec, random.Random(0))
    sizes = [draw() for _ in range(2000)]
    assert lo <= min(sizes) and max(sizes) <= hi


def test_renumber_makes_ids_dense() -> None:
    a, b = 0x55D0C1A0, 0x55D0C2B0
    sparse = [alloc(8, a), alloc(8, b), free(a), alloc(16, 0x7000),
              realloc(0x7000, 32, 0x9999), size(0x9999), free(b), free(0x9999)]  # fmt: skip
    dense = list(renumber(sparse))
    check_liveness(dense)
    assert [op.kind for op in dense] == [op.kind for op in sparse]
    assert max(max(op.id, op.new_id) for op in dense) <= 3
    assert dense[3].id == dense[0].id  # the freed slot is reused


def test_tape_round_trip_and_limits() -> None:
    ops = [*synthetic(ops=500, seed=9, validate_every=50), alloc(2**40, 7), realloc(7, 1, 8)]
    tape = Tape.from_ops(ops)
    assert len(tape) == len(ops) and len(tape.data) == 24 * len(ops)
    assert list(tape) == ops and tape.op(3) == ops[3]
    assert tape.max_size == 2**40 and tape.max_id >= 8
    assert Tape.from_ops(tape) is tape
    assert tape.head(10).count == 10 and list(tape.head(10)) == ops[:10]
    assert bytes(tape.kinds()) == bytes(op.kind for op in ops)
    with pytest.raises(TraceError, match="op:1: cannot encode"):
        Tape.from_ops([alloc(8, 0), Op(OpKind.ALLOC, 1, 2**64)])
    assert Tape.from_ops([]).count == 0


def test_read_from_file_object() -> None:
    assert parse_trace(io.StringIO("alloc 1 -> 0\nfree 0\n")) == [alloc(1, 0), free(0)]
