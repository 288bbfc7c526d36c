"""Loaded modules and their symbols: what every address in the process means.

The loaders (``emu.load.pe``, ``emu.load.flat``) build :class:`Module` records; the process keeps
them in a :class:`ModuleList`, which resolves ``"module!Name"`` and symbolises addresses as
``module!Name+0x1f`` for traces, stacks and breakpoints.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from loader.upcase import name_key


@dataclass
class Module:
    name: str  # as loaded: "ntdll.dll", "builtin_heap"
    base: int
    size: int
    kind: str  # "pe" or "flat"
    path: str | None = None
    exports: dict[str, int] = field(default_factory=dict)  # name -> address
    ordinals: dict[int, int] = field(default_factory=dict)  # ordinal -> address
    symbols: dict[str, int] = field(default_factory=dict)  # every known label -> address
    forwarders: dict[str, str] = field(default_factory=dict)  # name or "#ord" -> "DLL.Func"
    image: Any = None  # loader-specific data (the parsed PE, the assembly listing, ...)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def short_name(self) -> str:
        """Lower-case name without extension, as WinDbg shows modules ("ntdll")."""
        n = self.name.lower()  # for display; ModuleList compares with Windows' rules
        return n.rsplit(".", 1)[0] if n.endswith((".dll", ".exe", ".sys", ".drv")) else n

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.end

    def export(self, name: str) -> int:
        if name.startswith("#"):
            return self.ordinals[int(name[1:], 0)]
        if name in self.exports:
            return self.exports[name]
        return self.symbols[name]


_SYMBOL = re.compile(r"^(?P<mod>[^!]+)!(?P<sym>[^+]+?)(?:\+(?P<off>(?:0x)?[0-9a-fA-F]+))?$")


class ModuleList:
    def __init__(self) -> None:
        self._modules: list[Module] = []
        self._index: list[tuple[int, str, Module]] | None = None
        self._index_keys: list[int] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._modules))

    def __len__(self) -> int:
        return len(self._modules)

    def add(self, module: Module) -> None:
        for m in self._modules:
            if m.base < module.end and module.base < m.end:
                raise ValueError(f"{module.name} overlaps {m.name} at 0x{m.base:x}")
            if name_key(m.short_name) == name_key(module.short_name):
                raise ValueError(f"a module named {module.name} is already loaded")
        self._modules.append(module)
        self._index = None

    def remove(self, module: Module) -> None:
        self._modules.remove(module)
        self._index = None

    def get(self, name: str) -> Module | None:
        """The module named ``name`` (with or without its extension), compared as Windows
        compares names (its upcase table: KELVIN SIGN is not 'K')."""
        key = name_key(name)
        for m in self._modules:
            if name_key(m.name) == key or name_key(m.short_name) == key:
                return m
        return None

    def containing(self, addr: int) -> Module | None:
        for m in self._modules:
            if m.contains(addr):
                return m
        return None

    def resolve(self, spec: str) -> int:
        m = _SYMBOL.match(spec.strip())
        if not m:
            raise KeyError(f"{spec!r} is not of the form module!Symbol[+offset]")
        mod = self.get(m["mod"])
        if mod is None:
            loaded = ", ".join(x.name for x in self._modules) or "none"
            raise KeyError(f"no module {m['mod']!r} is loaded (loaded: {loaded})")
        return self._resolve_in(mod, m["sym"], 0) + (int(m["off"], 16) if m["off"] else 0)

    def _resolve_in(self, mod: Module, sym: str, depth: int) -> int:
        try:
            return mod.export(sym)
        except (KeyError, ValueError):
            pass
        fwd = mod.forwarders.get(sym)
        if fwd is not None and depth < 16:
            dll, _, func = fwd.rpartition(".")
            target = self.get(dll)
            if target is not None:
                return self._resolve_in(target, func, depth + 1)
            raise KeyError(f"{mod.name}!{sym} forwards to {fwd}, which is not loaded")
        raise KeyError(f"{mod.name} has no symbol {sym!r}")

    def _build_index(self) -> None:
        entries = []
        for mod in self._modules:
            seen: dict[int, str] = {}
            for name, addr in list(mod.exports.items()) + list(mod.symbols.items()):
                if mod.contains(addr) and addr not in seen:
                    seen[addr] = name
            entries += [(addr, name, mod) for addr, name in seen.items()]
        entries.sort(key=lambda e: e[0])
        self._index = entries
        self._index_keys = [e[0] for e in entries]

    def symbolize(self, addr: int) -> str:
        mod = self.containing(addr)
        if mod is None:
            return f"0x{addr:x}"
        if self._index is None:
            self._build_index()
        assert self._index is not None
        i = bisect.bisect_right(self._index_keys, addr) - 1
        if i >= 0 and self._index[i][2] is mod:
            sym_addr, name, _ = self._index[i]
            off = addr - sym_addr
            return f"{mod.short_name}!{name}" + (f"+0x{off:x}" if off else "")
        return f"{mod.short_name}+0x{addr - mod.base:x}"

    def invalidate(self) -> None:
        """Call after changing a module's symbols."""
        self._index = None
