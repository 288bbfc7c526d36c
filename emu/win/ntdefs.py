"""Windows constants: NTSTATUS codes, memory states and types, page protections, heap flags."""

from __future__ import annotations

import enum

PAGE_SIZE = 0x1000
ALLOCATION_GRANULARITY = 0x10000  # reservations start on 64 KiB boundaries (SYSTEM_INFO)


class NtStatus(enum.IntEnum):
    SUCCESS = 0x00000000
    WAIT_0 = 0x00000000  # + the index of the object that satisfied a WaitAny
    ABANDONED_WAIT_0 = 0x00000080
    USER_APC = 0x000000C0  # a wait ended to deliver user APCs (ntstatus.h)
    ALERTED = 0x00000101
    TIMEOUT = 0x00000102
    PENDING = 0x00000103
    NO_YIELD_PERFORMED = 0x40000024
    WAS_LOCKED = 0x40000019
    OBJECT_NAME_EXISTS = 0x40000000
    IMAGE_NOT_AT_BASE = 0x40000003
    BUFFER_OVERFLOW = 0x80000005
    NO_MORE_FILES = 0x80000006
    NO_MORE_ENTRIES = 0x8000001A
    GUARD_PAGE_VIOLATION = 0x80000001
    BREAKPOINT = 0x80000003
    SINGLE_STEP = 0x80000004
    UNSUCCESSFUL = 0xC0000001
    NOT_IMPLEMENTED = 0xC0000002
    INVALID_INFO_CLASS = 0xC0000003
    INFO_LENGTH_MISMATCH = 0xC0000004
    ACCESS_VIOLATION = 0xC0000005
    INVALID_CID = 0xC000000B
    INVALID_PARAMETER_MIX = 0xC0000030
    MUTANT_NOT_OWNED = 0xC0000046
    SEMAPHORE_LIMIT_EXCEEDED = 0xC0000047
    SUSPEND_COUNT_EXCEEDED = 0xC000004A
    THREAD_IS_TERMINATING = 0xC000004B
    CANT_TERMINATE_SELF = 0xC00000DB
    INVALID_HANDLE = 0xC0000008
    INVALID_DEVICE_REQUEST = 0xC0000010
    END_OF_FILE = 0xC0000011
    INVALID_PARAMETER = 0xC000000D
    NO_MEMORY = 0xC0000017
    ACCESS_DENIED = 0xC0000022
    BUFFER_TOO_SMALL = 0xC0000023
    OBJECT_TYPE_MISMATCH = 0xC0000024
    OBJECT_NAME_INVALID = 0xC0000033
    OBJECT_NAME_NOT_FOUND = 0xC0000034
    OBJECT_NAME_COLLISION = 0xC0000035
    DELETE_PENDING = 0xC0000056
    DISK_FULL = 0xC000007F
    OBJECT_PATH_NOT_FOUND = 0xC000003A
    CONFLICTING_ADDRESSES = 0xC0000018
    UNABLE_TO_FREE_VM = 0xC000001A
    UNABLE_TO_DELETE_SECTION = 0xC000001B
    NOT_MAPPED_VIEW = 0xC0000019
    ALREADY_COMMITTED = 0xC0000021
    ILLEGAL_INSTRUCTION = 0xC000001D
    NOT_COMMITTED = 0xC000002D
    NOT_LOCKED = 0xC000002A
    INVALID_PAGE_PROTECTION = 0xC0000045
    MEMORY_NOT_ALLOCATED = 0xC00000A0
    ARRAY_BOUNDS_EXCEEDED = 0xC000008C
    INTEGER_DIVIDE_BY_ZERO = 0xC0000094
    INTEGER_OVERFLOW = 0xC0000095
    INVALID_IMAGE_FORMAT = 0xC000007B
    FILE_IS_A_DIRECTORY = 0xC00000BA
    NOT_SUPPORTED = 0xC00000BB
    PRIVILEGED_INSTRUCTION = 0xC0000096
    FREE_VM_NOT_AT_BASE = 0xC000009F
    INVALID_PARAMETER_1 = 0xC00000EF
    INVALID_PARAMETER_2 = 0xC00000F0
    INVALID_PARAMETER_3 = 0xC00000F1
    INVALID_PARAMETER_4 = 0xC00000F2
    INVALID_PARAMETER_5 = 0xC00000F3
    INVALID_PARAMETER_6 = 0xC00000F4
    INTERNAL_ERROR = 0xC00000E5
    INVALID_PARAMETER_7 = 0xC00000F5
    INVALID_PARAMETER_8 = 0xC00000F6
    INVALID_PARAMETER_9 = 0xC00000F7
    INVALID_PARAMETER_10 = 0xC00000F8
    DATATYPE_MISALIGNMENT = 0x80000002
    IMAGE_MACHINE_TYPE_MISMATCH = 0x4000000E
    INVALID_VIEW_SIZE = 0xC000001F
    INVALID_FILE_FOR_SECTION = 0xC0000020
    SECTION_TOO_BIG = 0xC0000040
    SECTION_PROTECTION = 0xC000004E
    SECTION_NOT_IMAGE = 0xC0000049
    PRIVILEGE_NOT_HELD = 0xC0000061
    INSUFFICIENT_RESOURCES = 0xC000009A
    NOT_SAME_DEVICE = 0xC00000D4
    MAPPED_FILE_SIZE_ZERO = 0xC000011E
    INVALID_IMAGE_NOT_MZ = 0xC000012F
    INVALID_ADDRESS = 0xC0000141
    MAPPED_ALIGNMENT = 0xC0000220
    STACK_OVERFLOW = 0xC00000FD
    NOT_A_DIRECTORY = 0xC0000103
    NO_TOKEN = 0xC000007C
    COMMITMENT_LIMIT = 0xC000012D
    PORT_NOT_SET = 0xC0000353
    HEAP_CORRUPTION = 0xC0000374
    STACK_BUFFER_OVERRUN = 0xC0000409  # __fastfail (int 0x29): the process ends at once


