"""The ``heapemu`` command."""

from emu.cli.app import main

__all__ = ["main"]
