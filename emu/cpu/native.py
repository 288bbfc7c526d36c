"""heapemu's native fast paths (``fastpath.c``), built once per machine with the host's C
compiler and loaded with ctypes; None when they cannot be, and the CPU uses its Python
callbacks instead (same answers, slower).

Why native: a Python callback costs ~0.5 µs per call. The TLB is refilled after every flush
(each protection change, decommit, fault), a few dozen pages each time, and event recording
must count every basic block; both are table lookups that need no Python once the table is
filled. The C file has no dependency but libc: no Unicorn headers, no Python headers.

The build goes to ``$HEAPEMU_NATIVE_DIR`` (default ``~/.cache/heapemu/native``), named by a
hash of the source, the compiler and its flags, written under a temporary name and renamed (so
concurrent processes never load a half-written library). ``HEAPEMU_NATIVE=0`` turns the fast
paths off (the tests run both ways); ``$CC`` chooses the compiler (default: cc, gcc, clang).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from unicorn.unicorn_py3.unicorn import uclib

log = logging.getLogger("heapemu.cpu")

SOURCE = Path(__file__).with_name("fastpath.c")
FLAGS = ("-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror")
DIRECT_SOURCE = Path(__file__).with_name("direct.c")
DIRECT_FLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Werror")
BUILD_TIMEOUT = 120
MAX_REGS, MAX_FRAME = 32, 256  # as in fastpath.c
SPECIAL_ENTRY, SPECIAL_RETURN = 1, 2  # the special map's values, as in fastpath.c
MAX_OPEN = 64  # calls a BlockCounter pairs in C at once (fastpath.c)
RECORD_KEPT = 2  # frame_ok's bit: a return the hook found as its entry left it

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_loaded_direct: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """False when ``HEAPEMU_NATIVE=0``: every CPU made afterwards uses the Python callbacks."""
    return os.environ.get("HEAPEMU_NATIVE", "1") != "0"


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build_dir() -> Path:
    env = os.environ.get("HEAPEMU_NATIVE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "heapemu" / "native"


def _build(
    source_path: Path = SOURCE, flags: tuple[str, ...] = FLAGS, suffix: str = ".so"
) -> Path | None:
    cc = _compiler()
    if cc is None:
        log.info("heapemu: no C compiler: native fast paths off")
        return None
    source = source_path.read_bytes()
    key = hashlib.sha256(source + "\0".join((cc, *flags, suffix)).encode()).hexdigest()[:16]
    target = _build_dir() / f"{source_path.stem}-{key}{suffix}"
    if target.exists():
        return target
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        subprocess.run(
            [cc, *flags, "-o", tmp, str(source_path)],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        log.warning("heapemu: building %s failed (%s): native fast paths off", source_path.name, e)
        if detail:
            log.info("%s", detail.decode(errors="replace")[-2000:])
        return None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The fast-path library, built on first use (None when disabled or unbuildable)."""
    if not enabled():
        return None
    with _lock:
        if "lib" not in _loaded:
            path = _build()
            lib = None
            if path is not None:
                try:
                    lib = _declare(ctypes.CDLL(str(path)))
                except (OSError, AttributeError) as e:
                    log.warning("heapemu: loading %s failed (%s): native fast paths off", path, e)
            _loaded["lib"] = lib
        return _loaded["lib"]


def direct() -> ModuleType | None:
    """``direct.c``, Unicorn's C API called from Python without ctypes (a CPython extension
    built on first use with the running Python's headers), bound to Unicorn's functions; None
    when disabled (``HEAPEMU_NATIVE=0``) or unbuildable (no compiler, no ``Python.h``): the
    CPU then calls through ctypes."""
    if not enabled():
        return None
    with _lock:
        if "direct" not in _loaded_direct:
            _loaded_direct["direct"] = _load_direct()
        return _loaded_direct["direct"]


