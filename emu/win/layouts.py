"""Windows structure layouts, declared once with the x86 and x64 offsets side by side.

Offsets are the public ones (Windows 10 layouts as published by the symbol files; the x86 PEB
offsets of ProcessHeap 0x18, NumberOfHeaps 0x88, MaximumNumberOfHeaps 0x8c and ProcessHeaps 0x90
are the ones seed 001 shows in WinDbg). Builders and walkers read the same declaration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from emu.arch import Arch

# field kinds: fixed-width integers, or "ptr" whose width is the architecture's pointer size
_FIXED = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "i32": "<i"}


class MemoryIO(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class Field:
    name: str
    x86: int
    x64: int
    kind: str = "ptr"
    count: int = 1  # array length (for dumps; read/write address element 0 unless indexed)

    def offset(self, arch: Arch) -> int:
        return self.x64 if arch.ptr_size == 8 else self.x86

    def size(self, arch: Arch) -> int:
        return arch.ptr_size if self.kind == "ptr" else struct.calcsize(_FIXED[self.kind])

    def fmt(self, arch: Arch) -> str:
        return arch.ptr_fmt if self.kind == "ptr" else _FIXED[self.kind]


class Struct:
    """A Windows structure: name, size and fields for both architectures."""

    def __init__(self, name: str, size_x86: int, size_x64: int, fields: list[Field]):
        self.name = name
        self._size = (size_x86, size_x64)
        self.fields = {f.name: f for f in fields}

    def size(self, arch: Arch) -> int:
        return self._size[1] if arch.ptr_size == 8 else self._size[0]

    def offset(self, arch: Arch, name: str) -> int:
        return self.fields[name].offset(arch)

    def address(self, arch: Arch, base: int, name: str, index: int = 0) -> int:
        f = self.fields[name]
        return base + f.offset(arch) + index * f.size(arch)

    def read(self, mem: MemoryIO, arch: Arch, base: int, name: str, index: int = 0) -> int:
        f = self.fields[name]
        addr = self.address(arch, base, name, index)
        return int(struct.unpack(f.fmt(arch), mem.read(addr, f.size(arch)))[0])

    def write(
        self, mem: MemoryIO, arch: Arch, base: int, name: str, value: int, index: int = 0
    ) -> None:
        f = self.fields[name]
        mask = (1 << (8 * f.size(arch))) - 1
        mem.write(self.address(arch, base, name, index), struct.pack(f.fmt(arch), value & mask))

    def pack(self, arch: Arch, values: dict[str, int]) -> bytes:
        """The structure as bytes (fields not named are zero): built locally, then copied to
        emulated memory in one probed write."""
        buf = bytearray(self.size(arch))
        for name, value in values.items():
            f = self.fields[name]
            mask = (1 << (8 * f.size(arch))) - 1
            struct.pack_into(f.fmt(arch), buf, f.offset(arch), value & mask)
        return bytes(buf)

    def dump(self, mem: MemoryIO, arch: Arch, base: int) -> list[tuple[int, str, int]]:
        """(offset, name, value) for every field, in offset order, like WinDbg's ``dt``."""
        rows = []
        for f in sorted(self.fields.values(), key=lambda f: f.offset(arch)):
            if f.offset(arch) < 0:  # not on this architecture
                continue
            rows.append((f.offset(arch), f.name, self.read(mem, arch, base, f.name)))
        return rows


P = "ptr"

