"""File system calls over the sandboxed namespace of ``emu.nt.objects``.

Opening resolves the name in the process's namespace only: a name that is not there is
STATUS_OBJECT_NAME_NOT_FOUND (and is remembered in ``ObjectManager.denied``); a file that is
there opens read-only (asking for write access is STATUS_ACCESS_DENIED). A program may create
files of its own in the namespace's directories (FILE_CREATE, FILE_OPEN_IF, FILE_OVERWRITE_IF,
FILE_SUPERSEDE): they live in memory (``emu.nt.objects.MemoryFile``), take reads, writes, a
new end of file and deletion, and back sections like any file. The standard handles are pipes
into heapemu: NtWriteFile on them is captured (``ObjectManager.stdout``/``stderr``).
"""

from __future__ import annotations

import struct

from emu.errors import NtStatusError
from emu.nt.kernel import ACCESS_MASK, HANDLE, PHANDLE, PULONG, PVOID, ULONG, Kernel, syscall
from emu.nt.objects import (
    FILE_APPEND_DATA,
    FILE_WRITE_DATA,
    MAX_CREATED_FILE,
    WRITE_ACCESS,
    FileObject,
    NamespaceEntry,
    Status,
    file_rights,
    object_name,
    put_buffer,
    write_io_status,
)
from emu.nt.output import preview
from emu.win.ntdefs import (
    FILE_INFORMATION_CLASS,
    FS_INFORMATION_CLASS,
)

FILE_DIRECTORY_FILE, FILE_NON_DIRECTORY_FILE = 0x1, 0x40
WRITE_CHUNK = 1 << 20  # NtWriteFile copies at most this much at a time
FILE_SUPERSEDE, FILE_OPEN, FILE_CREATE, FILE_OPEN_IF, FILE_OVERWRITE, FILE_OVERWRITE_IF = range(6)
# IO_STATUS_BLOCK.Information after an open
FILE_SUPERSEDED, FILE_OPENED, FILE_CREATED, FILE_OVERWRITTEN = 0, 1, 2, 3
FILE_DELETE_ON_CLOSE = 0x1000
FILE_WRITE_TO_END_OF_FILE = 0xFFFFFFFF  # ByteOffset LowPart with HighPart -1: append
FILE_ATTRIBUTE_READONLY, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_ARCHIVE = 0x1, 0x10, 0x20
FILE_DEVICE_DISK, FILE_DEVICE_NAMED_PIPE = 0x7, 0x11
FILE_USE_FILE_POINTER_POSITION = 0xFFFFFFFE  # ByteOffset.HighPart meaning "the current position"
FILE_TIME = 133_000_000_000_000_000  # every file's times: 2022-06-18, fixed for reproducibility

# FILE_INFORMATION_CLASS / FS_INFORMATION_CLASS values used here


def _open(
    k: Kernel,
    FileHandle: int,
    DesiredAccess: int,
    ObjectAttributes: int,
    IoStatusBlock: int,
    options: int,
    disposition: int,
) -> int:
    objects = k.proc.objects
    root, name = object_name(k, ObjectAttributes)
    if root:
        parent = objects.get(root, FileObject)
        assert isinstance(parent, FileObject)
        name = f"{parent.name.rstrip(chr(92))}\\{name}"
    k.details.update(name=name)
    entry = objects.namespace.lookup(name)
    information = FILE_OPENED
    creates = disposition in (FILE_CREATE, FILE_OPEN_IF, FILE_OVERWRITE_IF, FILE_SUPERSEDE)
    if entry is None and creates and not options & FILE_DIRECTORY_FILE:
        entry = objects.namespace.create(name)
        information = FILE_CREATED
    if entry is None:
        objects.denied.append((name, "not in the sandbox"))
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, f"{name} is not in the sandbox")
    if entry.memory is not None:
        return _open_created(k, FileHandle, DesiredAccess, IoStatusBlock, options, disposition,
                             entry, information)  # fmt: skip
    is_dir = entry.directory
    if is_dir and options & FILE_NON_DIRECTORY_FILE:
        raise NtStatusError(Status.FILE_IS_A_DIRECTORY, name)
    if not is_dir and options & FILE_DIRECTORY_FILE:
        raise NtStatusError(Status.NOT_A_DIRECTORY, name)
    if disposition == FILE_CREATE:
        raise NtStatusError(Status.OBJECT_NAME_COLLISION, name)
    if DesiredAccess & WRITE_ACCESS or disposition in (
        FILE_SUPERSEDE,
        FILE_OVERWRITE,
        FILE_OVERWRITE_IF,
    ):
        objects.denied.append((name, f"write access 0x{DesiredAccess:x}"))
        raise NtStatusError(Status.ACCESS_DENIED, f"{name} is read-only in the sandbox")
    obj = FileObject(
        "file", entry.path, host_path=entry.host_path, directory=is_dir,
        access=file_rights(DesiredAccess),
    )  # fmt: skip
    handle = objects.insert(obj)
    k.write_ptr(FileHandle, handle)
    write_io_status(k, IoStatusBlock, 0, FILE_OPENED)
    k.details.update(handle=handle, host=str(entry.host_path or "<directory>"))
    return Status.SUCCESS


