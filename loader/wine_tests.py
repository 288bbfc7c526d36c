"""Fetch and verify Wine 8.0's conformance-test sources (issue 16) into heapemu's cache.

heapemu's emulated kernel is measured against Wine's own tests, which are written to pass on
Windows: ``dlls/kernel32/tests/virtual.c``, ``dlls/ntdll/tests/virtual.c`` and
``dlls/kernel32/tests/heap.c``. They need Wine's headers (``include/``, with ``wine/test.h``,
the test runner). None of Wine's source is kept in heapemu's repository (licence, house rule):
like the DLLs (``loader.wine``), it is fetched when needed, from the source package of the
same Debian build the DLLs come from (wine 8.0~repack-4): the upstream tarball
``wine_8.0~repack.orig.tar.xz`` from deb.debian.org, checked against the SHA-256 that the
package's signed .dsc records, of which only ``include/`` and the three test files are
extracted (~17 MB of the 25 MB tarball's ~400 MB) into

    <XDG cache>/heapemu/wine-8.0/src/wine-8.0/

    python -m loader fetch-tests     # fetch (once) and print the directory

$HEAPEMU_WINE_SRC may name an unpacked Wine 8.0 source tree to use instead (its test files are
checked against the same hashes).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from loader.errors import LoaderError
from loader.wine import cache_dir, cache_lock, sha256_file

WINE_SRC_ENV = "HEAPEMU_WINE_SRC"
ORIG_TARBALL = "wine_8.0~repack.orig.tar.xz"
# Checksums-Sha256 of wine_8.0~repack-4.dsc (Debian bookworm's wine source package)
ORIG_SHA256 = "537c6889647a528ee9092b109e65b0fde288ba55d535044907cf168ca6f6e745"
ORIG_SIZE = 25_462_404
POOL_URLS = (
    "http://deb.debian.org/debian/pool/main/w/wine/",
    "https://deb.debian.org/debian/pool/main/w/wine/",
)
TOP = "wine-8.0"  # the tarball's top directory
# the conformance test files (paths in the source tree) and their SHA-256
TEST_FILES: dict[str, str] = {
    "dlls/kernel32/tests/virtual.c": (
        "b874418f1fe43bb5bbb492881235c78d404b2acc5731851df8bd1935f353758f"
    ),
    "dlls/ntdll/tests/virtual.c": (
        "6f71a1c11579248cc5b7f61874997cd2e597367a54a35aa889f520566af303b6"
    ),
    "dlls/kernel32/tests/heap.c": (
        "b8c032c028b2f4bf037965bd996292b34711f896b78912bfe7dabf1098518ace"
    ),
    "include/wine/test.h": "8fd6104c45e999d127243d152ed990dc14992bfbabcf9d5b77065f71e820bb91",
}
EXTRACT_PREFIXES = (*(f"{TOP}/{p}" for p in TEST_FILES), f"{TOP}/include/")
DOWNLOAD_TIMEOUT = 120  # seconds


class WineSourceError(LoaderError):
    """Wine's test sources could not be found, fetched or verified."""


def source_cache() -> Path:
    """Where fetch_wine_tests puts the source tree: <XDG cache>/heapemu/wine-8.0/src."""
    return cache_dir() / "src"


def verify_wine_tests(root: Path) -> None:
    """Check the test files under the source tree `root` against TEST_FILES."""
    for rel, expected in TEST_FILES.items():
        path = root / rel
        if not path.is_file():
            raise WineSourceError(f"{path} is missing: {root} is not Wine 8.0's source tree")
        actual = sha256_file(path)
        if actual != expected:
            raise WineSourceError(
                f"{path} is not Wine 8.0's file (SHA-256 {actual}, expected {expected}); "
                f"remove {root} to fetch it again"
            )


def _download(target: Path) -> None:
    errors = []
    for base in POOL_URLS:
        url = base + ORIG_TARBALL.replace("~", "%7E")
        try:
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
                target.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
            return
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{url}: {exc}")
    raise WineSourceError(
        "cannot download Wine 8.0's source tarball from Debian:\n  "
        + "\n  ".join(errors)
        + f"\nDownload {ORIG_TARBALL} yourself and unpack it, then set ${WINE_SRC_ENV} to its "
        f"{TOP}/ directory."
    )


def _extract(tarball: Path, staging: Path) -> None:
    staging.mkdir(parents=True)
    try:
        with tarfile.open(tarball, "r:xz") as tar:
            for member in tar:
                if not member.name.startswith(EXTRACT_PREFIXES):
                    continue
                if member.isdir():
                    continue
                if not member.isfile() or ".." in Path(member.name).parts:
                    continue  # only plain files of the tree (links are not needed)
                source = tar.extractfile(member)
                assert source is not None
                path = staging / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise WineSourceError(f"{tarball.name}: cannot unpack it: {exc}") from exc


def fetch_wine_tests() -> Path:
    """Fetch (once) and verify the test sources; return the source tree (``.../wine-8.0``)."""
    final = source_cache() / TOP
    with cache_lock():
        if final.is_dir():
            verify_wine_tests(final)
            return final
        with tempfile.TemporaryDirectory(prefix="heapemu-winesrc-") as tmp:
            tarball = Path(tmp) / ORIG_TARBALL
            _download(tarball)
            size, digest = tarball.stat().st_size, sha256_file(tarball)
            if size != ORIG_SIZE or digest != ORIG_SHA256:
                raise WineSourceError(
                    f"the downloaded {ORIG_TARBALL} is not Debian's (size {size}, SHA-256 "
                    f"{digest}; expected {ORIG_SIZE}, {ORIG_SHA256})"
                )
            staging = source_cache() / ".partial"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _extract(tarball, staging)
                verify_wine_tests(staging / TOP)
                (staging / TOP / "SOURCE").write_text(f"{ORIG_TARBALL} sha256 {ORIG_SHA256}\n")
                (staging / TOP).rename(final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return final


def find_wine_tests(user_dir: str | Path | None = None, *, fetch: bool = True) -> Path:
    """The verified Wine 8.0 source tree: `user_dir`, else $HEAPEMU_WINE_SRC, else the cache
    (fetched when `fetch`)."""
    named = user_dir or os.environ.get(WINE_SRC_ENV)
    if named:
        root = Path(named)
        verify_wine_tests(root)
        return root
    final = source_cache() / TOP
    if final.is_dir() or not fetch:
        if not final.is_dir():
            raise WineSourceError(
                f"Wine's test sources are not in {final}: run python -m loader fetch-tests"
            )
        verify_wine_tests(final)
        return final
    return fetch_wine_tests()
