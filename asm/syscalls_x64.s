# System-call stubs of the embedded NT heap, x64 (hand-written; see asm/__init__.py).
# Windows x64 kernel ABI: arguments in r10, rdx, r8, r9, then the stack from rsp+0x28;
# the number in eax (Windows 10 numbers, listed in asm.SYSCALL_NUMBERS).
NtAllocateVirtualMemory:
	mov	r10, rcx
	mov	eax, 0x18
	syscall
	ret
NtFreeVirtualMemory:
	mov	r10, rcx
	mov	eax, 0x1e
	syscall
	ret
NtRaiseException:
	mov	r10, rcx
	mov	eax, 0x2a
	syscall
	ret
# The PEB (TEB.ProcessEnvironmentBlock, gs:[0x60]).
ntheap_get_peb:
	mov	rax, qword ptr gs:[0x60]
	ret
