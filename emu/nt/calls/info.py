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
    ULONG,
    Kernel,
    syscall,
)
from emu.nt.objects import KernelObject, Status, put_buffer
from emu.nt.shared_data import PHYSICAL_PAGES, SYSTEM_TIME  # system time at clock 0
from emu.nt.threads import Thread
from emu.win.layouts import TEB
from emu.win.ntdefs import (
    ALLOCATION_GRANULARITY,
    MEM_PRIVATE,
    MEM_RESERVE,
    PAGE_READWRITE,
    PAGE_SIZE,
    PROCESSINFOCLASS,
    SYSTEM_INFORMATION_CLASS,
    THREADINFOCLASS,
    TOKEN_INFORMATION_CLASS,
    NtStatus,
)

PERFORMANCE_FREQUENCY = 10_000_000

# S-1-5-21-0-0-0-1000: revision 1, five sub-authorities, NT authority (5)
USER_SID = bytes([1, 5, 0, 0, 0, 0, 0, 5]) + struct.pack("<5I", 21, 0, 0, 0, 1000)


def _clock(k: Kernel) -> int:
    """A deterministic clock: 1 ms of emulated time per system call so far, plus the time the
    threads' scheduler lets pass (``emu.nt.threads``)."""
    return k.proc.threads.clock()


def _ptr(k: Kernel) -> str:
    return "Q" if k.arch.ptr_size == 8 else "I"


def _performance_information(k: Kernel) -> bytes:
    """SYSTEM_PERFORMANCE_INFORMATION (Windows 10: 0x158 bytes, the first 0x138 being the
    older layout): pages of this machine (1 GiB of RAM, commit limit = ``commit_limit``),
    what the process committed, the system calls made; every other counter 0."""
    mem = k.memory
    committed = mem.committed // PAGE_SIZE
    ulongs = [0] * 70
    ulongs[3] = max(PHYSICAL_PAGES - committed, 0)  # AvailablePages
    ulongs[4] = committed  # CommittedPages
    ulongs[5] = mem.commit_limit // PAGE_SIZE  # CommitLimit
    ulongs[6] = mem.peak_committed // PAGE_SIZE  # PeakCommitment
    ulongs[7] = committed  # PageFaultCount: each committed page was touched once
    ulongs[69] = len(k.proc.syscalls) & 0xFFFFFFFF  # SystemCalls
    head = struct.pack("<4q70I", 0, 0, 0, 0, *ulongs)
    # CcTotalDirtyPages, CcDirtyPageThreshold, ResidentAvailablePages, SharedCommittedPages
    return head + struct.pack("<QQqQ", 0, 0, ulongs[3], 0)


def _time_zone(dynamic: bool) -> bytes:
    """RTL_TIME_ZONE_INFORMATION (+ the dynamic part): the emulated machine runs on UTC."""
    name = "Coordinated Universal Time".encode("utf-16-le").ljust(64, b"\0")
    no_date = bytes(16)  # SYSTEMTIME: no daylight saving transition
    data = struct.pack("<l", 0) + name + no_date + struct.pack("<l", 0) + name + no_date
    data += struct.pack("<l", 0)
    if dynamic:
        data += "UTC".encode("utf-16-le").ljust(256, b"\0") + struct.pack("<B3x", 0)
    return data


# Wine's version block (version, build id, host system name, host release): what its ntdll's
# wine_get_version() and wine_get_host_version() then report
WINE_VERSION_BLOCK = b"8.0\0wine-8.0\0heapemu\0emulated\0"


def _system_info(k: Kernel, cls: int, length: int) -> bytes:
    arch, p = k.arch, _ptr(k)
    classes = SYSTEM_INFORMATION_CLASS
    if cls == classes.SystemPerformanceInformation:
        data = _performance_information(k)
        if length < 0x138:  # the pre-Windows 10 size is the least accepted
            raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} < 0x138")
        return data[: min(length, len(data))]
    if cls == classes.SystemCurrentTimeZoneInformation:
        return _time_zone(dynamic=False)
    if cls == classes.SystemDynamicTimeZoneInformation:
        return _time_zone(dynamic=True)
    if cls == classes.SystemWineVersionInformation:
        # not a Windows class: Wine's Unix side answers it, and heapemu plays that side
        return WINE_VERSION_BLOCK
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
            PHYSICAL_PAGES,  # NumberOfPhysicalPages (1 GiB), as KUSER_SHARED_DATA says
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
    data = _system_info(k, SystemInformationClass, SystemInformationLength)
    put_buffer(k, SystemInformation, SystemInformationLength, data, ReturnLength)
    return Status.SUCCESS


