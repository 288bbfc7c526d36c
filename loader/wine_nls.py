"""Find, fetch and verify Wine 8.0's locale data (``*.nls``) for programs run under heapemu.

Wine's kernelbase and ntdll read their locale, code-page, sorting and normalisation tables
through the NtInitializeNlsFiles and NtGetNlsSectionPtr system calls; heapemu serves those from
the same Debian package its DLLs come from (``libwine`` 8.0~repack-4 carries them,
arch-independent, at ``usr/share/wine/nls/``). find_nls_dir() looks, in this order:

1. a directory the user names (the ``user_dir`` argument, else $HEAPEMU_WINE_NLS_DIR): the only
   place looked at then;
2. an installed Wine's ``/usr/share/wine/nls`` (and ``/usr/local``, ``/opt/wine*``);
3. the per-user cache ``<XDG cache>/heapemu/wine-8.0/nls/``, filled from the amd64 ``libwine``
   package with the same ``apt-get download`` as the DLLs (``loader.wine``). Only NLS_FILES are
   taken out of the .deb.

Every file in NLS_FILES found is checked against its recorded SHA-256; the files a start-up
always reads (REQUIRED_NLS) must be there.

    python -m loader fetch             # with the DLLs: find or fetch, print the directories
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from loader.errors import LoaderError
from loader.wine import (
    DEB_PACKAGES,
    DEBIAN_VERSION,
    WINE_VERSION,
    cache_dir,
    cache_lock,
    download_deb,
    extract_from_deb,
    sha256_memo,
)

NLS_DIR_ENV = "HEAPEMU_WINE_NLS_DIR"
DEB_NLS_DIR = "usr/share/wine/nls"
_DEB_ARCH = "x64"  # the files are arch-independent; the amd64 package is taken

# SHA-256 of the files in Debian's libwine 8.0~repack-4 (usr/share/wine/nls/).
NLS_SHA256: dict[str, str] = {
    "locale.nls": "a0b40501bd0abd5f94abdb58fc58e95d61f9280571ed54d77c8881cd318708a9",
    "l_intl.nls": "87096b8a62c599b259f8479b55d98c433a3a7d702afdb9be0dc71db3a14efb3d",
    "sortdefault.nls": "b665878a680c042d0ff990b21f12b02a5252bf8a3ef1043d0d3276424e108347",
    "c_1252.nls": "e2634ee32da7977d762d2d45be2053309ee718572a7d8bb0034180dc1b0b6b76",
    "c_437.nls": "04d741575060dfcd57d8650f70e65db154944bae95e8dfbe058fadee639e21d0",
    "c_850.nls": "4fd63d67d0af5d5100b3c7d74666f260546e1a616c6bc88e76fff3bc10418d5b",
    "c_20127.nls": "951a19ce0d3c785d12ea94cb28ce5c2c096d302e35b3fb3e8b35248a006435ba",
    "normnfc.nls": "d8345630e84d325f31aa33e1df7923e422a1f8bb56a8407a2772ba91b43974cc",
    "normnfd.nls": "e7489e8155a7c077958698fb3d61f0eaded983a4fe8168db883b0bf6878c7531",
    "normnfkc.nls": "2dd0ad907beecdf350a1d3028eefd39f39513da78d728df7af18d42122e49b52",
    "normnfkd.nls": "a22fcd46c319a3f7e4018044930fd92685e5759183b937c4141533dbb84e15a2",
    "normidna.nls": "cae1a6cdf9a711953eabb00fbd52262801c6d6b097a08b00655ec309ef8df124",
}
NLS_FILES = tuple(NLS_SHA256)
REQUIRED_NLS = ("locale.nls", "l_intl.nls", "c_1252.nls", "c_437.nls")


def nls_cache_dir() -> Path:
    return cache_dir() / "nls"


def verify_nls_dir(directory: Path, remedy: str) -> None:
    """Check the NLS_FILES present in ``directory``; REQUIRED_NLS must be present."""
    for name in NLS_FILES:
        path = directory / name
        if not path.is_file():
            if name in REQUIRED_NLS:
                raise LoaderError(f"{path}: not found (Wine {WINE_VERSION} locale data); {remedy}")
            continue
        actual = sha256_memo(path)
        if actual != NLS_SHA256[name]:
            raise LoaderError(
                f"{path}: SHA-256 mismatch for Wine {WINE_VERSION} ({DEBIAN_VERSION}) {name}: "
                f"expected {NLS_SHA256[name]}, actual {actual}. {remedy}"
            )


def installed_nls_dirs() -> list[Path]:
    roots = [Path("/usr/share/wine"), Path("/usr/local/share/wine")]
    roots += [opt / "share" / "wine" for opt in sorted(Path("/opt").glob("wine*"))]
    return [root / "nls" for root in roots if (root / "nls" / "locale.nls").is_file()]


def find_nls_dir(user_dir: str | Path | None = None, *, fetch: bool = True) -> Path:
    """The verified directory holding Wine 8.0's NLS files (see the module docstring)."""
    user = user_dir if user_dir is not None else os.environ.get(NLS_DIR_ENV)
    if user:
        verify_nls_dir(
            Path(user), f"Point {NLS_DIR_ENV} at Debian libwine {DEBIAN_VERSION}'s nls files."
        )
        return Path(user)
    for directory in installed_nls_dirs():
        try:
            verify_nls_dir(directory, "")
        except LoaderError:
            continue
        return directory
    cached = nls_cache_dir()
    remedy = f"Delete {cached} and run `python -m loader fetch` to fetch it again."
    if (cached / "locale.nls").is_file():
        verify_nls_dir(cached, remedy)
        return cached
    if not fetch:
        raise LoaderError(
            f"Wine {WINE_VERSION} NLS files not found; run `python -m loader fetch` "
            f"or set {NLS_DIR_ENV}"
        )
    return fetch_nls_files()


def _extract_nls(deb: Path, target: Path) -> None:
    """Take NLS_FILES out of the .deb, stopping as soon as all are out."""
    found, _ = extract_from_deb(deb, DEB_NLS_DIR, NLS_FILES, target)
    missing = [name for name in REQUIRED_NLS if name not in found]
    if missing:
        raise LoaderError(f"{deb.name}: {', '.join(missing)} not found under {DEB_NLS_DIR}/")


def fetch_nls_files() -> Path:
    """Fill the cache from Debian's amd64 libwine package; return the directory."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise LoaderError(
                f"Wine {WINE_VERSION} NLS files not found and {tool} is not available; set "
                f"{NLS_DIR_ENV} to a copy of libwine {DEBIAN_VERSION}'s {DEB_NLS_DIR}/"
            )
    final = nls_cache_dir()
    with cache_lock():
        if (final / "locale.nls").is_file():
            verify_nls_dir(final, "")
            return final
        with tempfile.TemporaryDirectory(prefix="heapemu-nls-") as tmp:
            deb = download_deb(_DEB_ARCH, Path(tmp), None)
            staging = cache_dir() / ".nls.partial"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _extract_nls(deb, staging)
                verify_nls_dir(staging, f"The downloaded {deb.name} is not the expected package.")
                (staging / "SOURCE").write_text(
                    f"{DEB_PACKAGES[_DEB_ARCH]} {DEBIAN_VERSION} {DEB_NLS_DIR}/\n"
                )
                staging.rename(final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return final