def _load_direct() -> ModuleType | None:
    include = sysconfig.get_paths().get("include", "")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    if not (Path(include) / "Python.h").exists():
        log.info("heapemu: no Python.h in %r: direct calls off (ctypes instead)", include)
        return None
    path = _build(DIRECT_SOURCE, (*DIRECT_FLAGS, f"-I{include}"), suffix)
    if path is None:
        return None
    try:
        spec = importlib.util.spec_from_file_location("_heapemu_direct", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"no loader for {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        address = ctypes.c_void_p
        module.bind(
            *(
                ctypes.cast(getattr(uclib, name), address).value
                for name in (
                    "uc_emu_start",
                    "uc_reg_read",
                    "uc_reg_write",
                    "uc_mem_read",
                    "uc_mem_write",
                    "uc_reg_read_batch",
                    "uc_reg_write_batch",
                    "uc_ctl",
                )
            )
        )
    except (ImportError, OSError, AttributeError, ValueError) as e:
        log.warning("heapemu: loading %s failed (%s): direct calls off", path, e)
        return None
    return module


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    u64, i64, vp = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p
    for name, res, args in (
        ("heapemu_map_new", vp, []),
        ("heapemu_map_free", None, [vp]),
        ("heapemu_map_put", ctypes.c_int, [vp, u64, i64]),
        ("heapemu_map_del", None, [vp, u64]),
        ("heapemu_map_clear", None, [vp]),
        ("heapemu_map_del_range", None, [vp, u64, u64, u64]),
        ("heapemu_map_put_range", ctypes.c_int, [vp, u64, u64, u64, i64]),
        ("heapemu_map_len", u64, [vp]),
        ("heapemu_tlb_flush", None, [vp, vp]),
        ("heapemu_tlb_flush_range", ctypes.c_int, [vp, vp, u64, u64]),
        ("heapemu_tlb_forget_range", ctypes.c_int, [vp, vp, u64, u64]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def function_address(lib: ctypes.CDLL, name: str) -> int:
    """The address of a C function of the library (to hand to Unicorn as a hook callback)."""
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0


class TlbState(ctypes.Structure):
    """``tlb_state`` in fastpath.c."""

    _fields_ = [
        ("perms", ctypes.c_void_p),
        ("slow", ctypes.c_void_p),
        ("fills", ctypes.c_uint64),
        ("slow_fills", ctypes.c_uint64),
        ("filled", ctypes.c_void_p),
        ("overflow", ctypes.c_uint64),
        ("refills", ctypes.c_uint64),
        ("ctl", ctypes.c_void_p),
        ("flush_control", ctypes.c_int64),
        ("flush_page", ctypes.c_void_p),
        ("cpu", ctypes.c_void_p),
        ("flushes", ctypes.c_uint64),
        ("page_flushes", ctypes.c_uint64),
        ("ranges_skipped", ctypes.c_uint64),
    ]


class BlockState(ctypes.Structure):
    """``block_state`` in fastpath.c."""

    _fields_ = [
        ("counts", ctypes.c_void_p),
        ("special", ctypes.c_void_p),
        ("on_full", ctypes.c_void_p),
        ("count", ctypes.c_void_p),
        ("instructions", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("reg_read_batch", ctypes.c_void_p),
        ("mem_read", ctypes.c_void_p),
        ("nregs", ctypes.c_int32),
        ("sp_index", ctypes.c_int32),
        ("frame_size", ctypes.c_uint64),
        ("ptr_size", ctypes.c_int32),
        ("pad", ctypes.c_int32),
        ("regs", ctypes.c_int32 * MAX_REGS),
        ("ptrs", ctypes.c_void_p * MAX_REGS),
        ("log", ctypes.c_void_p),
        ("log_used", ctypes.c_uint64),
        ("log_size", ctypes.c_uint64),
        ("record_size", ctypes.c_uint64),
        ("compare_from", ctypes.c_int32),
        ("compare_size", ctypes.c_int32),
        ("flags_at", ctypes.c_int32),
        ("window_size", ctypes.c_int32),
        ("flags_mask", ctypes.c_uint64),
        ("depth", ctypes.c_int32),
        ("pad2", ctypes.c_int32),
        ("open_ret", ctypes.c_uint64 * MAX_OPEN),
        ("open_sp", ctypes.c_uint64 * MAX_OPEN),
        ("open_pops", ctypes.c_uint64 * MAX_OPEN),
        ("open_at", ctypes.c_uint64 * MAX_OPEN),
        ("open_window", ctypes.c_uint64 * MAX_OPEN),
    ]


class StopState(ctypes.Structure):
    """``stop_state`` in fastpath.c."""

    _fields_ = [
        ("stop", ctypes.c_void_p),
        ("until", ctypes.c_uint64),
        ("hits", ctypes.c_uint64),
    ]


class NativeMap:
    """fastpath.c's address -> integer map, owned by Python (freed with this object)."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib
        self.ptr = lib.heapemu_map_new()
        if not self.ptr:
            raise MemoryError("heapemu_map_new")

    def put(self, key: int, value: int) -> None:
        if self._lib.heapemu_map_put(self.ptr, key, value):
            raise MemoryError("heapemu_map_put")

    def delete(self, key: int) -> None:
        self._lib.heapemu_map_del(self.ptr, key)

    def clear(self) -> None:
        self._lib.heapemu_map_clear(self.ptr)

    def put_range(self, start: int, end: int, step: int, value: int) -> None:
        """Put the keys ``start``, ``start + step``, ... below ``end``, all with ``value``."""
        if self._lib.heapemu_map_put_range(self.ptr, start, end, step, value):
            raise MemoryError("heapemu_map_put_range")

    def delete_range(self, start: int, end: int, step: int) -> None:
        """Delete the keys ``start``, ``start + step``, ... below ``end``."""
        self._lib.heapemu_map_del_range(self.ptr, start, end, step)

    def __len__(self) -> int:
        return int(self._lib.heapemu_map_len(self.ptr))

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.heapemu_map_free(self.ptr)
            self.ptr = None
