"""One builder at a time across processes: pytest-xdist's workers (and other test runs sharing
a cache) that need the same build wait for the first one instead of repeating it.

    with build_lock(path):   # an exclusive fcntl.flock on ``path`` (created if missing)
        ...                  # check again whether the output exists, else build it

The lock goes with the open file: a worker that dies releases it, so a lock file left behind is
harmless (it is never removed: removing it could let two builders lock two different files).
Builds still go to a temporary name renamed into place, so a reader that does not lock never
sees half an output.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
