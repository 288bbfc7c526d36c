/*
 * segheap.h - heapemu's Windows 10 segment heap: types, structures, constants.
 *
 * Freestanding like ntheap.h (no libc; the same fixed-width types; the same system interface
 * and Rtl* exports), so one C source (segheap.c) builds for Windows x86/x64 through
 * asm/generate.py and natively for the Linux host (tests/native, NTHEAP_NATIVE).
 * segheap.c's header comment explains the design; this file holds the layouts.
 *
 * Layout sources. The Windows structures are declared with the field offsets of the Windows 10
 * builds whose _SEGMENT_HEAP has two segment contexts at +0x100 (20H1 era):
 *   x86: the seed's WinDbg dump (shared/seeds/004): sizeof 0x580, Signature +0x8,
 *        LargeAllocMetadata +0x44, SegContexts[2] +0x100, VsContext +0x200, LfhContext +0x2C0;
 *        _HEAP_SEG_CONTEXT 0x80 bytes (SegmentListHead +0x44, FreePageRanges +0x50).
 *   x64: the same generation's public symbol dump (Vergilius-format _SEGMENT_HEAP, whose
 *        x86 sibling matches the seed exactly): sizeof 0x800, Signature +0x10,
 *        LargeAllocMetadata +0x48, MemStats +0x80, GlobalLockCount +0xD8, AllocatedBase +0xE8,
 *        SegContexts[2] +0x100 (0xC0 each), VsContext +0x280 (0xC0), LfhContext +0x340 (0x4C0,
 *        Buckets[129] at +0x80). Later builds (ReservedRegionEnd, CallbacksEncoded) move
 *        SegContexts to +0x140; this file follows the seed's generation.
 * Windows aligns the lock-bearing members to 64 bytes (cache lines); the same attribute here
 * yields exactly those offsets on both architectures. The static assertions at the end of this
 * file pin every offset the tests and the emulator rely on.
 * Where the dumps are silent (x86 _HEAP_LFH_CONTEXT inner layout, x86 page range descriptor
 * details) the x64 shape is used with pointer-sized fields; see the notes at each structure.
 */
#ifndef SEGHEAP_H
#define SEGHEAP_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef short i16;

#if defined(__x86_64__)
#define SEGHEAP_PTR64 1
typedef u64 uptr;
#elif defined(__i386__)
typedef u32 uptr;
#else
#error "segheap: x86 or x64 only"
#endif

typedef char segheap_check_uptr[(sizeof(uptr) == sizeof(void *)) ? 1 : -1];

#if defined(__i386__) && !defined(NTHEAP_NATIVE)
#define NTAPI __attribute__((stdcall))
#else
#define NTAPI
#endif

#define SEGHEAP_ALIGN64 __attribute__((aligned(64)))

/* ---- Windows constants (the same values as ntheap.h) ---- */
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
#define STATUS_UNSUCCESSFUL 0xC0000001u
#define STATUS_INVALID_INFO_CLASS 0xC0000003u
#define STATUS_ACCESS_VIOLATION 0xC0000005u
#define STATUS_INVALID_PARAMETER 0xC000000Du
#define STATUS_NO_MEMORY 0xC0000017u
#define STATUS_BUFFER_TOO_SMALL 0xC0000023u
#define EXCEPTION_NONCONTINUABLE 0x1u

#define MEM_COMMIT 0x1000u
#define MEM_RESERVE 0x2000u
#define MEM_DECOMMIT 0x4000u
#define MEM_RELEASE 0x8000u
#define PAGE_READWRITE 0x04u
#define PAGE_EXECUTE_READWRITE 0x40u

#define RTL_HEAP_ENTRY_BUSY 0x0001u
#define RTL_HEAP_ENTRY_REGION 0x0002u
#define RTL_HEAP_ENTRY_BLOCK 0x0010u
#define RTL_HEAP_ENTRY_UNCOMMITTED 0x1000u
#define RTL_HEAP_ENTRY_COMMITTED 0x4000u

/* HEAP_INFORMATION_CLASS values answered by RtlQueryHeapInformation / RtlSetHeapInformation */
#define HeapCompatibilityInformation 0u
#define HeapEnableTerminationOnCorruption 1u
#define HEAP_COMPATIBILITY_LFH 2u

#ifdef SEGHEAP_PTR64
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

