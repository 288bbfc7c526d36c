"""Kernel objects of an emulated process: handles, and a sandboxed object namespace.

Every handle a system call hands out names an object in the process's :class:`ObjectManager`:
files (host files the sandbox lets the program read, its standard streams, directories),
sections (an image or an NLS file ready to map), and the synchronisation objects and tokens
Wine's start-up creates. Handles are multiples of 4, as on Windows.

The namespace is the sandbox. A name the program opens is normalised (``\\??\\C:\\a\\..\\B`` ->
``c:\\b``) and looked up among the entries the process was given: its own image, the files of
the Wine DLL and NLS directories (listed once, by name: nothing under them but those files), and
files the user maps in with :meth:`Namespace.add_file`. Every other name answers
STATUS_OBJECT_NAME_NOT_FOUND, and no host path is ever built from a name the program chose.
Those files are opened read-only. Files the program creates itself (a temporary file, a file
to map: CREATE_NEW / CREATE_ALWAYS in a directory of the namespace) are :class:`MemoryFile`s:
writable, kept in host memory only, gone with the process; no host file is ever written.
Data the program writes to its standard streams goes to the captured stdout/stderr (bounded:
``emu.nt.output``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from emu.errors import NtStatusError
from emu.nt.output import OutputCapture
from emu.win.layouts import UNICODE_STRING
from emu.win.ntdefs import NtStatus
from loader.upcase import name_key, names_equal

if TYPE_CHECKING:
    from emu.cpu.shared import SharedMemory
    from emu.nt.kernel import Kernel


Status = NtStatus  # the object calls answer codes declared once in emu.win.ntdefs


FILE_READ_DATA, FILE_EXECUTE = 0x1, 0x20
GENERIC_READ, GENERIC_EXECUTE = 0x80000000, 0x20000000
MAXIMUM_ALLOWED = 0x02000000
ALL_ACCESS = 0x1FFFFF  # what a handle gets when nothing narrower is known

# OBJECT_ATTRIBUTES.Attributes
OBJ_OPENIF, OBJ_CASE_INSENSITIVE = 0x80, 0x40

# ACCESS_MASK bits that ask to change a file
FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_WRITE_EA = 0x2, 0x4, 0x10
FILE_WRITE_ATTRIBUTES, DELETE, WRITE_DAC, WRITE_OWNER = 0x100, 0x10000, 0x40000, 0x80000
GENERIC_WRITE, GENERIC_ALL = 0x40000000, 0x10000000
WRITE_ACCESS = (
    FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | FILE_WRITE_EA
    | FILE_WRITE_ATTRIBUTES
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
    | GENERIC_WRITE
    | GENERIC_ALL
)

# OBJECT_ATTRIBUTES: {ULONG Length; HANDLE RootDirectory; PUNICODE_STRING ObjectName;
# ULONG Attributes; ...}
_OA_ROOT = {4: 4, 8: 8}
_OA_NAME = {4: 8, 8: 16}
_OA_ATTRIBUTES = {4: 12, 8: 24}

_DOS_PREFIXES = ("\\??\\", "\\dosdevices\\", "\\global??\\")


def file_rights(desired: int) -> int:
    """A file open's DesiredAccess with the generic rights mapped to the specific ones
    (FILE_GENERIC_READ, FILE_GENERIC_EXECUTE, FILE_ALL_ACCESS)."""
    rights = desired & 0x01FFFFFF & ~MAXIMUM_ALLOWED
    if desired & GENERIC_READ:
        rights |= 0x120089
    if desired & GENERIC_EXECUTE:
        rights |= 0x1200A0
    if desired & GENERIC_WRITE:
        rights |= 0x120116  # FILE_GENERIC_WRITE
    if desired & (GENERIC_ALL | MAXIMUM_ALLOWED):
        rights |= 0x1F01FF
    return rights


def normalize_nt_path(name: str) -> str | None:
    """``\\??\\C:\\Windows\\.\\System32\\x.DLL`` -> ``c:\\windows\\system32\\x.dll``.

    Only drive paths are names in this namespace; anything else (devices, UNC, named objects,
    a ``..`` climbing above the drive) is None, i.e. not found."""
    text = name_key(name.replace("/", "\\"))  # Windows' upcase rules (loader.upcase)
    for prefix in _DOS_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if len(text) < 2 or text[1] != ":" or not "a" <= text[0] <= "z":  # drive letters are ASCII
        return None
    parts: list[str] = []
    for part in text[2:].split("\\"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        if any(c in part for c in '<>"|?*\0') or ":" in part:
            return None  # wildcards and alternate data streams are not names of files here
        parts.append(part.rstrip(" ."))
    return text[:2] + "\\" + "\\".join(parts)


# ---------------------------------------------------------------------------------- objects
@dataclass(eq=False)  # by identity: two threads (or mutants) with equal fields differ
class KernelObject:
    kind: str
    name: str = ""


MAX_CREATED_FILE = 64 << 20  # bytes a created file may hold (host memory): STATUS_DISK_FULL


@dataclass(eq=False)
class MemoryFile:
    """A file the program created: its bytes live in host memory only (never on disk)."""

    data: bytearray = field(default_factory=bytearray)
    delete_pending: bool = False  # deleted when its last handle closes


@dataclass
class FileObject(KernelObject):
    """An open file: a host file (read-only), a file the program created (``memory``,
    writable), a standard stream, or a directory."""

    host_path: Path | None = None
    stream: str | None = None  # "stdin", "stdout", "stderr"
    directory: bool = False
    position: int = 0
    access: int = FILE_READ_DATA  # the specific rights the open granted (generic ones mapped)
    memory: MemoryFile | None = None
    delete_on_close: bool = False  # FILE_DELETE_ON_CLOSE
    _data: bytes | None = field(default=None, repr=False)

    def data(self) -> bytes:
        if self.memory is not None:
            return bytes(self.memory.data)
        if self._data is None:
            self._data = self.host_path.read_bytes() if self.host_path else b""
        return self._data

    @property
    def size(self) -> int:
        if self.memory is not None:
            return len(self.memory.data)
        if self.host_path is not None:
            return self.host_path.stat().st_size
        return 0

    @property
    def is_file(self) -> bool:
        """A file with contents (a host file or a created one): not a stream or directory."""
        return self.host_path is not None or self.memory is not None

    @property
    def file_id(self) -> int:
        """A stable 64-bit id (FileInternalInformation / FileIdInformation)."""
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:8], "little") | 1


@dataclass
class SectionObject(KernelObject):
    """A section: an image (SEC_IMAGE), a file's data, or pagefile-backed memory.

    ``protection`` is its SectionPageProtection, ``attributes`` what NtQuerySection reports
    (SEC_FILE, SEC_IMAGE, SEC_COMMIT, SEC_RESERVE, SEC_NOCACHE...).

    ``memory`` holds a data section's bytes, which its shared views show (``emu.cpu.shared``;
    made by the first view, None for images and where the host cannot share). The section
    drops it when its last handle and its last view are gone (``drop_memory_if_unused``):
    the memfd closes then, unless a snapshot still holds it to put it back."""

    file: FileObject | None = None
    image: bool = False
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    protection: int = 0x02  # PAGE_READONLY
    attributes: int = 0
    memory: SharedMemory | None = field(default=None, repr=False)

    @property
    def views(self) -> int:
        """How many views of the section are mapped."""
        return len(self.extra.get("view_offsets", ()))

    @property
    def file_key(self) -> str | None:
        """Identity of the backing file (two sections of one file share it)."""
        if self.file is None:
            return None
        if self.file.memory is not None:
            return f"<created>{self.file.name}#{id(self.file.memory):x}"
        if self.file.host_path is None:
            return None
        return str(self.file.host_path.resolve())


# ---------------------------------------------------------------------------------- namespace
@dataclass(frozen=True)
class NamespaceEntry:
    path: str  # normalised Windows path: "c:\\windows\\system32\\kernel32.dll"
    display: str  # as given: "C:\\windows\\system32\\kernel32.dll"
    host_path: Path | None  # None for a directory or a created file
    memory: MemoryFile | None = None  # a file the program created

    @property
    def directory(self) -> bool:
        return self.host_path is None and self.memory is None


class Namespace:
    """The names a program may open, each bound to one host file given explicitly."""

    def __init__(self) -> None:
        self._entries: dict[str, NamespaceEntry] = {}
        self._dirs: set[str] = {"c:\\"}
        self._created: dict[str, MemoryFile] = {}  # files the program made, by normalised name

    def add_file(self, windows_path: str, host_path: str | Path) -> str:
        """Let the program open ``windows_path`` (``C:\\data\\in.txt``), read-only, with the
        contents of host file ``host_path``. Returns the normalised name."""
        key = normalize_nt_path(windows_path)
        if key is None or key.endswith("\\"):
            raise ValueError(f"{windows_path!r} is not a drive path like C:\\dir\\file")
        host = Path(host_path).resolve()
        if not host.is_file():
            raise FileNotFoundError(host)
        self._entries[key] = NamespaceEntry(key, windows_path, host)
        parts = key.split("\\")  # ["c:", "dir", "file"]
        self._dirs.add(parts[0] + "\\")
        self._dirs.update("\\".join(parts[:i]) for i in range(2, len(parts)))
        return key

    def add_directory_files(
        self, windows_dir: str, host_dir: str | Path, pattern: str = "*"
    ) -> list[str]:
        """Map every regular file directly in ``host_dir`` matching ``pattern`` (listed now,
        by name) under ``windows_dir``. Subdirectories are not entered."""
        base = Path(host_dir)
        added = []
        for host in sorted(base.glob(pattern)):
            if host.is_file() and not host.name.startswith("."):
                added.append(self.add_file(f"{windows_dir.rstrip(chr(92))}\\{host.name}", host))
        key = normalize_nt_path(windows_dir)
        if key:
            self._dirs.add(key)
        return added

    def create(self, name: str) -> NamespaceEntry | None:
        """A new empty file ``name`` made by the program, in memory; None when its directory
        is not in the namespace or the name is taken."""
        key = normalize_nt_path(name)
        if key is None or key.endswith("\\") or self.lookup(name) is not None:
            return None
        parent = key.rsplit("\\", 1)[0]
        if parent not in self._dirs and parent + "\\" not in self._dirs:
            return None
        memory = self._created[key] = MemoryFile()
        return NamespaceEntry(key, name, None, memory)

    def remove_created(self, memory: MemoryFile) -> None:
        """Forget a created file (deleted: its last handle closed with a delete pending)."""
        for key in [key for key, m in self._created.items() if m is memory]:
            del self._created[key]

    def lookup(self, name: str) -> NamespaceEntry | None:
        key = normalize_nt_path(name)
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        memory = self._created.get(key)
        if memory is not None:
            return NamespaceEntry(key, name, None, memory)
        if key in self._dirs or key.rstrip("\\") in self._dirs:
            return NamespaceEntry(key, name, None)
        return None

    def names(self) -> list[str]:
        return sorted(self._entries)


# ---------------------------------------------------------------------------------- manager
@dataclass(frozen=True)
class MainImage:
    """The program's image, as NtQueryInformationProcess describes it."""

    image: Any  # loader.peimage.PeImage
    base: int
    file_size: int
    windows_path: str


