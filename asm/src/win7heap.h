/*
 * win7heap.h - heapemu's Windows 7 NT heap (back end + LFH front end): types and layout.
 *
 * Freestanding C like ntheap.h (no libc); one source for x86 and x64. Written from the facts in
 * the project's heap fact sheet (sections A, B, D) and the WinDbg transcript of seed 002 (a
 * 32-bit Windows 7 heap), our own code. Offsets below are Windows 7 SP1's; every structure is
 * checked with static assertions for both architectures at the end of this file.
 *
 * ---------------------------------------------------------------------------------------------
 * Units. G = granularity = sizeof(HEAP_ENTRY): 8 bytes on x86, 16 on x64. Block sizes (Size,
 * PreviousSize, TotalFreeSize, thresholds, ListHints indices) are in units of G. A request of
 * n bytes needs max(2, (max(n,1) + G + G-1) / G) units (x86: 0x100 -> 0x21 units, 0x108 bytes;
 * x64: 0x100 -> 0x11 units, 0x110 bytes). UnusedBytes = block bytes - requested bytes, header
 * included.
 *
 * Heap entry (HEAP_ENTRY):  x86 [Size u16][Flags u8][SmallTagIndex u8][PreviousSize u16]
 *                                [SegmentOffset u8][UnusedBytes u8]
 *                           x64 [PreviousBlockPrivateData u64] + the same 8 bytes.
 *   SmallTagIndex = Size.lo ^ Size.hi ^ Flags; then the 32-bit word Size|Flags|SmallTagIndex is
 *   XORed with the same word of _HEAP.Encoding (EncodeFlagMask 0x100000). Every decode checks
 *   the checksum; a mismatch met by Alloc/Free/ReAlloc/Size (also while coalescing with a
 *   neighbour), a double free and an LFH header that does not decode to a live subsegment
 *   raise STATUS_HEAP_CORRUPTION (0xC0000374, non-continuable) through NtRaiseException, as
 *   Windows' "termination on corruption" does; RtlValidateHeap only reports FALSE. x64 encodes
 *   the same 4 bytes (at +8); PreviousBlockPrivateData is 0 on back-end blocks.
 *   Flags: BUSY 0x01; LAST_ENTRY 0x10 on UCR sentinels; inside segments VIRTUAL_ALLOC 0x08
 *   (meaningless there) marks the heap's Internal blocks holding LFH data (_LFH_HEAP, zones,
 *   UserBlocks; !heap's "Internal"); virtual blocks have BUSY | VIRTUAL_ALLOC.
 *
 * Segment memory (the heap is its own first segment):
 *
 *   base  +------------------------------+  HEAP (0x138 / 0x208) + HEAP_LOCK (0x18 / 0x28)
 *         | heap header block  [busy]     |  + HEAP_LIST_LOOKUP (0x24 / 0x38) + ListsInUseUlong
 *         |                               |  (0x10) + ListHints[0x80] (LIST_ENTRY each):
 *         |                               |  block 0x588 / 0xA80, UnusedBytes 1
 *         +------------------------------+  FirstEntry
 *         | UCR index block    [busy]     |  0x240 / 0x480, UnusedBytes 1, contents unused (T2
 *         +------------------------------+  shows the 0x240 block; x64 size is our guess)
 *         | blocks ...                    |
 *         | sentinel [busy|LAST_ENTRY]    |  0x20 / 0x40 block, UnusedBytes 3, its data is the
 *         +------------------------------+  HEAP_UCR_DESCRIPTOR of the range that follows
 *         | uncommitted range (UCR)       |
 *         +------------------------------+  (more committed ranges: the block after a UCR has
 *         | ...                           |   PreviousSize 0)
 *         | sentinel + UCR (maybe 0 bytes)|  every segment ends with a sentinel and a UCR,
 *   end   +------------------------------+  LastValidEntry; a fully committed segment keeps a
 *                                            0-byte UCR (T2 L254-257, L1428)
 *
 *   Further segments start with a HEAP_SEGMENT header block (0x40 / 0x70, UnusedBytes 1);
 *   FirstEntry is the block after it. Segment.UCRSegmentList lists all of its UCRs in address
 *   order; Heap.UCRList lists the UCRs with Size > 0 in ascending size (T2 L595: a 0-byte UCR is
 *   absent from it); growth commits from the smallest UCR that fits (round_up(bytes, page)).
 *   A new segment reserves max(SegmentReserve, round_page(bytes + page)), commits
 *   max(SegmentCommit, round_page(bytes + segment header + sentinel)), then SegmentReserve +=
 *   the reservation (T2: 0x100000 -> 0x200000; capped at WIN7HEAP_MAX_SEGMENT_RESERVE).
 *   Segments are released only by RtlDestroyHeap.
 *
 * Free lists: Heap.FreeLists is one list of all free blocks (HEAP_FREE_ENTRY: header + LIST_ENTRY
 * at +G) in ascending size, LIFO among equal sizes. BlocksIndex -> HEAP_LIST_LOOKUP chain: the
 * first (in the heap header) covers sizes [0, 0x80), ListHints[s].Flink = first free block of
 * size s (NULL if none) and bit s of ListsInUseUlong says so. The last slot of the last lookup
 * collects every larger size. The first back-end request of >= ArraySize units (or the LFH's
 * creation) appends the extended lookup [0x80, 0x800) in a back-end block (0x3D20 / 0x7940,
 * UnusedBytes 1; T2 L359/L378 show it right before the LFH). ListHints[s].Blink holds the LFH
 * activation counter for size s (below).
 *
 * Free blocks are at most 0xFFFF units (the Size field); a longer free run is several blocks.
 * Free neighbours coalesce (so a free block is followed by a free block only inside such a
 * run). When a free leaves a run of >= DeCommitFreeBlockThreshold units and TotalFreeSize
 * >= DeCommitTotalFreeThreshold, the run's whole pages are decommitted (MEM_DECOMMIT): a new
 * sentinel ends what stays committed in front; a run that ends at a sentinel extends that UCR,
 * else a new UCR is made and the tail stays a free block. Requests of more than
 * VirtualMemoryThreshold units (0xFE00 / 0xFF00, header included) in growable heaps get their
 * own region: HEAP_VIRTUAL_ALLOC_ENTRY (0x20 / 0x40 bytes), then the data; BusyBlock.Size =
 * CommitSize - requested bytes, Flags BUSY|VIRTUAL_ALLOC; non-growable heaps fail them.
 *
 * ---------------------------------------------------------------------------------------------
 * LFH (FrontEndHeapType 2). Activation (T2, VM12): a counter c per back-end size s (units of
 * the request): each back-end allocation adds 0x21, each back-end free subtracts 1 (never below
 * 0). When (c & 0x1F) > 0x10 or c > 0xFF00: if the LFH exists, size s goes to the LFH from then
 * on; else CompatibilityFlags |= 0x20000000 and the next RtlAllocateHeap creates the LFH first
 * (and is still served by the back end). The counter lives in ListHints[s].Blink as 2 * c (our
 * choice: bit 0 stays clear), replaced by &Buckets[i] + 1 once enabled. Sizes in the catch-all
 * slot have no counter. Heaps with HEAP_NO_SERIALIZE or the checking flags never get an LFH.
 * At creation DeCommitFreeBlockThreshold rises to 0x4000 bytes (T2 L269, unexplained there).
 *
 * _LFH_HEAP: a back-end block of 0x310 + 17 * sizeof(HEAP_LOCAL_DATA) bytes (x86 0x378A8, T2
 * L379; x64 0x3F0 + 17 * 0x6030 = 0x66720, more than the default 0x40000 reservation: on x64
 * it opens the second segment); only LocalData[0] is used.
 * Buckets: index i (0..127) has capacity C(i) units and BlockUnits = C(i) + 1, with C(i) = i up
 * to 32, then steps of 2, 4, 8, 16, 32, 64 units (16 indices each). On x86 that is MSDN's
 * table in bytes (1-256 by 8, ..., by 512) with T2's numbering (0x100 -> index 0x20, BlockUnits
 * 0x21), so index 127 ends at 15872 bytes; MSDN's 16 KiB bucket has no slot. x64 uses the same
 * units (16 bytes), i.e. twice the byte granularities. Requests of 0x4000 bytes and more never
 * use the LFH (VM12), so x64 uses indices <= 112.
 *
 * UserBlocks: a back-end block of 1 << SizeIndex bytes (request (1 << SizeIndex) - G), with
 * SizeIndex = floor(log2(min(0x78000, T * BlockUnits * G + sizeof(USERDATA_HEADER) + G))),
 * T = TotalBlocks clamped to [32, 1024]: T2's 0x2000 for 0, 30 and 60 existing blocks.
 * BlockCount = ((1 << SizeIndex) - G - sizeof(USERDATA_HEADER)) / (BlockUnits * G).
 * HEAP_USERDATA_HEADER (0x10 / 0x20): SubSegment, Reserved (never written: T2 shows a stale
 * free-list pointer), SizeIndex, Signature 0xF0E0D0C0. Blocks follow it, each with a header.
 * Subsegment descriptors (HEAP_SUBSEGMENT, 0x20 / 0x30) come from LFH_BLOCK_ZONEs: back-end
 * blocks of 0x400 bytes (request 0x400 - G), zone header then descriptors up to Limit; released
 * descriptors go to LocalData.DeletedSubSegments and are reused first. The UserBlocks block is
 * allocated before its descriptor (T2: 0x4AD028 then the zone 0x4AF028).
 *
 * LFH block header: x86 word 0 = Heap ^ SubSegment ^ LFHKey ^ (header >> 3), then PreviousSize
 * 0, SegmentOffset 0, UnusedBytes (T2: 0x3C132FED 0x88000000). x64 (our choice): the 64-bit
 * value Heap ^ SubSegment ^ LFHKey ^ (header >> 4) in PreviousBlockPrivateData, its low 32 bits
 * again at +8, then PreviousSize 0, SegmentOffset 0, UnusedBytes. UnusedBytes is 0x80 when free
 * and 0x80 | unused when busy; an unused count >= 0x3F is stored as a u16 in the last two bytes
 * of the block, with UnusedBytes 0x80 | 0x3F. The 0x80 bit selects the LFH path.
 * Free blocks form a LIFO chain: AggregateExchg.FreeEntryOffset = offset of the first free
 * block's header from UserBlocks in G units (2 for the first block on both arches; 0xFFFF when
 * none), the next offset in the first u16 of each free block's data; Depth counts them and
 * Sequence starts at 1 and increments on every free. A new subsegment chains its blocks in
 * address order.
 * Selection (T2): allocation uses Hint if it has a free block, else ActiveSubsegment, else the
 * first non-NULL CachedItems[i] with a free block becomes Active (slot cleared, LastUsed = i,
 * Hint = NULL), else a new subsegment becomes Active. A free sets Hint to the block's subsegment
 * and, unless it is the Active one, caches it in the first free CachedItems slot. A subsegment
 * that becomes entirely free and is not Active is released (UserBlocks back to the back end).
 * HEAP_SUBSEGMENT.Lock is 3, | 4 while Active (T2 shows 7 and 3).
 * Not modelled: LocalSegmentInfo.SListHeader (T2 shows Sequence 7), UserBlockCache, affinity.
 *
 * ---------------------------------------------------------------------------------------------
 * Keys. Windows draws _HEAP.Encoding per heap and the process-wide RtlpLFHKey / RtlpHeapKey at
 * random. Here they come from a WIN7HEAP_KEYS record at PEB + WIN7HEAP_KEYS_PEB_OFFSET (past
 * every real PEB field, below the page Wine reads past the PEB): RtlCreateHeap copies Encoding
 * and PointerKey into the new heap and then advances the record's Encoding (xorshift32; the
 * record is written with the defaults first if it had no signature), so successive heaps get
 * distinct, reproducible Encodings from one seed; LFH operations read LFHKey there each time.
 * Without a valid record the defaults apply: LFHKey 0x3C18DB66 and PointerKey 0x0C58FA9C (seed
 * 002's), Encoding WIN7HEAP_DEFAULT_ENCODING (T2 shows no back-end header word, so it implies
 * no Encoding; 0 would mean no encoding). Set the record (or call Win7HeapSetKeys) right
 * before the RtlCreateHeap it should seed; LFHKey must not change while any LFH block exists.
 *
 * Other choices: RtlCreateHeap(reserve 0, commit 0) reserves 64 pages and commits one (T2 L24);
 * reserve 0 adds HEAP_GROWABLE; SegmentReserve/SegmentCommit/decommit thresholds come from the
 * PEB (Heap* fields) when non-zero, else 0x100000 / 0x2000 / 0x1000 / 0x10000 bytes. The lock
 * argument and RTL_HEAP_PARAMETERS are ignored; RtlLockHeap/RtlUnlockHeap count on the
 * critical section at +0x138 / +0x208, ordinary calls do not take it (one thread). The heap's
 * own blocks cannot be freed, sized or reallocated by callers. HEAP_TAIL_CHECKING_ENABLED and
 * HEAP_FREE_CHECKING_ENABLED are accepted (and keep the LFH off) but no fill patterns are
 * written or checked; HEAP_ZERO_MEMORY, HEAP_GENERATE_EXCEPTIONS, HEAP_NO_SERIALIZE and
 * HEAP_REALLOC_IN_PLACE_ONLY are honoured.
 * RtlWalkHeap fills RTL_HEAP_WALK_ENTRY as ntheap.c does and reports, per segment: the region;
 * every block from FirstEntry in address order, busy ones with BUSY|BLOCK|COMMITTED (0x4011),
 * the heap's own ones (structures, Internal blocks, UCR sentinels) also WIN7HEAP_WALK_INTERNAL;
 * after a UserBlocks block its LFH blocks (inside it), busy 0x4011 | RTL_HEAP_ENTRY_LFH, free
 * RTL_HEAP_ENTRY_LFH alone; after each sentinel its UCR (UNCOMMITTED) unless it is 0 bytes;
 * then the virtual blocks (0x4011). The caller's blocks are the busy entries without
 * WIN7HEAP_WALK_INTERNAL; back-end blocks and the UCRs tile each segment exactly.
 */
