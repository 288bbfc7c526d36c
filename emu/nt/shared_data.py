"""KUSER_SHARED_DATA: the page the kernel shares read-only with every process at 0x7FFE0000.

Filled as Windows 10 19045 fills it for the machine heapemu emulates: one processor in one
group, 1 GiB of RAM, and the processor features of the CPU model heapemu gives Unicorn, Sandy
Bridge (emu.cpu.cpu; CPUID leaf 1 ECX 0x8e982203 / EDX 0x078bfbfd, leaf 7 EBX 0, 0x80000001 EDX
0x28100800: SSE to SSE4.2, CMPXCHG16B, NX, RDTSCP, XSAVE with XSAVEOPT; no RDRAND, no AVX,
as measured on Unicorn 2.1.4, whose TCG has no AVX). XState is what Windows enables
on such a CPU: the legacy x87 and SSE states, 576 bytes, optimized save, no compaction.
"""

from __future__ import annotations

import struct

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
# The machine booted an hour before the process started (a tick count of 0 made code that
# caches for "1000 ms since the last check", kernelbase's GlobalMemoryStatusEx, never look),
# and the system time was 2022-06-18 when it started (SYSTEM_TIME, FILETIME units). From then
# on the page's clocks follow the kernel's deterministic clock (SharedClock).
UPTIME_MS = 3_600_000
SYSTEM_TIME = 133_000_000_000_000_000
# TickCount holds milliseconds with a multiplier of 1.0 (8.24 fixed point), as Wine's kernel
# fills it: Wine's GetTickCount reads TickCount.LowPart as milliseconds and ignores the
# multiplier, Windows' computes TickCount * TickCountMultiplier >> 24; both read milliseconds.
TICK_COUNT_MULTIPLIER = 1 << 24
# KSYSTEM_TIME fields (LowPart, High1Time, High2Time: High2Time equal to High1Time once a
# value is complete): InterruptTime at 0x08 and SystemTime right after it at 0x14, TickCount
# at 0x320 (ntddk.h, KUSER_SHARED_DATA)
_INTERRUPT_AND_SYSTEM_TIME, _TICK_COUNT = 0x008, 0x320
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
    put("TickCountMultiplier", TICK_COUNT_MULTIPLIER)  # the clocks: SharedClock.publish
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


class SharedClock:
    """KUSER_SHARED_DATA's TickCount (ms since boot), InterruptTime (100 ns since boot) and
    SystemTime kept in step with the kernel's clock (``Scheduler.clock``, 100 ns since the
    process started): ``publish`` at the start, after every system call and every move of the
    scheduler's clock. Written straight into the page's host memory (``view``, the
    whole page) with two ``pack_into``s (nothing cached: a restored snapshot brings its own
    page back)."""

    _PACK_TIMES = struct.Struct("<QIQI")  # InterruptTime, its High2Time, SystemTime, its High2
    _PACK_TICKS = struct.Struct("<QI")  # TickCount, its High2Time

    def __init__(self, view: memoryview):
        self._view = view

    def publish(self, clock: int) -> None:
        interrupt = UPTIME_MS * 10_000 + clock
        system = SYSTEM_TIME + clock
        view = self._view
        self._PACK_TIMES.pack_into(
            view, _INTERRUPT_AND_SYSTEM_TIME, interrupt, interrupt >> 32, system, system >> 32
        )
        ms = interrupt // 10_000
        self._PACK_TICKS.pack_into(view, _TICK_COUNT, ms, ms >> 32)