/* ---- segment heap constants ---- */
#define SEGMENT_HEAP_SIGNATURE 0xDDEEDDEEu
#define SEGHEAP_PAGE_SIZE 0x1000u
#define SEGHEAP_PAGE_SHIFT 12u
#define SEGHEAP_SEGMENT_SIZE 0x100000u /* SegContexts[0]: 1 MiB segments of 256 one-page units */
#define SEGHEAP_SEGMENT_SHIFT 20u
#define SEGHEAP_UNITS_PER_SEGMENT 256u
#define SEGHEAP_SEGMENT_SIGNATURE_XOR ((uptr)0xA2E64EADA2E64EADull) /* truncated on x86 */
#define SEGHEAP_LARGE_GUARD 0x1000u        /* uncommitted page after each large block */
#define SEGHEAP_SUBSEGMENT_GUARD_MIN 0x10000u /* VS / LFH subsegments this big: guard page */
#define SEGHEAP_LARGE_ALIGN 0x10000u       /* reservation granularity */
#define SEGHEAP_RANGE_SIGNATURE 0xCCDDCCDDu /* TreeSignature of an allocated page range */
#define SEGHEAP_VS_SIGNATURE_XOR 0xABEDu
#define SEGHEAP_VS_SPLIT_MIN 0x20u        /* a remainder below this stays with the chunk */
#define SEGHEAP_VS_SUBSEGMENT_MIN 0x10000u /* VS subsegments: at least 64 KiB, 64 KiB steps */
#define SEGHEAP_LFH_SUBSEGMENT_MAX 0x10000u
#define SEGHEAP_LFH_BUCKETS 129u           /* Buckets[0] unused, 1..128 size classes */
#define SEGHEAP_LFH_SLACK_FILL 0xABu       /* LFH slack between request and trailer */

/* RangeFlags of a page range descriptor (Y16) */
#define RANGE_LFH 0x01u
#define RANGE_COMMITTED 0x02u /* per unit: this unit's page is committed */
#define RANGE_ALLOCATED 0x04u
#define RANGE_FIRST 0x08u     /* first descriptor of a range: holds UnitSize */
#define RANGE_VS 0x20u

/* AllocatedChunkBits of a busy VS chunk */
#define VS_BITS_PAGE_OFFSET 0x000000FFu
#define VS_BITS_UNUSED_BYTES 0x00000100u
#define VS_BITS_SKIP_DURING_WALK 0x00000200u

/* Creation parameters and their defaults (see SEGHEAP_PARAMETERS) */
#define SEGHEAP_DEFAULT_LFH_MAX 0x3FF0u
#define SEGHEAP_DEFAULT_VS_MAX 0x20000u
#define SEGHEAP_DEFAULT_BACKEND_MAX 0x7F000u
#define SEGHEAP_DEFAULT_LFH_LIVE 17u
#define SEGHEAP_DEFAULT_LFH_TOTAL 2040u
#define SEGHEAP_DEFAULT_FREE_COMMIT 0x10000u
#define SEGHEAP_DEFAULT_SEED 0x2545F491u
#define SEGHEAP_DEFAULT_HEAP_KEY ((uptr)0x3C5A96E1D2B4F087ull)
#define SEGHEAP_DEFAULT_LFH_KEY ((uptr)0x81D2B4F0A5C3E197ull)
#define SEGHEAP_MAX_VS_LIMIT 0x3F000u      /* x86 chunk sizes are 15-bit counts of 8 bytes */
#define SEGHEAP_MAX_BACKEND_LIMIT 0xF0000u /* fits one segment after its descriptor pages */
#define SEGHEAP_PARAMETERS_SIGNATURE 0x50485348u /* "HSHP" */
/* Where a loader leaves the process heap's parameters when the heap is not its to create
 * (a program's start-up makes it: heapemu exec --allocator segment with options) */
#define SEGHEAP_PARAMETERS_PEB_OFFSET 0xFA0u

/* ---- structures ---- */
typedef struct LIST_ENTRY_ {
    struct LIST_ENTRY_ *Flink;
    struct LIST_ENTRY_ *Blink;
} LIST;

typedef struct RTL_BALANCED_NODE {
    struct RTL_BALANCED_NODE *Children[2]; /* Left, Right */
    uptr ParentValue;                      /* parent | Red (bit 0) */
} RB_NODE;

