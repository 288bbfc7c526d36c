"""loader.wine on the real Wine 8.0 DLLs (found, or fetched from Debian's packages if needed):
both arches found and hash-verified, their ntdll parsed, syscall numbers read from its own stubs,
and a corrupted or misplaced copy refused with an error that says what to do."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from pebuild import build

import loader.wine as wine
from loader import LoaderError
from loader.__main__ import main as loader_main
from loader.peimage import PeImage
from loader.wine import (
    WINE_SHA256,
    WineHashError,
    ensure_wine_dlls,
    find_wine_dir,
    sha256_file,
    wine_syscall_numbers,
    wine_syscall_stubs,
)

pytestmark = pytest.mark.wine


@pytest.fixture(scope="module")
def wine_dirs() -> dict[str, Path]:
    return ensure_wine_dlls()


@pytest.fixture(scope="module")
def ntdll(wine_dirs: dict[str, Path]) -> dict[str, PeImage]:
    return {arch: PeImage.from_file(d / "ntdll.dll") for arch, d in wine_dirs.items()}


def test_both_arches_found_and_verified(wine_dirs: dict[str, Path]) -> None:
    assert set(wine_dirs) == {"x86", "x64"}
    for arch, directory in wine_dirs.items():
        assert directory.name == wine.WINDOWS_SUBDIRS[arch]
        for dll, expected in WINE_SHA256[arch].items():
            assert sha256_file(directory / dll) == expected, (arch, dll)


def test_ntdll_images(ntdll: dict[str, PeImage]) -> None:
    for arch, image in ntdll.items():
        image.require_arch(arch)
        assert image.is_dll and image.is_relocatable
        assert image.export_dll_name == "ntdll.dll"
        assert image.imports == ()  # Wine's PE ntdll imports nothing
        print(
            f"\n{arch} ntdll.dll: ImageBase {image.image_base:#x}, SizeOfImage "
            f"{image.size_of_image:#x}, {len(image.relocations)} relocations, "
            f"{len(image.exports)} exports"
        )
    assert ntdll["x64"].image_base == 0x170000000
    assert ntdll["x86"].image_base == 0x7BC00000
    assert len(ntdll["x64"].runtime_functions) > 1000


def test_syscall_numbers_from_stubs(ntdll: dict[str, PeImage]) -> None:
    for arch, image in ntdll.items():
        numbers = wine_syscall_numbers(image)
        by_name = {name: number for number, name in numbers.items()}
        for name in ("NtAllocateVirtualMemory", "NtFreeVirtualMemory", "NtProtectVirtualMemory"):
            assert name in by_name, (arch, name)
        assert "__wine_dbg_write" in by_name
        # Nt* wins over its Zw* alias; every Zw stub is an Nt stub's alias (same address).
        assert not any(name.startswith("Zw") for name in numbers.values())
        stubs = wine_syscall_stubs(image)
        nt = {s.name: s for s in stubs if s.name.startswith("Nt")}
        zw = {s.name: s for s in stubs if s.name.startswith("Zw")}
        assert zw and all(nt["Nt" + n[2:]].rva == s.rva for n, s in zw.items())
        # Numbers are dense from 0, in the stubs' address order.
        assert sorted(numbers) == list(range(len(numbers)))
        print(
            f"\n{arch}: {len(numbers)} syscalls; "
            + ", ".join(
                f"{name} {by_name[name]:#x}"
                for name in ("NtAllocateVirtualMemory", "NtFreeVirtualMemory", "__wine_dbg_write")
            )
        )
    x64 = {v: k for k, v in wine_syscall_numbers(ntdll["x64"]).items()}
    x86 = {v: k for k, v in wine_syscall_numbers(ntdll["x86"]).items()}
    assert x64["NtAllocateVirtualMemory"] == x86["NtAllocateVirtualMemory"] == 0x0B
    assert x64["NtFreeVirtualMemory"] == x86["NtFreeVirtualMemory"] == 0x44


def test_x86_stubs_call_one_thunk_that_jumps_through_the_dispatcher_pointer(
    ntdll: dict[str, PeImage],
) -> None:
    image = ntdll["x86"]
    thunks = {stub.dispatcher_va for stub in wine_syscall_stubs(image)}
    assert len(thunks) == 1
    (thunk,) = thunks
    assert thunk is not None
    code = image.read(thunk - image.image_base, 6)
    assert code[:2] == b"\xff\x25"  # jmp dword ptr [__wine_syscall_dispatcher]
    (pointer,) = struct.unpack_from("<I", code, 2)
    assert pointer - image.image_base == image.export("__wine_syscall_dispatcher").rva
    assert all(stub.dispatcher_va is None for stub in wine_syscall_stubs(ntdll["x64"]))


def test_no_syscalls_in_an_ordinary_dll() -> None:
    for arch in ("x86", "x64"):
        assert wine_syscall_numbers(PeImage.from_file(build("mathlib.dll", arch))) == {}


# --- user directories and refusals ----------------------------------------------------------------


def test_corrupted_copy_is_refused(wine_dirs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "x86_64-windows"
    copy.mkdir()
    shutil.copy(wine_dirs["x64"] / "ntdll.dll", copy / "ntdll.dll")
    data = bytearray((copy / "ntdll.dll").read_bytes())
    data[0x2000] ^= 0x01
    (copy / "ntdll.dll").write_bytes(data)
    with pytest.raises(WineHashError) as info:
        find_wine_dir("x64", user_dir=tmp_path)
    message = str(info.value)
    assert str(copy / "ntdll.dll") in message
    assert f"expected {WINE_SHA256['x64']['ntdll.dll']}" in message
    assert f"actual {sha256_file(copy / 'ntdll.dll')}" in message
    assert "HEAPEMU_WINE_DIR" in message


def test_user_dir_layouts(wine_dirs: dict[str, Path], tmp_path: Path) -> None:
    # Arch subdirectories, as in Wine's own lib/wine/.
    both = tmp_path / "both"
    for arch, directory in wine_dirs.items():
        shutil.copytree(directory, both / wine.WINDOWS_SUBDIRS[arch])
    assert ensure_wine_dlls(user_dir=both) == {
        arch: both / wine.WINDOWS_SUBDIRS[arch] for arch in ("x86", "x64")
    }
    # The DLLs of one arch directly; asking it for the other arch is refused.
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(wine_dirs["x86"] / "ntdll.dll", flat / "ntdll.dll")
    assert find_wine_dir("x86", user_dir=flat) == flat
    with pytest.raises(LoaderError, match=r"is an x86 DLL, but x64 DLLs were asked for"):
        find_wine_dir("x64", user_dir=flat)
    # Nothing there: the error names the variable and the layout expected.
    with pytest.raises(LoaderError, match=r"has neither x86_64-windows/ntdll.dll nor ntdll.dll"):
        find_wine_dir("x64", user_dir=tmp_path / "empty")


def test_environment_variable(
    wine_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEAPEMU_WINE_DIR", str(tmp_path))
    with pytest.raises(LoaderError, match="HEAPEMU_WINE_DIR"):
        find_wine_dir("x64")
    shutil.copytree(wine_dirs["x64"], tmp_path / "x86_64-windows")
    assert find_wine_dir("x64") == tmp_path / "x86_64-windows"


def test_corrupted_cache_is_refused(
    wine_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEAPEMU_WINE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(wine, "installed_wine_dirs", lambda arch: [])
    cached = tmp_path / "heapemu" / "wine-8.0" / "i386-windows"
    shutil.copytree(wine_dirs["x86"], cached)
    assert find_wine_dir("x86", fetch=False) == cached
    with (cached / "kernel32.dll").open("r+b") as f:
        f.seek(0x400)
        f.write(b"\xcc")
    with pytest.raises(WineHashError, match=r"kernel32.dll: SHA-256 mismatch .* Delete .*fetch"):
        find_wine_dir("x86", fetch=False)


def test_installed_wine_of_another_version_is_skipped(
    wine_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEAPEMU_WINE_DIR", raising=False)
    other, good = tmp_path / "wine-9" / "x86_64-windows", tmp_path / "wine-8" / "x86_64-windows"
    shutil.copytree(wine_dirs["x64"], good)
    shutil.copytree(wine_dirs["x64"], other)
    (other / "ntdll.dll").write_bytes(b"MZ not this version")
    monkeypatch.setattr(wine, "installed_wine_dirs", lambda arch: [other, good])
    assert find_wine_dir("x64", fetch=False) == good
    # With only the other version installed and no cache, the error lists what was skipped.
    monkeypatch.setattr(wine, "installed_wine_dirs", lambda arch: [other])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(LoaderError, match=r"Skipped: .*wine-9/x86_64-windows \(not Wine 8.0~"):
        find_wine_dir("x64", fetch=False)


def test_not_found_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEAPEMU_WINE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(wine, "installed_wine_dirs", lambda arch: [])
    with pytest.raises(LoaderError) as info:
        find_wine_dir("x86", fetch=False)
    message = str(info.value)
    assert "HEAPEMU_WINE_DIR" in message
    assert "dpkg --add-architecture i386" in message
    assert "apt-get download libwine:i386=8.0~repack-4" in message
    assert "python -m loader fetch" in message


def test_fetch_without_root_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root and without the i386 dpkg architecture, nothing is run but the check."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(wine, "_is_root", lambda: False)
    ran: list[list[str]] = []

    def fake_run(command: list[str], cwd: Path | None = None) -> object:
        ran.append(command)
        import subprocess

        return subprocess.CompletedProcess(
            command, 0, "amd64\n" if "--print-architecture" in command else "", ""
        )

    monkeypatch.setattr(wine, "_run", fake_run)
    with pytest.raises(LoaderError, match=r"adding it needs root .*sudo dpkg --add-architecture"):
        wine.fetch_wine_dlls("x86")
    assert all(c[0] == "dpkg" and c[1].startswith("--print") for c in ran)


def test_command_line(wine_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert loader_main(["fetch"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert f"x86 {wine_dirs['x86']}" in out and f"x64 {wine_dirs['x64']}" in out
    assert any(line.startswith("nls ") for line in out)
    assert loader_main(["syscalls", "--arch", "x64"]) == 0
    assert "0x000b NtAllocateVirtualMemory" in capsys.readouterr().out.split("\n")