#ifndef WIN7HEAP_H
#define WIN7HEAP_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;

#if defined(__x86_64__)
#define WIN7HEAP_PTR64 1
typedef u64 uptr;
#elif defined(__i386__)
typedef u32 uptr;
#else
#error "win7heap: x86 or x64 only"
#endif

typedef char win7heap_check_uptr[(sizeof(uptr) == sizeof(void *)) ? 1 : -1];

/* x86 exports and system calls are stdcall, as in ntdll; the native host build uses the
 * platform's default convention (the attribute expands to nothing). Same switch as ntheap.h. */
#if defined(__i386__) && !defined(NTHEAP_NATIVE)
#define NTAPI __attribute__((stdcall))
#else
#define NTAPI
#endif

/* ---- Windows constants (the same names and values as ntheap.h) ---- */
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
#define STATUS_ACCESS_VIOLATION 0xC0000005u
#define STATUS_INVALID_PARAMETER 0xC000000Du
#define STATUS_NO_MEMORY 0xC0000017u
#define STATUS_BUFFER_TOO_SMALL 0xC0000023u
#define STATUS_HEAP_CORRUPTION 0xC0000374u
#define EXCEPTION_NONCONTINUABLE 0x1u

#define MEM_COMMIT 0x1000u
#define MEM_RESERVE 0x2000u
#define MEM_DECOMMIT 0x4000u
#define MEM_RELEASE 0x8000u
#define PAGE_READWRITE 0x04u
#define PAGE_EXECUTE_READWRITE 0x40u

