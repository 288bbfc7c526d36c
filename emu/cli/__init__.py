"""The ``heapemu`` command."""

from emu.cli.base import main

__all__ = ["main"]
