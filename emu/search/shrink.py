"""Shrinking a sequence that shows something to a minimal one that still does.

``shrink(items, keeps)`` removes chunks (halves, quarters, ... single items) for as long as
``keeps(smaller)`` stays true: delta debugging's ddmin, simplified to removals. The result is
1-minimal (no single removable item can go) and ``keeps`` is called at most a few times
``len(items) * log(len(items))`` for typical inputs; ``fixed(item)`` marks items never removed
(a program's target steps, an injected bug). Items must be hashable (tried sequences are
remembered).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def shrink(
    items: Sequence[T],
    keeps: Callable[[list[T]], bool],
    *,
    fixed: Callable[[T], bool] = lambda _: False,
    normalize: Callable[[list[T]], list[T]] = lambda x: x,
    budget: int = 100_000,
) -> list[T]:
    """The smallest sequence found (see the module doc). ``normalize`` cleans a candidate up
    after a removal (drops what no longer makes sense); ``budget`` caps the ``keeps`` calls."""
    current = list(items)
    tried: set[tuple[T, ...]] = set()
    calls = 0
    chunk = max(1, len(current) // 2)
    while chunk >= 1 and calls < budget:
        removable = [i for i, x in enumerate(current) if not fixed(x)]
        if not removable:
            break
        progress = False
        for start in range(0, len(removable), chunk):
            drop = set(removable[start : start + chunk])
            smaller = normalize([x for i, x in enumerate(current) if i not in drop])
            key = tuple(smaller)
            if len(smaller) >= len(current) or key in tried:
                continue
            tried.add(key)
            calls += 1
            if keeps(smaller):
                current = smaller
                progress = True
                break
            if calls >= budget:
                break
        if not progress:
            if chunk == 1:
                break
            chunk //= 2
        else:
            chunk = min(chunk, max(1, len([x for x in current if not fixed(x)]) // 2))
    return current