/* RTL_HEAP_WALK_ENTRY.Flags as ntheap.c sets them (Wine 8's values), plus two markers. */
#define RTL_HEAP_ENTRY_BUSY 0x0001u
#define RTL_HEAP_ENTRY_REGION 0x0002u
#define RTL_HEAP_ENTRY_BLOCK 0x0010u
#define RTL_HEAP_ENTRY_UNCOMMITTED 0x1000u
#define RTL_HEAP_ENTRY_COMMITTED 0x4000u
#define RTL_HEAP_ENTRY_LFH 0x8000u      /* an LFH block (busy or free), as Wine marks them */
#define WIN7HEAP_WALK_INTERNAL 0x0800u  /* a busy block the heap uses for itself */

/* HEAP_INFORMATION_CLASS */
#define HeapCompatibilityInformation 0u
#define HeapEnableTerminationOnCorruption 1u

/* PEB fields (x86 / x64 offsets). */
#ifdef WIN7HEAP_PTR64
#define PEB_PROCESS_HEAP 0x30u
#define PEB_HEAP_SEGMENT_RESERVE 0xC8u
#define PEB_HEAP_SEGMENT_COMMIT 0xD0u
#define PEB_HEAP_DECOMMIT_TOTAL_FREE_THRESHOLD 0xD8u
#define PEB_HEAP_DECOMMIT_FREE_BLOCK_THRESHOLD 0xE0u
#define PEB_NUMBER_OF_HEAPS 0xE8u
#define PEB_MAXIMUM_NUMBER_OF_HEAPS 0xECu
#define PEB_PROCESS_HEAPS 0xF0u
#else
#define PEB_PROCESS_HEAP 0x18u
#define PEB_HEAP_SEGMENT_RESERVE 0x78u
#define PEB_HEAP_SEGMENT_COMMIT 0x7Cu
#define PEB_HEAP_DECOMMIT_TOTAL_FREE_THRESHOLD 0x80u
#define PEB_HEAP_DECOMMIT_FREE_BLOCK_THRESHOLD 0x84u
#define PEB_NUMBER_OF_HEAPS 0x88u
#define PEB_MAXIMUM_NUMBER_OF_HEAPS 0x8Cu
#define PEB_PROCESS_HEAPS 0x90u
#endif

