"""Information system calls: the system, the process, the thread, the token, time and locale.

Answers describe the emulated machine heapemu builds (one processor, Windows 10 19045, the
arch's user address space) and are deterministic: clocks are derived from the number of
system calls made so far, never from the host.
"""

from __future__ import annotations

import struct

from emu.errors import NtStatusError
from emu.nt.kernel import (
    ACCESS_MASK,
    BOOLEAN,
    HANDLE,
    PHANDLE,
    PROCESS_ID,
    PULONG,
    PVOID,
    THREAD_ID,
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import KernelObject, Status, put_buffer
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    PAGE_SIZE,
    PROCESSINFOCLASS,
    SYSTEM_INFORMATION_CLASS,
    THREADINFOCLASS,
    TOKEN_INFORMATION_CLASS,
    NtStatus,
)

SYSTEM_TIME = 133_000_000_000_000_000  # 2022-06-18 in FILETIME units; the emulated boot time
PERFORMANCE_FREQUENCY = 10_000_000

# S-1-5-21-0-0-0-1000: revision 1, five sub-authorities, NT authority (5)
USER_SID = bytes([1, 5, 0, 0, 0, 0, 0, 5]) + struct.pack("<5I", 21, 0, 0, 0, 1000)


def _clock(k: Kernel) -> int:
    """A deterministic clock: 1 ms of emulated time per system call so far."""
    return len(k.proc.syscalls) * 10_000


def _ptr(k: Kernel) -> str:
    return "Q" if k.arch.ptr_size == 8 else "I"


def _system_info(k: Kernel, cls: int) -> bytes:
    arch, p = k.arch, _ptr(k)
    if cls in (
        SYSTEM_INFORMATION_CLASS.SystemBasicInformation,
        SYSTEM_INFORMATION_CLASS.SystemEmulationBasicInformation,
    ):
        pad = "4x" if arch.ptr_size == 8 else ""
        tail = "7x" if arch.ptr_size == 8 else "3x"
        return struct.pack(
            f"<7I{pad}3{p}b{tail}",
            0,  # Reserved
            156_250,  # TimerResolution (100 ns units)
            PAGE_SIZE,
            0x40000,  # NumberOfPhysicalPages (1 GiB), as KUSER_SHARED_DATA says
            1,
            0x7FFFF,
            ALLOCATION_GRANULARITY,
            arch.user_min,
            arch.user_max,
            1,  # ActiveProcessorsAffinityMask
            1,  # NumberOfProcessors
        )
    if cls in (
        SYSTEM_INFORMATION_CLASS.SystemProcessorInformation,
        SYSTEM_INFORMATION_CLASS.SystemEmulationProcessorInformation,
    ):
        architecture = 9 if arch.ptr_size == 8 else 0  # AMD64 / INTEL
        return struct.pack("<HHHHI", architecture, 6, 0x9E0A, 1, 0)
    if cls == SYSTEM_INFORMATION_CLASS.SystemTimeOfDayInformation:
        now = SYSTEM_TIME + _clock(k)
        return struct.pack("<qqqII4x", SYSTEM_TIME, now, 0, 0, 0)
    if cls == SYSTEM_INFORMATION_CLASS.SystemRangeStartInformation:
        return k.arch.pack_ptr(arch.user_max + 0x10001)
    raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"SystemInformationClass {cls}")


@syscall
def NtQuerySystemInformation(
    k: Kernel,
    SystemInformationClass: ULONG,
    SystemInformation: PVOID,
    SystemInformationLength: ULONG,
    ReturnLength: PULONG,
) -> int:
    k.details.update(cls=SystemInformationClass)
    k.probe_range(SystemInformation, SystemInformationLength)
    data = _system_info(k, SystemInformationClass)
    put_buffer(k, SystemInformation, SystemInformationLength, data, ReturnLength)
    return Status.SUCCESS


def _unicode_string_block(k: Kernel, buf: int, text: str) -> bytes:
    """A UNICODE_STRING followed by its characters, for a buffer at ``buf``."""
    data = text.encode("utf-16-le")
    head = 16 if k.arch.ptr_size == 8 else 8
    fmt = "<HH4xQ" if k.arch.ptr_size == 8 else "<HHI"
    where = (buf + head) & k.arch.ptr_mask  # only an address to describe: probed when written
    return struct.pack(fmt, len(data), len(data) + 2, where) + data + b"\0\0"


