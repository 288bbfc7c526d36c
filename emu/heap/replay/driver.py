"""The replay driver: a small routine, generated for x86 or x64 from one description, that runs a
tape of heap operations inside the emulator.

``heapemu_replay(ctl)`` (win64 on x64, stdcall on x86) reads its state from a control block of
pointer-sized slots (:data:`CTL`), then for each 24-byte record of the tape (see
``emu.heap.replay.tape``) branches on the opcode to a handler that calls the allocator's
entry point through its slot in the control block, updates the slot table and stores one
pointer-sized result::

    loop: if cur >= ctl.end: done
          ctl.cursor = cur                     ; which op is running, for fault reports
          if op == ALLOC: goto alloc ...       ; compares, not a jump table (see below)
    alloc:   r = RtlAllocateHeap(heap, flags, size);      table[id] = r
    free:    r = RtlFreeHeap(heap, flags, table[id]) & 0xff; table[id] = 0
    realloc: r = RtlReAllocateHeap(heap, flags, table[id], size)
             if r: table[id] = 0; table[new_id] = r
    size:    r = RtlSizeHeap(heap, flags, table[id])
    validate: r = RtlValidateHeap(heap, flags, NULL) & 0xff
    store:   *results++ = r; cur += 24; jmp loop

Only the argument passing differs between the architectures: on x64 the arguments go in
rcx/rdx/r8/r9 below 32 bytes of shadow space with rsp 16-byte aligned at each call; on x86 they
are pushed right to left and the stdcall callee pops them. After every call the stack pointer is
compared with the one saved at entry, so a callee with the wrong convention stops the replay
(status 2) instead of corrupting it. The state lives in callee-saved registers, so an op costs
the driver about a dozen instructions besides the call.

The opcode picks its handler by compares and direct branches: Unicorn chains the translated
blocks of direct branches within a page to one another, while an indirect jump (a jump table)
leaves generated code for a block lookup on every op (~2% of a builtin replay, measured).
"""

from __future__ import annotations

from emu.arch import Arch
from emu.heap.replay.workload import OpKind

ENTRY_NAME = "heapemu_replay"

# control block slots (pointer-sized); the entry-point slots are named after the exports
CTL = (
    "heap",
    "tape",  # first record of this run
    "end",  # one past the last record
    "table",  # slot table: block pointer per ID
    "results",  # one pointer-sized result per record
    "cursor",  # record being run (written before each op)
    "status",  # 0 done, 1 bad opcode, 2 stack imbalance
    "saved_sp",  # stack pointer after the prologue
    "bad_sp",  # stack pointer after the call that unbalanced it
    "RtlAllocateHeap",
    "RtlFreeHeap",
    "RtlReAllocateHeap",
    "RtlSizeHeap",
    "RtlValidateHeap",
)
ENTRIES = CTL[-5:]
STATUS_DONE, STATUS_BAD_OP, STATUS_IMBALANCE = 0, 1, 2

# tape record fields (offsets in the 24-byte record; see emu.heap.replay.tape)
REC_KIND, REC_FLAGS, REC_ID, REC_NEW_ID, REC_SIZE = 0, 4, 8, 12, 16
RECORD_SIZE = 24


def ctl_offset(name: str, arch: Arch) -> int:
    return CTL.index(name) * arch.ptr_size