typedef struct RTL_RB_TREE {
    RB_NODE *Root;
    RB_NODE *Min; /* leftmost node (Windows' Encoded bit 0 is never set here) */
} RB_TREE;

/*
 * SEGHEAP_PARAMETERS: heapemu's creation parameters, passed as RtlCreateHeap's last argument
 * (recognised by Length and Signature; anything else there, e.g. a real RTL_HEAP_PARAMETERS,
 * is ignored). Keys and the seed are taken as given (0 is a valid key; a 0 seed means the
 * default seed, as the generator needs a nonzero state). Size fields of 0 mean the default
 * and are clamped: LfhMaxSize <= 0x3FF0, VsMaxSize <= 0x3F000, BackendMaxSize <= 0xF0000,
 * LfhMaxSize <= VsMaxSize <= BackendMaxSize. Without parameters a heap copies them from
 * PEB.ProcessHeap when that is a segment heap (Windows' keys are process-wide); the first heap
 * (the process heap) takes a valid record at PEB + SEGHEAP_PARAMETERS_PEB_OFFSET; else the
 * SEGHEAP_DEFAULT_* values.
 */
typedef struct SEGHEAP_PARAMETERS {
    u32 Length;             /* sizeof(SEGHEAP_PARAMETERS) */
    u32 Signature;          /* SEGHEAP_PARAMETERS_SIGNATURE */
    uptr HeapKey;           /* VS headers, page segment signatures */
    uptr LfhKey;            /* LFH subsegment BlockOffsets */
    u32 RandomSeed;         /* LFH slot choice (xorshift32); 0: SEGHEAP_DEFAULT_SEED */
    u32 LfhMaxSize;         /* largest LFH request; 0: 0x3FF0 */
    u32 VsMaxSize;          /* largest VS request; 0: 0x20000 */
    u32 BackendMaxSize;     /* largest back-end request, larger ones are large blocks; 0: 0x7F000 */
    u32 LfhActivationLive;  /* live blocks of a size class that activate its bucket; 0: 17 (<= 31) */
    u32 LfhActivationTotal; /* requests of a size class that activate it; 0: 2040 (<= 2047) */
    u32 FreeCommitLimit;    /* bytes of freed back-end pages kept committed; 0: 0x10000 */
    u32 Reserved;
} SEGHEAP_PARAMETERS;

/* _HEAP_RUNTIME_MEMORY_STATS. The segment heap here uses no large pages, so the place of
 * LargePageStats[2] and LargePageUtilizationPolicy holds heapemu's per-heap settings (Windows
 * keeps keys in ntdll's RtlpHpHeapGlobals; this code has no writable globals). */
typedef struct HEAP_RUNTIME_MEMORY_STATS {
    uptr TotalReservedPages;    /* segments + large blocks */
    uptr TotalCommittedPages;   /* committed pages of segments + large blocks */
    uptr FreeCommittedPages;    /* committed pages of free back-end ranges */
    uptr LfhFreeCommittedPages; /* (not tracked: 0) */
    /* heapemu private (in place of LargePageStats / LargePageUtilizationPolicy) */
    uptr HeapKey;
    uptr LfhKey;
    u32 RandomState;       /* xorshift32 state, advanced once per LFH allocation */
    u32 RandomSeed;        /* the initial state */
    u32 VsMaxSize;
    u32 FreeCommitLimit;   /* in pages */
    u16 LfhActivationLive;
    u16 LfhActivationTotal;
#ifdef SEGHEAP_PTR64
    u8 Reserved[0x14];
#endif
} HEAP_RUNTIME_MEMORY_STATS;

typedef struct HEAP_SEG_CONTEXT {
    uptr SegmentMask;
    u8 UnitShift;
    u8 PagesPerUnitShift;
    u8 FirstDescriptorIndex;
    u8 CachedCommitSoftShift;
    u8 CachedCommitHighShift;
    u8 Flags;
    u32 MaxAllocationSize; /* largest back-end request served by this context; 0: unused */
    i16 OlpStatsOffset;
    i16 MemStatsOffset;
    void *LfhContext;
    void *VsContext;
    void *EnvHandle[2];
    void *Heap;
    uptr SegmentLock SEGHEAP_ALIGN64;
    LIST SegmentListHead; /* _HEAP_PAGE_SEGMENT.ListEntry, in creation order */
    uptr SegmentCount;
    RB_TREE FreePageRanges; /* first descriptors of free ranges */
    uptr FreeSegmentListLock;
    void *FreeSegmentList[2];
} HEAP_SEG_CONTEXT;