FIRST_HANDLE = 0x40
STD_HANDLES = {"stdin": 0x10, "stdout": 0x14, "stderr": 0x18}


_Object = TypeVar("_Object", bound=KernelObject)


class ObjectManager:
    """Handles, the sandboxed namespace, and what the program wrote to stdout/stderr."""

    def __init__(self) -> None:
        self.namespace = Namespace()
        self._handles: dict[int, KernelObject] = {}
        self._next = FIRST_HANDLE
        self._access: dict[int, int] = {}
        self.named: dict[tuple[str, str], KernelObject] = {}  # (directory, name) -> object
        # what the program writes: bounded in memory, optionally spilled (emu.nt.output)
        self.stdout = OutputCapture()
        self.stderr = OutputCapture()
        self.stdin = b""
        self.denied: list[tuple[str, str]] = []  # (name, why) of every refused open
        for stream, handle in STD_HANDLES.items():
            self._handles[handle] = FileObject("file", f"<{stream}>", stream=stream)
        # what the section and information calls serve (set by emu.load.program)
        self.nls_dir: Path | None = None
        self.main_image: MainImage | None = None
        self.nls_views: dict[str, tuple[int, int]] = {}  # NLS file -> (address, size)
        self.image_views: dict[int, Any] = {}  # base -> Module of each mapped image view
        # what NtSetInformationProcess changed: PROCESSINFOCLASS -> the value as set
        self.process_settings: dict[int, bytes] = {}

    def insert(self, obj: KernelObject, access: int = ALL_ACCESS) -> int:
        """A new handle to ``obj`` granting ``access`` (the specific rights)."""
        handle = self._next
        self._next += 4
        self._handles[handle] = obj
        self._access[handle] = access
        return handle

    def access(self, handle: int) -> int:
        """The rights ``handle`` was granted."""
        return self._access.get(handle, ALL_ACCESS)

    # named objects (\BaseNamedObjects, in this process only: nothing outside the sandbox)
    def find_named(self, directory: str, name: str, case_insensitive: bool) -> KernelObject | None:
        """The object named ``name`` in ``directory`` while a handle to it is open."""
        if case_insensitive:
            for (d, n), obj in self.named.items():
                if d == directory and names_equal(n, name):
                    return obj
            return None
        return self.named.get((directory, name))

    def add_named(self, directory: str, name: str, obj: KernelObject) -> None:
        self.named[(directory, name)] = obj

    def get(self, handle: int, kind: type[_Object]) -> _Object:
        """The object behind ``handle``: STATUS_INVALID_HANDLE if there is none,
        STATUS_OBJECT_TYPE_MISMATCH if it is not a ``kind``."""
        obj = self._handles.get(handle)
        if obj is None:
            raise NtStatusError(Status.INVALID_HANDLE, f"handle 0x{handle:x}")
        if not isinstance(obj, kind):
            raise NtStatusError(Status.OBJECT_TYPE_MISMATCH, f"handle 0x{handle:x} is a {obj.kind}")
        return obj

    def close(self, handle: int) -> KernelObject:
        obj = self._handles.get(handle)
        if obj is None:
            raise NtStatusError(Status.INVALID_HANDLE, f"handle 0x{handle:x}")
        if handle in STD_HANDLES.values():
            return obj  # the standard streams stay usable, as console handles do
        del self._handles[handle]
        self._access.pop(handle, None)
        if isinstance(obj, FileObject) and obj.memory is not None:
            memory = obj.memory
            memory.delete_pending |= obj.delete_on_close
            still_open = any(
                isinstance(o, FileObject) and o.memory is memory for o in self._handles.values()
            )
            if memory.delete_pending and not still_open:
                self.namespace.remove_created(memory)
        if self.named and not any(o is obj for o in self._handles.values()):
            # a name lasts while a handle is open (views keep the object, not its name)
            for key in [key for key, o in self.named.items() if o is obj]:
                del self.named[key]
        if isinstance(obj, SectionObject):
            self.drop_memory_if_unused(obj)
        return obj

    def drop_memory_if_unused(self, section: SectionObject) -> None:
        """A section's bytes go with its last handle and its last view (Windows deletes the
        section object then): the section lets its shared memory go."""
        if section.memory is None or section.views:
            return
        if not any(o is section for o in self._handles.values()):
            section.memory = None  # closed once no snapshot holds it either

    def duplicate(self, handle: int, access: int | None = None) -> int:
        """Another handle to the same object, with ``access`` (None: the same rights)."""
        obj = self.get(handle, KernelObject)
        return self.insert(obj, self.access(handle) if access is None else access)

    def handles(self) -> dict[int, KernelObject]:
        return dict(self._handles)

    def write_stream(self, stream: str, data: bytes) -> None:
        (self.stdout if stream == "stdout" else self.stderr).write(data)


