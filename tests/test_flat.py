"""Flat code: keystone assembly mapped read-execute / read-write, with every label a symbol."""

from __future__ import annotations

import pytest

from emu import EmulationError, Process
from emu.load.flat import load_flat
from emu.win.ntdefs import PAGE_EXECUTE_READ, PAGE_READWRITE
from loader.errors import LoaderError

SOURCE = """
    .globl bump
    .globl get
    .text
bump:
    mov eax, dword ptr [counter]
    inc eax
    mov dword ptr [counter], eax
    ret
get:
    mov eax, dword ptr [counter]
    ret
helper_label:
    nop
    .data
counter:
    .long 41
"""


def test_flat_code_loads_runs_and_keeps_data_writable(proc: Process) -> None:
    m = proc.load_flat(SOURCE, "counter")
    assert set(m.exports) == {"bump", "get"}
    assert {"bump", "get", "helper_label", "counter"} <= set(m.symbols)
    assert proc.call("counter!bump") == 42
    assert proc.call("counter!bump") == 43
    assert proc.call("counter!get") == 43
    assert proc.memory.query(m.symbols["bump"]).Protect == PAGE_EXECUTE_READ
    assert proc.memory.query(m.symbols["counter"]).Protect == PAGE_READWRITE
    # code pages are not writable by emulated code
    writer = load_flat(proc, f"mov byte ptr [{m.symbols['bump']:#x}], 0xcc\nret", "writer")
    with pytest.raises(EmulationError) as e:
        proc.call(writer.base)
    assert e.value.kind == "protected write"


def test_symbolize_and_resolve_round_trip(proc: Process) -> None:
    m = load_flat(proc, SOURCE, "counter")
    for name, addr in m.symbols.items():
        assert proc.resolve(f"counter!{name}") == addr
        assert proc.symbolize(addr) == f"counter!{name}"
    assert proc.symbolize(m.symbols["bump"] + 5) == "counter!bump+0x5"
    assert proc.resolve("counter!bump+0x5") == m.symbols["bump"] + 5
    assert proc.resolve("COUNTER!get") == m.symbols["get"]
    with pytest.raises(KeyError, match="has no symbol 'nothere'"):
        proc.resolve("counter!nothere")


def test_fixed_base_and_conflicts_leave_nothing_mapped(proc: Process) -> None:
    m = load_flat(proc, "f: mov eax, 1\nret", "one", base=0x20000000)
    assert m.base == 0x20000000 and proc.call("one!f") == 1
    regions = len(proc.memory.regions())
    with pytest.raises(LoaderError, match="cannot map"):
        load_flat(proc, "g: ret", "two", base=0x20000000)
    assert len(proc.memory.regions()) == regions
    with pytest.raises(LoaderError, match="already loaded"):
        load_flat(proc, "g: ret", "one")


@pytest.mark.parametrize(
    ("source", "line", "text"),
    [
        ("nop\nmov eax, 1\n  frobnicate eax\nret", 3, "frobnicate eax"),
        ("nop\njmp later\nmov eax, dword ptr [nowhere]\nlater: ret", 3, "nowhere"),
        ("a:\nnop\na:\nret", None, "defined more than once: a"),
    ],
)
def test_rejected_assembly_names_line_and_text(
    proc: Process, source: str, line: int | None, text: str
) -> None:
    regions = len(proc.memory.regions())
    with pytest.raises(LoaderError) as e:
        load_flat(proc, source, "bad")
    msg = str(e.value)
    assert text in msg
    if line is not None:
        assert f"line {line}:" in msg
    assert len(proc.memory.regions()) == regions
    assert proc.modules.get("bad") is None


def test_source_from_a_file(proc: Process, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "five.s"
    path.write_text("five:\n mov eax, 5\n ret\n")
    m = load_flat(proc, str(path), "five")
    assert m.path == str(path) and proc.call("five!five") == 5
