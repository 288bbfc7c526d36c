/*
 * ntheap.h - heapemu's embedded Wine-style NT heap: types, structures, constants.
 *
 * Freestanding: no libc, only the fixed-width integer types below, so the structure layout is
 * the same wherever this is compiled (zig cc for Windows x86/x64, gcc for the Linux host).
 * asm/__init__.py declares the same layout as data (HEAP_LAYOUTS); tests/test_asm_layout.py
 * checks the two against each other with static assertions compiled for both architectures.
 *
 * Block layout inside a subheap (A = ALIGNMENT = 2 * pointer size: 8 on x86, 16 on x64):
 *
 *   in-use:  [ARENA_INUSE 8 bytes][user data: requested bytes][slack]
 *   free:    [ARENA_FREE: size, magic, list entry][free body ...][ARENA_FREE *back]
 *                                                                ^ just below the next block
 *
 * Every arena starts at an address that is ARENA_OFFSET (0 on x86, 8 on x64) modulo A, so user
 * data is A-aligned. Block sizes include their header and are multiples of A, at least
 * MIN_BLOCK_SIZE. The size word carries ARENA_FLAG_FREE and ARENA_FLAG_PREV_FREE in its low
 * bits; when the previous block is free, the pointer just below this block's header points at
 * it. Two free blocks are never adjacent (they are coalesced).
 */
#ifndef NTHEAP_H
#define NTHEAP_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;

#if defined(__x86_64__)
#define NTHEAP_PTR64 1
typedef u64 uptr;
#elif defined(__i386__)
typedef u32 uptr;
#else
#error "ntheap: x86 or x64 only"
#endif

typedef char ntheap_check_uptr[(sizeof(uptr) == sizeof(void *)) ? 1 : -1];

/* x86 exports and system calls are stdcall, as in ntdll; the native host build uses the
 * platform's default convention (the attribute expands to nothing). */
#if defined(__i386__) && !defined(NTHEAP_NATIVE)
#define NTAPI __attribute__((stdcall))
#else
#define NTAPI
#endif

/* ---- Windows constants ---- */
#define HEAP_NO_SERIALIZE 0x00000001u
#define HEAP_GROWABLE 0x00000002u
#define HEAP_GENERATE_EXCEPTIONS 0x00000004u
#define HEAP_ZERO_MEMORY 0x00000008u
#define HEAP_REALLOC_IN_PLACE_ONLY 0x00000010u
#define HEAP_TAIL_CHECKING_ENABLED 0x00000020u
#define HEAP_FREE_CHECKING_ENABLED 0x00000040u
#define HEAP_CREATE_ENABLE_EXECUTE 0x00040000u

#define STATUS_SUCCESS 0x00000000u
#define STATUS_NO_MORE_ENTRIES 0x8000001Au
#define STATUS_ACCESS_VIOLATION 0xC0000005u
#define STATUS_INVALID_PARAMETER 0xC000000Du
#define STATUS_NO_MEMORY 0xC0000017u
#define STATUS_UNSUCCESSFUL 0xC0000001u
#define STATUS_INVALID_INFO_CLASS 0xC0000003u
#define STATUS_BUFFER_TOO_SMALL 0xC0000023u
#define EXCEPTION_NONCONTINUABLE 0x1u

/* HEAP_INFORMATION_CLASS */
#define HeapCompatibilityInformation 0u
#define HeapEnableTerminationOnCorruption 1u
#define HEAP_COMPATIBILITY_LFH 2u

#define MEM_COMMIT 0x1000u
#define MEM_RESERVE 0x2000u
#define MEM_DECOMMIT 0x4000u
#define MEM_RELEASE 0x8000u
#define PAGE_READWRITE 0x04u
#define PAGE_EXECUTE_READWRITE 0x40u

/* RTL_HEAP_WALK_ENTRY.Flags, as ntdll's RtlWalkHeap (Windows and Wine 8) sets them; kernel32's
 * HeapWalk translates them to PROCESS_HEAP_ENTRY_BUSY/PROCESS_HEAP_REGION/... */
#define RTL_HEAP_ENTRY_BUSY 0x0001u
#define RTL_HEAP_ENTRY_REGION 0x0002u
#define RTL_HEAP_ENTRY_BLOCK 0x0010u
#define RTL_HEAP_ENTRY_UNCOMMITTED 0x1000u
#define RTL_HEAP_ENTRY_COMMITTED 0x4000u

