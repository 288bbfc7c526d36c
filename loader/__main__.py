"""``python -m loader``: Wine 8.0's files for heapemu, in one command.

python -m loader fetch [--arch x86|x64]... [--dir DLLDIR] [--nls-dir NLSDIR]
    find (or fetch from Debian's libwine packages) and verify the DLLs of each arch and the
    NLS locale files; print where they are
python -m loader fetch-tests [--dir WINE_SRC]
    find (or fetch from Debian's wine source package) and verify Wine 8.0's conformance-test
    sources (loader.wine_tests); print the source tree
python -m loader syscalls --arch x86|x64 [--dir DLLDIR]
    the system-call numbers read from that ntdll.dll's own stubs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loader.errors import LoaderError
from loader.peimage import PeImage
from loader.wine import ARCHES, WINE_DIR_ENV, ensure_wine_dlls, find_wine_dir, wine_syscall_numbers
from loader.wine_nls import NLS_DIR_ENV, find_nls_dir
from loader.wine_tests import WINE_SRC_ENV, find_wine_tests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="find or fetch and verify the DLLs and NLS files")
    fetch.add_argument("--arch", choices=ARCHES, action="append", help="default: both")
    fetch.add_argument("--dir", help=f"a Wine DLL directory to use (like ${WINE_DIR_ENV})")
    fetch.add_argument("--nls-dir", help=f"an NLS directory to use (like ${NLS_DIR_ENV})")
    tests = sub.add_parser("fetch-tests", help="find or fetch Wine's conformance-test sources")
    tests.add_argument("--dir", help=f"an unpacked Wine 8.0 source tree (like ${WINE_SRC_ENV})")
    syscalls = sub.add_parser("syscalls", help="print the syscall numbers read from ntdll")
    syscalls.add_argument("--arch", choices=ARCHES, required=True)
    syscalls.add_argument("--dir", help=f"a Wine DLL directory to use (like ${WINE_DIR_ENV})")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for arch, directory in ensure_wine_dlls(args.arch or ARCHES, args.dir).items():
                print(f"{arch} {directory}")
            print(f"nls {find_nls_dir(args.nls_dir)}")
        elif args.command == "fetch-tests":
            print(find_wine_tests(args.dir))
        else:
            image = PeImage.from_file(find_wine_dir(args.arch, args.dir) / "ntdll.dll")
            for number, name in wine_syscall_numbers(image).items():
                print(f"{number:#06x} {name}")
    except LoaderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