# NT_TIB is the first member of the TEB; fs:[0x18] / gs:[0x30] is NtTib.Self.
TEB = Struct(
    "_TEB",
    0x1000,
    0x1838,
    [
        Field("ExceptionList", 0x000, 0x000),
        Field("StackBase", 0x004, 0x008),
        Field("StackLimit", 0x008, 0x010),
        Field("SubSystemTib", 0x00C, 0x018),
        Field("FiberData", 0x010, 0x020),
        Field("ArbitraryUserPointer", 0x014, 0x028),
        Field("Self", 0x018, 0x030),
        Field("EnvironmentPointer", 0x01C, 0x038),
        Field("UniqueProcess", 0x020, 0x040),  # ClientId.UniqueProcess
        Field("UniqueThread", 0x024, 0x048),  # ClientId.UniqueThread
        Field("ActiveRpcHandle", 0x028, 0x050),
        Field("ThreadLocalStoragePointer", 0x02C, 0x058),
        Field("ProcessEnvironmentBlock", 0x030, 0x060),
        Field("LastErrorValue", 0x034, 0x068, "u32"),
        Field("CountOfOwnedCriticalSections", 0x038, 0x06C, "u32"),
        Field("CurrentLocale", 0x0C4, 0x108, "u32"),
        Field("LastStatusValue", 0xBF4, 0x1250, "u32"),
        Field("DeallocationStack", 0xE0C, 0x1478),
        Field("TlsSlots", 0xE10, 0x1480, P, 64),
        Field("GuaranteedStackBytes", 0xF78, 0x1748, "u32"),  # SetThreadStackGuarantee
        Field("TlsExpansionSlots", 0xF94, 0x1780),
    ],
)

PEB = Struct(
    "_PEB",
    0x480,
    0x7C8,
    [
        Field("InheritedAddressSpace", 0x000, 0x000, "u8"),
        Field("ReadImageFileExecOptions", 0x001, 0x001, "u8"),
        Field("BeingDebugged", 0x002, 0x002, "u8"),
        Field("BitField", 0x003, 0x003, "u8"),
        Field("Mutant", 0x004, 0x008),
        Field("ImageBaseAddress", 0x008, 0x010),
        Field("Ldr", 0x00C, 0x018),
        Field("ProcessParameters", 0x010, 0x020),
        Field("SubSystemData", 0x014, 0x028),
        Field("ProcessHeap", 0x018, 0x030),
        Field("FastPebLock", 0x01C, 0x038),
        Field("KernelCallbackTable", 0x02C, 0x058),
        Field("TlsBitmap", 0x040, 0x078),
        Field("TlsBitmapBits", 0x044, 0x080, "u32", 2),
        Field("AnsiCodePageData", 0x058, 0x0A0),
        Field("OemCodePageData", 0x05C, 0x0A8),
        Field("UnicodeCaseTableData", 0x060, 0x0B0),
        Field("NumberOfProcessors", 0x064, 0x0B8, "u32"),
        Field("NtGlobalFlag", 0x068, 0x0BC, "u32"),
        Field("CriticalSectionTimeout", 0x070, 0x0C0, "u64"),
        Field("HeapSegmentReserve", 0x078, 0x0C8),
        Field("HeapSegmentCommit", 0x07C, 0x0D0),
        Field("HeapDeCommitTotalFreeThreshold", 0x080, 0x0D8),
        Field("HeapDeCommitFreeBlockThreshold", 0x084, 0x0E0),
        Field("NumberOfHeaps", 0x088, 0x0E8, "u32"),
        Field("MaximumNumberOfHeaps", 0x08C, 0x0EC, "u32"),
        Field("ProcessHeaps", 0x090, 0x0F0),
        Field("GdiSharedHandleTable", 0x094, 0x0F8),
        Field("LoaderLock", 0x0A0, 0x110),
        Field("OSMajorVersion", 0x0A4, 0x118, "u32"),
        Field("OSMinorVersion", 0x0A8, 0x11C, "u32"),
        Field("OSBuildNumber", 0x0AC, 0x120, "u16"),
        Field("OSCSDVersion", 0x0AE, 0x122, "u16"),
        Field("OSPlatformId", 0x0B0, 0x124, "u32"),
        Field("ImageSubsystem", 0x0B4, 0x128, "u32"),
        Field("ImageSubsystemMajorVersion", 0x0B8, 0x12C, "u32"),
        Field("ImageSubsystemMinorVersion", 0x0BC, 0x130, "u32"),
        Field("SessionId", 0x1D4, 0x2C0, "u32"),
    ],
)

