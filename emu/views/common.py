"""What every heap view shares: finding the process's heaps, walking them, JSON, hex columns.

A view is a dataclass built from the walkers' reports (``emu.heap.walkers``) and process memory,
with
``to_json()`` (plain dicts, lists, ints, strs) and ``from_json()`` (the same dataclass back);
the text is rendered from the dataclass alone, never from the process.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from emu.heap.allocator import Allocator
from emu.heap.registry import detect_kind, walk_heap
from emu.heap.walkers import HeapReport
from emu.process.core import ProcessCore

T = TypeVar("T", bound="JsonView")


class NotInHeapError(LookupError):
    """An address that no heap block, large block or heap of the process holds."""


class JsonView:
    """Mixin for view dataclasses: ``to_json`` and its inverse ``from_json``."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any]) -> T:
        return typing.cast(T, _decode(cls, data))


def _decode(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` (dataclass, list[...], X | None, scalar) from JSON."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _decode(inner, value)
    if origin is list:
        (inner,) = get_args(tp)
        return [_decode(inner, v) for v in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(**{k: _decode(hints[k], v) for k, v in value.items() if k in fields})
    return value


# ---------------------------------------------------------------------------- heaps


def heap_kind(proc: ProcessCore) -> str:
    """The name of the allocator loaded in proc (see ``emu.heap.registry.detect_kind``)."""
    return detect_kind(proc).name


def list_heaps(proc: ProcessCore, allocator: Allocator | None = None) -> list[int]:
    """Every heap of the process, in the allocator's order (index = WinDbg's heap ID).

    Allocators that keep their own list (Wine) are asked through an emulated
    RtlGetProcessHeaps: pass the Allocator you already have, or one is made once per process
    (``proc.view_allocator``).
    """
    kind = detect_kind(proc)
    if allocator is None and not kind.heaps_in_peb:
        if proc.view_allocator is None:
            module = proc.modules.get(kind.module_name)
            if module is None:
                raise ValueError(f"{kind.module_name} is not loaded")
            proc.view_allocator = Allocator(proc, module, name=kind.name)
        allocator = proc.view_allocator
    return kind.list_heaps(proc, allocator)


def resolve_heaps(
    proc: ProcessCore, heaps: list[int] | None, allocator: Allocator | None
) -> list[int]:
    """``heaps`` as given, or every heap of the process."""
    return list(heaps) if heaps is not None else list_heaps(proc, allocator)


def walk_heaps(proc: ProcessCore, heaps: list[int]) -> list[HeapReport]:
    return [walk_heap(proc, h) for h in heaps]


# ---------------------------------------------------------------------------- text


def ptr_digits(arch: str) -> int:
    """Hex digits of an address column, as WinDbg prints them (8 on x86, 16 on x64)."""
    return 16 if arch == "x64" else 8


def hexp(value: int, arch: str) -> str:
    """An address as WinDbg prints it: zero-padded to the pointer width, no 0x."""
    return f"{value:0{ptr_digits(arch)}x}"


def kib(n: int) -> int:
    """Bytes to KiB, rounded down as ``!heap -s`` does."""
    return n // 1024


def ascii_magic(value: int, size: int) -> str:
    """A magic number's little-endian bytes as text ('US', 'HEAP'), '' if not printable."""
    raw = value.to_bytes(size, "little")
    return raw.decode("ascii") if all(0x20 <= c < 0x7F for c in raw) else ""
