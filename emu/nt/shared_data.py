"""KUSER_SHARED_DATA: the page the kernel shares read-only with every process at 0x7FFE0000.

Filled as Windows 10 19045 fills it for the machine heapemu emulates: one processor in one
group, 1 GiB of RAM, and the processor features of the CPU model heapemu gives Unicorn, Sandy
Bridge (emu.cpu.cpu; CPUID leaf 1 ECX 0x8e982203 / EDX 0x078bfbfd, leaf 7 EBX 0, 0x80000001 EDX
0x28100800: SSE to SSE4.2, CMPXCHG16B, NX, RDTSCP, XSAVE with XSAVEOPT; no RDRAND, no AVX,
as measured on Unicorn 2.1.4, whose TCG has no AVX). XState is what Windows enables
on such a CPU: the legacy x87 and SSE states, 576 bytes, optimized save, no compaction.
"""

from __future__ import annotations

from emu.arch import Arch
from emu.win.layouts import KUSER_SHARED_DATA, MemoryIO

# PF_* indices (winnt.h) of the features the emulated CPU has
PROCESSOR_FEATURES = {
    2: "PF_COMPARE_EXCHANGE_DOUBLE",
    3: "PF_MMX_INSTRUCTIONS_AVAILABLE",
    6: "PF_XMMI_INSTRUCTIONS_AVAILABLE",
    8: "PF_RDTSC_INSTRUCTION_AVAILABLE",
    9: "PF_PAE_ENABLED",
    10: "PF_XMMI64_INSTRUCTIONS_AVAILABLE",
    11: "PF_SSE_DAZ_MODE_AVAILABLE",
    12: "PF_NX_ENABLED",
    13: "PF_SSE3_INSTRUCTIONS_AVAILABLE",
    14: "PF_COMPARE_EXCHANGE128",
    17: "PF_XSAVE_ENABLED",
    23: "PF_FASTFAIL_AVAILABLE",
    32: "PF_RDTSCP_INSTRUCTION_AVAILABLE",
    36: "PF_SSSE3_INSTRUCTIONS_AVAILABLE",
    37: "PF_SSE4_1_INSTRUCTIONS_AVAILABLE",
    38: "PF_SSE4_2_INSTRUCTIONS_AVAILABLE",
}
PHYSICAL_PAGES = 0x40000  # 1 GiB
QPC_FREQUENCY = 10_000_000
# The machine booted an hour before the process started. The clock does not advance in the
# page (heapemu's clocks are deterministic); a tick count of 0 made code that caches for
# "1000 ms since the last check" (kernelbase's GlobalMemoryStatusEx) never look.
TICK_COUNT_MULTIPLIER = 0x0FA00000  # 15.625 ms per tick, in 24.8 fixed point
UPTIME_MS = 3_600_000
# XSTATE_CONFIGURATION: x87 (160 bytes at 0) and SSE (256 bytes at 160) in a 512-byte legacy
# area plus the 64-byte header
XSTATE_LEGACY = 0x3
XSTATE_FEATURES = [(0, 160), (160, 256)]
XSTATE_SIZE = 512 + 64
XSTATE_OPTIMIZED_SAVE = 0x1


def fill_shared_user_data(mem: MemoryIO, arch: Arch, address: int) -> None:
    """Write the fields Windows fills (the page is zero otherwise)."""
    s = KUSER_SHARED_DATA

    def put(name: str, value: int, index: int = 0) -> None:
        s.write(mem, arch, address, name, value, index)

    put("NtMajorVersion", 10)
    put("NtMinorVersion", 0)
    put("NtBuildNumber", 19045)
    put("NtProductType", 1)  # NtProductWinNt
    put("ProductTypeIsValid", 1)
    put("NativeProcessorArchitecture", 9 if arch.ptr_size == 8 else 0)  # AMD64 / INTEL
    put("ImageNumberLow", 0x8664 if arch.ptr_size == 8 else 0x14C)
    put("ImageNumberHigh", 0x8664 if arch.ptr_size == 8 else 0x14C)
    put("NumberOfPhysicalPages", PHYSICAL_PAGES)
    put("ActiveProcessorCount", 1)
    put("ActiveGroupCount", 1)
    put("UnparkedProcessorCount", 1)
    put("SystemCall", 0)  # system-call stubs use `syscall`, not int 2e
    # KSYSTEM_TIME values: LowPart + High1Time, and High2Time equal to High1Time
    ticks = (UPTIME_MS << 24) // TICK_COUNT_MULTIPLIER
    put("TickCountMultiplier", TICK_COUNT_MULTIPLIER)
    put("TickCount", ticks)
    put("TickCountHigh2", ticks >> 32)
    interrupt = UPTIME_MS * 10_000  # 100 ns units
    put("InterruptTime", interrupt)
    put("InterruptTimeHigh2", interrupt >> 32)
    put("QpcFrequency", QPC_FREQUENCY)
    put("SuiteMask", 0x100)  # VER_SUITE_SINGLEUSERTS
    put("MitigationPolicies", 0x2)  # NX_SUPPORT_POLICY_OPTIN
    put("MaxStackTraceDepth", 0)
    put("CryptoExponent", 0x10001)
    put("LargePageMinimum", 0x200000)
    for index in PROCESSOR_FEATURES:
        put("ProcessorFeatures", 1, index)
    put("XStateEnabledFeatures", XSTATE_LEGACY)
    put("XStateEnabledVolatileFeatures", XSTATE_LEGACY)
    put("XStateSize", XSTATE_SIZE)
    put("XStateControlFlags", XSTATE_OPTIMIZED_SAVE)
    put("XStateAllFeatureSize", XSTATE_SIZE)
    for i, (offset, size) in enumerate(XSTATE_FEATURES):
        put("XStateFeatures", offset, 2 * i)
        put("XStateFeatures", size, 2 * i + 1)
        put("XStateAllFeatures", size, i)