def _open_created(
    k: Kernel,
    FileHandle: int,
    DesiredAccess: int,
    IoStatusBlock: int,
    options: int,
    disposition: int,
    entry: NamespaceEntry,
    information: int,
) -> int:
    """Open (or create) a file the program made: any access, its dispositions as Windows."""
    memory = entry.memory
    assert memory is not None
    if options & FILE_DIRECTORY_FILE:
        raise NtStatusError(Status.NOT_A_DIRECTORY, entry.path)
    if information != FILE_CREATED:
        if memory.delete_pending:
            raise NtStatusError(Status.DELETE_PENDING, entry.path)
        if disposition == FILE_CREATE:
            raise NtStatusError(Status.OBJECT_NAME_COLLISION, entry.path)
        if disposition in (FILE_OVERWRITE, FILE_OVERWRITE_IF, FILE_SUPERSEDE):
            del memory.data[:]
            information = FILE_SUPERSEDED if disposition == FILE_SUPERSEDE else FILE_OVERWRITTEN
    obj = FileObject(
        "file", entry.path, access=file_rights(DesiredAccess), memory=memory,
        delete_on_close=bool(options & FILE_DELETE_ON_CLOSE),
    )  # fmt: skip
    handle = k.proc.objects.insert(obj)
    k.write_ptr(FileHandle, handle)
    write_io_status(k, IoStatusBlock, 0, information)
    k.details.update(handle=handle, host="<created>", information=information)
    return Status.SUCCESS


@syscall
def NtOpenFile(
    k: Kernel,
    FileHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    IoStatusBlock: PVOID,
    ShareAccess: ULONG,
    OpenOptions: ULONG,
) -> int:
    return _open(k, FileHandle, DesiredAccess, ObjectAttributes, IoStatusBlock, OpenOptions, 1)


@syscall
def NtCreateFile(
    k: Kernel,
    FileHandle: PHANDLE,
    DesiredAccess: ACCESS_MASK,
    ObjectAttributes: PVOID,
    IoStatusBlock: PVOID,
    AllocationSize: PVOID,
    FileAttributes: ULONG,
    ShareAccess: ULONG,
    CreateDisposition: ULONG,
    CreateOptions: ULONG,
    EaBuffer: PVOID,
    EaLength: ULONG,
) -> int:
    return _open(
        k,
        FileHandle,
        DesiredAccess,
        ObjectAttributes,
        IoStatusBlock,
        CreateOptions,
        CreateDisposition,
    )


@syscall
def NtReadFile(
    k: Kernel,
    FileHandle: HANDLE,
    Event: HANDLE,
    ApcRoutine: PVOID,
    ApcContext: PVOID,
    IoStatusBlock: PVOID,
    Buffer: PVOID,
    Length: ULONG,
    ByteOffset: PVOID,
    Key: PULONG,
) -> int:
    f = k.proc.objects.get(FileHandle, FileObject)
    if f.directory:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST, "read of a directory")
    data = k.proc.objects.stdin if f.stream == "stdin" else f.data()
    offset = f.position
    if ByteOffset and f.stream is None:
        low, high = struct.unpack("<II", k.read(ByteOffset, 8))
        if high != FILE_USE_FILE_POINTER_POSITION:
            offset = low | high << 32
            if offset >> 63:
                # a negative LARGE_INTEGER other than the current-position marker
                raise NtStatusError(Status.INVALID_PARAMETER, f"ByteOffset 0x{offset:x}")
    if f.stream is not None:
        k.proc.objects.stdin = b""  # a pipe: what is read is gone
        offset = 0
    if offset >= len(data) and Length:
        write_io_status(k, IoStatusBlock, Status.END_OF_FILE, 0)
        return Status.END_OF_FILE
    chunk = data[offset : offset + Length]
    k.write(Buffer, chunk)
    f.position = offset + len(chunk)
    write_io_status(k, IoStatusBlock, 0, len(chunk))
    k.details.update(offset=offset, read=len(chunk))
    return Status.SUCCESS


