"""The one error type of the loader."""


class LoaderError(Exception):
    """A PE image or Wine DLL that cannot be loaded.

    The message names the file and the problem, and where possible what to do about it.
    """
