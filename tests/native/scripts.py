"""Operation scripts for the native driver (and the emulated heap), with expected results."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from asm import CONSTANTS

LARGE = CONSTANTS["HEAP_MIN_LARGE_BLOCK_SIZE"]


@dataclass
class Script:
    """A random operation script with the results a correct heap must give."""

    lines: list[str] = field(default_factory=list)
    live: dict[str, int] = field(default_factory=dict)  # name -> requested size
    seeds: dict[str, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # expected RtlSizeHeap results, in order
    walks: list[dict[str, int]] = field(default_factory=list)  # live blocks at each walk
    count: int = 0

    def alloc(self, size: int) -> str:
        self.count += 1
        name = f"p{self.count}"
        self.lines += [f"alloc {name} h 0 {size:#x}", f"fill {name} {self.count} {size:#x}"]
        self.live[name] = size
        self.seeds[name] = self.count
        return name

    def free(self, name: str) -> None:
        self.lines += [f"check {name} {self.seeds[name]} {self.live[name]:#x}", f"free h 0 {name}"]
        del self.live[name]

    def realloc(self, name: str, size: int) -> str:
        old = self.live.pop(name)
        seed = self.seeds[name]
        self.count += 1
        new = f"p{self.count}"
        keep = min(old, size)
        self.lines += [f"realloc {new} h 0 {name} {size:#x}", f"check {new} {seed} {keep:#x}"]
        # refill the whole block so later checks cover all of it
        self.lines.append(f"fill {new} {self.count} {size:#x}")
        self.live[new] = size
        self.seeds[new] = self.count
        return new

    def size(self, name: str) -> None:
        self.lines.append(f"size h 0 {name}")
        self.sizes.append(self.live[name])

    def walk(self) -> None:
        self.lines += ["validate h 0", "walk h"]
        self.walks.append(dict(self.live))


def random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.55:
        return rng.randint(1, 0x100)
    if r < 0.85:
        return rng.randint(0x100, 0x2000)
    if r < 0.97:
        return rng.randint(0x2000, 0x40000)
    return rng.choice([LARGE - 8, LARGE - 1, LARGE, LARGE + 1, rng.randint(LARGE, 0x120000)])


def make_script(seed: int, operations: int) -> tuple[Script, list[str]]:
    rng = random.Random(seed)
    s = Script(lines=["create h 0x2 0 0"])
    first = [s.alloc(rng.randint(1, 0x800)) for _ in range(150)]  # all in the first subheap
    first_sizes = [s.live[name] for name in first]
    s.walk()
    for i in range(operations):
        r = rng.random()
        if s.live and (r < 0.35 or len(s.live) > 400):
            s.free(rng.choice(sorted(s.live)))
        elif s.live and r < 0.5:
            s.realloc(rng.choice(sorted(s.live)), random_size(rng))
        elif s.live and r < 0.6:
            s.size(rng.choice(sorted(s.live)))
        else:
            s.alloc(random_size(rng))
        if i % 250 == 249:
            s.walk()
    for name in sorted(s.live):
        s.free(name)
    s.walk()
    again = [s.alloc(size) for size in first_sizes]
    s.walk()
    return s, [*first, *again]


def seed002_script() -> list[str]:
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc a{i} h 0 0x100" for i in range(1, 101)]
    lines += ["free h 0 a17", "alloc b1 h 0 0x100", "free h 0 a18", "alloc b2 h 0 0x100"]
    lines += ["free h 0 b2", "free h 0 a48", "free h 0 a78", "alloc big h 0 0x100000"]
    lines += ["validate h 0", "walk h"]
    return lines