@syscall
def NtWriteFile(
    k: Kernel,
    FileHandle: HANDLE,
    Event: HANDLE,
    ApcRoutine: PVOID,
    ApcContext: PVOID,
    IoStatusBlock: PVOID,
    Buffer: PVOID,
    Length: ULONG,
    ByteOffset: PVOID,
    Key: PULONG,
) -> int:
    """The standard output and error streams and the files the program created take writes;
    the sandbox's other files are read-only."""
    f = k.proc.objects.get(FileHandle, FileObject)
    if f.memory is not None:
        return _write_created(k, f, IoStatusBlock, Buffer, Length, ByteOffset)
    if f.stream not in ("stdout", "stderr"):
        raise NtStatusError(Status.ACCESS_DENIED, f"{f.name} is not writable in the sandbox")
    k.probe(Buffer, Length)  # the whole buffer first, as ProbeForRead: all or nothing
    # the record keeps a preview; the data is captured once, in the stream, and copied a
    # chunk at a time (a huge write never sits in host memory whole)
    k.details.update(stream=f.stream, bytes=Length, text="")
    for offset in range(0, Length, WRITE_CHUNK):
        chunk = k.proc.read(Buffer + offset, min(WRITE_CHUNK, Length - offset))
        k.proc.objects.write_stream(f.stream, chunk)
        if not offset:
            k.details["text"] = preview(chunk)
    write_io_status(k, IoStatusBlock, 0, Length)
    return Status.SUCCESS


def _write_created(
    k: Kernel, f: FileObject, IoStatusBlock: int, Buffer: int, Length: int, ByteOffset: int
) -> int:
    memory = f.memory
    assert memory is not None
    if not f.access & (FILE_WRITE_DATA | FILE_APPEND_DATA):
        raise NtStatusError(Status.ACCESS_DENIED, f"{f.name} was not opened for writing")
    offset = f.position
    if ByteOffset:
        low, high = struct.unpack("<II", k.read(ByteOffset, 8))
        if (low, high) == (FILE_WRITE_TO_END_OF_FILE, 0xFFFFFFFF):
            offset = len(memory.data)
        elif high != FILE_USE_FILE_POINTER_POSITION:
            offset = low | high << 32
            if offset >> 63:
                raise NtStatusError(Status.INVALID_PARAMETER, f"ByteOffset 0x{offset:x}")
    if not f.access & FILE_WRITE_DATA:  # append-only access writes at the end
        offset = len(memory.data)
    if offset + Length > MAX_CREATED_FILE:
        raise NtStatusError(Status.DISK_FULL, f"{f.name} would pass 0x{MAX_CREATED_FILE:x}")
    data = k.read(Buffer, Length)
    if offset > len(memory.data):
        memory.data.extend(bytes(offset - len(memory.data)))
    memory.data[offset : offset + Length] = data
    f.position = offset + Length
    write_io_status(k, IoStatusBlock, 0, Length)
    k.details.update(offset=offset, written=Length)
    return Status.SUCCESS


@syscall
def NtFlushBuffersFile(k: Kernel, FileHandle: HANDLE, IoStatusBlock: PVOID) -> int:
    k.proc.objects.get(FileHandle, FileObject)
    write_io_status(k, IoStatusBlock, 0, 0)
    return Status.SUCCESS


def _attributes(f: FileObject) -> int:
    if f.memory is not None:
        return FILE_ATTRIBUTE_ARCHIVE
    return FILE_ATTRIBUTE_DIRECTORY if f.directory else FILE_ATTRIBUTE_READONLY


def _basic_info(attributes: int) -> bytes:
    return struct.pack("<qqqqI4x", FILE_TIME, FILE_TIME, FILE_TIME, FILE_TIME, attributes)