# Information classes, by the Windows enums' own names (phnt numbering). A handler matches on
# these; a class it does not serve is STATUS_INVALID_INFO_CLASS.
class SYSTEM_INFORMATION_CLASS(enum.IntEnum):
    SystemBasicInformation = 0
    SystemProcessorInformation = 1
    SystemPerformanceInformation = 2
    SystemTimeOfDayInformation = 3
    SystemCurrentTimeZoneInformation = 44
    SystemRangeStartInformation = 50
    SystemEmulationBasicInformation = 62
    SystemEmulationProcessorInformation = 63
    SystemDynamicTimeZoneInformation = 102
    # Wine's own class: its ntdll asks for the Wine version at start-up (version_init)
    SystemWineVersionInformation = 1000


class PROCESSINFOCLASS(enum.IntEnum):
    ProcessBasicInformation = 0
    ProcessQuotaLimits = 1
    ProcessIoCounters = 2
    ProcessVmCounters = 3
    ProcessTimes = 4
    ProcessBasePriority = 5
    ProcessRaisePriority = 6
    ProcessDebugPort = 7
    ProcessExceptionPort = 8
    ProcessAccessToken = 9
    ProcessLdtInformation = 10
    ProcessLdtSize = 11
    ProcessDefaultHardErrorMode = 12
    ProcessIoPortHandlers = 13
    ProcessPooledUsageAndLimits = 14
    ProcessWorkingSetWatch = 15
    ProcessUserModeIOPL = 16
    ProcessEnableAlignmentFaultFixup = 17
    ProcessPriorityClass = 18
    ProcessWx86Information = 19
    ProcessHandleCount = 20
    ProcessAffinityMask = 21
    ProcessPriorityBoost = 22
    ProcessDeviceMap = 23
    ProcessSessionInformation = 24
    ProcessForegroundInformation = 25
    ProcessWow64Information = 26
    ProcessImageFileName = 27
    ProcessLUIDDeviceMapsEnabled = 28
    ProcessBreakOnTermination = 29
    ProcessDebugObjectHandle = 30
    ProcessDebugFlags = 31
    ProcessHandleTracing = 32
    ProcessIoPriority = 33
    ProcessExecuteFlags = 34
    ProcessTlsInformation = 35
    ProcessCookie = 36
    ProcessImageInformation = 37
    ProcessCycleTime = 38
    ProcessPagePriority = 39
    ProcessInstrumentationCallback = 40
    ProcessThreadStackAllocation = 41
    ProcessWorkingSetWatchEx = 42
    ProcessImageFileNameWin32 = 43
    ProcessImageFileMapping = 44
    ProcessAffinityUpdateMode = 45
    ProcessMemoryAllocationMode = 46
    ProcessGroupInformation = 47
    ProcessTokenVirtualizationEnabled = 48
    ProcessConsoleHostProcess = 49
    ProcessWindowInformation = 50
    ProcessHandleInformation = 51
    ProcessMitigationPolicy = 52
    ProcessDynamicFunctionTableInformation = 53
    ProcessHandleCheckingMode = 54
    ProcessKeepAliveCount = 55
    ProcessRevokeFileHandles = 56
    ProcessWorkingSetControl = 57
    ProcessHandleTable = 58
    ProcessCheckStackExtentsMode = 59
    ProcessCommandLineInformation = 60
    ProcessProtectionInformation = 61
    ProcessMemoryExhaustion = 62
    ProcessFaultInformation = 63
    ProcessTelemetryIdInformation = 64
    ProcessCommitReleaseInformation = 65
    ProcessDefaultCpuSetsInformation = 66
    ProcessAllowedCpuSetsInformation = 67
    ProcessSubsystemProcess = 68
    ProcessJobMemoryInformation = 69
    ProcessInPrivate = 70
    ProcessRaiseUMExceptionOnInvalidHandleClose = 71
    ProcessIumChallengeResponse = 72
    ProcessChildProcessInformation = 73
    ProcessHighGraphicsPriorityInformation = 74
    ProcessSubsystemInformation = 75
    ProcessEnergyValues = 76
    ProcessPowerThrottlingState = 77
    ProcessReserved3Information = 78
    ProcessWin32kSyscallFilterInformation = 79
    ProcessDisableSystemAllowedCpuSets = 80
    ProcessWakeInformation = 81
    ProcessEnergyTrackingState = 82
    ProcessManageWritesToExecutableMemory = 83
    ProcessCaptureTrustletLiveDump = 84
    ProcessTelemetryCoverage = 85
    ProcessEnclaveInformation = 86
    ProcessEnableReadWriteVmLogging = 87
    ProcessUptimeInformation = 88
    ProcessImageSection = 89
    ProcessDebugAuthInformation = 90
    ProcessSystemResourceManagement = 91
    ProcessSequenceNumber = 92
    ProcessLoaderDetour = 93
    ProcessSecurityDomainInformation = 94
    ProcessCombineSecurityDomainsInformation = 95
    ProcessEnableLogging = 96
    ProcessLeapSecondInformation = 97
    ProcessFiberShadowStackAllocation = 98
    ProcessFreeFiberShadowStackAllocation = 99
    ProcessAltSystemCallInformation = 100
    ProcessDynamicEHContinuationTargets = 101
    ProcessDynamicEnforcedCetCompatibleRanges = 102