class _Gen:
    """Emits the driver's lines for one architecture."""

    def __init__(self, arch: Arch):
        self.arch = arch
        self.ps = ps = arch.ptr_size
        x64 = ps == 8
        self.w = "qword" if x64 else "dword"
        # state in callee-saved registers: control block, tape cursor, slot table, results
        self.ctl, self.cur, self.tab, self.res = (
            ("rbx", "rsi", "rdi", "r12") if x64 else ("ebx", "esi", "edi", "ebp")
        )
        self.ax, self.cx, self.sp = ("rax", "rcx", "rsp") if x64 else ("eax", "ecx", "esp")
        self.saved = (self.ctl, self.cur, self.tab, self.res)
        # x64: rsp must be 16-byte aligned at each call, with the shadow space below the args
        frame = arch.shadow_space
        align = 16 if x64 else 4
        while (ps * (1 + len(self.saved)) + frame) % align:
            frame += ps
        self.frame = frame

    def c(self, name: str) -> str:
        return f"{self.w} ptr [{self.ctl} + {ctl_offset(name, self.arch):#x}]"

    def rec32(self, off: int) -> str:
        return f"dword ptr [{self.cur} + {off:#x}]"

    def slot(self, index_reg: str) -> str:
        return f"{self.w} ptr [{self.tab} + {index_reg}*{self.ps}]"

    def call(self, entry: str, args: list[tuple[str, str]]) -> list[str]:
        """Call ``entry`` with (kind, operand) arguments; kind "u32" or "ptr"."""
        if self.arch.arg_regs:  # win64: registers (4 are enough for every Rtl* here)
            regs64, regs32 = ("rcx", "rdx", "r8", "r9"), ("ecx", "edx", "r8d", "r9d")
            out = [
                f"mov {(regs32 if kind == 'u32' else regs64)[i]}, {operand}"
                for i, (kind, operand) in enumerate(args)
            ]
        else:  # stdcall: pushed right to left, popped by the callee
            out = [f"push {operand}" for _, operand in reversed(args)]
        return [
            *out,
            f"call {self.c(entry)}",
            f"cmp {self.sp}, {self.c('saved_sp')}",
            "jne heapemu_replay_imbalance",
        ]

    def source(self) -> str:
        ps, ax, cx = self.ps, self.ax, self.cx
        heap = ("ptr", self.c("heap"))
        flags = ("u32", self.rec32(REC_FLAGS))
        size = ("ptr", f"{self.w} ptr [{self.cur} + {REC_SIZE:#x}]")  # x86: the low dword
        block = ("ptr", self.slot(ax))  # table[id] with the id loaded into eax first
        load_id = f"mov eax, {self.rec32(REC_ID)}"
        null = ("ptr", "0")
        if self.arch.arg_regs:
            get_ctl = [f"mov {self.ctl}, {self.arch.arg_regs[0]}"]
        else:  # the argument sits above the saved registers and the return address
            arg0 = ps * (1 + len(self.saved)) + self.frame
            get_ctl = [f"mov {self.ctl}, dword ptr [esp + {arg0:#x}]"]
        ret = "ret" if self.arch.arg_regs else f"ret {ps:#x}"
        handlers = {
            OpKind.ALLOC: [
                *self.call("RtlAllocateHeap", [heap, flags, size]),
                f"mov ecx, {self.rec32(REC_ID)}",
                f"mov {self.slot(cx)}, {ax}",
            ],
            OpKind.FREE: [
                load_id,
                *self.call("RtlFreeHeap", [heap, flags, block]),
                f"mov ecx, {self.rec32(REC_ID)}",
                f"mov {self.slot(cx)}, 0",
                "movzx eax, al",  # BOOLEAN: only the low byte is defined
            ],
            OpKind.REALLOC: [
                load_id,
                *self.call("RtlReAllocateHeap", [heap, flags, block, size]),
                f"test {ax}, {ax}",
                "jz heapemu_replay_store",
                f"mov ecx, {self.rec32(REC_ID)}",
                f"mov {self.slot(cx)}, 0",
                f"mov ecx, {self.rec32(REC_NEW_ID)}",
                f"mov {self.slot(cx)}, {ax}",
            ],
            OpKind.SIZE: [load_id, *self.call("RtlSizeHeap", [heap, flags, block])],
            OpKind.VALIDATE: [
                *self.call("RtlValidateHeap", [heap, flags, null]),
                "movzx eax, al",
            ],
        }
        lines = [
            f".globl {ENTRY_NAME}",
            f"{ENTRY_NAME}:",
            *(f"push {r}" for r in self.saved),
            *([f"sub {self.sp}, {self.frame:#x}"] if self.frame else []),
            *get_ctl,
            f"mov {self.c('saved_sp')}, {self.sp}",
            f"mov {self.cur}, {self.c('tape')}",
            f"mov {self.tab}, {self.c('table')}",
            f"mov {self.res}, {self.c('results')}",
            "heapemu_replay_loop:",
            f"cmp {self.cur}, {self.c('end')}",
            "jae heapemu_replay_done",
            f"mov {self.c('cursor')}, {self.cur}",
            f"mov eax, {self.rec32(REC_KIND)}",
            f"cmp eax, {len(OpKind):#x}",
            "jae heapemu_replay_bad_op",
        ]
        kinds = list(OpKind)
        for kind in kinds[:-1]:
            lines += [f"cmp eax, {int(kind):#x}", f"je heapemu_replay_{kind.name.lower()}"]
        lines.append(f"jmp heapemu_replay_{kinds[-1].name.lower()}")
        for kind in OpKind:
            lines += [f"heapemu_replay_{kind.name.lower()}:", *handlers[kind]]
            lines.append("jmp heapemu_replay_store")
        lines += [
            "heapemu_replay_store:",
            f"mov {self.w} ptr [{self.res}], {ax}",
            f"add {self.res}, {ps:#x}",
            f"add {self.cur}, {RECORD_SIZE:#x}",
            "jmp heapemu_replay_loop",
            "heapemu_replay_done:",
            f"mov {self.c('cursor')}, {self.cur}",
            "heapemu_replay_exit:",
            f"mov {ax}, {self.c('status')}",
            *([f"add {self.sp}, {self.frame:#x}"] if self.frame else []),
            *(f"pop {r}" for r in reversed(self.saved)),
            ret,
            "heapemu_replay_bad_op:",
            f"mov {self.c('status')}, {STATUS_BAD_OP:#x}",
            "jmp heapemu_replay_exit",
            "heapemu_replay_imbalance:",
            f"mov {self.c('bad_sp')}, {self.sp}",
            f"mov {self.sp}, {self.c('saved_sp')}",
            f"mov {self.c('status')}, {STATUS_IMBALANCE:#x}",
            "jmp heapemu_replay_exit",
        ]
        return "\n".join(lines) + "\n"


def driver_source(arch: Arch) -> str:
    """The driver's assembly (Intel syntax, keystone) for ``arch``."""
    return _Gen(arch).source()