def _file_info(k: Kernel, f: FileObject, cls: int) -> bytes:
    size = f.size
    if cls == FILE_INFORMATION_CLASS.FileBasicInformation:
        return _basic_info(_attributes(f))
    if cls == FILE_INFORMATION_CLASS.FileStandardInformation:
        alloc = (size + 0xFFF) & ~0xFFF
        return struct.pack("<qqIBB2x", alloc, size, 1, 0, int(f.directory))
    if cls == FILE_INFORMATION_CLASS.FileInternalInformation:
        return struct.pack("<Q", f.file_id)
    if cls == FILE_INFORMATION_CLASS.FilePositionInformation:
        return struct.pack("<q", f.position)
    if cls == FILE_INFORMATION_CLASS.FileIdInformation:
        return struct.pack("<QQQ", 0x4845_4150, f.file_id, 0)  # VolumeSerialNumber "HEAP"
    if cls == FILE_INFORMATION_CLASS.FileNetworkOpenInformation:
        alloc = (size + 0xFFF) & ~0xFFF
        return struct.pack("<qqqqqqI4x", *(FILE_TIME,) * 4, alloc, size, _attributes(f))
    raise NtStatusError(0xC0000003, f"FileInformationClass {cls}")


@syscall
def NtQueryInformationFile(
    k: Kernel,
    FileHandle: HANDLE,
    IoStatusBlock: PVOID,
    FileInformation: PVOID,
    Length: ULONG,
    FileInformationClass: ULONG,
) -> int:
    f = k.proc.objects.get(FileHandle, FileObject)
    k.details.update(cls=FileInformationClass, name=f.name)
    data = _file_info(k, f, FileInformationClass)
    put_buffer(k, FileInformation, Length, data)
    write_io_status(k, IoStatusBlock, 0, len(data))
    return Status.SUCCESS


@syscall
def NtSetInformationFile(
    k: Kernel,
    FileHandle: HANDLE,
    IoStatusBlock: PVOID,
    FileInformation: PVOID,
    Length: ULONG,
    FileInformationClass: ULONG,
) -> int:
    """The file position can be set; a file the program created can also be given a new end
    (FileEndOfFileInformation, FileAllocationInformation), be deleted
    (FileDispositionInformation(Ex)) or have its times set (kept as every file's); anything
    else that would change a file is refused."""
    f = k.proc.objects.get(FileHandle, FileObject)
    k.details.update(cls=FileInformationClass, name=f.name)
    if f.memory is not None and FileInformationClass in _CREATED_FILE_CLASSES:
        _set_created(k, f, FileInformation, Length, FileInformationClass)
        write_io_status(k, IoStatusBlock, 0, 0)
        return Status.SUCCESS
    if FileInformationClass != FILE_INFORMATION_CLASS.FilePositionInformation:
        raise NtStatusError(Status.ACCESS_DENIED, f"{f.name} cannot be changed in the sandbox")
    (position,) = struct.unpack("<q", k.read(FileInformation, 8))
    if position < 0:
        # NtSetInformationFile refuses a negative CurrentByteOffset (a position past 2^63
        # made the next NtQueryInformationFile's pack raise: tests/syscallfuzz.py)
        raise NtStatusError(Status.INVALID_PARAMETER, f"position {position}")
    f.position = position
    write_io_status(k, IoStatusBlock, 0, 0)
    return Status.SUCCESS


# FILE_INFORMATION_CLASS values a created file takes
FILE_BASIC, FILE_DISPOSITION, FILE_ALLOCATION, FILE_END_OF_FILE, FILE_DISPOSITION_EX = (
    4,
    13,
    19,
    20,
    64,
)
_CREATED_FILE_CLASSES = {
    FILE_BASIC: 40, FILE_DISPOSITION: 1, FILE_ALLOCATION: 8, FILE_END_OF_FILE: 8,
    FILE_DISPOSITION_EX: 4,
}  # fmt: skip
FILE_DISPOSITION_DELETE = 0x1


def _set_created(k: Kernel, f: FileObject, info: int, length: int, cls: int) -> None:
    memory = f.memory
    assert memory is not None
    need = _CREATED_FILE_CLASSES[cls]
    if length < need:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH, f"class {cls} needs {need} bytes")
    raw = k.read(info, need)
    if cls in (FILE_DISPOSITION, FILE_DISPOSITION_EX):
        if not f.access & 0x10000:  # DELETE
            raise NtStatusError(Status.ACCESS_DENIED, f"{f.name} was not opened for deletion")
        delete = raw[0] != 0 if cls == FILE_DISPOSITION else bool(raw[0] & FILE_DISPOSITION_DELETE)
        memory.delete_pending = delete
    elif cls in (FILE_END_OF_FILE, FILE_ALLOCATION):
        if not f.access & FILE_WRITE_DATA:
            raise NtStatusError(Status.ACCESS_DENIED, f"{f.name} was not opened for writing")
        (size,) = struct.unpack("<q", raw)
        if size < 0:
            raise NtStatusError(Status.INVALID_PARAMETER, f"end of file {size}")
        if size > MAX_CREATED_FILE:
            raise NtStatusError(Status.DISK_FULL, f"end of file 0x{size:x}")
        if cls == FILE_END_OF_FILE or size < len(memory.data):  # allocation never grows it
            if size < len(memory.data):
                del memory.data[size:]
            else:
                memory.data.extend(bytes(size - len(memory.data)))
    # FileBasicInformation: times and attributes stay what every file reports