/* ---- heap constants ---- */
#define WIN7HEAP_PAGE_SIZE 0x1000u
#define HEAP_SIGNATURE 0xEEFFEEFFu
#define HEAP_SEGMENT_SIGNATURE 0xFFEEFFEEu
#define HEAP_USERDATA_SIGNATURE 0xF0E0D0C0u
#define HEAP_ENCODE_FLAG_MASK 0x00100000u
#define HEAP_COMPAT_LFH_PENDING 0x20000000u /* CompatibilityFlags: create the LFH next time */
#define HEAP_FRONT_END_LFH 2u

#define HEAP_ENTRY_BUSY 0x01u
#define HEAP_ENTRY_EXTRA_PRESENT 0x02u
#define HEAP_ENTRY_FILL_PATTERN 0x04u
#define HEAP_ENTRY_VIRTUAL_ALLOC 0x08u
#define HEAP_ENTRY_LAST_ENTRY 0x10u
#define HEAP_SEGMENT_USER_ALLOCATED 0x1u /* SegmentFlags: caller's memory, never released */

#define LFH_UNUSED_FLAG 0x80u     /* UnusedBytes bit of LFH blocks */
#define LFH_UNUSED_EXTENDED 0x3Fu /* UnusedBytes & 0x7F: the count is in the block's last u16 */
#define LFH_NO_FREE_OFFSET 0xFFFFu
#define LFH_BUCKETS 128u
#define LFH_LOCAL_DATA_COUNT 17u /* T2: 0x378A8 = 0x310 + 17 * 0x3418 */
#define LFH_CACHED_ITEMS 16u
#define LFH_MAX_REQUEST 0x3FFFu  /* requests of 0x4000 bytes and more stay in the back end */
#define LFH_MIN_BLOCKS 32u
#define LFH_MAX_BLOCKS 1024u
#define LFH_MAX_USERBLOCKS 0x78000u
#define LFH_ZONE_BLOCK 0x400u /* bytes of a zone's back-end block */
#define LFH_ACTIVATE_STEP 0x21u
#define LFH_DECOMMIT_THRESHOLD_BYTES 0x4000u

#define LIST_LOOKUP_FIRST_SIZE 0x80u
#define LIST_LOOKUP_LAST_SIZE 0x800u
#define HEAP_MAX_FREE_UNITS 0xFFFFu
#define HEAP_DEFAULT_RESERVE_PAGES 64u
#define HEAP_DEFAULT_SEGMENT_RESERVE 0x100000u
#define HEAP_DEFAULT_SEGMENT_COMMIT 0x2000u
#define HEAP_DEFAULT_DECOMMIT_FREE_BLOCK 0x1000u /* bytes */
#define HEAP_DEFAULT_DECOMMIT_TOTAL_FREE 0x10000u
#define WIN7HEAP_MAX_SEGMENT_RESERVE 0x10000000u
#define HEAP_INTERNAL_UNUSED 1u /* UnusedBytes of header/index/lookup blocks (T2: size - 1) */
#define HEAP_SENTINEL_UNUSED 3u /* UnusedBytes of a UCR sentinel (T2: 0x20 . busy (1d)) */

/* VirtualMemoryThreshold, in units: x86 0xFE00 (0x7F000 bytes, T2 L83); x64 0xFF00 (0xFF000
 * bytes) as public Windows 7 x64 `dt _HEAP` dumps show it (from memory, not in the fact sheet). */
#ifdef WIN7HEAP_PTR64
#define HEAP_VIRTUAL_THRESHOLD_UNITS 0xFF00u
#else
#define HEAP_VIRTUAL_THRESHOLD_UNITS 0xFE00u
#endif

#ifdef WIN7HEAP_PTR64
#define HEAP_MAXIMUM_ALLOCATION 0x7FFFFFDEFFFull
#define HEAP_UCR_INDEX_DATA 0x470u /* our guess: x86's 0x238 with pointers doubled */
#else
#define HEAP_MAXIMUM_ALLOCATION 0x7FFDEFFFu /* T2 L90 */
#define HEAP_UCR_INDEX_DATA 0x238u /* T2: a 0x240 block at FirstEntry */
#endif

/* ---- keys ---- */
#define WIN7HEAP_KEYS_PEB_OFFSET 0xF00u
#define WIN7HEAP_KEYS_SIGNATURE 0x4B483757u /* "W7HK" */
#define WIN7HEAP_DEFAULT_ENCODING 0x5F1C3A69u
#define WIN7HEAP_DEFAULT_LFH_KEY 0x3C18DB66u    /* seed 002, !heap -s */
#define WIN7HEAP_DEFAULT_POINTER_KEY 0x0C58FA9Cu /* seed 002, _HEAP.PointerKey */

typedef struct WIN7HEAP_KEYS {
    u32 Signature;  /* WIN7HEAP_KEYS_SIGNATURE, else the defaults apply */
    u32 Encoding;   /* the next heap's Encoding word (Size|Flags|SmallTagIndex) */
    uptr LFHKey;    /* RtlpLFHKey */
    uptr PointerKey; /* RtlpHeapKey: _HEAP.PointerKey, CommitRoutine = NULL ^ PointerKey */
} WIN7HEAP_KEYS;

/* ---- structures (Windows 7 SP1) ---- */
typedef struct LIST_ENTRY {
    struct LIST_ENTRY *Flink;
    struct LIST_ENTRY *Blink;
} LIST_ENTRY;

typedef struct HEAP_ENTRY {
#ifdef WIN7HEAP_PTR64
    u64 PreviousBlockPrivateData;
#endif
    u16 Size;
    u8 Flags;
    u8 SmallTagIndex;
    u16 PreviousSize;
    u8 SegmentOffset;
    u8 UnusedBytes;
} HEAP_ENTRY;

typedef struct HEAP_FREE_ENTRY {
    HEAP_ENTRY Entry;
    LIST_ENTRY FreeList;
} HEAP_FREE_ENTRY;

typedef struct HEAP_ENTRY_EXTRA {
    u16 AllocatorBackTraceIndex;
    u16 TagIndex;
#ifdef WIN7HEAP_PTR64
    u32 Pad;
#endif
    uptr Settable;
} HEAP_ENTRY_EXTRA;

