"""Virtual memory, sections and views as a program sees them through Wine's DLLs (kernel32,
kernelbase, ntdll), on x86 and x64: tests/programs/vmrules.c prints one line per check and
every value is what Windows answers (Wine's kernel32/ntdll virtual tests are the reference).
"""

from __future__ import annotations

import pytest
from programbuild import build

from emu.facade import load_program

ERROR_FILE_NOT_FOUND, ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER = 2, 5, 87
MEM_COMMIT, MEM_RESERVE, MEM_MAPPED, MEM_IMAGE = 0x1000, 0x2000, 0x40000, 0x1000000
PAGE_READONLY, PAGE_READWRITE, PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY = 0x2, 0x4, 0x8, 0x80
PAGE_NOCACHE = 0x200
NOT_SAME_DEVICE = 0xC00000D4

EXPECTED = {
    # issue 16 cause 1: a second SEC_IMAGE view of kernel32 (it raised ValueError)
    "image-view": 1,
    "image-headers-same": 1,
    "image-type": MEM_IMAGE,
    "image-allocation-protect": PAGE_EXECUTE_WRITECOPY,
    "image-headers-protect": PAGE_READONLY,
    "same-view-module": 0,  # NtAreMappedFilesTheSame: both views of kernel32.dll
    "same-module-view": 0,
    "same-ntdll-k32": NOT_SAME_DEVICE,
    "image-unmap": 1,  # any address inside the view names it
    "image-gone": 1,
    # cause 3: a read-only file cannot back a writable section or view
    "file-rw-section": 0,
    "file-rw-error": ERROR_ACCESS_DENIED,
    "file-ro-section": 1,
    "file-write-view": 0,
    "file-write-view-error": ERROR_ACCESS_DENIED,
    "file-view-mz": 1,
    "file-view-type": MEM_MAPPED,
    "file-view-size": 0x2000,
    "file-view-protect": PAGE_READONLY,
    "file-view-protect-rw": 0,  # more than the view's protection
    "file-view-protect-rw-error": ERROR_INVALID_PARAMETER,
    "file-view-protect-wc": 1,
    "file-view-commit": 0,  # only pagefile sections commit: STATUS_ALREADY_COMMITTED
    "file-view-commit-error": ERROR_ACCESS_DENIED,
    "copy-view-protect": PAGE_WRITECOPY,  # FILE_MAP_COPY
    "copy-written-protect": PAGE_READWRITE,  # the written page is the view's own now
    "copy-other-protect": PAGE_WRITECOPY,
    "copy-value": 0x5A,
    "reserve-view-state": MEM_RESERVE,  # a SEC_RESERVE view comes up reserved
    "reserve-view-protect": 0,
    "reserve-view-allocation-protect": PAGE_READWRITE,
    "reserve-view-commit": 1,
    "reserve-view-committed-protect": PAGE_READONLY,
    "reserve-view-commit-exec": 0,  # more than the view allows
    "reserve-view-commit-exec-error": ERROR_INVALID_PARAMETER,
    "reserve-view-decommit": 0,  # views are not freed with VirtualFree
    "reserve-view-decommit-error": ERROR_INVALID_PARAMETER,
    # named sections (\BaseNamedObjects) last while a handle is open
    "named-created": 1,
    "named-again": 1,  # ERROR_ALREADY_EXISTS, the same section
    "named-opened": 1,
    "named-open-write-view": 0,  # the handle was opened FILE_MAP_READ
    "named-open-write-view-error": ERROR_ACCESS_DENIED,
    "named-view-size": 0x1000,
    "named-view-protect": PAGE_READONLY,
    "named-view-sees-write": 0x1A2B3C4D,  # views of one section share memory
    "named-gone": 1,
    "named-gone-error": ERROR_FILE_NOT_FOUND,
    "named-view-kept": 0x1A2B3C4D,
    # cause 4: private memory
    "alloc-writecopy": 0,
    "alloc-writecopy-error": ERROR_INVALID_PARAMETER,
    "nocache-old": PAGE_READWRITE | PAGE_NOCACHE,
    "nocache-protect": PAGE_READONLY | PAGE_NOCACHE,
    # issue 20 D13: KUSER_SHARED_DATA stays, and Wine's system calls keep working
    "kuser-free": 0,
    "kuser-free-error": ERROR_INVALID_PARAMETER,
    "kuser-protect": 0,
    "kuser-protect-error": ERROR_INVALID_PARAMETER,
    "still-running": 1,
    # cause 6: MEM_WRITE_WATCH, GetWriteWatch
    "watch-initial": 0,
    "watch-count": 2,
    "watch-first": 0x3000,
    "watch-granularity": 0x1000,
    "watch-after-reset": 0,
}


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_virtual_memory_sections_and_views_through_wine(arch: str) -> None:
    program = load_program(build("vmrules.exe", arch), ["vmrules.exe"])
    result = program.run()
    assert result.ok, result.error
    got = dict(line.split(" ", 1) for line in result.text.splitlines() if line)
    values = {key: int(value, 16) for key, value in got.items()}
    wrong = {k: (hex(values.get(k, -1)), hex(v)) for k, v in EXPECTED.items() if values.get(k) != v}
    assert not wrong, f"(got, Windows) per check: {wrong}"
    assert result.exit_code == 0
    assert program.proc.syscall_dispatcher.internal_errors == 0
