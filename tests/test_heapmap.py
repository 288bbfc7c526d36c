"""Heap pictures (emu.views.heapmap): lanes tile the heap, images are written and are real
images."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import make_heaps

from emu.heap.registry import ALLOCATOR_NAMES, allocator_kind
from emu.views.heapmap import COLORS, heap_lanes, save_heap_frames, save_heap_map
from emu.views.story import Story, seed002_story

COMBOS = [(a, k) for k in ALLOCATOR_NAMES for a in ("x86", "x64")]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=COMBOS, ids=lambda p: f"{p[0]}-{p[1]}")
def story(request: pytest.FixtureRequest) -> Story:
    arch, kind = request.param
    return seed002_story(make_heaps(arch, kind).allocator)


def test_lanes_tile_segments_and_large_blocks(story: Story) -> None:
    report = story.frames[-1][1]
    lanes = heap_lanes(report)
    # one segment; with a front end (win7's LFH) the heap grew into a second one
    front_end = allocator_kind(report.kind).walker.front_end
    segments = 2 if front_end else 1
    assert len(lanes) == len(report.segments) + len(report.large_blocks) == segments + 1
    for lane in lanes:
        assert lane.spans[0].start == lane.start and lane.spans[-1].end == lane.end
        for a, b in itertools.pairwise(lane.spans):
            assert a.end == b.start and a.start < a.end
        assert {s.kind for s in lane.spans} <= set(COLORS)
    *segs, large = lanes
    spans = [s for seg in segs for s in seg.spans]
    # a block holding others (an LFH region) is drawn as "lfh" around them, not as busy
    regions = {
        a.address
        for seg in report.segments
        for a, b in itertools.pairwise(seg.blocks)
        if b.address < a.end
    }
    busy = [s for s in spans if s.kind.startswith("busy")]  # (segment heap: by component)
    assert len(busy) == report.summary().busy_blocks - len(regions)
    assert sum(1 for s in spans if s.kind == "free") == len(report.free_blocks())
    assert (sum(1 for s in spans if s.kind == "lfh") > 0) == front_end
    for seg, lane in zip(report.segments, segs, strict=True):
        uncommitted = sum(s.end - s.start for s in lane.spans if s.kind == "uncommitted")
        assert uncommitted == seg.reserved - seg.committed
    assert large.large and any(s.kind == "large" and s.start == story.big for s in large.spans)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 5_000 < len(data) < 200_000


def test_heap_map_png_and_svg(story: Story, tmp_path: Path) -> None:
    report = story.frames[-1][1]
    png = save_heap_map(report, tmp_path / "map.png")
    _check_png(png)
    svg = save_heap_map(report, tmp_path / "sub" / "map.svg", title="seed 002")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    assert 5_000 < len(text) < 200_000
    assert "seed 002" in text and f"{report.segments[0].base:#x}" in text  # a hex tick label


def test_frames_strip(story: Story, tmp_path: Path) -> None:
    png = save_heap_frames(story.frames, tmp_path / "frames.png")
    _check_png(png)
    from PIL import Image

    with Image.open(png) as im:
        width, height = im.size
    assert width == 1000 and height > 300  # one row per step


def test_frames_gif_and_errors(tmp_path: Path) -> None:
    story = seed002_story(make_heaps("x86", "builtin").allocator)
    gif = save_heap_frames(story.frames[-2:], tmp_path / "frames.gif")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 2
    assert gif.stat().st_size < 200_000
    with pytest.raises(ValueError, match="no frames"):
        save_heap_frames([], tmp_path / "none.png")