typedef struct HEAP_VIRTUAL_ALLOC_ENTRY {
    LIST_ENTRY Entry;        /* in HEAP.VirtualAllocdBlocks */
    HEAP_ENTRY_EXTRA ExtraStuff;
    uptr CommitSize;         /* bytes of the region, this header included */
    uptr ReserveSize;
    HEAP_ENTRY BusyBlock;    /* Size = CommitSize - requested, Flags BUSY | VIRTUAL_ALLOC */
} HEAP_VIRTUAL_ALLOC_ENTRY;

typedef struct HEAP_UCR_DESCRIPTOR {
    LIST_ENTRY ListEntry;    /* in HEAP.UCRList (Size > 0 only), ascending size */
    LIST_ENTRY SegmentEntry; /* in HEAP_SEGMENT.UCRSegmentList, ascending address */
    void *Address;
    uptr Size;
} HEAP_UCR_DESCRIPTOR;

struct HEAP;

typedef struct HEAP_SEGMENT {
    HEAP_ENTRY Entry;
    u32 SegmentSignature;
    u32 SegmentFlags;
    LIST_ENTRY SegmentListEntry;
    struct HEAP *Heap;
    void *BaseAddress;
    u32 NumberOfPages;
    HEAP_ENTRY *FirstEntry;
    HEAP_ENTRY *LastValidEntry;
    u32 NumberOfUnCommittedPages;
    u32 NumberOfUnCommittedRanges;
    u16 SegmentAllocatorBackTraceIndex;
    u16 Reserved;
    LIST_ENTRY UCRSegmentList;
} HEAP_SEGMENT;

typedef struct HEAP_COUNTERS {
    uptr TotalMemoryReserved;
    uptr TotalMemoryCommitted;
    uptr TotalMemoryLargeUCR;
    uptr TotalSizeInVirtualBlocks;
    u32 TotalSegments;
    u32 TotalUCRs;
    u32 CommittOps;
    u32 DeCommitOps;
    u32 LockAcquires;
    u32 LockCollisions;
    u32 CommitRate;
    u32 DecommittRate;
    u32 CommitFailures;
    u32 InBlockCommitFailures;
    u32 CompactHeapCalls;
    u32 CompactedUCRs;
    u32 AllocAndFreeOps;
    u32 InBlockDeccommits;
    uptr InBlockDeccomitSize;
    uptr HighWatermarkSize;
    uptr LastPolledSize;
} HEAP_COUNTERS;

typedef struct HEAP_TUNING_PARAMETERS {
    u32 CommittThresholdShift;
    uptr MaxPreCommittThreshold;
} HEAP_TUNING_PARAMETERS;

typedef struct HEAP {
    HEAP_SEGMENT Segment; /* the heap is its own first segment */
    u32 Flags;
    u32 ForceFlags;
    u32 CompatibilityFlags;
    u32 EncodeFlagMask;
    HEAP_ENTRY Encoding;
    uptr PointerKey;
    u32 Interceptor;
    u32 VirtualMemoryThreshold;
    u32 Signature;
    uptr SegmentReserve;
    uptr SegmentCommit;
    uptr DeCommitFreeBlockThreshold;
    uptr DeCommitTotalFreeThreshold;
    uptr TotalFreeSize;
    uptr MaximumAllocationSize;
    u16 ProcessHeapsListIndex;
    u16 HeaderValidateLength;
    void *HeaderValidateCopy;
    u16 NextAvailableTagIndex;
    u16 MaximumTagIndex;
    void *TagEntries;
    LIST_ENTRY UCRList;
    uptr AlignRound;
    uptr AlignMask;
    LIST_ENTRY VirtualAllocdBlocks;
    LIST_ENTRY SegmentList;
    u16 AllocatorBackTraceIndex;
    u32 NonDedicatedListLength;
    void *BlocksIndex;
    void *UCRIndex;
    void *PseudoTagEntries;
    LIST_ENTRY FreeLists;
    void *LockVariable;
    uptr CommitRoutine;
    void *FrontEndHeap;
    u16 FrontHeapLockCount;
    u8 FrontEndHeapType;
    HEAP_COUNTERS Counters;
    HEAP_TUNING_PARAMETERS TuningParameters;
} HEAP;

typedef struct RTL_CRITICAL_SECTION {
    void *DebugInfo;
    i32 LockCount;      /* -1 when free; counts nested RtlLockHeap calls from -1 */
    i32 RecursionCount; /* nesting depth of RtlLockHeap */
    void *OwningThread;
    void *LockSemaphore;
    uptr SpinCount;
} RTL_CRITICAL_SECTION;

typedef struct HEAP_LIST_LOOKUP {
    struct HEAP_LIST_LOOKUP *ExtendedLookup;
    u32 ArraySize;       /* sizes [BaseIndex, ArraySize) */
    u32 ExtraItem;       /* 1: ListHints are LIST_ENTRYs (Blink: LFH counter) */
    u32 ItemCount;       /* free blocks in this lookup's sizes */
    u32 OutOfRangeItems; /* of them, sizes >= ArraySize (last lookup only) */
    u32 BaseIndex;
    LIST_ENTRY *ListHead; /* &HEAP.FreeLists */
    u32 *ListsInUseUlong; /* right after this structure */
    LIST_ENTRY *ListHints; /* after the bitmap: ArraySize - BaseIndex entries */
} HEAP_LIST_LOOKUP;

/* SLIST_HEADER, simplified on x64 (Next pointer, Depth, Sequence; not the packed form). */
typedef struct SLIST_HEADER {
    void *Next;
    u16 Depth;
    u16 Sequence;
#ifdef WIN7HEAP_PTR64
    u32 Pad;
#endif
} SLIST_HEADER;

typedef struct INTERLOCK_SEQ {
    u16 Depth;           /* free blocks */
    u16 FreeEntryOffset; /* first free block header - UserBlocks, in G units; 0xFFFF: none */
    u32 Sequence;
} INTERLOCK_SEQ;

