# System-call stubs of the embedded NT heap, x86 (hand-written; see asm/__init__.py).
# stdcall, NT's int 0x2e path: the number in eax, edx points at the arguments on the stack,
# the stub pops them on return (ret 4 * argc). Windows 10 x64 numbers, as asm.SYSCALL_NUMBERS.
NtAllocateVirtualMemory:
	mov	eax, 0x18
	lea	edx, [esp + 4]
	int	0x2e
	ret	24
NtFreeVirtualMemory:
	mov	eax, 0x1e
	lea	edx, [esp + 4]
	int	0x2e
	ret	16
NtRaiseException:
	mov	eax, 0x2a
	lea	edx, [esp + 4]
	int	0x2e
	ret	12
# The PEB (TEB.ProcessEnvironmentBlock, fs:[0x30]).
ntheap_get_peb:
	mov	eax, dword ptr fs:[0x30]
	ret
