"""The scenarios that ship with heapemu: package data in ``emu/scenarios/``, found with
importlib.resources (so an installed wheel has them too), and looked up by name."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

SCENARIO_PACKAGE = "emu"  # the shipped scenarios are package data: emu/scenarios/*.yaml
SCENARIO_SUFFIXES = (".yaml", ".yml", ".json")


def _shipped_dir() -> Path | None:
    """emu/scenarios as a directory of the installed (or checked-out) package."""
    folder = resources.files(SCENARIO_PACKAGE).joinpath("scenarios")
    path = Path(str(folder))
    return path if path.is_dir() else None


def shipped_scenarios() -> list[Path]:
    """The scenarios that come with heapemu (package data, found with importlib.resources)."""
    folder = _shipped_dir()
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in SCENARIO_SUFFIXES)


def find_scenario(name: str | Path) -> Path:
    """A file as given, else a shipped scenario of that name (``lec04_growable_heap``)."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    for candidate in shipped_scenarios():
        if candidate.stem == str(name):
            return candidate
    return path


def no_such_scenario(name: str | Path) -> str:
    """What to say about a scenario that is neither a file nor a shipped name, with the
    nearest shipped names ("did you mean ...?"); the caller puts the name in front."""
    stems = [p.stem for p in shipped_scenarios()]
    near = difflib.get_close_matches(Path(name).stem, stems, 3, 0.5)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    return (
        f"no such scenario file; {hint}give a path or a shipped scenario's name "
        "(heapemu run --list)"
    )