/* PEB fields used for the process heap list (x86 / x64 offsets). */
#ifdef NTHEAP_PTR64
#define PEB_PROCESS_HEAP 0x30u
#define PEB_NUMBER_OF_HEAPS 0xE8u
#define PEB_MAXIMUM_NUMBER_OF_HEAPS 0xECu
#define PEB_PROCESS_HEAPS 0xF0u
#else
#define PEB_PROCESS_HEAP 0x18u
#define PEB_NUMBER_OF_HEAPS 0x88u
#define PEB_MAXIMUM_NUMBER_OF_HEAPS 0x8Cu
#define PEB_PROCESS_HEAPS 0x90u
#endif

/* ---- heap parameters ---- */
#define HEAP_PAGE_SIZE 0x1000u
#define HEAP_REGION_ALIGN 0x10000u         /* reservation granularity, also commit step */
#define HEAP_DEF_SIZE 0x110000u            /* reserve when RtlCreateHeap gets 0 */
#define HEAP_MIN_LARGE_BLOCK_SIZE 0x7f000u /* growable heaps: own region from this size */
#define HEAP_MAX_SUBHEAP_SIZE 0xffff0000u  /* block sizes fit the 32-bit size word */
#define HEAP_MAX_GROW_SIZE 0x8000000u      /* grow_size doubles up to this */
#define HEAP_NB_FREE_LISTS 40u
#define HEAP_SMALL_LIST_LIMIT 0x200u /* lists 0..31: size >> 4; then powers of two */
#define HEAP_FLAGS_OFFSET (sizeof(void *) == 8 ? 0x70u : 0x40u) /* as Windows Vista..10 */
#define HEAP_SEGMENT_SIGNATURE 0xffeeffeeu /* written at 2 * pointer size, as Windows does */

#define HEAP_MAGIC 0x50414548u    /* "HEAP" */
#define SUBHEAP_MAGIC 0x42555348u /* "HSUB" */
#define ARENA_INUSE_MAGIC 0x5355u /* "US" */
#define ARENA_FREE_MAGIC 0x4546u  /* "FE" */
#define ARENA_LARGE_MAGIC 0x474cu /* "LG" */

#define ARENA_FLAG_FREE 0x1u
#define ARENA_FLAG_PREV_FREE 0x2u
#define ARENA_SIZE_MASK (~3u)

/* Fill patterns (only when the heap was created with the checking flags):
 *   new data (not HEAP_ZERO_MEMORY) under TAIL or FREE checking: 0xBAADF00D
 *   bytes after the requested size up to the block end under TAIL checking: 0xAB
 *   free block bodies under FREE checking: 0xFEEEFEEE
 * Patterns are laid at the natural 4-byte phase of the address (0D F0 AD BA ...). */
#define HEAP_FILL_NEW 0xBAADF00Du
#define HEAP_FILL_TAIL 0xABABABABu
#define HEAP_FILL_FREE 0xFEEEFEEEu

/* ---- structures ---- */
typedef struct LIST_ENTRY_ {
    struct LIST_ENTRY_ *next;
    struct LIST_ENTRY_ *prev;
} LIST;

typedef struct ARENA_INUSE {
    u32 size;   /* block size, header included, | ARENA_FLAG_PREV_FREE */
    u8 unused;  /* block size - requested size (header + slack), < 2 * MIN_BLOCK_SIZE - 1 */
    u8 tag;     /* reserved, 0 */
    u16 magic;  /* ARENA_INUSE_MAGIC */
} ARENA_INUSE;

typedef struct ARENA_FREE {
    u32 size;   /* block size, header included, | ARENA_FLAG_FREE */
    u8 unused;  /* 0 */
    u8 tag;     /* 0 */
    u16 magic;  /* ARENA_FREE_MAGIC */
    LIST entry; /* in its free list (all lists form one ring through the sentinels) */
} ARENA_FREE;

typedef struct ARENA_LARGE {
    LIST entry;        /* in HEAP.large_list */
    uptr data_size;    /* requested size */
    uptr block_size;   /* size of the whole region, this header included */
#ifdef NTHEAP_PTR64
    u64 pad;           /* keeps the data 16-aligned */
#endif
    ARENA_INUSE arena; /* size 0, unused 0, magic ARENA_LARGE_MAGIC */
} ARENA_LARGE;

struct HEAP;

typedef struct SUBHEAP {
    void *base;         /* start of the region */
    uptr size;          /* bytes reserved (or given by the caller) */
    uptr commit_size;   /* bytes committed from base */
    LIST entry;         /* in HEAP.subheap_list */
    struct HEAP *heap;  /* owning heap */
    u32 header_size;    /* offset of the first arena from base */
    u32 magic;          /* SUBHEAP_MAGIC */
} SUBHEAP;