def _unicode_string_block(k: Kernel, buf: int, text: str) -> bytes:
    """A UNICODE_STRING followed by its characters, for a buffer at ``buf``."""
    data = text.encode("utf-16-le")
    head = 16 if k.arch.ptr_size == 8 else 8
    fmt = "<HH4xQ" if k.arch.ptr_size == 8 else "<HHI"
    where = (buf + head) & k.arch.ptr_mask  # only an address to describe: probed when written
    return struct.pack(fmt, len(data), len(data) + 2, where) + data + b"\0\0"


def _vm_counters(k: Kernel, length: int) -> bytes:
    """VM_COUNTERS, VM_COUNTERS_EX or VM_COUNTERS_EX2, as the buffer's length asks (any other
    length is STATUS_INFO_LENGTH_MISMATCH): address space reserved, pages committed."""
    mem = k.memory
    private = sum(r.committed_bytes for r in mem.regions() if r.type == MEM_PRIVATE)
    n = "Q" if k.arch.ptr_size == 8 else "I"
    pad = "4x" if k.arch.ptr_size == 8 else ""
    counters = struct.pack(
        f"<{n}{n}I{pad}{n * 8}",
        mem.peak_reserved,  # PeakVirtualSize
        mem.reserved,  # VirtualSize
        mem.committed // PAGE_SIZE,  # PageFaultCount
        mem.peak_committed,  # PeakWorkingSetSize
        mem.committed,  # WorkingSetSize
        0x4000, 0x4000, 0x800, 0x800,  # quota (paged, non-paged pool) peak and current
        private,  # PagefileUsage
        max(private, mem.peak_committed),  # PeakPagefileUsage
    )  # fmt: skip
    ex = counters + struct.pack(f"<{n}", private)  # PrivateUsage
    align = "" if k.arch.ptr_size == 8 else "4x"  # SharedCommitUsage is a ULONG64
    ex2 = ex + struct.pack(f"<{n}{align}Q", private, 0)  # PrivateWorkingSetSize, SharedCommit
    for data in (counters, ex, ex2):
        if length == len(data):
            return data
    raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} is no VM_COUNTERS size")


def _process_info(k: Kernel, cls: int, buf: int, length: int = 0) -> bytes:
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
    if cls == PROCESSINFOCLASS.ProcessWow64Information:
        return k.arch.pack_ptr(0)
    settings = proc.objects.process_settings
    if cls in SETTABLE:
        return settings.get(cls, SETTABLE[cls])
    if cls == PROCESSINFOCLASS.ProcessVmCounters:
        return _vm_counters(k, length)
    if cls == PROCESSINFOCLASS.ProcessHandleCount:
        return struct.pack("<I", len(proc.objects.handles()))
    if cls == PROCESSINFOCLASS.ProcessTimes:
        # KERNEL_USER_TIMES: created at boot, running ever since (the deterministic clock)
        return struct.pack("<qqqq", SYSTEM_TIME, 0, 0, _clock(k))
    if cls == PROCESSINFOCLASS.ProcessBreakOnTermination:
        return struct.pack("<I", 0)
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
    data = _process_info(k, ProcessInformationClass, ProcessInformation, ProcessInformationLength)
    put_buffer(k, ProcessInformation, ProcessInformationLength, data, ReturnLength)
    return Status.SUCCESS