struct HEAP_LOCAL_SEGMENT_INFO;

typedef struct HEAP_SUBSEGMENT {
    struct HEAP_LOCAL_SEGMENT_INFO *LocalInfo;
    struct HEAP_USERDATA_HEADER *UserBlocks;
    INTERLOCK_SEQ AggregateExchg;
    u16 BlockSize;  /* units */
    u16 Flags;
    u16 BlockCount;
    u8 SizeIndex;   /* the bucket index */
    u8 AffinityIndex;
    void *SFreeListEntry; /* link in HEAP_LOCAL_DATA.DeletedSubSegments */
    u32 Lock;
} HEAP_SUBSEGMENT;

typedef struct HEAP_USERDATA_HEADER {
    HEAP_SUBSEGMENT *SubSegment;
    void *Reserved;
    uptr SizeIndex; /* log2 of the UserBlocks block size */
    uptr Signature; /* HEAP_USERDATA_SIGNATURE */
} HEAP_USERDATA_HEADER;

typedef struct LFH_BLOCK_ZONE {
    LIST_ENTRY ListEntry; /* in LFH_HEAP.SubSegmentZones */
    u8 *FreePointer;      /* next unused HEAP_SUBSEGMENT */
    u8 *Limit;            /* end of the zone's data */
} LFH_BLOCK_ZONE;

typedef struct HEAP_BUCKET {
    u16 BlockUnits;
    u8 SizeIndex;
    u8 Flags; /* UseAffinity:1, DebugFlags:2 */
} HEAP_BUCKET;

typedef struct HEAP_BUCKET_COUNTERS {
    u32 TotalBlocks;
    u32 SubSegmentCounts;
} HEAP_BUCKET_COUNTERS;

struct HEAP_LOCAL_DATA;

typedef struct HEAP_LOCAL_SEGMENT_INFO {
    HEAP_SUBSEGMENT *Hint;
    HEAP_SUBSEGMENT *ActiveSubsegment;
    HEAP_SUBSEGMENT *CachedItems[LFH_CACHED_ITEMS];
    SLIST_HEADER SListHeader;
    HEAP_BUCKET_COUNTERS Counters;
    struct HEAP_LOCAL_DATA *LocalData;
    u32 LastOpSequence;
    u16 BucketIndex;
    u16 LastUsed;
#ifdef WIN7HEAP_PTR64
    u32 Pad[2];
#else
    u32 Pad;
#endif
} HEAP_LOCAL_SEGMENT_INFO;

struct LFH_HEAP;

typedef struct HEAP_LOCAL_DATA {
    SLIST_HEADER DeletedSubSegments;
    LFH_BLOCK_ZONE *CrtZone;
    struct LFH_HEAP *LowFragHeap;
    u32 Sequence; /* subsegments created */
#ifdef WIN7HEAP_PTR64
    u32 Pad[3];
#else
    u32 Pad;
#endif
    HEAP_LOCAL_SEGMENT_INFO SegmentInfo[LFH_BUCKETS];
} HEAP_LOCAL_DATA;

typedef struct USER_MEMORY_CACHE_ENTRY {
    SLIST_HEADER UserBlocks;
    u32 AvailableBlocks;
#ifdef WIN7HEAP_PTR64
    u32 Pad[3];
#else
    u32 Pad;
#endif
} USER_MEMORY_CACHE_ENTRY;

typedef struct HEAP_BUCKET_RUN_INFO {
    u32 Bucketmap;
    u32 MaxAllocSize;
} HEAP_BUCKET_RUN_INFO;

typedef struct LFH_HEAP {
    RTL_CRITICAL_SECTION Lock;
    LIST_ENTRY SubSegmentZones;
    uptr ZoneBlockSize;
    struct HEAP *Heap;
    u32 SegmentChange;
    u32 SegmentCreate;
    u32 SegmentInsertInFree;
    u32 SegmentDelete;
    u32 CacheAllocs;
    u32 CacheFrees;
    uptr SizeInCache;
#ifndef WIN7HEAP_PTR64
    u32 Pad;
#endif
    HEAP_BUCKET_RUN_INFO RunInfo;
    USER_MEMORY_CACHE_ENTRY UserBlockCache[12];
    HEAP_BUCKET Buckets[LFH_BUCKETS];
    HEAP_LOCAL_DATA LocalData[1]; /* LFH_LOCAL_DATA_COUNT allocated, [0] used */
} LFH_HEAP;

typedef struct EXCEPTION_RECORD {
    u32 ExceptionCode;
    u32 ExceptionFlags;
    struct EXCEPTION_RECORD *ExceptionRecord;
    void *ExceptionAddress;
    u32 NumberParameters;
    uptr ExceptionInformation[15];
} EXCEPTION_RECORD;

/* ntdll's RTL_HEAP_WALK_ENTRY, filled as ntheap.c fills it. */
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

/* ---- layout checks (Windows 7 SP1 offsets; T2 for x86, the fact sheet's NTD for x64) ---- */
#define W7_OFF(type, field) __builtin_offsetof(type, field)
#ifdef WIN7HEAP_PTR64
#define W7_CHECK(expr_x86, expr_x64) _Static_assert(expr_x64, #expr_x64)
#else
#define W7_CHECK(expr_x86, expr_x64) _Static_assert(expr_x86, #expr_x86)
#endif
W7_CHECK(sizeof(HEAP_ENTRY) == 8, sizeof(HEAP_ENTRY) == 16);
W7_CHECK(sizeof(HEAP_FREE_ENTRY) == 0x10, sizeof(HEAP_FREE_ENTRY) == 0x20);
W7_CHECK(sizeof(HEAP_VIRTUAL_ALLOC_ENTRY) == 0x20, sizeof(HEAP_VIRTUAL_ALLOC_ENTRY) == 0x40);
W7_CHECK(sizeof(HEAP_UCR_DESCRIPTOR) == 0x18, sizeof(HEAP_UCR_DESCRIPTOR) == 0x30);
W7_CHECK(sizeof(HEAP_SEGMENT) == 0x40, sizeof(HEAP_SEGMENT) == 0x70);
W7_CHECK(W7_OFF(HEAP_SEGMENT, SegmentSignature) == 0x8, W7_OFF(HEAP_SEGMENT, SegmentSignature) == 0x10);
W7_CHECK(W7_OFF(HEAP_SEGMENT, FirstEntry) == 0x24, W7_OFF(HEAP_SEGMENT, FirstEntry) == 0x40);
W7_CHECK(W7_OFF(HEAP_SEGMENT, NumberOfUnCommittedPages) == 0x2C,
         W7_OFF(HEAP_SEGMENT, NumberOfUnCommittedPages) == 0x50);
