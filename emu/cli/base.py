"""What every ``heapemu`` subcommand shares: exit codes, ``CliError``, the ``Command`` record,
the argument parser that reports in one line, value checks, one-line error reports."""

from __future__ import annotations

import argparse
import json
import math
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# `heapemu exec`: the program's own exit code, except when it did not get to exit (these
# follow timeout(1) and the shells: 124 timed out, 125 crashed, 127 not loadable)
EXIT_TIMEOUT, EXIT_CRASHED, EXIT_NOT_LOADED = 124, 125, 127
MAX_PROGRAM_BYTES = 256 << 20  # a PE image heapemu will read (the largest Wine DLL is ~10 MiB)


class CliError(Exception):
    """Bad input: one line that says what is wrong and what to do."""


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``heapemu run: error: ...``, then where to
    look) and exit 2; with ``--json`` on the command line, also a JSON error object."""

    def error(self, message: str) -> NoReturn:
        line = f"heapemu: {message} (see {self.prog} --help)"
        print(line, file=sys.stderr)
        if "--json" in sys.argv[1:]:
            print(json.dumps({"ok": False, "error": line, "problems": [line]}))
        raise SystemExit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------- values
def time_limit(text: str) -> float:
    """``--time-limit`` seconds: a finite number, 0 for none."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"seconds must be a finite number >= 0 (0: no limit), not {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer from 0 to 2**64 - 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"a seed is 0 to 2**64-1, not {text!r}")
    return value


def regular_file(path: str | Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` when it is a regular file (not a device, FIFO or directory) of at most
    ``max_bytes``; CliError otherwise."""
    p = Path(path)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CliError(f"{path}: not a regular file ({what})")
    if max_bytes is not None and info.st_size > max_bytes:
        raise CliError(f"{path}: {info.st_size:,} bytes is too large for {what}")
    return p


# ---------------------------------------------------------------------- main
def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def bad_input(lines: list[str], as_json: bool) -> int:
    for line in lines:
        print(f"heapemu: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": lines[0] if lines else "", "problems": lines}))
    return EXIT_BAD_INPUT
