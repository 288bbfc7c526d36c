"""Host memory that several places of the address space show at once: a section's pages.

On Windows every view of a pagefile-backed or file-backed section (except copy-on-write
views) maps the same physical pages, so a write through one view is seen through all of them.
Here a section's bytes live in a ``SharedMemory``: a Linux memfd (``memfd_create``). A shared
view is that file mapped ``MAP_SHARED | MAP_FIXED`` over the host pages that back the view's
addresses in the CPU's backing window (``Cpu.share``); Unicorn keeps the same host pointer, so
nothing is remapped in Unicorn. Unmapping puts anonymous private memory back (``Cpu.unshare``).

Where memfd or a fixed mapping is not available (not Linux, or the call fails) ``available()``
is False and the kernel keeps its older semantics: each view a copy of the section's bytes.

Lifetime: the memfd is closed when the ``SharedMemory`` object is garbage, i.e. when neither
the section object (its handles, its views) nor a snapshot that may put it back holds it.
Pages mapped into the address space keep the file alive on their own until they are unmapped.
A copy (``copy.deepcopy`` by snapshots) is the object itself: its bytes are saved and
restored explicitly (``save``/``load``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
import weakref
from typing import Any

# mmap(2) flags (Linux, asm-generic/mman-common.h; the same values on x86 and arm64)
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x1, 0x2, 0x10, 0x20, 0x4000
PROT_READ, PROT_WRITE = 0x1, 0x2
_MAP_FAILED = ctypes.c_void_p(-1).value
SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x1, 0x2  # linux/falloc.h

_libc: Any = None
_fallocate: Any = None
_checked = False


def _load_libc() -> Any:
    """libc's mmap with its real prototype (Python's mmap module cannot map at an address)."""
    global _libc, _checked
    if _checked:
        return _libc
    _checked = True
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.mmap
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_long]  # fmt: skip
    global _fallocate
    _fallocate = getattr(libc, "fallocate", None)
    if _fallocate is not None:
        _fallocate.restype = ctypes.c_int
        _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    _libc = fn
    return fn


def available() -> bool:
    """Whether views can share host memory here (Linux with memfd_create and libc's mmap)."""
    return os.environ.get("HEAPEMU_SHARED_VIEWS", "1") != "0" and _load_libc() is not None


def map_fixed(addr: int, size: int, fd: int, offset: int) -> None:
    """Map ``fd``'s [offset, offset+size) shared and read-write at host address ``addr``
    (``fd`` -1: fresh anonymous private memory, zero, not counted against overcommit),
    replacing what was mapped there. OSError when the host refuses."""
    mmap_fn = _load_libc()
    if mmap_fn is None:
        raise OSError(errno.ENOSYS, "no fixed mappings on this host")
    if fd < 0:
        flags, offset = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, 0
    else:
        flags = MAP_FIXED | MAP_SHARED
    got = mmap_fn(addr, size, PROT_READ | PROT_WRITE, flags, fd, offset)
    if got == _MAP_FAILED or got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap at 0x{addr:x}+0x{size:x}: {os.strerror(err)}")


class SharedMemory:
    """A section's bytes in a memfd, ``size`` bytes (page-rounded), zero where never written.

    ``read``/``write`` reach the bytes without a mapping (a view mapped later, a copy-on-write
    view's private copy, a snapshot); ``Cpu.share`` maps them into the address space."""

    def __init__(self, size: int, name: str = "heapemu-section"):
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self._finalizer = weakref.finalize(self, os.close, self.fd)
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the memfd now (pages still mapped keep the file until they are unmapped)."""
        self._finalizer()

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (zeros past the end)."""
        data = os.pread(self.fd, size, offset) if offset < self.size else b""
        return data + bytes(size - len(data))

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def extents(self) -> list[tuple[int, int]]:
        """(offset, size) of the parts of the file that hold data (holes read zero)."""
        out, pos = [], 0
        while pos < self.size:
            try:
                start = os.lseek(self.fd, pos, SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data past pos
                    break
                return [(0, self.size)]  # no SEEK_DATA: all of it
            end = min(os.lseek(self.fd, start, SEEK_HOLE), self.size)
            out.append((start, end - start))
            pos = end
        return out

    def save(self) -> list[tuple[int, bytes]]:
        """The bytes that are not holes, as (offset, bytes): what ``load`` puts back."""
        return [(offset, self.read(offset, size)) for offset, size in self.extents()]

    def zero(self, offset: int, size: int) -> None:
        """Make [offset, offset+size) zero, giving its pages back to the host (a hole) where
        it can. The file keeps its size: truncating it would make mapped pages past the new
        end fault (SIGBUS) for as long as it is short."""
        if _fallocate is not None and size > 0:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if _fallocate(self.fd, mode, offset, size) == 0:
                return
        for start in range(offset, offset + size, 1 << 20):
            self.write(start, bytes(min(1 << 20, offset + size - start)))

    def load(self, image: list[tuple[int, bytes]]) -> None:
        """Make the contents ``image`` (from ``save``), zero elsewhere. Mappings of the file
        see the new bytes at once."""
        for offset, size in self.extents():
            self.zero(offset, size)
        for offset, data in image:
            self.write(offset, data)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedMemory:
        return self  # one file whatever copies the bookkeeping: save/load carry its bytes

    def __copy__(self) -> SharedMemory:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a SharedMemory (an open memfd) cannot be pickled")


__all__ = ["SharedMemory", "available", "map_fixed"]
