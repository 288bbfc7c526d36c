"""Find, fetch and verify Wine 8.0's PE DLLs (ntdll.dll and friends) for x86 and x64.

heapemu runs Wine's own ntdll heap code, so it needs exactly the Wine build its tests know:
Debian bookworm's `libwine` 8.0~repack-4, which carries the PE DLLs at

    x64: usr/lib/x86_64-linux-gnu/wine/x86_64-windows/   (package libwine, amd64)
    x86: usr/lib/i386-linux-gnu/wine/i386-windows/       (package libwine:i386)

find_wine_dir(arch) looks, in this order:

1. a directory the user names (the `user_dir` argument, else $HEAPEMU_WINE_DIR). It may hold
   `x86_64-windows/` and `i386-windows/` subdirectories (like Wine's own lib/wine/ directory),
   or the DLLs of one arch directly. When the user names a directory it is the only place
   looked at: a missing or modified DLL there is an error, not a reason to look elsewhere.
2. an installed Wine: /usr/lib/<multiarch>/wine/, /usr/lib{,32,64}/wine/, /usr/local/lib{,64}/wine/,
   /opt/wine*/lib{,64}/wine/ (a Wine of another version there is skipped: its hashes differ).
3. the per-user cache $XDG_CACHE_HOME/heapemu/wine-8.0/ (default ~/.cache/heapemu/wine-8.0/),
   which it fills itself from Debian's packages: `apt-get download` of the two packages, then
   only the DLLs listed in CACHED_DLLS are taken out of the .deb (the whole DLL directory is
   ~640 MB). Adding the i386 architecture to dpkg needs root; without it the error says which
   commands to run.

Every DLL found is checked against the SHA-256 recorded in WINE_SHA256 below (ntdll.dll must be
there; the others are checked when present).

    python -m loader fetch              # find or fetch both arches, print the directories
    python -m loader.wine syscalls --arch x64  # the syscall numbers read from ntdll's stubs
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader.errors import LoaderError
from loader.peimage import PeImage

WINE_VERSION = "8.0"
DEBIAN_VERSION = "8.0~repack-4"
WINE_DIR_ENV = "HEAPEMU_WINE_DIR"
ARCHES = ("x86", "x64")
WINDOWS_SUBDIRS = {"x86": "i386-windows", "x64": "x86_64-windows"}
DEB_PACKAGES = {"x86": "libwine:i386", "x64": "libwine"}
DEB_DLL_DIRS = {
    "x86": "usr/lib/i386-linux-gnu/wine/i386-windows",
    "x64": "usr/lib/x86_64-linux-gnu/wine/x86_64-windows",
}
MULTIARCH = {"x86": "i386-linux-gnu", "x64": "x86_64-linux-gnu"}
REQUIRED_DLLS = ("ntdll.dll",)
CACHED_DLLS = ("ntdll.dll", "kernel32.dll", "kernelbase.dll", "msvcrt.dll", "ucrtbase.dll")

# SHA-256 of the DLLs in Debian's libwine 8.0~repack-4 (computed from the fetched packages).
WINE_SHA256: dict[str, dict[str, str]] = {
    "x64": {
        "ntdll.dll": "442753c30d9b3189b60331e1fa1d055f83f98656b7cea6b701857188d356f3af",
        "kernel32.dll": "09f859559ce04fe5e377a7767d90752db2b14b7436ce2733cc02f9571153934a",
        "kernelbase.dll": "d458d04a2a9b7e67bbec6d62d7ba67c80b7e01661917e1793414a810604014a5",
        "msvcrt.dll": "3e11c9af5a4b04da3e6b6626f181233a583ce173ce74910da4aad9742fcb585f",
        "ucrtbase.dll": "bc4fa8aa2bdc0d970355e410c418b4122cc878d231cab379f7bce6da1657e585",
    },
    "x86": {
        "ntdll.dll": "7e1ab6c2510bb074b6f42ddcbac815793445f51a072c9d94e7b372d5a854e206",
        "kernel32.dll": "a72500f7bb767e336d559bbbb279d2e1887d49d8f74884ab091aa11c0d336e3c",
        "kernelbase.dll": "75533b0a5c05f3c6eb2aaa8df9e951da1d58201036ddc0c89c47740229cb3b6c",
        "msvcrt.dll": "bb8c9ff6474c767b534bc95b5c63bb11077127a8feab11004ce827df53d82c82",
        "ucrtbase.dll": "b7ce8c4df6981dfe408b5395b7ded0e4226f1093144d6662ab4fe01b345d1ec4",
    },
}

APT_TIMEOUT = 900  # seconds for one apt-get command (the .debs are ~100 MB each)


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r} (expected one of {ARCHES})")


def cache_dir() -> Path:
    """The per-user cache that fetch_wine_dlls fills: <XDG cache>/heapemu/wine-8.0."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heapemu" / f"wine-{WINE_VERSION}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Hashes already computed in this process, keyed by file identity, so that finding the DLLs for