def _process_info(k: Kernel, cls: int, buf: int) -> bytes:
    from emu.nt.calls.section import image_information

    proc, p = k.proc, _ptr(k)
    main = proc.objects.main_image
    if cls == PROCESSINFOCLASS.ProcessBasicInformation:
        pad = "4x" if k.arch.ptr_size == 8 else ""
        return struct.pack(
            f"<I{pad}{p}{p}i{pad}{p}{p}", NtStatus.PENDING, proc.peb, 1, 8, 0x1000, 0
        )
    if cls == PROCESSINFOCLASS.ProcessDebugPort:
        return k.arch.pack_ptr(0)
    if cls == PROCESSINFOCLASS.ProcessDebugObjectHandle:
        raise NtStatusError(Status.PORT_NOT_SET, "no debugger")
    if cls == PROCESSINFOCLASS.ProcessDebugFlags:
        return struct.pack("<I", 1)  # NoDebugInherit: not being debugged
    if cls == PROCESSINFOCLASS.ProcessWow64Information:
        return k.arch.pack_ptr(0)
    if cls == PROCESSINFOCLASS.ProcessDefaultHardErrorMode:
        return struct.pack("<I", 1)
    if cls == PROCESSINFOCLASS.ProcessExecuteFlags:
        return struct.pack("<I", 0x2 | 0x8)  # MEM_EXECUTE_OPTION_ENABLE | PERMANENT
    if cls == PROCESSINFOCLASS.ProcessCookie:
        return struct.pack("<I", 0x4845_4150)
    if main is not None:
        if cls == PROCESSINFOCLASS.ProcessImageInformation:
            return image_information(main.image, main.base, main.file_size, k.arch.ptr_size)
        if cls == PROCESSINFOCLASS.ProcessImageFileName:
            nt = "\\Device\\HarddiskVolume1" + main.windows_path[2:]
            return _unicode_string_block(k, buf, nt)
        if cls == PROCESSINFOCLASS.ProcessImageFileNameWin32:
            return _unicode_string_block(k, buf, main.windows_path)
    raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"ProcessInformationClass {cls}")


@syscall
def NtQueryInformationProcess(
    k: Kernel,
    ProcessHandle: HANDLE,
    ProcessInformationClass: ULONG,
    ProcessInformation: PVOID,
    ProcessInformationLength: ULONG,
    ReturnLength: PULONG,
) -> int:
    k.check_process_handle(ProcessHandle)
    k.details.update(cls=ProcessInformationClass)
    k.probe_range(ProcessInformation, ProcessInformationLength)
    data = _process_info(k, ProcessInformationClass, ProcessInformation)
    put_buffer(k, ProcessInformation, ProcessInformationLength, data, ReturnLength)
    return Status.SUCCESS


@syscall
def NtSetInformationProcess(
    k: Kernel,
    ProcessHandle: HANDLE,
    ProcessInformationClass: ULONG,
    ProcessInformation: PVOID,
    ProcessInformationLength: ULONG,
) -> int:
    """Accepted and recorded; nothing in the emulated process depends on these settings."""
    k.check_process_handle(ProcessHandle)
    k.details.update(cls=ProcessInformationClass)
    return Status.SUCCESS


def _check_thread(k: Kernel, handle: int) -> None:
    if handle != (-2 & k.arch.ptr_mask):  # NtCurrentThread()
        obj = k.proc.objects.get(handle, KernelObject)
        if obj.kind != "thread":
            raise NtStatusError(Status.OBJECT_TYPE_MISMATCH, f"handle 0x{handle:x}")


@syscall
def NtQueryInformationThread(
    k: Kernel,
    ThreadHandle: HANDLE,
    ThreadInformationClass: ULONG,
    ThreadInformation: PVOID,
    ThreadInformationLength: ULONG,
    ReturnLength: PULONG,
) -> int:

    _check_thread(k, ThreadHandle)
    k.details.update(cls=ThreadInformationClass)
    if ThreadInformationClass != THREADINFOCLASS.ThreadBasicInformation:
        raise NtStatusError(
            NtStatus.INVALID_INFO_CLASS, f"ThreadInformationClass {ThreadInformationClass}"
        )
    p = _ptr(k)
    pad = "4x" if k.arch.ptr_size == 8 else ""
    data = struct.pack(
        f"<I{pad}{p}{p}{p}{p}ii", NtStatus.PENDING, k.proc.teb, PROCESS_ID, THREAD_ID, 1, 8, 8
    )
    put_buffer(k, ThreadInformation, ThreadInformationLength, data, ReturnLength)
    return Status.SUCCESS


@syscall
def NtSetInformationThread(
    k: Kernel,
    ThreadHandle: HANDLE,
    ThreadInformationClass: ULONG,
    ThreadInformation: PVOID,
    ThreadInformationLength: ULONG,
) -> int:
    _check_thread(k, ThreadHandle)
    k.details.update(cls=ThreadInformationClass)
    return Status.SUCCESS


# ---------------------------------------------------------------------------------- tokens
def _new_token(k: Kernel, TokenHandle: int) -> int:
    handle = k.proc.objects.insert(KernelObject("token", "<process token>"))
    k.write_ptr(TokenHandle, handle)
    return Status.SUCCESS