# ---------------------------------------------------------------------------------- helpers
def read_u16(k: Kernel, addr: int) -> int:
    return int(struct.unpack("<H", k.read(addr, 2))[0])


def read_u32(k: Kernel, addr: int) -> int:
    return int(struct.unpack("<I", k.read(addr, 4))[0])


def read_unicode_string(k: Kernel, addr: int) -> str:
    """A UNICODE_STRING's text (probed reads; at most 32 K characters)."""
    arch = k.arch
    length = read_u16(k, addr + UNICODE_STRING.offset(arch, "Length"))
    buf = k.read_ptr(addr + UNICODE_STRING.offset(arch, "Buffer"))
    if not length:
        return ""
    return k.read(buf, min(length, 0xFFFE)).decode("utf-16-le", errors="replace")


def object_name(k: Kernel, object_attributes: int) -> tuple[int, str]:
    """(RootDirectory, ObjectName) of an OBJECT_ATTRIBUTES."""
    if not object_attributes:
        raise NtStatusError(Status.INVALID_PARAMETER, "no OBJECT_ATTRIBUTES")
    ps = k.arch.ptr_size
    root = k.read_ptr(object_attributes + _OA_ROOT[ps])
    name_ptr = k.read_ptr(object_attributes + _OA_NAME[ps])
    return root, read_unicode_string(k, name_ptr) if name_ptr else ""


