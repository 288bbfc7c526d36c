"""The architecture holds: what a process serves does not depend on import order, and the
import-linter contract (layers, a pure loader, Unicorn confined to emu.cpu, no cycles) is kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each program imports something different first, then reports the system calls a new process
# serves. Before the explicit handler list, the answer was 6, 65 or 66 depending on the order.
FIRST_IMPORTS = [
    "from emu import Process",
    "import emu.load.program",
    "import emu.load.wine_ntdll",
    "import emu.cli",
    "from emu.heap import Allocator",
]


def _served(first: str) -> list[str]:
    code = (
        f"{first}\n"
        "import json\n"
        "from emu import Process\n"
        "print(json.dumps(sorted(Process('x86').syscall_dispatcher.handlers)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_every_process_serves_the_same_system_calls_whatever_was_imported_first() -> None:
    served = {first: _served(first) for first in FIRST_IMPORTS}
    reference = served[FIRST_IMPORTS[0]]
    assert len(reference) > 60  # memory, process, file, section, info, registry, misc, wine
    assert {"NtAllocateVirtualMemory", "NtMapViewOfSection", "__wine_dbg_write"} <= set(reference)
    for first, names in served.items():
        assert names == reference, first


def test_handlers_are_marked_not_registered() -> None:
    """@syscall only annotates: a module defining a handler adds nothing to any process."""
    from emu import Process
    from emu.nt.kernel import Kernel, syscall

    @syscall
    def NtHeapemuTestOnly(k: Kernel) -> int:
        return 0

    assert "NtHeapemuTestOnly" not in Process("x64").syscall_dispatcher.handlers


def test_architecture_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("import-linter is not installed: `pip install -e .[test]`")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") == 4