# Settings the process can change and read back: class -> the value it starts with
P = PROCESSINFOCLASS
SETTABLE: dict[int, bytes] = {
    P.ProcessDefaultHardErrorMode: struct.pack("<I", 1),
    P.ProcessExecuteFlags: struct.pack("<I", 0x2 | 0x8),  # MEM_EXECUTE_OPTION_ENABLE|PERMANENT
    P.ProcessDebugFlags: struct.pack("<I", 1),  # NoDebugInherit: not being debugged
    P.ProcessPriorityClass: struct.pack("<BB", 0, 2),  # not foreground, NORMAL
    P.ProcessPriorityBoost: struct.pack("<I", 0),
    P.ProcessIoPriority: struct.pack("<I", 2),  # IoPriorityNormal
    P.ProcessPagePriority: struct.pack("<I", 5),  # MEMORY_PRIORITY_NORMAL
    P.ProcessEnableAlignmentFaultFixup: struct.pack("<B", 0),
}
# Changing these needs a privilege a standard user's token does not hold
PRIVILEGED = {
    P.ProcessQuotaLimits, P.ProcessExceptionPort, P.ProcessAccessToken, P.ProcessUserModeIOPL,
    P.ProcessBreakOnTermination, P.ProcessInstrumentationCallback, P.ProcessSessionInformation,
    P.ProcessIoPortHandlers,
}  # fmt: skip
# Windows lets a process set these; heapemu does not emulate what they change
NOT_EMULATED = {
    P.ProcessBasePriority, P.ProcessRaisePriority, P.ProcessLdtInformation, P.ProcessLdtSize,
    P.ProcessWorkingSetWatch, P.ProcessDeviceMap, P.ProcessForegroundInformation,
    P.ProcessHandleTracing, P.ProcessTlsInformation, P.ProcessWorkingSetWatchEx,
    P.ProcessAffinityUpdateMode, P.ProcessMemoryAllocationMode,
    P.ProcessTokenVirtualizationEnabled, P.ProcessConsoleHostProcess, P.ProcessMitigationPolicy,
    P.ProcessDynamicFunctionTableInformation, P.ProcessHandleCheckingMode,
    P.ProcessRevokeFileHandles,
    P.ProcessWorkingSetControl, P.ProcessDefaultCpuSetsInformation, P.ProcessPowerThrottlingState,
    P.ProcessRaiseUMExceptionOnInvalidHandleClose, P.ProcessEnableLogging,
    P.ProcessDynamicEHContinuationTargets, P.ProcessDynamicEnforcedCetCompatibleRanges,
}  # fmt: skip


def _set_value(k: Kernel, cls: int, buf: int, length: int) -> None:
    """Check one settable class's new value as Windows does, then keep it."""
    if length != len(SETTABLE[cls]):
        raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} bytes for class {cls}")
    data = k.read(buf, length)
    settings = k.proc.objects.process_settings
    value = int.from_bytes(data, "little")
    bad = NtStatusError(NtStatus.INVALID_PARAMETER, f"value 0x{value:x} for class {cls}")
    if cls == P.ProcessExecuteFlags:
        current = struct.unpack("<I", settings.get(cls, SETTABLE[cls]))[0]
        if current & 0x8:  # MEM_EXECUTE_OPTION_PERMANENT: the policy is fixed
            raise NtStatusError(NtStatus.ACCESS_DENIED, "the execute policy is permanent")
        if value & ~0x3F:
            raise bad
    elif cls == P.ProcessPriorityClass:
        if not 1 <= data[1] <= 6:
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"priority class {data[1]}")
        if data[1] == 4:  # PROCESS_PRIORITY_CLASS_REALTIME needs SeIncreaseBasePriorityPrivilege
            raise NtStatusError(NtStatus.PRIVILEGE_NOT_HELD, "realtime priority")
    elif cls == P.ProcessIoPriority:
        if value > 4:
            raise bad
        if value > 2:  # IoPriorityHigh / Critical need SeIncreaseBasePriorityPrivilege
            raise NtStatusError(NtStatus.PRIVILEGE_NOT_HELD, f"I/O priority {value}")
    elif cls == P.ProcessPagePriority and value > 7:
        raise bad
    settings[cls] = data


def _stack_allocation(k: Kernel, buf: int, length: int) -> None:
    """ProcessThreadStackAllocation: reserve a thread stack (ReserveSize bytes under ZeroBits)
    and write its base back; RtlCreateUserStack then commits its top. The _EX form puts
    PreferredNode and three reserved ULONGs (which must be 0) before the same fields."""
    from emu.nt.calls.memory import zero_bits_limit

    n = k.arch.ptr_size
    if length == 3 * n:
        info = buf
    elif length == 16 + 3 * n:
        node, *reserved = struct.unpack("<4I", k.read(buf, 16))
        if any(reserved) or node not in (0, 0xFFFFFFFF):
            raise NtStatusError(NtStatus.INVALID_PARAMETER, "PreferredNode or Reserved fields")
        info = buf + 16
    else:
        raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} bytes")
    reserve = k.read_ptr(info)
    zero_bits = k.read_ptr(info + n)
    k.write_ptr(info + 2 * n, 0)  # probe the out field first
    if not reserve:
        raise NtStatusError(NtStatus.INVALID_PARAMETER, "ReserveSize is 0")
    highest = zero_bits_limit(k, zero_bits, 3)
    base, size = k.memory.allocate(
        0, reserve, MEM_RESERVE, PAGE_READWRITE, highest=highest, usage="stack", user=True
    )
    k.write_ptr(info + 2 * n, base)
    k.details.update(base=base, size=size)