class THREADINFOCLASS(enum.IntEnum):
    ThreadBasicInformation = 0
    ThreadQuerySetWin32StartAddress = 9
    ThreadZeroTlsCell = 10
    ThreadAmILastThread = 12


class TOKEN_INFORMATION_CLASS(enum.IntEnum):
    TokenUser = 1
    TokenElevationType = 18
    TokenElevation = 20


class MEMORY_INFORMATION_CLASS(enum.IntEnum):
    MemoryBasicInformation = 0
    MemoryWorkingSetInformation = 1
    MemoryMappedFilenameInformation = 2
    MemoryRegionInformation = 3
    MemoryWorkingSetExInformation = 4
    MemorySharedCommitInformation = 5
    MemoryImageInformation = 6
    MemoryRegionInformationEx = 7
    # Wine's own classes (its ntdll asks at start-up for its Unix side; Windows has none)
    MemoryWineUnixFuncs = 1000
    MemoryWineUnixWow64Funcs = 1001


class VIRTUAL_MEMORY_INFORMATION_CLASS(enum.IntEnum):
    VmPrefetchInformation = 0
    VmPagePriorityInformation = 1
    VmCfgCallTargetInformation = 2
    VmPageDirtyStateInformation = 3
    VmImageHotPatchInformation = 4
    VmPhysicalContiguityInformation = 5
    VmVirtualMachinePrepopulateInformation = 6
    VmRemoveFromWorkingSetInformation = 7


