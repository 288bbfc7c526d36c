"""What every ``heapemu`` subcommand shares: exit codes, ``CliError``, the ``Command`` record,
building an allocator, one-line error reports."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """Bad input: one line that says what is wrong and what to do."""


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------- main
def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def bad_input(lines: list[str], as_json: bool) -> int:
    for line in lines:
        print(f"heapemu: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": lines[0] if lines else "", "problems": lines}))
    return EXIT_BAD_INPUT
