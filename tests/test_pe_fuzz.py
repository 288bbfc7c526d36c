"""Fuzz loader.peimage with mutants of the valid test PEs (both arches).

The only outcomes allowed are a successful parse + layout (at the preferred base and, when the
image is relocatable, at another one) + page_runs, or a LoaderError; each case must finish under
CASE_CEILING seconds (a hang is cut off by an alarm and reported as one).

Mutations: random bit flips (mostly in the headers), byte stores, truncation, header fields
(DOS/NT/optional header, data directories, section headers) set to boundary values, and words
inside the data directories' own structures. A seeded generator runs FUZZ_CASES cases
(default 10000; HEAPEMU_FUZZ_CASES=200000 for a long campaign, as `make fuzz` does), and two
hypothesis tests explore header edits and field values (their example count scales with it).
A failing case is written to the pytest temp dir and reported with its seed to replay it.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pebuild import build

from loader import LoaderError
from loader.peimage import X64_USER_LIMIT, PeImage

FUZZ_CASES = int(os.environ.get("HEAPEMU_FUZZ_CASES") or 10000)
HYPOTHESIS_EXAMPLES = max(200, FUZZ_CASES // 10)
CASE_CEILING = 2.0  # seconds; a valid 8 KiB PE parses in ~3 ms, so this cannot flake
HANG_ALARM = 20.0  # seconds before a runaway case is interrupted and reported
SEEDS = [
    (name, arch) for arch in ("x86", "x64") for name in ("mathlib.dll", "tlsdll.dll", "user.exe")
]

INTERESTING_32 = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x200,
    0x3FF,
    0x400,
    0xFFF,
    0x1000,
    0x1001,
    0x7FFF,
    0xFFFF,
    0x10000,
    0x3FFFFFFF,
    0x40000000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFF0,
    0xFFFFFFFF,
]


# --- where the header fields are ----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int  # 1, 2, 4 or 8


@dataclass
class Seed:
    name: str
    arch: str
    data: bytes
    fields: list[Field]
    directories: list[tuple[int, int]]  # file ranges of present data directories' contents
    header_end: int


def _fields(data: bytes) -> tuple[list[Field], list[tuple[int, int]], int]:
    """Every header field of a valid PE, and the file ranges of its data directories."""
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    fh = e_lfanew + 4
    opt = fh + 20
    wide = struct.unpack_from("<H", data, opt)[0] == 0x20B
    fields = [Field("e_lfanew", 0x3C, 4), Field("e_magic", 0, 2), Field("Signature", e_lfanew, 4)]
    for name, off, size in [
        ("Machine", 0, 2),
        ("NumberOfSections", 2, 2),
        ("PointerToSymbolTable", 8, 4),
        ("NumberOfSymbols", 12, 4),
        ("SizeOfOptionalHeader", 16, 2),
        ("Characteristics", 18, 2),
    ]:
        fields.append(Field(name, fh + off, size))
    ptr = 8 if wide else 4
    layout = [
        ("Magic", 0, 2),
        ("SizeOfCode", 4, 4),
        ("AddressOfEntryPoint", 16, 4),
        ("BaseOfCode", 20, 4),
        ("ImageBase", 24 if wide else 28, ptr),
        ("SectionAlignment", 32, 4),
        ("FileAlignment", 36, 4),
        ("SizeOfImage", 56, 4),
        ("SizeOfHeaders", 60, 4),
        ("DllCharacteristics", 70, 2),
        ("SizeOfStackReserve", 72, ptr),
        ("SizeOfStackCommit", 72 + ptr, ptr),
        ("NumberOfRvaAndSizes", 108 if wide else 92, 4),
    ]
    fields += [Field(name, opt + off, size) for name, off, size in layout]
    dirs = opt + (112 if wide else 96)
    for i in range(16):
        fields += [Field(f"DataDirectory[{i}].rva", dirs + 8 * i, 4)]
        fields += [Field(f"DataDirectory[{i}].Size", dirs + 8 * i + 4, 4)]
    (count,) = struct.unpack_from("<H", data, fh + 2)
    (opt_size,) = struct.unpack_from("<H", data, fh + 16)
    table = opt + opt_size
    sections = []
    for i in range(count):
        h = table + 40 * i
        for name, off in [
            ("VirtualSize", 8),
            ("VirtualAddress", 12),
            ("SizeOfRawData", 16),
            ("PointerToRawData", 20),
            ("Characteristics", 36),
        ]:
            fields.append(Field(f"section[{i}].{name}", h + off, 4))
        sections.append(struct.unpack_from("<IIII", data, h + 8))
    ranges = []
    for i in (0, 1, 3, 5, 9):
        rva, size = struct.unpack_from("<II", data, dirs + 8 * i)
        for vsize, va, _raw_size, raw_ptr in sections:
            if size and va <= rva < va + vsize:
                ranges.append((raw_ptr + rva - va, raw_ptr + rva - va + size))
    (header_end,) = struct.unpack_from("<I", data, opt + 60)
    return fields, ranges, header_end


_seeds: list[Seed] = []


def seeds() -> list[Seed]:
    if not _seeds:
        for name, arch in SEEDS:
            data = build(name, arch).read_bytes()
            fields, ranges, header_end = _fields(data)
            _seeds.append(Seed(name, arch, data, fields, ranges, header_end))
    return _seeds


# --- mutations ---------------------------------------------------------------------------------


def _store(data: bytearray, at: int, size: int, value: int) -> None:
    if at + size <= len(data):
        data[at : at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _value(rng: random.Random, old: int, size: int) -> int:
    choice = rng.random()
    if choice < 0.5:
        return rng.choice(INTERESTING_32) if size >= 4 else rng.choice([0, 1, 0x7F, 0x80, 0xFFFF])
    if choice < 0.8:
        return old + rng.choice([-0x1000, -0x200, -1, 1, 0x200, 0x1000, old, -old // 2])
    return rng.getrandbits(8 * size)


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, list[str]]:
    """One mutant of seed.data with 1-4 random mutations; also a description to replay it."""
    data = bytearray(seed.data)
    steps: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        kind = rng.random()
        if kind < 0.35:
            f = rng.choice(seed.fields)
            old = int.from_bytes(data[f.offset : f.offset + f.size], "little")
            new = _value(rng, old, f.size)
            _store(data, f.offset, f.size, new)
            steps.append(f"{f.name}={new & ((1 << (8 * f.size)) - 1):#x}")
        elif kind < 0.6:
            for _ in range(rng.randint(1, 8)):
                limit = seed.header_end if rng.random() < 0.6 else len(data)
                at = rng.randrange(min(limit, len(data)) or 1)
                if at < len(data):
                    data[at] ^= 1 << rng.randrange(8)
                    steps.append(f"flip@{at:#x}")
        elif kind < 0.8 and seed.directories:
            start, end = rng.choice(seed.directories)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(start, max(start + 1, end - 3))
                value = rng.choice([*INTERESTING_32, rng.getrandbits(32)])
                _store(data, at, 4, value)
                steps.append(f"dir-word@{at:#x}={value:#x}")
        elif kind < 0.9:
            cut = rng.choice([rng.randrange(0x400), rng.randrange(max(1, len(data)))])
            del data[cut:]
            steps.append(f"truncate@{cut:#x}")
        else:
            at = rng.randrange(max(1, len(data)))
            value = rng.choice([0, 0xFF, 0x80, 0x7F])
            if at < len(data):
                data[at] = value
                steps.append(f"byte@{at:#x}={value:#x}")
    return bytes(data), steps


# --- running one case -----------------------------------------------------------------------------


class HangError(Exception):
    pass


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: FrameType | None) -> None:
        raise HangError(f"case still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Stats:
    parsed: int = 0
    refused: int = 0
    max_seconds: float = 0.0
    slowest: str = ""
    problems: dict[str, int] = field(default_factory=dict)


def other_base(image: PeImage) -> int:
    """A base other than the preferred one that the image fits at."""
    limit = X64_USER_LIMIT if image.is_pe32plus else 1 << 32
    step = 0x01230000
    if image.image_base + step + image.size_of_image <= limit:
        return image.image_base + step
    return 0x10000


def run_case(data: bytes, label: str, stats: Stats, save: Callable[[bytes], Path]) -> None:
    # The ceiling is for the parser, not for a collection of hypothesis's garbage that happens to
    # fall inside a case: collect between cases instead.
    gc.disable()
    started = time.perf_counter()
    try:
        with alarm(HANG_ALARM):
            try:
                image = PeImage.from_bytes(data, "fuzz.dll")
                laid = image.layout(image.image_base)
                assert len(laid) == image.size_of_image
                if image.is_relocatable:
                    assert len(image.layout(other_base(image))) == image.size_of_image
                cursor = 0
                for run in image.page_runs():  # contiguous pages covering exactly the image
                    assert run.rva == cursor and run.size > 0 and run.size % 0x1000 == 0, run
                    cursor += run.size
                assert cursor == -(-image.size_of_image // 0x1000) * 0x1000
                stats.parsed += 1
            except LoaderError as exc:
                assert str(exc).startswith("fuzz.dll"), str(exc)
                problem = str(exc).split(": ", 1)[-1].split(" ", 3)[:3]
                key = " ".join(problem)
                stats.problems[key] = stats.problems.get(key, 0) + 1
                stats.refused += 1
    except Exception as exc:  # anything but a LoaderError (or a hang) is a bug
        path = save(data)
        raise AssertionError(
            f"{label}: {type(exc).__name__}: {exc} (input saved to {path})"
        ) from exc
    finally:
        elapsed = time.perf_counter() - started
        gc.enable()
    if elapsed > stats.max_seconds:
        stats.max_seconds, stats.slowest = elapsed, label
    if elapsed > CASE_CEILING:
        path = save(data)
        raise AssertionError(f"{label}: took {elapsed:.2f} s > {CASE_CEILING} s (saved {path})")


def saver(tmp_path: Path) -> Callable[[bytes], Path]:
    def save(data: bytes) -> Path:
        path = tmp_path / f"case-{len(list(tmp_path.iterdir()))}.bin"
        path.write_bytes(data)
        return path

    return save


def report(title: str, stats: Stats) -> None:
    common = sorted(stats.problems.items(), key=lambda kv: -kv[1])[:8]
    print(
        f"\n{title}: {stats.parsed} parsed, {stats.refused} refused, slowest "
        f"{stats.max_seconds * 1000:.1f} ms ({stats.slowest}); most common refusals: {common}"
    )


# --- the tests ------------------------------------------------------------------------------------


def test_valid_seeds_parse() -> None:
    for seed in seeds():
        PeImage.from_bytes(seed.data, seed.name).layout(
            PeImage.from_bytes(seed.data, "x").image_base
        )


def test_seeded_mutations(tmp_path: Path) -> None:
    stats = Stats()
    save = saver(tmp_path)
    all_seeds = seeds()
    for case in range(FUZZ_CASES):
        rng = random.Random(case)
        seed = all_seeds[case % len(all_seeds)]
        data, steps = mutate(seed, rng)
        label = f"case {case} ({seed.arch} {seed.name}: {', '.join(steps)})"
        run_case(data, label, stats, save)
    report(f"seeded fuzz, {FUZZ_CASES} cases", stats)
    # Both outcomes must be common, or the mutations are not exploring anything.
    assert stats.parsed > FUZZ_CASES // 20 and stats.refused > FUZZ_CASES // 5, stats
    assert stats.max_seconds < CASE_CEILING


_hypothesis_settings = settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,  # run_case enforces CASE_CEILING itself
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_hypothesis_stats = Stats()
# test_hypothesis_summary reports what the two hypothesis tests gathered in this process: under
# pytest-xdist the three run on one worker (--dist loadgroup), in this order
_hypothesis_group = pytest.mark.xdist_group("pe_fuzz_hypothesis")


@_hypothesis_group
@_hypothesis_settings
@given(
    seed_index=st.integers(0, len(SEEDS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 0x2400)),
)
def test_hypothesis_header_bytes(
    seed_index: int, edits: list[tuple[int, int]], cut: int | None, tmp_path: Path
) -> None:
    seed = seeds()[seed_index]
    data = bytearray(seed.data)
    for at, value in edits:
        data[at] = value
    if cut is not None:
        del data[cut:]
    label = f"{seed.arch} {seed.name} edits={edits} cut={cut}"
    run_case(bytes(data), label, _hypothesis_stats, saver(tmp_path))


@_hypothesis_group
@_hypothesis_settings
@given(
    seed_index=st.integers(0, len(SEEDS) - 1),
    choices=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.one_of(st.sampled_from(INTERESTING_32), st.integers(0, (1 << 64) - 1)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_hypothesis_header_fields(
    seed_index: int, choices: list[tuple[int, int]], tmp_path: Path
) -> None:
    seed = seeds()[seed_index]
    data = bytearray(seed.data)
    steps = []
    for pick, value in choices:
        f = seed.fields[pick % len(seed.fields)]
        _store(data, f.offset, f.size, value)
        steps.append(f"{f.name}={value:#x}")
    run_case(bytes(data), f"{seed.arch} {seed.name} {steps}", _hypothesis_stats, saver(tmp_path))


@_hypothesis_group
def test_hypothesis_summary() -> None:
    if _hypothesis_stats.parsed + _hypothesis_stats.refused == 0:
        pytest.skip("the hypothesis tests did not run in this session")
    report("hypothesis fuzz", _hypothesis_stats)
    assert _hypothesis_stats.max_seconds < CASE_CEILING
