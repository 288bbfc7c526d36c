"""Random operation scripts for the segment heap (asm/src/segheap.c) through the native driver.

Every step is followed by ``validate h 0`` and ``walk h``; the script records the live blocks
each walk must report, and the expected RtlSizeHeap results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Routing thresholds of the segment heap (defaults; fact sheet C).
LFH_MAX = 0x3FF0
VS_MAX = 0x20000
BACKEND_MAX = 0x7F000


@dataclass
class SegScript:
    lines: list[str] = field(default_factory=list)
    live: dict[str, int] = field(default_factory=dict)  # name -> requested size
    seeds: dict[str, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    walks: list[dict[str, int]] = field(default_factory=list)
    dumped: dict[str, int] = field(default_factory=dict)  # live blocks at the "dump" line
    count: int = 0

    def alloc(self, size: int, flags: int = 0) -> str:
        self.count += 1
        name = f"p{self.count}"
        self.lines.append(f"alloc {name} h {flags:#x} {size:#x}")
        fill = min(size, 0x3000)  # enough to catch overlaps, cheap for large blocks
        self.lines.append(f"fill {name} {self.count} {fill:#x}")
        self.live[name] = size
        self.seeds[name] = self.count
        return name

    def check(self, name: str) -> None:
        self.lines.append(f"check {name} {self.seeds[name]} {min(self.live[name], 0x3000):#x}")

    def free(self, name: str) -> None:
        self.check(name)
        self.lines.append(f"free h 0 {name}")
        del self.live[name]

    def realloc(self, name: str, size: int) -> str:
        old = self.live.pop(name)
        seed = self.seeds.pop(name)
        self.count += 1
        new = f"p{self.count}"
        keep = min(old, size, 0x3000)
        self.lines += [f"realloc {new} h 0 {name} {size:#x}", f"check {new} {seed} {keep:#x}"]
        self.lines.append(f"fill {new} {self.count} {min(size, 0x3000):#x}")
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
    if r < 0.45:
        return rng.choice([rng.randint(0, 0x100), 0x20, 0x40, 0x100, 0x18])  # LFH candidates
    if r < 0.75:
        return rng.randint(0x100, 0x4000)
    if r < 0.88:
        return rng.choice([rng.randint(0x4000, VS_MAX), LFH_MAX, LFH_MAX + 1, VS_MAX])
    if r < 0.97:
        return rng.choice([rng.randint(VS_MAX + 1, BACKEND_MAX), VS_MAX + 1, BACKEND_MAX])
    return rng.choice([BACKEND_MAX + 1, rng.randint(BACKEND_MAX + 1, 0x180000)])


def make_seg_script(seed: int, operations: int, params: str | None = None) -> SegScript:
    """A random script: create, operations (each followed by validate + walk) with a "dump"
    line at the first point past half way where back-end and large blocks are live, then every
    block freed."""
    rng = random.Random(seed)
    s = SegScript()
    if params:
        s.lines.append(f"params {params}")
    s.lines.append("create h 0x2 0 0")
    for i in range(operations):
        sizes = s.live.values()
        if (
            i >= operations // 2
            and not s.dumped
            and any(n > BACKEND_MAX for n in sizes)
            and any(VS_MAX < n <= BACKEND_MAX for n in sizes)
        ):
            s.lines.append("dump")
            s.dumped = dict(s.live)
        r = rng.random()
        if s.live and (r < 0.33 or len(s.live) > 300):
            s.free(rng.choice(sorted(s.live)))
        elif s.live and r < 0.45:
            name = rng.choice(sorted(s.live))
            old = s.live[name]
            size = rng.choice([random_size(rng), max(0, old - rng.randint(0, 0x40)), old + 8])
            s.realloc(name, size)
        elif s.live and r < 0.5:
            s.size(rng.choice(sorted(s.live)))
        else:
            s.alloc(random_size(rng), rng.choice([0, 0, 0, 8]))  # some HEAP_ZERO_MEMORY
        s.walk()
    for name in sorted(s.live):
        s.free(name)
    s.walk()
    return s
