"""User APCs: how a queued APC reaches its thread, through ntdll's ``KiUserApcDispatcher``.

A user APC (NtQueueApcThread) waits in its thread's queue until the thread is *alerted*: it
enters an alertable wait (NtWaitForSingleObject / NtWaitForMultipleObjects /
NtDelayExecution / NtSignalAndWaitForSingleObject with Alertable=TRUE: the wait returns
STATUS_USER_APC), calls NtTestAlert, or NtContinue()s with TestAlert=TRUE. Then, as the
thread returns to user mode, the kernel delivers the first queued APC: it saves the thread's
state (the system call's status in eax/rax) as a CONTEXT on the thread's stack and continues
the thread at ``KiUserApcDispatcher``, which calls the routine and NtContinue(context, TRUE)s:
that resumes the saved state, delivering the next queued APC first if there is one.

The frame is the one Wine 8.0's ntdll reads (disassembled from the DLLs heapemu runs):

    x64: rcx = &CONTEXT, rdx/r8/r9 = the three arguments, the routine at [rsp+0x28], rsp 8
         past a 16-byte boundary (a function's entry; its first instruction drops a return
         address), the CONTEXT 16-aligned above, below the interrupted rsp (the dispatcher
         writes rip and rbp just below that rsp for unwinding). The CONTEXT's P1Home..P4Home
         hold the arguments and the routine, as Windows' frame has them (its dispatcher reads
         them there, with rsp at the CONTEXT; Wine 8.0 reads the registers).
    x86: esp -> [return address (0), &CONTEXT, argument 1, 2, 3, routine], the CONTEXT above,
         just below the interrupted esp (Windows' i386 frame is [routine, argument 1, 2, 3,
         CONTEXT]; Wine 8.0's KiUserApcDispatcher is a stdcall function of the five values).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt.exceptions import capture_context, make_stack_room
from emu.win.layouts import CONTEXT

if TYPE_CHECKING:
    from emu.nt.threads import Thread
    from emu.process.core import ProcessCore

_EFLAGS_TF, _EFLAGS_DF = 0x100, 0x400


def apc_dispatcher(proc: ProcessCore) -> int | None:
    """ntdll's KiUserApcDispatcher, or None when no Wine ntdll is loaded (no APC can run)."""
    try:
        return proc.modules.resolve("ntdll!KiUserApcDispatcher")
    except KeyError:
        return None


def deliver_apc(
    proc: ProcessCore, thread: Thread, *, status: int | None = None, stepped: bool = False
) -> bool:
    """Deliver ``thread``'s first queued APC now (it is the thread the CPU holds, returning
    to user mode): its state saved as a CONTEXT on its stack, with ``status`` as eax/rax
    (None: as it is), and the CPU sent to KiUserApcDispatcher. ``stepped``: called from the
    hook of a ``syscall``/``sysenter``, which Unicorn steps past afterwards (2 bytes). False
    when nothing was delivered (no APC, no dispatcher, no room on the stack)."""
    thread.apc_pending = False
    dispatcher = apc_dispatcher(proc)
    if not thread.apcs or dispatcher is None:
        return False
    arch, cpu = proc.arch, proc.cpu
    x64 = arch.ptr_size == 8
    routine, arg1, arg2, arg3 = thread.apcs[0]
    ctx = bytearray(capture_context(proc))
    pc_name, ret_name = ("Rip", "Rax") if x64 else ("Eip", "Eax")

    def put(name: str, value: int) -> None:
        f = CONTEXT.fields[name]
        struct.pack_into(f.fmt(arch), ctx, f.offset(arch), value & arch.ptr_mask)

    if stepped:  # the hook sees pc on the system call instruction: the thread resumes past it
        put(pc_name, cpu.pc + 2)
    if status is not None:
        put(ret_name, status)
    sp = cpu.sp
    if x64:
        ctx_at = (sp - 0x10 - len(ctx)) & ~0xF  # the dispatcher writes at rsp-8 and rsp-0x10
        new_sp = ctx_at - 0x30 - 8
    else:
        ctx_at = (sp & ~3) - len(ctx)
        new_sp = ctx_at - 0x18
    # a stack pointer too low for the frame (below the address space: a program's garbage
    # esp) leaves no room, as a stack with no pages there does
    if new_sp < 0 or not make_stack_room(proc, new_sp, sp)[0]:
        return False
    if x64:
        for i, value in enumerate((arg1, arg2, arg3, routine)):
            put(f"P{i + 1}Home", value)
        frame = bytes(0x28) + struct.pack("<Q", routine) + bytes(8) + bytes(ctx)
    else:
        frame = struct.pack("<6I", 0, ctx_at, arg1, arg2, arg3, routine) + bytes(ctx)
    assert new_sp + len(frame) == ctx_at + len(ctx)
    thread.apcs.pop(0)
    proc.write(new_sp, frame)
    proc.memory.note_write(new_sp, len(frame))
    cpu.sp = new_sp
    if x64:
        cpu.set_reg("rcx", ctx_at)
        cpu.set_reg("rdx", arg1)
        cpu.set_reg("r8", arg2)
        cpu.set_reg("r9", arg3)
    # the kernel enters the dispatcher with TF and DF clear
    cpu.set_reg("eflags", cpu.reg("eflags") & ~(_EFLAGS_TF | _EFLAGS_DF))
    cpu.pc = dispatcher - 2 if stepped else dispatcher
    return True