typedef struct HEAP_SUBALLOCATOR_CALLBACKS {
    uptr Allocate, Free, Commit, Decommit, ExtendContext;
} HEAP_SUBALLOCATOR_CALLBACKS;

typedef struct HEAP_VS_CONTEXT {
    uptr Lock;
    u32 LockType;
    RB_TREE FreeChunkTree;
    LIST SubsegmentList;
    uptr TotalCommittedUnits;
    uptr FreeCommittedUnits;
    uptr DelayFreeContext[2] SEGHEAP_ALIGN64; /* SLIST_HEADER (x86 uses the first word) */
    void *BackendCtx SEGHEAP_ALIGN64;
    HEAP_SUBALLOCATOR_CALLBACKS Callbacks;
    u32 Config;
    u32 Flags;
} HEAP_VS_CONTEXT;

typedef struct HEAP_LFH_CONTEXT {
    void *BackendCtx;
    HEAP_SUBALLOCATOR_CALLBACKS Callbacks;
    u8 *AffinityModArray;
    u8 MaxAffinity;
    u8 LockType;
    i16 MemStatsOffset;
    u16 MaxBlockSize; /* Config: largest LFH request */
    u16 ConfigFlags;
    uptr BucketStats;
    uptr SubsegmentCreationLock;
#ifndef SEGHEAP_PTR64
    u8 Reserved[0x40] SEGHEAP_ALIGN64; /* x86: Buckets at +0x80 too, so sizeof is 0x2C0 */
#endif
    /* Buckets[i]: a _HEAP_LFH_BUCKET pointer once size class i is active; before that
     * 1 | UsageData << 1 with UsageData bits 0-4 = live blocks, 5-15 = requests */
    uptr Buckets[SEGHEAP_LFH_BUCKETS] SEGHEAP_ALIGN64;
} HEAP_LFH_CONTEXT;

typedef struct SEGMENT_HEAP {
    void *EnvHandle[2];
    u32 Signature;   /* SEGMENT_HEAP_SIGNATURE */
    u32 GlobalFlags; /* the creation flags (HEAP_*) */
    u32 Interceptor;
    u16 ProcessHeapListIndex; /* 1-based index in PEB.ProcessHeaps, 0 if not listed */
    u16 AllocatedFromMetadata;
    uptr ReservedMustBeZero1; /* CommitLimitData */
    void *UserContext;
    uptr ReservedMustBeZero2;
    void *Spare;
    uptr LargeMetadataLock SEGHEAP_ALIGN64;
    RB_TREE LargeAllocMetadata; /* HEAP_LARGE_ALLOC_DATA by VirtualAddress */
    uptr LargeReservedPages;
    uptr LargeCommittedPages;
    uptr StackTraceInitVar;
    HEAP_RUNTIME_MEMORY_STATS MemStats SEGHEAP_ALIGN64;
    u16 GlobalLockCount; /* RtlLockHeap / serialized-call nesting depth */
    u32 GlobalLockOwner;
    uptr ContextExtendLock;
    u8 *AllocatedBase;   /* next free byte of the LFH context extension */
    u8 *UncommittedBase; /* first uncommitted byte of the heap's reservation */
    u8 *ReservedLimit;   /* end of the heap's reservation */
    HEAP_SEG_CONTEXT SegContexts[2] SEGHEAP_ALIGN64;
    HEAP_VS_CONTEXT VsContext;
    HEAP_LFH_CONTEXT LfhContext;
} SEGMENT_HEAP;

/* _HEAP_PAGE_RANGE_DESCRIPTOR: one per unit of a segment. The first descriptor of a range has
 * RANGE_FIRST and UnitSize; the others have UnitOffset (distance to the first) in that byte.
 * A free range's first descriptor is a node of FreePageRanges; an allocated range's has
 * TreeSignature 0xCCDDCCDD and UnusedBytes (range bytes - requested bytes; back end only).
 * RANGE_COMMITTED is kept per unit; a free range's CommittedPageCount counts its committed
 * units. x64: 0x20 bytes (RangeFlags +0x18, CommittedPageCount +0x19, UnitSize +0x1F);
 * x86: 0x10 bytes (RangeFlags +0xC, CommittedPageCount +0xD, UnitSize +0xF). */
