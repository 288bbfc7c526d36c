"""Object directories: the process's own \\BaseNamedObjects, where named sections live.

Kernelbase opens ``\\Sessions\\<id>\\BaseNamedObjects`` once and creates named objects
relative to it. Here that directory (and ``\\BaseNamedObjects``) exists per process: names
never reach another process or the host, and an object's name lasts while a handle to it is
open, as on Windows.
"""

from __future__ import annotations

import re

from emu.errors import NtStatusError
from emu.nt.kernel import ACCESS_MASK, PHANDLE, PVOID, Kernel, syscall
from emu.nt.objects import KernelObject, object_name
from emu.win.ntdefs import NtStatus

_DIRECTORIES = re.compile(r"^\\(?:Sessions\\\d+\\)?BaseNamedObjects$", re.IGNORECASE)


@syscall
def NtOpenDirectoryObject(
    k: Kernel, DirectoryHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID
) -> int:
    root, name = object_name(k, ObjectAttributes)
    k.details.update(name=name)
    k.write_ptr(DirectoryHandle, 0)  # probe
    if root or not _DIRECTORIES.match(name):
        raise NtStatusError(NtStatus.OBJECT_NAME_NOT_FOUND, name)
    handle = k.proc.objects.insert(KernelObject("directory", name), DesiredAccess)
    k.write_ptr(DirectoryHandle, handle)
    k.details.update(handle=handle)
    return NtStatus.SUCCESS