class MEM_EXTENDED_PARAMETER_TYPE(enum.IntEnum):
    MemExtendedParameterInvalidType = 0
    MemExtendedParameterAddressRequirements = 1
    MemExtendedParameterNumaNode = 2
    MemExtendedParameterPartitionHandle = 3
    MemExtendedParameterUserPhysicalHandle = 4
    MemExtendedParameterAttributeFlags = 5
    MemExtendedParameterImageMachine = 6
    MemExtendedParameterMax = 7


class SECTION_INFORMATION_CLASS(enum.IntEnum):
    SectionBasicInformation = 0
    SectionImageInformation = 1


class FILE_INFORMATION_CLASS(enum.IntEnum):
    FileBasicInformation = 4
    FileStandardInformation = 5
    FileInternalInformation = 6
    FilePositionInformation = 14
    FileNetworkOpenInformation = 34
    FileIdInformation = 59


class FS_INFORMATION_CLASS(enum.IntEnum):
    FileFsVolumeInformation = 1
    FileFsDeviceInformation = 4
    FileFsAttributeInformation = 5


def status_name(code: int) -> str:
    try:
        return f"STATUS_{NtStatus(code & 0xFFFFFFFF).name}"
    except ValueError:
        return f"NTSTATUS 0x{code & 0xFFFFFFFF:08X}"


def invalid_parameter(n: int) -> NtStatus:
    """STATUS_INVALID_PARAMETER_n: the n-th (1-based) system-call argument is wrong."""
    return NtStatus(NtStatus.INVALID_PARAMETER_1 + n - 1)


# MEMORY_BASIC_INFORMATION.State and NtAllocateVirtualMemory/NtFreeVirtualMemory types
MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_DECOMMIT = 0x4000
MEM_RELEASE = 0x8000
MEM_FREE = 0x10000
MEM_RESET = 0x80000
MEM_TOP_DOWN = 0x100000
MEM_WRITE_WATCH = 0x200000
MEM_PHYSICAL = 0x400000
MEM_RESET_UNDO = 0x1000000
MEM_LARGE_PAGES = 0x20000000
AT_ROUND_TO_PAGE = 0x40000000
# placeholders (NtAllocateVirtualMemoryEx, NtMapViewOfSectionEx, NtFreeVirtualMemory)
MEM_COALESCE_PLACEHOLDERS = 0x1
MEM_PRESERVE_PLACEHOLDER = 0x2
MEM_REPLACE_PLACEHOLDER = 0x4000
MEM_RESERVE_PLACEHOLDER = 0x40000
WRITE_WATCH_FLAG_RESET = 0x1

# MEMORY_BASIC_INFORMATION.Type
MEM_PRIVATE = 0x20000
MEM_MAPPED = 0x40000
MEM_IMAGE = 0x1000000

PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_WRITECOPY = 0x08
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
PAGE_EXECUTE_WRITECOPY = 0x80
PAGE_GUARD = 0x100
PAGE_NOCACHE = 0x200
PAGE_WRITECOMBINE = 0x400

PAGE_BASE_PROTECTIONS = {
    PAGE_NOACCESS: "PAGE_NOACCESS",
    PAGE_READONLY: "PAGE_READONLY",
    PAGE_READWRITE: "PAGE_READWRITE",
    PAGE_WRITECOPY: "PAGE_WRITECOPY",
    PAGE_EXECUTE: "PAGE_EXECUTE",
    PAGE_EXECUTE_READ: "PAGE_EXECUTE_READ",
    PAGE_EXECUTE_READWRITE: "PAGE_EXECUTE_READWRITE",
    PAGE_EXECUTE_WRITECOPY: "PAGE_EXECUTE_WRITECOPY",
}
PAGE_MODIFIERS = {
    PAGE_GUARD: "PAGE_GUARD",
    PAGE_NOCACHE: "PAGE_NOCACHE",
    PAGE_WRITECOMBINE: "PAGE_WRITECOMBINE",
}

