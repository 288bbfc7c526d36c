"""Registry system calls: the emulated machine has an empty registry.

Every key a program opens or creates answers STATUS_OBJECT_NAME_NOT_FOUND (Wine's DLLs fall
back to their built-in defaults), so no key handle is ever handed out and the calls that take
one answer STATUS_INVALID_HANDLE. The names asked for are recorded in each call's details.
"""

from __future__ import annotations

from emu.errors import NtStatusError
from emu.nt.kernel import ACCESS_MASK, HANDLE, PHANDLE, PULONG, PVOID, ULONG, Kernel, syscall
from emu.nt.objects import Status, object_name


def _not_found(k: Kernel, ObjectAttributes: int) -> int:
    root, name = object_name(k, ObjectAttributes)
    k.details.update(name=name, root=root)
    raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, f"registry key {name}")


@syscall
def NtOpenKey(
    k: Kernel, KeyHandle: PHANDLE, DesiredAccess: ACCESS_MASK, ObjectAttributes: PVOID
) -> int:
    return _not_found(k, ObjectAttributes)


@syscall
def NtOpenKeyEx(
    k: Kernel,
    KeyHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    OpenOptions: ULONG,
) -> int:
    return _not_found(k, ObjectAttributes)


@syscall
def NtCreateKey(
    k: Kernel,
    KeyHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    TitleIndex: ULONG,
    Class: PVOID,
    CreateOptions: ULONG,
    Disposition: PULONG,
) -> int:
    return _not_found(k, ObjectAttributes)


def _no_key(KeyHandle: int) -> int:
    raise NtStatusError(Status.INVALID_HANDLE, f"no registry key has handle 0x{KeyHandle:x}")


@syscall
def NtQueryValueKey(
    k: Kernel,
    KeyHandle: HANDLE,
    ValueName: PVOID,
    KeyValueInformationClass: ULONG,
    KeyValueInformation: PVOID,
    Length: ULONG,
    ResultLength: PULONG,
) -> int:
    return _no_key(KeyHandle)


@syscall
def NtSetValueKey(
    k: Kernel,
    KeyHandle: HANDLE,
    ValueName: PVOID,
    TitleIndex: ULONG,
    Type: ULONG,
    Data: PVOID,
    DataSize: ULONG,
) -> int:
    return _no_key(KeyHandle)


@syscall
def NtQueryKey(
    k: Kernel,
    KeyHandle: HANDLE,
    KeyInformationClass: ULONG,
    KeyInformation: PVOID,
    Length: ULONG,
    ResultLength: PULONG,
) -> int:
    return _no_key(KeyHandle)


@syscall
def NtEnumerateKey(
    k: Kernel,
    KeyHandle: HANDLE,
    Index: ULONG,
    KeyInformationClass: ULONG,
    KeyInformation: PVOID,
    Length: ULONG,
    ResultLength: PULONG,
) -> int:
    return _no_key(KeyHandle)


@syscall
def NtEnumerateValueKey(
    k: Kernel,
    KeyHandle: HANDLE,
    Index: ULONG,
    KeyValueInformationClass: ULONG,
    KeyValueInformation: PVOID,
    Length: ULONG,
    ResultLength: PULONG,
) -> int:
    return _no_key(KeyHandle)