#define HEAP_INTERNAL_USER_BASE 0x1u /* first region was supplied by the caller: not released */

typedef struct HEAP {
    u8 reserved[HEAP_FLAGS_OFFSET]; /* zero, but for the segment signature at 2 * pointer */
    u32 flags;                      /* creation flags (HEAP_*) */
    u32 force_flags;                /* flags or-ed into every call */
    SUBHEAP subheap;                /* the first subheap (its base is this structure) */
    LIST subheap_list;              /* all subheaps, first one first */
    LIST large_list;                /* ARENA_LARGE blocks */
    uptr grow_size;                 /* reserve size of the next subheap */
    u32 magic;                      /* HEAP_MAGIC */
    u32 lock_count;                 /* lock word: nesting depth of RtlLockHeap / serialized calls */
    u32 internal_flags;             /* HEAP_INTERNAL_* */
    u32 reserved2;
    ARENA_FREE free_lists[HEAP_NB_FREE_LISTS]; /* sentinels: size ARENA_FLAG_FREE, magic FREE */
} HEAP;

typedef struct EXCEPTION_RECORD {
    u32 ExceptionCode;
    u32 ExceptionFlags;
    struct EXCEPTION_RECORD *ExceptionRecord;
    void *ExceptionAddress;
    u32 NumberParameters;
    uptr ExceptionInformation[15];
} EXCEPTION_RECORD;

/* ntdll's RTL_HEAP_WALK_ENTRY, what RtlWalkHeap fills on Windows and in Wine 8 (kernel32's
 * HeapWalk converts it to PROCESS_HEAP_ENTRY, whose cbData is only 32 bits wide). */
typedef struct RTL_HEAP_WALK_ENTRY {
    void *DataAddress;
    uptr DataSize;
    u8 OverheadBytes;
    u8 SegmentIndex;
    u16 Flags;
    union {
        struct {
            uptr Settable;
            u16 TagIndex;
            u16 AllocatorBackTraceIndex;
            u32 Reserved[2];
        } Block;
        struct {
            u32 CommittedSize;
            u32 UnCommittedSize;
            void *FirstEntry;
            void *LastEntry;
        } Segment;
    };
} RTL_HEAP_WALK_ENTRY;

/* ---- the system interface (asm stubs in asm/syscalls_*.s, or native stand-ins) ---- */
u32 NTAPI NtAllocateVirtualMemory(uptr process, void **base, uptr zero_bits, uptr *size,
                                  u32 type, u32 protect);
u32 NTAPI NtFreeVirtualMemory(uptr process, void **base, uptr *size, u32 type);
u32 NTAPI NtRaiseException(EXCEPTION_RECORD *record, void *context, u32 first_chance);
u8 *NTAPI ntheap_get_peb(void); /* fs:[0x30] on x86, gs:[0x60] on x64 */

/* ---- exports ---- */
void *NTAPI RtlCreateHeap(u32 flags, void *base, uptr reserve, uptr commit, void *lock,
                          void *params);
void *NTAPI RtlDestroyHeap(void *heap);
void *NTAPI RtlAllocateHeap(void *heap, u32 flags, uptr size);
u32 NTAPI RtlFreeHeap(void *heap, u32 flags, void *ptr);
void *NTAPI RtlReAllocateHeap(void *heap, u32 flags, void *ptr, uptr size);
uptr NTAPI RtlSizeHeap(void *heap, u32 flags, const void *ptr);
u32 NTAPI RtlValidateHeap(void *heap, u32 flags, const void *ptr);
u32 NTAPI RtlWalkHeap(void *heap, RTL_HEAP_WALK_ENTRY *entry);
u32 NTAPI RtlLockHeap(void *heap);
u32 NTAPI RtlUnlockHeap(void *heap);
u32 NTAPI RtlGetProcessHeaps(u32 count, void **heaps);
/* HeapCompatibilityInformation: a ULONG, always 0 (no low-fragmentation front end); setting 0
 * succeeds, setting 2 (the LFH) is STATUS_UNSUCCESSFUL, as Windows answers a heap that cannot
 * have one. HeapEnableTerminationOnCorruption: accepted (corruption always raises). */
u32 NTAPI RtlQueryHeapInformation(void *heap, u32 info_class, void *info, uptr length,
                                  uptr *return_length);
u32 NTAPI RtlSetHeapInformation(void *heap, u32 info_class, void *info, uptr length);

#endif