typedef struct HEAP_PAGE_RANGE_DESCRIPTOR {
    union {
        RB_NODE TreeNode;
        struct {
            u32 TreeSignature;
            u32 UnusedBytes;
        };
    };
    u8 RangeFlags;
    u8 CommittedPageCount;
#ifdef SEGHEAP_PTR64
    u8 Spare[5];
#else
    u8 Spare[1];
#endif
    u8 UnitSize; /* UnitOffset in descriptors that are not first */
} HEAP_PAGE_RANGE_DESCRIPTOR;

/* _HEAP_PAGE_SEGMENT: the first FirstDescriptorIndex units of each segment (x64: 2 pages of
 * descriptors, x86: 1) hold the descriptor array; descriptor 0's space holds ListEntry and
 * Signature = (segment >> 20) ^ HeapKey ^ heap ^ 0xA2E64EADA2E64EAD (pointer-sized). */
typedef struct HEAP_PAGE_SEGMENT {
    union {
        struct {
            LIST ListEntry;
            uptr Signature;
        };
        HEAP_PAGE_RANGE_DESCRIPTOR DescArray[SEGHEAP_UNITS_PER_SEGMENT];
    };
} HEAP_PAGE_SEGMENT;

/* _HEAP_VS_SUBSEGMENT at the start of a VS range; chunks follow at VS_FIRST_CHUNK (0x30 x64,
 * 0x18 x86) and tile the range to its end. Size = chunk bytes >> VS unit shift,
 * Signature = Size ^ 0xABED (15 bits on x64, next to FullCommit). */
typedef struct HEAP_VS_SUBSEGMENT {
    LIST ListEntry;
    u64 CommitBitmap;
    uptr CommitLock;
    u16 Size;
    u16 Signature;
} HEAP_VS_SUBSEGMENT;

/* _HEAP_VS_CHUNK_HEADER (busy chunk; the user data follows it). HeaderBits is stored XORed
 * with the chunk address and HeapKey. Decoded, in VS units (x64: 16 bytes, x86: 8 bytes):
 *   x64: MemoryCost bits 0-15, UnsafeSize 16-31, UnsafePrevSize 32-47, Allocated 48-55;
 *   x86: MemoryCost bit 0, UnsafeSize 1-15, UnsafePrevSize 16-30, Allocated bit 31.
 * AllocatedChunkBits: EncodedSegmentPageOffset (the chunk's page offset in its subsegment
 * XOR the low byte of chunk ^ HeapKey), UnusedBytes (a trailer at the chunk's end holds the
 * count), SkipDuringWalk (heap-internal chunks). */
typedef struct HEAP_VS_CHUNK_HEADER {
    uptr HeaderBits;
    u32 AllocatedChunkBits;
#ifdef SEGHEAP_PTR64
    u32 Spare;
#endif
} HEAP_VS_CHUNK_HEADER;

/* _HEAP_VS_CHUNK_FREE_HEADER: the encoded HeaderBits (Allocated 0), then the node of
 * VsContext.FreeChunkTree (ordered by size, then address). */
typedef struct HEAP_VS_CHUNK_FREE_HEADER {
    uptr HeaderBits;
    RB_NODE Node;
} HEAP_VS_CHUNK_FREE_HEADER;

/* _HEAP_LFH_SUBSEGMENT_OWNER (here always a bucket: IsBucket = 1) */
typedef struct HEAP_LFH_SUBSEGMENT_OWNER {
    u8 IsBucket;
    u8 BucketIndex;
    u8 SlotCount;
    u8 Spare1;
    uptr AvailableSubsegmentCount;
    uptr Lock;
    LIST AvailableSubsegmentList; /* subsegments with free blocks, most recently freed into first */
    LIST FullSubsegmentList;
} HEAP_LFH_SUBSEGMENT_OWNER;

/* _HEAP_LFH_BUCKET, carved from the LFH context extension when the bucket activates */
typedef struct HEAP_LFH_BUCKET {
    HEAP_LFH_SUBSEGMENT_OWNER State;
    uptr TotalBlockCount;
    uptr TotalSubsegmentCount;
    u32 ReciprocalBlockSize; /* 2^32 / BlockSize (informational) */
    u8 Shift;
    u8 ContentionCount;
    uptr AffinityMappingLock;
    u8 *ProcAffinityMapping;
    void *AffinitySlots; /* none: subsegments belong to the bucket itself */
} HEAP_LFH_BUCKET;