def object_attributes_flags(k: Kernel, object_attributes: int) -> int:
    """OBJECT_ATTRIBUTES.Attributes (OBJ_CASE_INSENSITIVE, OBJ_OPENIF, ...)."""
    return read_u32(k, object_attributes + _OA_ATTRIBUTES[k.arch.ptr_size])


def write_io_status(k: Kernel, iosb: int, status: int, information: int) -> None:
    """IO_STATUS_BLOCK {NTSTATUS/PVOID Status; ULONG_PTR Information}."""
    if iosb:
        k.write_ptr(iosb, status & 0xFFFFFFFF)
        k.write_ptr(iosb + k.arch.ptr_size, information)


def put_buffer(
    k: Kernel, buf: int, length: int, data: bytes, return_length: int = 0, *, size_t: bool = False
) -> None:
    """Copy an information block out (INFO_LENGTH_MISMATCH when it does not fit); the needed
    size goes to ``return_length`` (a ULONG, or a SIZE_T where the prototype says PSIZE_T)."""
    if return_length:
        if size_t:
            k.write_ptr(return_length, len(data))
        else:
            k.write_u32(return_length, len(data))
    if length < len(data):
        raise NtStatusError(
            NtStatus.INFO_LENGTH_MISMATCH, f"buffer of {length} bytes, {len(data)} needed"
        )
    k.write(buf, data)