# Same offsets on both architectures: the page is shared with the kernel at 0x7FFE0000.
KUSER_SHARED_DATA = Struct(
    "_KUSER_SHARED_DATA",
    0x720,
    0x720,
    [
        Field("TickCountLowDeprecated", 0x000, 0x000, "u32"),
        Field("TickCountMultiplier", 0x004, 0x004, "u32"),
        Field("InterruptTime", 0x008, 0x008, "u64"),  # KSYSTEM_TIME: LowPart, High1Time
        Field("InterruptTimeHigh2", 0x010, 0x010, "u32"),
        Field("SystemTime", 0x014, 0x014, "u64"),
        Field("SystemTimeHigh2", 0x01C, 0x01C, "u32"),
        Field("TimeZoneBias", 0x020, 0x020, "u64"),
        Field("ImageNumberLow", 0x02C, 0x02C, "u16"),
        Field("ImageNumberHigh", 0x02E, 0x02E, "u16"),
        Field("NtSystemRoot", 0x030, 0x030, "u16", 260),
        Field("MaxStackTraceDepth", 0x238, 0x238, "u32"),
        Field("CryptoExponent", 0x23C, 0x23C, "u32"),
        Field("TimeZoneId", 0x240, 0x240, "u32"),
        Field("LargePageMinimum", 0x244, 0x244, "u32"),
        Field("NtBuildNumber", 0x260, 0x260, "u32"),
        Field("NtProductType", 0x264, 0x264, "u32"),
        Field("ProductTypeIsValid", 0x268, 0x268, "u8"),
        Field("NativeProcessorArchitecture", 0x26A, 0x26A, "u16"),
        Field("NtMajorVersion", 0x26C, 0x26C, "u32"),
        Field("NtMinorVersion", 0x270, 0x270, "u32"),
        Field("ProcessorFeatures", 0x274, 0x274, "u8", 64),  # PF_* indices
        Field("SuiteMask", 0x2D0, 0x2D0, "u32"),
        Field("KdDebuggerEnabled", 0x2D4, 0x2D4, "u8"),
        Field("MitigationPolicies", 0x2D5, 0x2D5, "u8"),  # NXSupportPolicy in bits 0-1
        Field("NumberOfPhysicalPages", 0x2E8, 0x2E8, "u32"),
        Field("SafeBootMode", 0x2EC, 0x2EC, "u8"),
        Field("QpcFrequency", 0x300, 0x300, "u64"),
        # x64 Wine/Windows syscall stubs test bit 0 here to choose `int 2e` over `syscall`
        Field("SystemCall", 0x308, 0x308, "u32"),
        Field("TickCount", 0x320, 0x320, "u64"),  # KSYSTEM_TIME: LowPart, High1Time
        Field("TickCountHigh2", 0x328, 0x328, "u32"),
        Field("Cookie", 0x330, 0x330, "u32"),
        Field("UnparkedProcessorCount", 0x36A, 0x36A, "u16"),
        Field("ActiveProcessorCount", 0x3C0, 0x3C0, "u32"),
        Field("ActiveGroupCount", 0x3C4, 0x3C4, "u8"),
        # XState: XSTATE_CONFIGURATION (Windows 10 2004 layout)
        Field("XStateEnabledFeatures", 0x3D8, 0x3D8, "u64"),
        Field("XStateEnabledVolatileFeatures", 0x3E0, 0x3E0, "u64"),
        Field("XStateSize", 0x3E8, 0x3E8, "u32"),
        Field("XStateControlFlags", 0x3EC, 0x3EC, "u32"),  # OptimizedSave, CompactionEnabled
        Field("XStateFeatures", 0x3F0, 0x3F0, "u32", 128),  # {Offset, Size} per feature
        Field("XStateEnabledSupervisorFeatures", 0x5F0, 0x5F0, "u64"),
        Field("XStateAlignedFeatures", 0x5F8, 0x5F8, "u64"),
        Field("XStateAllFeatureSize", 0x600, 0x600, "u32"),
        Field("XStateAllFeatures", 0x604, 0x604, "u32", 64),
    ],
)

MEMORY_BASIC_INFORMATION = Struct(
    "MEMORY_BASIC_INFORMATION",
    0x1C,
    0x30,
    [
        Field("BaseAddress", 0x00, 0x00),
        Field("AllocationBase", 0x04, 0x08),
        Field("AllocationProtect", 0x08, 0x10, "u32"),
        Field("RegionSize", 0x0C, 0x18),
        Field("State", 0x10, 0x20, "u32"),
        Field("Protect", 0x14, 0x24, "u32"),
        Field("Type", 0x18, 0x28, "u32"),
    ],
)