/* _HEAP_LFH_SUBSEGMENT at the start of an LFH range, then BlockBitmap (64-bit words on both
 * architectures, 32 blocks a word, 2 bits per block: bit 2i busy, bit 2i+1 unused bytes
 * present), then the blocks from
 * FirstBlockOffset. BlockOffsets = (BlockSize | FirstBlockOffset << 16) ^ (u32)LfhKey ^
 * (u32)(subsegment >> 12). */
typedef struct HEAP_LFH_SUBSEGMENT {
    LIST ListEntry;
    HEAP_LFH_SUBSEGMENT_OWNER *Owner;
    uptr CommitLock;
    u16 FreeCount;
    u16 BlockCount;
    u16 FreeHint; /* no free block below this index */
    u8 Location;
    u8 WitheldBlockCount;
    u32 BlockOffsets;
    u8 CommitUnitShift;
    u8 CommitUnitCount;
    u16 CommitStateOffset;
    u64 BlockBitmap[1];
} HEAP_LFH_SUBSEGMENT;

/* _HEAP_LARGE_ALLOC_DATA, in a heap-internal VS chunk (outside the block). VirtualAddress is
 * 64 KiB aligned, so its low 16 bits hold UnusedBytes (reserved - guard - requested bytes);
 * Bits: ExtraPresent bit 0, GuardPageCount bit 1, AllocatedPages from bit 12. */
typedef struct HEAP_LARGE_ALLOC_DATA {
    RB_NODE TreeNode;
    uptr VirtualAddress;
    uptr Bits;
} HEAP_LARGE_ALLOC_DATA;

typedef struct EXCEPTION_RECORD {
    u32 ExceptionCode;
    u32 ExceptionFlags;
    struct EXCEPTION_RECORD *ExceptionRecord;
    void *ExceptionAddress;
    u32 NumberParameters;
    uptr ExceptionInformation[15];
} EXCEPTION_RECORD;

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

