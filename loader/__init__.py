"""Emulator-independent half of the PE loader: parse/validate/lay out PE images, find Wine DLLs."""

from loader.errors import LoaderError

__all__ = ["LoaderError"]
