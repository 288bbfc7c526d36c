"""asm/generate.py: the checked-in assembly is what the pinned compiler makes of the C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asm import generate

REPO = Path(__file__).resolve().parent.parent


def test_generate_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "asm" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def test_check_fails_when_out_of_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for heap in generate.HEAPS:
        for arch in generate.TARGETS:
            stale = tmp_path / f"{heap}_{arch}.s"
            stale.write_text(generate.output_path(arch, heap).read_text() + "\tnop\n")
    monkeypatch.setattr(
        generate, "output_path", lambda arch, heap="ntheap": tmp_path / f"{heap}_{arch}.s"
    )
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0  # regenerates into tmp_path
    assert generate.main(["--check"]) == 0


SAMPLE_X86 = """\
\t.def\t@feat.00;
\t.scl\t3;
\t.endef
@feat.00 = 1
\t.intel_syntax noprefix
\t.file\t"ntheap.c"
\t.text
\t.globl\t_RtlThing@8                    # -- Begin function
\t.p2align\t4
_RtlThing@8:                            # @"\\01_RtlThing@8"
\t.cv_fpo_proc\t_RtlThing@8 8
\tpush\tebp
\tmov\tebp, esp
\tcall\t_NtFreeVirtualMemory@16
\tcall\t_helper
\tjne\tLBB0_2
LBB0_2:
\tpop\tebp
\tret\t8
_helper:
\tret
\t.section\t.debug$S,"dr"
\t.long\t4
\t.asciz\t"clang # not a comment"
\t.section\t.rdata,"dr"
Ltable:
\t.long\t1
"""


def test_to_keystone_x86() -> None:
    text, targets = generate.to_keystone(SAMPLE_X86, "x86")
    assert text.splitlines() == [
        "\t.p2align\t4",
        "RtlThing:",
        "\tpush\tebp",
        "\tmov\tebp, esp",
        "\tcall\tNtFreeVirtualMemory",
        "\tcall\thelper",
        "\tjne\tntheap_LBB0_2",
        "ntheap_LBB0_2:",
        "\tpop\tebp",
        "\tret\t8",
        "helper:",
        "\tret",
        "ntheap_Ltable:",
        "\t.long\t1",
    ]
    assert targets == {"NtFreeVirtualMemory", "helper", "ntheap_LBB0_2"}
    segment, _ = generate.to_keystone(SAMPLE_X86, "x86", "segheap")
    assert "segheap_LBB0_2:" in segment.splitlines() and "ntheap_" not in segment


def test_local_label_prefix_is_the_source_name() -> None:
    text, targets = generate.to_keystone(SAMPLE_X86, "x86", "win7heap")
    assert "win7heap_LBB0_2:" in text.splitlines() and "ntheap_" not in text
    assert "win7heap_LBB0_2" in targets


def test_to_keystone_x64_local_labels_in_memory_operands() -> None:
    raw = "f:\n\tlea\tr11, [rip + .LJTI0_0]\n\tjmp\t.LBB0_1\n.LBB0_1:\n\tret\n"
    raw += '\t.section\t.rdata,"dr"\n.LJTI0_0:\n\t.long\t.LBB0_1-.LJTI0_0\n'
    text, _ = generate.to_keystone(raw, "x64")
    assert ".L" not in text
    assert "\tlea\tr11, [rip + ntheap_LJTI0_0]" in text
    assert "\t.long\tntheap_LBB0_1-ntheap_LJTI0_0" in text


def test_unknown_directives_stop_generation() -> None:
    with pytest.raises(generate.GenerateError, match="unexpected directive"):
        generate.to_keystone("f:\n\t.weird\t1\n\tret\n", "x64")
    with pytest.raises(generate.GenerateError, match="assignment"):
        generate.to_keystone("x = 5\n", "x64")


def test_undecorate() -> None:
    assert generate.undecorate("_RtlAllocateHeap@12", "x86") == "RtlAllocateHeap"
    assert generate.undecorate("_ntheap_get_peb@0", "x86") == "ntheap_get_peb"
    assert generate.undecorate("_heap_alloc", "x86") == "heap_alloc"
    assert generate.undecorate("_heap_alloc", "x64") == "_heap_alloc"