# NtQueryVirtualMemory(MemoryRegionInformation): the allocation holding an address (Windows 10
# 20H1 layout; shorter buffers down to CommitSize are accepted, as Windows does)
MEMORY_REGION_INFORMATION = Struct(
    "MEMORY_REGION_INFORMATION",
    0x1C,
    0x30,
    [
        Field("AllocationBase", 0x00, 0x00),
        Field("AllocationProtect", 0x04, 0x08, "u32"),
        Field("RegionType", 0x08, 0x0C, "u32"),
        Field("RegionSize", 0x0C, 0x10),
        Field("CommitSize", 0x10, 0x18),
        Field("PartitionId", 0x14, 0x20),
        Field("NodePreference", 0x18, 0x28),
    ],
)

# NtAllocateVirtualMemoryEx / NtMapViewOfSectionEx: {ULONG64 Type:8, Reserved:56; union of
# ULONG64/PVOID/SIZE_T/HANDLE/ULONG}: 16 bytes on both architectures
MEM_EXTENDED_PARAMETER = Struct(
    "MEM_EXTENDED_PARAMETER",
    0x10,
    0x10,
    [Field("Type", 0x0, 0x0, "u64"), Field("Value", 0x8, 0x8, "u64")],
)

MEM_ADDRESS_REQUIREMENTS = Struct(
    "MEM_ADDRESS_REQUIREMENTS",
    0xC,
    0x18,
    [
        Field("LowestStartingAddress", 0x0, 0x0),
        Field("HighestEndingAddress", 0x4, 0x8),
        Field("Alignment", 0x8, 0x10),
    ],
)

MEMORY_RANGE_ENTRY = Struct(
    "MEMORY_RANGE_ENTRY",
    0x8,
    0x10,
    [Field("VirtualAddress", 0x0, 0x0), Field("NumberOfBytes", 0x4, 0x8)],
)

EXCEPTION_RECORD = Struct(
    "EXCEPTION_RECORD",
    0x50,
    0x98,
    [
        Field("ExceptionCode", 0x00, 0x00, "u32"),
        Field("ExceptionFlags", 0x04, 0x04, "u32"),
        Field("ExceptionRecord", 0x08, 0x08),
        Field("ExceptionAddress", 0x0C, 0x10),
        Field("NumberParameters", 0x10, 0x18, "u32"),
        Field("ExceptionInformation", 0x14, 0x20, P, 15),
    ],
)

# The loader's module lists (PEB.Ldr): LIST_ENTRY heads in PEB_LDR_DATA, one
# LDR_DATA_TABLE_ENTRY per module; UNICODE_STRING = {USHORT Length, MaximumLength; PWSTR Buffer}.
PEB_LDR_DATA = Struct(
    "_PEB_LDR_DATA",
    0x30,
    0x58,
    [
        Field("Length", 0x00, 0x00, "u32"),
        Field("Initialized", 0x04, 0x04, "u8"),
        Field("SsHandle", 0x08, 0x08),
        Field("InLoadOrderModuleList", 0x0C, 0x10),  # LIST_ENTRY: Flink, then Blink
        Field("InMemoryOrderModuleList", 0x14, 0x20),
        Field("InInitializationOrderModuleList", 0x1C, 0x30),
        Field("EntryInProgress", 0x24, 0x40),
        Field("ShutdownInProgress", 0x28, 0x48, "u8"),
        Field("ShutdownThreadId", 0x2C, 0x50),
    ],
)

LDR_DATA_TABLE_ENTRY = Struct(
    "_LDR_DATA_TABLE_ENTRY",
    0xA8,
    0x120,
    [
        Field("InLoadOrderLinks", 0x00, 0x00),
        Field("InMemoryOrderLinks", 0x08, 0x10),
        Field("InInitializationOrderLinks", 0x10, 0x20),
        Field("DllBase", 0x18, 0x30),
        Field("EntryPoint", 0x1C, 0x38),
        Field("SizeOfImage", 0x20, 0x40, "u32"),
        Field("FullDllName", 0x24, 0x48),  # UNICODE_STRING
        Field("BaseDllName", 0x2C, 0x58),  # UNICODE_STRING
        Field("Flags", 0x34, 0x68, "u32"),
        Field("ObsoleteLoadCount", 0x38, 0x6C, "u16"),
        Field("TlsIndex", 0x3A, 0x6E, "u16"),
        Field("HashLinks", 0x3C, 0x70),
        Field("TimeDateStamp", 0x44, 0x80, "u32"),
    ],
)