W7_CHECK(W7_OFF(HEAP_SEGMENT, UCRSegmentList) == 0x38, W7_OFF(HEAP_SEGMENT, UCRSegmentList) == 0x60);
W7_CHECK(W7_OFF(HEAP, Flags) == 0x40, W7_OFF(HEAP, Flags) == 0x70);
W7_CHECK(W7_OFF(HEAP, CompatibilityFlags) == 0x48, W7_OFF(HEAP, CompatibilityFlags) == 0x78);
W7_CHECK(W7_OFF(HEAP, EncodeFlagMask) == 0x4C, W7_OFF(HEAP, EncodeFlagMask) == 0x7C);
W7_CHECK(W7_OFF(HEAP, Encoding) == 0x50, W7_OFF(HEAP, Encoding) == 0x80);
W7_CHECK(W7_OFF(HEAP, PointerKey) == 0x58, W7_OFF(HEAP, PointerKey) == 0x90);
W7_CHECK(W7_OFF(HEAP, VirtualMemoryThreshold) == 0x60, W7_OFF(HEAP, VirtualMemoryThreshold) == 0x9C);
W7_CHECK(W7_OFF(HEAP, Signature) == 0x64, W7_OFF(HEAP, Signature) == 0xA0);
W7_CHECK(W7_OFF(HEAP, SegmentReserve) == 0x68, W7_OFF(HEAP, SegmentReserve) == 0xA8);
W7_CHECK(W7_OFF(HEAP, SegmentCommit) == 0x6C, W7_OFF(HEAP, SegmentCommit) == 0xB0);
W7_CHECK(W7_OFF(HEAP, DeCommitFreeBlockThreshold) == 0x70,
         W7_OFF(HEAP, DeCommitFreeBlockThreshold) == 0xB8);
W7_CHECK(W7_OFF(HEAP, DeCommitTotalFreeThreshold) == 0x74,
         W7_OFF(HEAP, DeCommitTotalFreeThreshold) == 0xC0);
W7_CHECK(W7_OFF(HEAP, TotalFreeSize) == 0x78, W7_OFF(HEAP, TotalFreeSize) == 0xC8);
W7_CHECK(W7_OFF(HEAP, MaximumAllocationSize) == 0x7C, W7_OFF(HEAP, MaximumAllocationSize) == 0xD0);
W7_CHECK(W7_OFF(HEAP, ProcessHeapsListIndex) == 0x80, W7_OFF(HEAP, ProcessHeapsListIndex) == 0xD8);
W7_CHECK(W7_OFF(HEAP, UCRList) == 0x90, W7_OFF(HEAP, UCRList) == 0xF8);
W7_CHECK(W7_OFF(HEAP, AlignRound) == 0x98, W7_OFF(HEAP, AlignRound) == 0x108);
W7_CHECK(W7_OFF(HEAP, VirtualAllocdBlocks) == 0xA0, W7_OFF(HEAP, VirtualAllocdBlocks) == 0x118);
W7_CHECK(W7_OFF(HEAP, SegmentList) == 0xA8, W7_OFF(HEAP, SegmentList) == 0x128);
W7_CHECK(W7_OFF(HEAP, BlocksIndex) == 0xB8, W7_OFF(HEAP, BlocksIndex) == 0x140);
W7_CHECK(W7_OFF(HEAP, UCRIndex) == 0xBC, W7_OFF(HEAP, UCRIndex) == 0x148);
W7_CHECK(W7_OFF(HEAP, FreeLists) == 0xC4, W7_OFF(HEAP, FreeLists) == 0x158);
W7_CHECK(W7_OFF(HEAP, LockVariable) == 0xCC, W7_OFF(HEAP, LockVariable) == 0x168);
W7_CHECK(W7_OFF(HEAP, CommitRoutine) == 0xD0, W7_OFF(HEAP, CommitRoutine) == 0x170);
W7_CHECK(W7_OFF(HEAP, FrontEndHeap) == 0xD4, W7_OFF(HEAP, FrontEndHeap) == 0x178);
W7_CHECK(W7_OFF(HEAP, FrontEndHeapType) == 0xDA, W7_OFF(HEAP, FrontEndHeapType) == 0x182);
W7_CHECK(W7_OFF(HEAP, Counters) == 0xDC, W7_OFF(HEAP, Counters) == 0x188);
W7_CHECK(W7_OFF(HEAP, TuningParameters) == 0x130, W7_OFF(HEAP, TuningParameters) == 0x1F8);
W7_CHECK(sizeof(HEAP) == 0x138, sizeof(HEAP) == 0x208);
W7_CHECK(sizeof(RTL_CRITICAL_SECTION) == 0x18, sizeof(RTL_CRITICAL_SECTION) == 0x28);
W7_CHECK(sizeof(HEAP_LIST_LOOKUP) == 0x24, sizeof(HEAP_LIST_LOOKUP) == 0x38);
W7_CHECK(sizeof(INTERLOCK_SEQ) == 8, sizeof(INTERLOCK_SEQ) == 8);
W7_CHECK(sizeof(HEAP_SUBSEGMENT) == 0x20, sizeof(HEAP_SUBSEGMENT) == 0x30);
W7_CHECK(W7_OFF(HEAP_SUBSEGMENT, AggregateExchg) == 0x8, W7_OFF(HEAP_SUBSEGMENT, AggregateExchg) == 0x10);
W7_CHECK(W7_OFF(HEAP_SUBSEGMENT, BlockSize) == 0x10, W7_OFF(HEAP_SUBSEGMENT, BlockSize) == 0x18);
W7_CHECK(W7_OFF(HEAP_SUBSEGMENT, BlockCount) == 0x14, W7_OFF(HEAP_SUBSEGMENT, BlockCount) == 0x1C);
W7_CHECK(W7_OFF(HEAP_SUBSEGMENT, SizeIndex) == 0x16, W7_OFF(HEAP_SUBSEGMENT, SizeIndex) == 0x1E);
W7_CHECK(W7_OFF(HEAP_SUBSEGMENT, Lock) == 0x1C, W7_OFF(HEAP_SUBSEGMENT, Lock) == 0x28);
W7_CHECK(sizeof(HEAP_USERDATA_HEADER) == 0x10, sizeof(HEAP_USERDATA_HEADER) == 0x20);
W7_CHECK(sizeof(LFH_BLOCK_ZONE) == 0x10, sizeof(LFH_BLOCK_ZONE) == 0x20);
W7_CHECK(sizeof(HEAP_BUCKET) == 4, sizeof(HEAP_BUCKET) == 4);
W7_CHECK(sizeof(HEAP_LOCAL_SEGMENT_INFO) == 0x68, sizeof(HEAP_LOCAL_SEGMENT_INFO) == 0xC0);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, ActiveSubsegment) == 0x4,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, ActiveSubsegment) == 0x8);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, CachedItems) == 0x8,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, CachedItems) == 0x10);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, SListHeader) == 0x48,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, SListHeader) == 0x90);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, Counters) == 0x50,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, Counters) == 0xA0);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, LocalData) == 0x58,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, LocalData) == 0xA8);
W7_CHECK(W7_OFF(HEAP_LOCAL_SEGMENT_INFO, BucketIndex) == 0x60,
         W7_OFF(HEAP_LOCAL_SEGMENT_INFO, BucketIndex) == 0xB4);