@syscall
def NtQueryVolumeInformationFile(
    k: Kernel,
    FileHandle: HANDLE,
    IoStatusBlock: PVOID,
    FsInformation: PVOID,
    Length: ULONG,
    FsInformationClass: ULONG,
) -> int:
    f = k.proc.objects.get(FileHandle, FileObject)
    k.details.update(cls=FsInformationClass, name=f.name)
    if FsInformationClass == FS_INFORMATION_CLASS.FileFsDeviceInformation:
        device = FILE_DEVICE_NAMED_PIPE if f.stream else FILE_DEVICE_DISK
        data = struct.pack("<II", device, 0)
    elif FsInformationClass == FS_INFORMATION_CLASS.FileFsVolumeInformation and not f.stream:
        label = "HEAPEMU".encode("utf-16-le")
        data = struct.pack("<qIIBB", FILE_TIME, 0x4845_4150, len(label), 0, 0) + label
    else:
        raise NtStatusError(0xC0000003, f"FsInformationClass {FsInformationClass}")
    put_buffer(k, FsInformation, Length, data)
    write_io_status(k, IoStatusBlock, 0, len(data))
    return Status.SUCCESS


def _lookup_attributes(k: Kernel, ObjectAttributes: int) -> FileObject:
    objects = k.proc.objects
    root, name = object_name(k, ObjectAttributes)
    if root:
        parent = objects.get(root, FileObject)
        assert isinstance(parent, FileObject)
        name = f"{parent.name.rstrip(chr(92))}\\{name}"
    k.details.update(name=name)
    entry = objects.namespace.lookup(name)
    if entry is None:
        objects.denied.append((name, "not in the sandbox"))
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, f"{name} is not in the sandbox")
    return FileObject(
        "file", entry.path, host_path=entry.host_path, directory=entry.directory,
        memory=entry.memory,
    )  # fmt: skip


@syscall
def NtQueryAttributesFile(k: Kernel, ObjectAttributes: PVOID, FileInformation: PVOID) -> int:
    f = _lookup_attributes(k, ObjectAttributes)
    k.write(FileInformation, _basic_info(_attributes(f)))
    return Status.SUCCESS


@syscall
def NtQueryFullAttributesFile(k: Kernel, ObjectAttributes: PVOID, FileInformation: PVOID) -> int:
    f = _lookup_attributes(k, ObjectAttributes)
    k.write(FileInformation, _file_info(k, f, FILE_INFORMATION_CLASS.FileNetworkOpenInformation))
    return Status.SUCCESS


def _control(k: Kernel, FileHandle: int, IoControlCode: int) -> int:
    f = k.proc.objects.get(FileHandle, FileObject)
    k.details.update(code=IoControlCode, name=f.name)
    raise NtStatusError(Status.INVALID_DEVICE_REQUEST, f"control code 0x{IoControlCode:x}")


@syscall
def NtFsControlFile(
    k: Kernel,
    FileHandle: HANDLE,
    Event: HANDLE,
    ApcRoutine: PVOID,
    ApcContext: PVOID,
    IoStatusBlock: PVOID,
    FsControlCode: ULONG,
    InputBuffer: PVOID,
    InputBufferLength: ULONG,
    OutputBuffer: PVOID,
    OutputBufferLength: ULONG,
) -> int:
    """No file-system controls are emulated: STATUS_INVALID_DEVICE_REQUEST."""
    return _control(k, FileHandle, FsControlCode)


@syscall
def NtDeviceIoControlFile(
    k: Kernel,
    FileHandle: HANDLE,
    Event: HANDLE,
    ApcRoutine: PVOID,
    ApcContext: PVOID,
    IoStatusBlock: PVOID,
    IoControlCode: ULONG,
    InputBuffer: PVOID,
    InputBufferLength: ULONG,
    OutputBuffer: PVOID,
    OutputBufferLength: ULONG,
) -> int:
    """No device controls are emulated (no console driver): STATUS_INVALID_DEVICE_REQUEST."""
    return _control(k, FileHandle, IoControlCode)