@syscall
def NtSetInformationProcess(
    k: Kernel,
    ProcessHandle: HANDLE,
    ProcessInformationClass: ULONG,
    ProcessInformation: PVOID,
    ProcessInformationLength: ULONG,
) -> int:
    """Every class has an answer: the settings a process can read back are kept (and checked
    as Windows checks them), ProcessThreadStackAllocation reserves a stack, ProcessAffinityMask
    accepts the one processor; classes needing a privilege are STATUS_PRIVILEGE_NOT_HELD,
    query-only or unknown ones STATUS_INVALID_INFO_CLASS, the rest STATUS_NOT_IMPLEMENTED."""
    k.check_process_handle(ProcessHandle)
    cls, buf, length = ProcessInformationClass, ProcessInformation, ProcessInformationLength
    k.details.update(cls=cls)
    k.probe_range(buf, length)
    if cls in SETTABLE:
        _set_value(k, cls, buf, length)
    elif cls == P.ProcessThreadStackAllocation:
        _stack_allocation(k, buf, length)
    elif cls == P.ProcessAffinityMask:
        if length != k.arch.ptr_size:
            raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{length} bytes")
        mask = k.read_ptr(buf)
        if not mask or mask & ~1:  # one processor: bit 0
            raise NtStatusError(NtStatus.INVALID_PARAMETER, f"affinity 0x{mask:x}")
    elif cls in PRIVILEGED:
        raise NtStatusError(NtStatus.PRIVILEGE_NOT_HELD, f"ProcessInformationClass {cls}")
    elif cls in NOT_EMULATED:
        raise NtStatusError(NtStatus.NOT_IMPLEMENTED, f"ProcessInformationClass {cls}")
    else:  # query-only classes and values Windows does not know
        raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"ProcessInformationClass {cls}")
    return Status.SUCCESS


def _thread(k: Kernel, handle: int) -> Thread:
    if handle == (-2 & k.arch.ptr_mask):  # NtCurrentThread()
        return k.proc.threads.current
    return k.proc.objects.get(handle, Thread)


@syscall
def NtQueryInformationThread(
    k: Kernel,
    ThreadHandle: HANDLE,
    ThreadInformationClass: ULONG,
    ThreadInformation: PVOID,
    ThreadInformationLength: ULONG,
    ReturnLength: PULONG,
) -> int:
    """ThreadBasicInformation (ExitStatus is STATUS_PENDING while the thread runs: kernel32's
    STILL_ACTIVE), ThreadQuerySetWin32StartAddress, ThreadAmILastThread (RtlExitUserThread
    asks it to decide between ending the thread and ending the process)."""
    thread = _thread(k, ThreadHandle)
    cls = ThreadInformationClass
    k.details.update(cls=cls, tid=thread.tid)
    p = _ptr(k)
    if cls == THREADINFOCLASS.ThreadBasicInformation:
        pad = "4x" if k.arch.ptr_size == 8 else ""
        teb = 0 if thread.released else thread.teb
        data = struct.pack(
            f"<I{pad}{p}{p}{p}{p}ii", thread.exit_status, teb, PROCESS_ID, thread.tid, 1, 8, 8
        )
    elif cls == THREADINFOCLASS.ThreadQuerySetWin32StartAddress:
        data = struct.pack(f"<{p}", thread.start)
    elif cls == THREADINFOCLASS.ThreadAmILastThread:
        data = struct.pack("<I", len(k.proc.threads.live()) == 1)
    else:
        raise NtStatusError(NtStatus.INVALID_INFO_CLASS, f"ThreadInformationClass {cls}")
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
    """ThreadZeroTlsCell (TlsFree) clears the slot in every thread's TEB, as Windows does;
    other classes are accepted and change nothing."""
    _thread(k, ThreadHandle)
    cls = ThreadInformationClass
    k.details.update(cls=cls)
    if cls == THREADINFOCLASS.ThreadZeroTlsCell:
        if ThreadInformationLength != 4:
            raise NtStatusError(NtStatus.INFO_LENGTH_MISMATCH, f"{ThreadInformationLength}")
        (index,) = struct.unpack("<I", k.read(ThreadInformation, 4))
        for thread in k.proc.threads.live():
            _zero_tls_cell(k, thread.teb, index)
    return Status.SUCCESS


def _zero_tls_cell(k: Kernel, teb: int, index: int) -> None:
    arch, n = k.arch, k.arch.ptr_size
    if index < 64:
        k.write_ptr(TEB.address(arch, teb, "TlsSlots") + index * n, 0)
    elif index < 64 + 1024:  # TLS_EXPANSION_SLOTS
        expansion = TEB.read(k, arch, teb, "TlsExpansionSlots")
        if expansion:
            k.write_ptr(expansion + (index - 64) * n, 0)


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