MEM_STATE_NAMES = {MEM_COMMIT: "MEM_COMMIT", MEM_RESERVE: "MEM_RESERVE", MEM_FREE: "MEM_FREE"}
MEM_TYPE_NAMES = {MEM_PRIVATE: "MEM_PRIVATE", MEM_MAPPED: "MEM_MAPPED", MEM_IMAGE: "MEM_IMAGE"}


def is_valid_protection(protect: int) -> bool:
    """Exactly one base protection, optionally with one of GUARD/NOCACHE/WRITECOMBINE (MSDN's
    memory protection constants: the three modifiers exclude each other and PAGE_NOACCESS)."""
    base = protect & 0xFF
    mods = protect & ~0xFF
    if base not in PAGE_BASE_PROTECTIONS:
        return False
    if mods not in (0, PAGE_GUARD, PAGE_NOCACHE, PAGE_WRITECOMBINE):
        return False
    return not (base == PAGE_NOACCESS and mods)


def protection_name(protect: int) -> str:
    if protect == 0:
        return ""
    parts = [PAGE_BASE_PROTECTIONS.get(protect & 0xFF, f"0x{protect & 0xFF:x}")]
    parts += [name for bit, name in PAGE_MODIFIERS.items() if protect & bit]
    return " | ".join(parts)


def protection_allows(protect: int, *, write: bool = False, execute: bool = False) -> bool:
    base = protect & 0xFF
    if protect & PAGE_GUARD:
        return False
    if execute:
        return base in (
            PAGE_EXECUTE,
            PAGE_EXECUTE_READ,
            PAGE_EXECUTE_READWRITE,
            PAGE_EXECUTE_WRITECOPY,
        )
    if write:
        return base in (
            PAGE_READWRITE,
            PAGE_WRITECOPY,
            PAGE_EXECUTE_READWRITE,
            PAGE_EXECUTE_WRITECOPY,
        )
    return base != PAGE_NOACCESS  # PAGE_EXECUTE is readable on x86 hardware


# Heap flags (winnt.h), shared by the builtin heap and Wine's
HEAP_NO_SERIALIZE = 0x00000001
HEAP_GROWABLE = 0x00000002
HEAP_GENERATE_EXCEPTIONS = 0x00000004
HEAP_ZERO_MEMORY = 0x00000008
HEAP_REALLOC_IN_PLACE_ONLY = 0x00000010
HEAP_TAIL_CHECKING_ENABLED = 0x00000020
HEAP_FREE_CHECKING_ENABLED = 0x00000040
HEAP_DISABLE_COALESCE_ON_FREE = 0x00000080
HEAP_CREATE_ALIGN_16 = 0x00010000
HEAP_CREATE_ENABLE_TRACING = 0x00020000
HEAP_CREATE_ENABLE_EXECUTE = 0x00040000

HEAP_FLAG_NAMES = {
    HEAP_NO_SERIALIZE: "HEAP_NO_SERIALIZE",
    HEAP_GROWABLE: "HEAP_GROWABLE",
    HEAP_GENERATE_EXCEPTIONS: "HEAP_GENERATE_EXCEPTIONS",
    HEAP_ZERO_MEMORY: "HEAP_ZERO_MEMORY",
    HEAP_REALLOC_IN_PLACE_ONLY: "HEAP_REALLOC_IN_PLACE_ONLY",
    HEAP_TAIL_CHECKING_ENABLED: "HEAP_TAIL_CHECKING_ENABLED",
    HEAP_FREE_CHECKING_ENABLED: "HEAP_FREE_CHECKING_ENABLED",
    HEAP_DISABLE_COALESCE_ON_FREE: "HEAP_DISABLE_COALESCE_ON_FREE",
    HEAP_CREATE_ALIGN_16: "HEAP_CREATE_ALIGN_16",
    HEAP_CREATE_ENABLE_TRACING: "HEAP_CREATE_ENABLE_TRACING",
    HEAP_CREATE_ENABLE_EXECUTE: "HEAP_CREATE_ENABLE_EXECUTE",
}


def heap_flag_names(flags: int) -> str:
    names = [n for bit, n in HEAP_FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(HEAP_FLAG_NAMES)
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names) if names else "0"