# every new emulated process does not re-read ~20 MB.
_hash_memo: dict[tuple[str, int, int, int], str] = {}


def sha256_memo(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _hash_memo:
        _hash_memo[key] = sha256_file(path)
    return _hash_memo[key]


# --- verification ------------------------------------------------------------------------------


class WineHashError(LoaderError):
    """A Wine DLL whose SHA-256 is not the recorded one."""


def verify_wine_dir(directory: Path, arch: str, remedy: str) -> None:
    """Check the DLLs of one arch in `directory` against WINE_SHA256.

    ntdll.dll must be present; the other CACHED_DLLS are checked when present. `remedy` says
    what to do about a mismatch and ends the error message.
    """
    _check_arch(arch)
    expected_hashes = WINE_SHA256[arch]
    for dll in CACHED_DLLS:
        path = directory / dll
        if not path.is_file():
            if dll in REQUIRED_DLLS:
                raise LoaderError(f"{path}: not found (Wine {WINE_VERSION} {arch}); {remedy}")
            continue
        expected = expected_hashes.get(dll)
        if expected is None:
            if dll in REQUIRED_DLLS:
                raise LoaderError(
                    f"{path}: no SHA-256 is recorded for {arch} {dll} in loader/wine.py "
                    f"(actual {sha256_file(path)})"
                )
            continue
        actual = sha256_memo(path)
        if actual != expected:
            raise WineHashError(
                f"{path}: SHA-256 mismatch for Wine {WINE_VERSION} ({DEBIAN_VERSION}) {arch} "
                f"{dll}: expected {expected}, actual {actual}. {remedy}"
            )


def _machine_of(path: Path) -> str | None:
    """'x86' / 'x64' from a PE file's FileHeader.Machine, or None if unreadable."""
    try:
        with path.open("rb") as f:
            head = f.read(0x400)
        (e_lfanew,) = struct.unpack_from("<I", head, 0x3C)
        (machine,) = struct.unpack_from("<H", head, e_lfanew + 4)
    except (OSError, struct.error):
        return None
    return {0x14C: "x86", 0x8664: "x64"}.get(machine)


# --- the three places to look --------------------------------------------------------------------


def _user_wine_dir(root: Path, arch: str) -> Path:
    remedy = (
        f"Point {WINE_DIR_ENV} (or the directory argument) at an unmodified copy of Debian "
        f"libwine {DEBIAN_VERSION}'s DLLs, or unset it to let heapemu find or fetch them."
    )
    sub = root / WINDOWS_SUBDIRS[arch]
    if (sub / "ntdll.dll").is_file():
        directory = sub
    elif (root / "ntdll.dll").is_file():
        directory = root
        machine = _machine_of(root / "ntdll.dll")
        if machine != arch:
            raise LoaderError(
                f"{root / 'ntdll.dll'} is an {machine or 'unreadable'} DLL, but {arch} DLLs were "
                f"asked for; put each arch in its own {WINDOWS_SUBDIRS[arch]}/ subdirectory. "
                f"{remedy}"
            )
    else:
        raise LoaderError(
            f"Wine directory {root} (from the directory argument or {WINE_DIR_ENV}) has neither "
            f"{WINDOWS_SUBDIRS[arch]}/ntdll.dll nor ntdll.dll. {remedy}"
        )
    verify_wine_dir(directory, arch, remedy)
    return directory


def installed_wine_dirs(arch: str) -> list[Path]:
    """Where an installed Wine keeps its `arch` PE DLLs, existing directories only."""
    _check_arch(arch)
    sub = WINDOWS_SUBDIRS[arch]
    roots = [
        Path("/usr/lib") / MULTIARCH[arch] / "wine",
        Path("/usr/lib/wine"),
        Path("/usr/lib64/wine"),
        Path("/usr/lib32/wine"),
        Path("/usr/local/lib/wine"),
        Path("/usr/local/lib64/wine"),
    ]
    for opt in sorted(Path("/opt").glob("wine*")):
        roots += [opt / "lib" / "wine", opt / "lib64" / "wine"]
    return [root / sub for root in roots if (root / sub / "ntdll.dll").is_file()]


def _cache_remedy(directory: Path) -> str:
    return f"Delete {directory} and run `python -m loader fetch` to fetch it again."


def find_wine_dir(arch: str, user_dir: str | Path | None = None, *, fetch: bool = True) -> Path:
    """The verified directory holding Wine 8.0's `arch` ("x86"/"x64") PE DLLs.

    Looks in user_dir / $HEAPEMU_WINE_DIR, then an installed Wine, then the per-user cache,
    which it fills from Debian's packages when `fetch` is true (see the module docstring).
    """
    _check_arch(arch)
    user = user_dir if user_dir is not None else os.environ.get(WINE_DIR_ENV)
    if user:
        return _user_wine_dir(Path(user), arch)
    skipped: list[str] = []
    for directory in installed_wine_dirs(arch):
        try:
            verify_wine_dir(directory, arch, "")
        except LoaderError as exc:
            skipped.append(f"{directory} (not Wine {DEBIAN_VERSION}: {exc})")
            continue
        return directory
    cached = cache_dir() / WINDOWS_SUBDIRS[arch]
    if (cached / "ntdll.dll").is_file():
        verify_wine_dir(cached, arch, _cache_remedy(cached))
        return cached
    if fetch:
        return fetch_wine_dlls(arch)
    raise LoaderError(_not_found_message(arch, skipped))


def _not_found_message(arch: str, skipped: Sequence[str], why: str = "") -> str:
    lines = [f"Wine {WINE_VERSION} {arch} DLLs not found{': ' + why if why else ''}."]
    if skipped:
        lines.append("Skipped: " + "; ".join(skipped))
    lines += [
        "Do one of:",
        (
            f"  - set {WINE_DIR_ENV} to a directory holding {WINDOWS_SUBDIRS[arch]}/ntdll.dll "
            f"(and the other arch's subdirectory) from Debian libwine {DEBIAN_VERSION};"
        ),
        "  - on Debian bookworm, as root: "
        + ("dpkg --add-architecture i386 && " if arch == "x86" else "")
        + "apt-get update, then run `python -m loader fetch` "
        f"(it runs `apt-get download {DEB_PACKAGES[arch]}={DEBIAN_VERSION}` and unpacks the DLLs "
        f"into {cache_dir()});",
        f"  - or install it: apt-get install {DEB_PACKAGES[arch]}={DEBIAN_VERSION}.",
    ]
    return "\n".join(lines)


# --- fetching into the cache ---------------------------------------------------------------------


def _run(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoaderError(f"`{' '.join(command)}` could not run: {exc}") from exc


def _tail(result: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()
    return "\n".join(text[-lines:])


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_update() -> str:
    """Run `apt-get update`; its output's tail when it failed (some lists may still be fresh)."""
    result = _run(["apt-get", "update"])
    return "" if result.returncode == 0 else f"`apt-get update` failed:\n{_tail(result)}"


def _ensure_dpkg_arch(arch: str) -> str | None:
    """Make dpkg know the package architecture.

    Returns None when nothing was done, else what `apt-get update` said ("" when it succeeded).
    """
    if arch != "x86":
        return None
    native = _run(["dpkg", "--print-architecture"]).stdout.split()
    foreign = _run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if "i386" in native + foreign:
        return None
    if not _is_root():
        raise LoaderError(
            _not_found_message(
                "x86",
                [],
                "dpkg does not know the i386 architecture, and adding it needs root "
                "(run: sudo dpkg --add-architecture i386 && sudo apt-get update)",
            )
        )
    result = _run(["dpkg", "--add-architecture", "i386"])
    if result.returncode != 0:
        raise LoaderError(f"`dpkg --add-architecture i386` failed:\n{_tail(result)}")
    return _apt_update()


def download_deb(arch: str, workdir: Path, update_note: str | None) -> Path:
    spec = f"{DEB_PACKAGES[arch]}={DEBIAN_VERSION}"
    command = ["apt-get", "download", spec]
    if _is_root():
        # apt drops to the _apt user to download, which cannot write a root-only temp dir.
        command[1:1] = ["-o", "APT::Sandbox::User=root"]
    result = _run(command, cwd=workdir)
    if result.returncode != 0 and update_note is None and _is_root():
        # Most often the package lists are missing or stale: refresh once and retry. A partly
        # failed update (one mirror out of sync) may still have brought the list needed.
        update_note = _apt_update()
        result = _run(command, cwd=workdir)
    if result.returncode != 0:
        hint = "" if _is_root() else " (as root, `apt-get update` first may help)"
        notes = f"\n{update_note}" if update_note else ""
        raise LoaderError(
            _not_found_message(
                arch, [], f"`{' '.join(command)}` failed{hint}:\n{_tail(result)}{notes}"
            )
        )
    debs = sorted(workdir.glob("libwine_*.deb"))
    if len(debs) != 1:
        raise LoaderError(f"`{' '.join(command)}` left {len(debs)} .deb files in {workdir}")
    return debs[0]


def extract_from_deb(
    deb: Path, directory: str, names: Sequence[str], target: Path
) -> tuple[set[str], str]:
    """Take ``names`` from ``directory`` of a .deb into ``target`` without unpacking the rest
    (libwine's DLL directory alone is ~640 MB); returns the names found and dpkg-deb's
    error output."""
    wanted = {f"./{directory}/{name}": name for name in names}
    wanted.update({path[2:]: name for path, name in list(wanted.items())})
    target.mkdir(parents=True)
    found: set[str] = set()
    with tempfile.TemporaryFile() as stderr:
        # Stop as soon as every file is out instead of decompressing the rest of the archive.
        # dpkg-deb forks its decompressor, so it gets a session of its own to kill as a whole.
        proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = wanted.get(member.name)
                    if name is None or not member.isfile():
                        continue
                    source = tar.extractfile(member)
                    assert source is not None
                    with (target / name).open("wb") as out:
                        shutil.copyfileobj(source, out)
                    found.add(name)
                    if len(found) == len(names):
                        break
        except tarfile.TarError as exc:
            raise LoaderError(f"{deb.name}: cannot read its data archive: {exc}") from exc
        finally:
            # Closing the pipe ends the decompressor with SIGPIPE and dpkg-deb reaps it; kill the
            # whole session only if that does not happen soon.
            proc.stdout.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stderr.seek(0)
        message = stderr.read().decode(errors="replace").strip()
    return found, message


def _extract_dlls(deb: Path, arch: str, target: Path) -> None:
    """Take CACHED_DLLS out of the .deb."""
    found, message = extract_from_deb(deb, DEB_DLL_DIRS[arch], CACHED_DLLS, target)
    missing = [dll for dll in REQUIRED_DLLS if dll not in found]
    if missing:
        raise LoaderError(
            f"{deb.name}: {', '.join(missing)} not found under {DEB_DLL_DIRS[arch]}/ {message}"
        )


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time across processes
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_wine_dlls(arch: str) -> Path:
    """Fill the cache with `arch`'s DLLs from Debian's libwine package; return the directory."""
    _check_arch(arch)
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise LoaderError(_not_found_message(arch, [], f"{tool} is not available here"))
    final = cache_dir() / WINDOWS_SUBDIRS[arch]
    with cache_lock():
        if (final / "ntdll.dll").is_file():  # another process fetched it meanwhile
            verify_wine_dir(final, arch, _cache_remedy(final))
            return final
        update_note = _ensure_dpkg_arch(arch)
        with tempfile.TemporaryDirectory(prefix="heapemu-wine-") as tmp:
            work = Path(tmp)
            deb = download_deb(arch, work, update_note)
            staging = cache_dir() / f".{WINDOWS_SUBDIRS[arch]}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _extract_dlls(deb, arch, staging)
                verify_wine_dir(
                    staging,
                    arch,
                    f"The downloaded {deb.name} is not the package the recorded hashes come from.",
                )
                (staging / "SOURCE").write_text(
                    f"{DEB_PACKAGES[arch]} {DEBIAN_VERSION} {DEB_DLL_DIRS[arch]}/\n"
                )
                staging.rename(final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_wine_dlls(
    arches: Sequence[str] = ARCHES, user_dir: str | Path | None = None
) -> dict[str, Path]:
    """Find (or fetch) and verify the DLLs of each arch; {arch: directory}."""
    return {arch: find_wine_dir(arch, user_dir) for arch in arches}


# --- syscall numbers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyscallStub:
    """One ntdll export whose code is a Wine syscall stub."""

    name: str
    number: int  # the value the stub loads into eax
    rva: int  # the stub's RVA
    dispatcher_va: int | None  # x86: the address in edx it calls (preferred base); x64: None


def wine_syscall_stubs(image: PeImage) -> list[SyscallStub]:
    """Every exported function whose first bytes are a Wine 8 syscall stub, by RVA.

    x64: 4c 8b d1 b8 NN NN NN NN (mov r10, rcx; mov eax, N)
    x86: b8 NN NN NN NN ba TT TT TT TT ff d2 (mov eax, N; mov edx, THUNK; call edx)
    """
    stubs: list[SyscallStub] = []
    for export in image.exports:
        if export.name is None or export.rva is None:
            continue
        if export.rva + 12 > image.size_of_image:
            continue
        code = image.read(export.rva, 12)
        if image.machine == "x64":
            if code[:4] == b"\x4c\x8b\xd1\xb8":
                (number,) = struct.unpack_from("<I", code, 4)
                stubs.append(SyscallStub(export.name, number, export.rva, None))
        elif code[0] == 0xB8 and code[5] == 0xBA and code[10:12] == b"\xff\xd2":
            number, _, thunk = struct.unpack_from("<IBI", code, 1)
            stubs.append(SyscallStub(export.name, number, export.rva, thunk))
    stubs.sort(key=lambda stub: (stub.rva, stub.name))
    return stubs


def _name_rank(name: str) -> tuple[int, str]:
    # Nt* is the canonical name; Zw* is its alias; anything else (__wine_dbg_write) in between.
    return (0 if name.startswith("Nt") else 2 if name.startswith("Zw") else 1, name)


def wine_syscall_numbers(image: PeImage) -> dict[int, str]:
    """{syscall number: name} read from ntdll's own stubs, preferring Nt* over Zw* names."""
    numbers: dict[int, str] = {}
    for stub in wine_syscall_stubs(image):
        current = numbers.get(stub.number)
        if current is None or _name_rank(stub.name) < _name_rank(current):
            numbers[stub.number] = stub.name
    return dict(sorted(numbers.items()))


# --- command line ---------------------------------------------------------------------------------
