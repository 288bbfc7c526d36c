"""Imported first by ``emu/__init__.py``: refuses, with the file's name, a module of the user's
that shadows one of heapemu's other import packages (issue 15, defect 11)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def check_import_packages() -> None:
    """heapemu is three import packages installed side by side: ``emu``, ``loader`` and
    ``asm``. A module of the user's with one of the other two names (``loader.py`` in the
    working directory) would shadow ours and fail far from here; name the file instead."""
    home = Path(__file__).resolve().parent.parent
    for name in ("loader", "asm"):
        module = sys.modules.get(name)
        if module is not None:
            origin = getattr(module, "__file__", None)
            package = hasattr(module, "__path__")
        else:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
            package = spec is not None and spec.submodule_search_locations is not None
        ours = origin is not None and package and Path(origin).resolve().parent.parent == home
        if not ours:
            where = origin or f"a folder named {name} without __init__.py"
            raise ImportError(
                f"heapemu's package {name!r} is shadowed by {where}: rename it or run from "
                f"another directory (heapemu's import packages are emu, loader and asm)"
            )


check_import_packages()