/* ---- layout checks (both architectures) ---- */
#define SEGHEAP_OFF(type, field) __builtin_offsetof(type, field)
#define SEGHEAP_ASSERT(name, cond) typedef char segheap_assert_##name[(cond) ? 1 : -1]
#ifdef SEGHEAP_PTR64
SEGHEAP_ASSERT(heap_size, sizeof(SEGMENT_HEAP) == 0x800);
SEGHEAP_ASSERT(signature, SEGHEAP_OFF(SEGMENT_HEAP, Signature) == 0x10);
SEGHEAP_ASSERT(large_meta, SEGHEAP_OFF(SEGMENT_HEAP, LargeAllocMetadata) == 0x48);
SEGHEAP_ASSERT(memstats, SEGHEAP_OFF(SEGMENT_HEAP, MemStats) == 0x80);
SEGHEAP_ASSERT(lock_count, SEGHEAP_OFF(SEGMENT_HEAP, GlobalLockCount) == 0xD8);
SEGHEAP_ASSERT(allocated_base, SEGHEAP_OFF(SEGMENT_HEAP, AllocatedBase) == 0xE8);
SEGHEAP_ASSERT(seg_contexts, SEGHEAP_OFF(SEGMENT_HEAP, SegContexts) == 0x100);
SEGHEAP_ASSERT(vs_context, SEGHEAP_OFF(SEGMENT_HEAP, VsContext) == 0x280);
SEGHEAP_ASSERT(lfh_context, SEGHEAP_OFF(SEGMENT_HEAP, LfhContext) == 0x340);
SEGHEAP_ASSERT(seg_context_size, sizeof(HEAP_SEG_CONTEXT) == 0xC0);
SEGHEAP_ASSERT(seg_list, SEGHEAP_OFF(HEAP_SEG_CONTEXT, SegmentListHead) == 0x48);
SEGHEAP_ASSERT(seg_free, SEGHEAP_OFF(HEAP_SEG_CONTEXT, FreePageRanges) == 0x60);
SEGHEAP_ASSERT(seg_heap, SEGHEAP_OFF(HEAP_SEG_CONTEXT, Heap) == 0x38);
SEGHEAP_ASSERT(vs_size, sizeof(HEAP_VS_CONTEXT) == 0xC0);
SEGHEAP_ASSERT(vs_backend, SEGHEAP_OFF(HEAP_VS_CONTEXT, BackendCtx) == 0x80);
SEGHEAP_ASSERT(lfh_size, sizeof(HEAP_LFH_CONTEXT) == 0x4C0);
SEGHEAP_ASSERT(lfh_buckets, SEGHEAP_OFF(HEAP_LFH_CONTEXT, Buckets) == 0x80);
SEGHEAP_ASSERT(lfh_config, SEGHEAP_OFF(HEAP_LFH_CONTEXT, MaxBlockSize) == 0x3C);
SEGHEAP_ASSERT(desc_size, sizeof(HEAP_PAGE_RANGE_DESCRIPTOR) == 0x20);
SEGHEAP_ASSERT(desc_flags, SEGHEAP_OFF(HEAP_PAGE_RANGE_DESCRIPTOR, RangeFlags) == 0x18);
SEGHEAP_ASSERT(desc_unit, SEGHEAP_OFF(HEAP_PAGE_RANGE_DESCRIPTOR, UnitSize) == 0x1F);
SEGHEAP_ASSERT(pseg_sig, SEGHEAP_OFF(HEAP_PAGE_SEGMENT, Signature) == 0x10);
SEGHEAP_ASSERT(vs_sub, sizeof(HEAP_VS_SUBSEGMENT) == 0x28);
SEGHEAP_ASSERT(vs_sub_size, SEGHEAP_OFF(HEAP_VS_SUBSEGMENT, Size) == 0x20);
SEGHEAP_ASSERT(vs_hdr, sizeof(HEAP_VS_CHUNK_HEADER) == 0x10);
SEGHEAP_ASSERT(vs_free_hdr, sizeof(HEAP_VS_CHUNK_FREE_HEADER) == 0x20);
SEGHEAP_ASSERT(lfh_sub_bitmap, SEGHEAP_OFF(HEAP_LFH_SUBSEGMENT, BlockBitmap) == 0x30);
SEGHEAP_ASSERT(lfh_sub_offsets, SEGHEAP_OFF(HEAP_LFH_SUBSEGMENT, BlockOffsets) == 0x28);
SEGHEAP_ASSERT(lfh_bucket, sizeof(HEAP_LFH_BUCKET) == 0x68);
SEGHEAP_ASSERT(large_data, sizeof(HEAP_LARGE_ALLOC_DATA) == 0x28);
SEGHEAP_ASSERT(params_size, sizeof(SEGHEAP_PARAMETERS) == 0x38);
SEGHEAP_ASSERT(params_seed, SEGHEAP_OFF(SEGHEAP_PARAMETERS, RandomSeed) == 0x18);
#else
SEGHEAP_ASSERT(heap_size, sizeof(SEGMENT_HEAP) == 0x580);
SEGHEAP_ASSERT(signature, SEGHEAP_OFF(SEGMENT_HEAP, Signature) == 0x8);
SEGHEAP_ASSERT(large_meta, SEGHEAP_OFF(SEGMENT_HEAP, LargeAllocMetadata) == 0x44);
SEGHEAP_ASSERT(memstats, SEGHEAP_OFF(SEGMENT_HEAP, MemStats) == 0x80);
SEGHEAP_ASSERT(lock_count, SEGHEAP_OFF(SEGMENT_HEAP, GlobalLockCount) == 0xAC);
SEGHEAP_ASSERT(allocated_base, SEGHEAP_OFF(SEGMENT_HEAP, AllocatedBase) == 0xB8);
SEGHEAP_ASSERT(seg_contexts, SEGHEAP_OFF(SEGMENT_HEAP, SegContexts) == 0x100);
SEGHEAP_ASSERT(vs_context, SEGHEAP_OFF(SEGMENT_HEAP, VsContext) == 0x200);
SEGHEAP_ASSERT(lfh_context, SEGHEAP_OFF(SEGMENT_HEAP, LfhContext) == 0x2C0);
SEGHEAP_ASSERT(seg_context_size, sizeof(HEAP_SEG_CONTEXT) == 0x80);
SEGHEAP_ASSERT(seg_list, SEGHEAP_OFF(HEAP_SEG_CONTEXT, SegmentListHead) == 0x44);
SEGHEAP_ASSERT(seg_free, SEGHEAP_OFF(HEAP_SEG_CONTEXT, FreePageRanges) == 0x50);
SEGHEAP_ASSERT(seg_heap, SEGHEAP_OFF(HEAP_SEG_CONTEXT, Heap) == 0x24);
SEGHEAP_ASSERT(vs_size, sizeof(HEAP_VS_CONTEXT) == 0xC0);
SEGHEAP_ASSERT(vs_backend, SEGHEAP_OFF(HEAP_VS_CONTEXT, BackendCtx) == 0x80);
SEGHEAP_ASSERT(lfh_size, sizeof(HEAP_LFH_CONTEXT) == 0x2C0);
SEGHEAP_ASSERT(lfh_buckets, SEGHEAP_OFF(HEAP_LFH_CONTEXT, Buckets) == 0x80);
SEGHEAP_ASSERT(lfh_config, SEGHEAP_OFF(HEAP_LFH_CONTEXT, MaxBlockSize) == 0x20);
SEGHEAP_ASSERT(desc_size, sizeof(HEAP_PAGE_RANGE_DESCRIPTOR) == 0x10);
SEGHEAP_ASSERT(desc_flags, SEGHEAP_OFF(HEAP_PAGE_RANGE_DESCRIPTOR, RangeFlags) == 0xC);
SEGHEAP_ASSERT(desc_unit, SEGHEAP_OFF(HEAP_PAGE_RANGE_DESCRIPTOR, UnitSize) == 0xF);
SEGHEAP_ASSERT(pseg_sig, SEGHEAP_OFF(HEAP_PAGE_SEGMENT, Signature) == 0x8);
SEGHEAP_ASSERT(vs_sub, sizeof(HEAP_VS_SUBSEGMENT) == 0x18);
SEGHEAP_ASSERT(vs_sub_size, SEGHEAP_OFF(HEAP_VS_SUBSEGMENT, Size) == 0x14);
SEGHEAP_ASSERT(vs_hdr, sizeof(HEAP_VS_CHUNK_HEADER) == 0x8);
SEGHEAP_ASSERT(vs_free_hdr, sizeof(HEAP_VS_CHUNK_FREE_HEADER) == 0x10);
SEGHEAP_ASSERT(lfh_sub_bitmap, SEGHEAP_OFF(HEAP_LFH_SUBSEGMENT, BlockBitmap) == 0x20);
SEGHEAP_ASSERT(lfh_sub_offsets, SEGHEAP_OFF(HEAP_LFH_SUBSEGMENT, BlockOffsets) == 0x18);
SEGHEAP_ASSERT(lfh_bucket, sizeof(HEAP_LFH_BUCKET) == 0x38);
SEGHEAP_ASSERT(large_data, sizeof(HEAP_LARGE_ALLOC_DATA) == 0x14);
SEGHEAP_ASSERT(params_size, sizeof(SEGHEAP_PARAMETERS) == 0x30);
SEGHEAP_ASSERT(params_seed, SEGHEAP_OFF(SEGHEAP_PARAMETERS, RandomSeed) == 0x10);
#endif
SEGHEAP_ASSERT(lfh_sub_bitmap_align, SEGHEAP_OFF(HEAP_LFH_SUBSEGMENT, BlockBitmap) % 8 == 0);
SEGHEAP_ASSERT(pseg_size, sizeof(HEAP_PAGE_SEGMENT) == SEGHEAP_UNITS_PER_SEGMENT *
                                                          sizeof(HEAP_PAGE_RANGE_DESCRIPTOR));

/* ---- the system interface (the same stubs as ntheap: asm/syscalls_*.s) ---- */
u32 NTAPI NtAllocateVirtualMemory(uptr process, void **base, uptr zero_bits, uptr *size,
                                  u32 type, u32 protect);
u32 NTAPI NtFreeVirtualMemory(uptr process, void **base, uptr *size, u32 type);
u32 NTAPI NtRaiseException(EXCEPTION_RECORD *record, void *context, u32 first_chance);
u8 *NTAPI ntheap_get_peb(void);

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
u32 NTAPI RtlQueryHeapInformation(void *heap, u32 info_class, void *info, uptr length,
                                  uptr *return_length);
/* HeapCompatibilityInformation: the LFH is part of every segment heap, so setting 2 succeeds
 * and changes nothing, setting 0 (no LFH) is STATUS_UNSUCCESSFUL.
 * HeapEnableTerminationOnCorruption: accepted (corruption always raises). */
u32 NTAPI RtlSetHeapInformation(void *heap, u32 info_class, void *info, uptr length);

#endif
