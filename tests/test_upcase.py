"""Names compare as Windows compares them: upcased with its NLS table (RtlUpcaseUnicodeChar),
not with Python's case folding, which let ``kernel32.dll`` open as ``\\u212aernel32.dll``
(U+212A KELVIN SIGN lowers to 'k' in Python; Windows leaves it as it is)."""

from __future__ import annotations

import pytest
from programbuild import build

from emu import Process
from emu.facade import load_program
from emu.nt.objects import KernelObject, ObjectManager
from loader.upcase import name_key, names_equal, parse_l_intl, rule_table, upcase, upcase_table
from loader.wine_nls import find_nls_dir

KELVIN = "\u212a"


def test_kelvin_sign_is_not_k_and_latin1_still_folds() -> None:
    assert not names_equal(KELVIN, "K") and not names_equal(KELVIN, "k")
    assert upcase(KELVIN) == KELVIN and upcase("k") == "K"
    assert names_equal("kernel32.dll", "KERNEL32.DLL")
    assert names_equal("caf\u00e9.txt", "CAF\u00c9.TXT")  # é / É
    assert names_equal("\u00ff", "\u0178")  # ÿ / Ÿ: outside Latin-1 on the upper side
    assert not names_equal("stra\u00dfe", "STRASSE")  # no multi-character mappings
    assert not names_equal("\u0131", "I") and not names_equal("\u017f", "S")
    assert name_key("C:\\Windows\\KERNEL32.DLL") == "c:\\windows\\kernel32.dll"
    assert name_key(KELVIN + "ernel32.dll") != name_key("kernel32.dll")


@pytest.mark.wine
def test_the_rule_builds_wines_table() -> None:
    """The fallback is exact: equal to l_intl.nls on every UTF-16 unit."""
    table = parse_l_intl((find_nls_dir(fetch=False) / "l_intl.nls").read_bytes())
    assert table == rule_table() == upcase_table()
    assert sum(1 for ch, up in enumerate(table) if ch != up) == 1163  # Wine 8.0's file


def test_named_objects_compare_with_windows_rules() -> None:
    objects = ObjectManager()
    event = KernelObject("event", "Kettle")
    objects.add_named("\\BaseNamedObjects", "Kettle", event)
    assert objects.find_named("\\BaseNamedObjects", "KETTLE", True) is event
    assert objects.find_named("\\BaseNamedObjects", KELVIN + "ettle", True) is None
    assert objects.find_named("\\BaseNamedObjects", "kettle", False) is None


def test_modules_are_found_with_windows_rules(arch: str) -> None:
    proc = Process(arch)
    proc.load_flat("f: ret", "kettle.dll")
    assert proc.modules.get("KETTLE.DLL") is not None and proc.modules.get("Kettle") is not None
    assert proc.modules.get(KELVIN + "ettle.dll") is None
    assert proc.modules.get(KELVIN + "ETTLE") is None
    with pytest.raises(KeyError):
        proc.modules.resolve(KELVIN + "ettle!f")
    assert proc.modules.resolve("KETTLE!f") == proc.modules.resolve("kettle!f")


@pytest.mark.wine
def test_kernel32_does_not_open_through_the_kelvin_sign(arch: str) -> None:
    proc = load_program(build("args.exe", arch), ["args.exe"]).proc
    namespace = proc.objects.namespace
    system = "\\??\\C:\\windows\\system32\\"
    assert namespace.lookup(system + "KERNEL32.DLL") is not None
    assert namespace.lookup(system + "kernel32.dll") is not None
    assert namespace.lookup(system + KELVIN + "ernel32.dll") is None
    proc.program.run()
    assert proc.modules.get("KERNEL32") is not None
    assert proc.modules.get(KELVIN + "ernel32.dll") is None
    with pytest.raises(KeyError):
        proc.modules.resolve(KELVIN + "ernel32!GetProcessHeap")