UNICODE_STRING = Struct(
    "_UNICODE_STRING",
    0x8,
    0x10,
    [
        Field("Length", 0x0, 0x0, "u16"),
        Field("MaximumLength", 0x2, 0x2, "u16"),
        Field("Buffer", 0x4, 0x8),
    ],
)

# CONTEXT (winnt.h), as the kernel builds it for KiUserExceptionDispatcher and NtContinue reads
# it. An offset of -1: no such field on that architecture. x86 keeps the FXSAVE image (XMM and
# MXCSR) in ExtendedRegisters, x64 in FltSave: ``FxSave`` names either, and ``MxCsr`` on x86 is
# the MXCSR inside it (ExtendedRegisters + 0x18).
CONTEXT = Struct(
    "_CONTEXT",
    0x2CC,
    0x4D0,
    [
        # x64's register home area: the kernel's APC frame carries the APC's routine and
        # arguments in P1Home..P4Home
        *(Field(f"P{n}Home", -1, 8 * (n - 1)) for n in range(1, 7)),
        Field("ContextFlags", 0x00, 0x30, "u32"),
        Field("MxCsr", 0xE4, 0x34, "u32"),
        Field("SegCs", 0xBC, 0x38, "u16"),
        Field("SegDs", 0x98, 0x3A, "u16"),
        Field("SegEs", 0x94, 0x3C, "u16"),
        Field("SegFs", 0x90, 0x3E, "u16"),
        Field("SegGs", 0x8C, 0x40, "u16"),
        Field("SegSs", 0xC8, 0x42, "u16"),
        Field("EFlags", 0xC0, 0x44, "u32"),
        Field("Dr0", 0x04, 0x48),
        Field("Dr1", 0x08, 0x50),
        Field("Dr2", 0x0C, 0x58),
        Field("Dr3", 0x10, 0x60),
        Field("Dr6", 0x14, 0x68),
        Field("Dr7", 0x18, 0x70),
        Field("FloatSave", 0x1C, -1, "u8", 112),  # x86 FLOATING_SAVE_AREA (112 bytes, FSAVE form)
        Field("FxSave", 0xCC, 0x100, "u8", 512),  # FXSAVE image: x86 ExtendedRegisters, x64 FltSave
        # x86 registers
        Field("Edi", 0x9C, -1),
        Field("Esi", 0xA0, -1),
        Field("Ebx", 0xA4, -1),
        Field("Edx", 0xA8, -1),
        Field("Ecx", 0xAC, -1),
        Field("Eax", 0xB0, -1),
        Field("Ebp", 0xB4, -1),
        Field("Eip", 0xB8, -1),
        Field("Esp", 0xC4, -1),
        # x64 registers
        Field("Rax", -1, 0x78),
        Field("Rcx", -1, 0x80),
        Field("Rdx", -1, 0x88),
        Field("Rbx", -1, 0x90),
        Field("Rsp", -1, 0x98),
        Field("Rbp", -1, 0xA0),
        Field("Rsi", -1, 0xA8),
        Field("Rdi", -1, 0xB0),
        *(Field(f"R{n}", -1, 0xB8 + 8 * (n - 8)) for n in range(8, 16)),
        Field("Rip", -1, 0xF8),
    ],
)
# ContextFlags bits (the architecture's CONTEXT_i386 / CONTEXT_AMD64 bit is set beside them)
CONTEXT_ARCH_BIT = {"x86": 0x10000, "x64": 0x100000}
CONTEXT_CONTROL, CONTEXT_INTEGER, CONTEXT_SEGMENTS = 0x1, 0x2, 0x4
CONTEXT_FLOATING_POINT, CONTEXT_DEBUG_REGISTERS, CONTEXT_EXTENDED_REGISTERS = 0x8, 0x10, 0x20
# x64: between the CONTEXT and the EXCEPTION_RECORD the kernel puts a CONTEXT_EX (3 chunks of
# {LONG Offset; ULONG Length}: All, Legacy, XState) describing the CONTEXT's extent
CONTEXT_EX_SIZE = 0x20