W7_CHECK(W7_OFF(HEAP_LOCAL_DATA, CrtZone) == 0x8, W7_OFF(HEAP_LOCAL_DATA, CrtZone) == 0x10);
W7_CHECK(W7_OFF(HEAP_LOCAL_DATA, Sequence) == 0x10, W7_OFF(HEAP_LOCAL_DATA, Sequence) == 0x20);
W7_CHECK(W7_OFF(HEAP_LOCAL_DATA, SegmentInfo) == 0x18, W7_OFF(HEAP_LOCAL_DATA, SegmentInfo) == 0x30);
W7_CHECK(sizeof(HEAP_LOCAL_DATA) == 0x3418, sizeof(HEAP_LOCAL_DATA) == 0x6030);
W7_CHECK(W7_OFF(LFH_HEAP, SubSegmentZones) == 0x18, W7_OFF(LFH_HEAP, SubSegmentZones) == 0x28);
W7_CHECK(W7_OFF(LFH_HEAP, ZoneBlockSize) == 0x20, W7_OFF(LFH_HEAP, ZoneBlockSize) == 0x38);
W7_CHECK(W7_OFF(LFH_HEAP, Heap) == 0x24, W7_OFF(LFH_HEAP, Heap) == 0x40);
W7_CHECK(W7_OFF(LFH_HEAP, SegmentCreate) == 0x2C, W7_OFF(LFH_HEAP, SegmentCreate) == 0x4C);
W7_CHECK(W7_OFF(LFH_HEAP, CacheAllocs) == 0x38, W7_OFF(LFH_HEAP, CacheAllocs) == 0x58);
W7_CHECK(W7_OFF(LFH_HEAP, RunInfo) == 0x48, W7_OFF(LFH_HEAP, RunInfo) == 0x68);
W7_CHECK(W7_OFF(LFH_HEAP, UserBlockCache) == 0x50, W7_OFF(LFH_HEAP, UserBlockCache) == 0x70);
W7_CHECK(W7_OFF(LFH_HEAP, Buckets) == 0x110, W7_OFF(LFH_HEAP, Buckets) == 0x1F0);
W7_CHECK(W7_OFF(LFH_HEAP, LocalData) == 0x310, W7_OFF(LFH_HEAP, LocalData) == 0x3F0);
W7_CHECK(sizeof(RTL_HEAP_WALK_ENTRY) == 0x1C, sizeof(RTL_HEAP_WALK_ENTRY) == 0x30);
W7_CHECK(sizeof(WIN7HEAP_KEYS) == 0x10, sizeof(WIN7HEAP_KEYS) == 0x18);

/* ---- the system interface (asm/syscalls_*.s, or native stand-ins): same as ntheap.h ---- */
u32 NTAPI NtAllocateVirtualMemory(uptr process, void **base, uptr zero_bits, uptr *size,
                                  u32 type, u32 protect);
u32 NTAPI NtFreeVirtualMemory(uptr process, void **base, uptr *size, u32 type);
u32 NTAPI NtRaiseException(EXCEPTION_RECORD *record, void *context, u32 first_chance);
u8 *NTAPI ntheap_get_peb(void); /* fs:[0x30] on x86, gs:[0x60] on x64 */

/* ---- exports: ntheap.c's set, plus the heap information pair and the key setter ---- */
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
/* HeapCompatibilityInformation: a ULONG, 2 while the LFH exists, else 0. Setting 2 creates the
 * LFH (sizes still activate by the counter rule); other values and classes fail, except
 * HeapEnableTerminationOnCorruption (always on). */
u32 NTAPI RtlQueryHeapInformation(void *heap, u32 info_class, void *info, uptr length,
                                  uptr *return_length);
u32 NTAPI RtlSetHeapInformation(void *heap, u32 info_class, void *info, uptr length);
/* Writes the WIN7HEAP_KEYS record at PEB + WIN7HEAP_KEYS_PEB_OFFSET (STATUS_UNSUCCESSFUL
 * without a PEB). */
u32 NTAPI Win7HeapSetKeys(u32 encoding, uptr lfh_key, uptr pointer_key);

#endif