@syscall
def NtOpenProcessToken(
    k: Kernel, ProcessHandle: HANDLE, DesiredAccess: ACCESS_MASK, TokenHandle: PHANDLE
) -> int:
    k.check_process_handle(ProcessHandle)
    return _new_token(k, TokenHandle)


@syscall
def NtOpenProcessTokenEx(
    k: Kernel,
    ProcessHandle: HANDLE,
    DesiredAccess: ACCESS_MASK,
    HandleAttributes: ULONG,
    TokenHandle: PHANDLE,
) -> int:
    k.check_process_handle(ProcessHandle)
    return _new_token(k, TokenHandle)


@syscall
def NtOpenThreadToken(
    k: Kernel, ThreadHandle: HANDLE, DesiredAccess: ACCESS_MASK, OpenAsSelf: BOOLEAN,
    TokenHandle: PHANDLE,
) -> int:  # fmt: skip
    """The thread is not impersonating: STATUS_NO_TOKEN."""
    raise NtStatusError(NtStatus.NO_TOKEN, "no impersonation token")


@syscall
def NtOpenThreadTokenEx(
    k: Kernel, ThreadHandle: HANDLE, DesiredAccess: ACCESS_MASK, OpenAsSelf: BOOLEAN,
    HandleAttributes: ULONG, TokenHandle: PHANDLE,
) -> int:  # fmt: skip
    raise NtStatusError(NtStatus.NO_TOKEN, "no impersonation token")


@syscall
def NtQueryInformationToken(
    k: Kernel,
    TokenHandle: HANDLE,
    TokenInformationClass: ULONG,
    TokenInformation: PVOID,
    TokenInformationLength: ULONG,
    ReturnLength: PULONG,
) -> int:
    """A standard user's token (S-1-5-21-0-0-0-1000), not elevated; other classes are not
    emulated. The pseudo-handles -4, -5, -6 (current process / thread / effective token) work."""
    if TokenHandle not in {-n & k.arch.ptr_mask for n in (4, 5, 6)}:
        token = k.proc.objects.get(TokenHandle, KernelObject)
        if token.kind != "token":
            raise NtStatusError(Status.OBJECT_TYPE_MISMATCH, f"handle 0x{TokenHandle:x}")
    k.details.update(cls=TokenInformationClass)
    if TokenInformationClass == TOKEN_INFORMATION_CLASS.TokenUser:
        head = 2 * k.arch.ptr_size  # TOKEN_USER {SID_AND_ATTRIBUTES {PSID Sid; ULONG Attr}}
        data = k.arch.pack_ptr(TokenInformation + head) + bytes(head - k.arch.ptr_size) + USER_SID
    elif TokenInformationClass == TOKEN_INFORMATION_CLASS.TokenElevationType:
        data = struct.pack("<I", 1)  # TokenElevationTypeDefault
    elif TokenInformationClass == TOKEN_INFORMATION_CLASS.TokenElevation:
        data = struct.pack("<I", 0)
    else:
        raise NtStatusError(
            NtStatus.INVALID_INFO_CLASS, f"TokenInformationClass {TokenInformationClass}"
        )
    put_buffer(k, TokenInformation, TokenInformationLength, data, ReturnLength)
    return Status.SUCCESS


# ---------------------------------------------------------------------------------- time, locale
@syscall
def NtQuerySystemTime(k: Kernel, SystemTime: PVOID) -> int:
    k.write(SystemTime, struct.pack("<q", SYSTEM_TIME + _clock(k)))
    return Status.SUCCESS


@syscall
def NtQueryPerformanceCounter(
    k: Kernel, PerformanceCounter: PVOID, PerformanceFrequency: PVOID
) -> int:
    k.write(PerformanceCounter, struct.pack("<q", _clock(k)))
    if PerformanceFrequency:
        k.write(PerformanceFrequency, struct.pack("<q", PERFORMANCE_FREQUENCY))
    return Status.SUCCESS


@syscall
def NtQueryDefaultLocale(k: Kernel, UserProfile: BOOLEAN, DefaultLocaleId: PVOID) -> int:
    k.write_u32(DefaultLocaleId, 0x409)
    return Status.SUCCESS


@syscall
def NtQueryDefaultUILanguage(k: Kernel, DefaultUILanguageId: PVOID) -> int:
    k.write(DefaultUILanguageId, struct.pack("<H", 0x409))
    return Status.SUCCESS


@syscall
def NtQueryInstallUILanguage(k: Kernel, InstallUILanguageId: PVOID) -> int:
    k.write(InstallUILanguageId, struct.pack("<H", 0x409))
    return Status.SUCCESS
