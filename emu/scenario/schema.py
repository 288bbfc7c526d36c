"""Scenario files: parsing and checking, before anything runs.

A scenario is YAML (or JSON, read by the same loader so it has line numbers too)::

    name: lec04_growable_heap          # default: the file name
    description: ...
    arch: both                         # x86, x64, both, or a list; default both
    allocator: builtin                 # builtin, wine, a list of them, or a module:
    #   allocator: {pe: myheap_{arch}.dll, exports: {RtlAllocateHeap: my_alloc, ...}}
    #   allocator: {flat: bump_{arch}.s, exports: {...}}   (paths relative to this file)
    steps:
      - create_heap: HEAP_GROWABLE     # or {flags, reserve, commit}; named `heap` by default
      - alloc: {size: 0x100, count: 100, flags: HEAP_ZERO_MEMORY}
        as: a                          # a list of 100 addresses: a[0] .. a[99], a[-1]
      - free: a[16]                    # also `a`, `a[10:20]`, `a[1], b`, or {block, flags}
      - realloc: {block: 'a[3]', size: 0x200}
      - size: a[2]
        expect: 0x100                  # checked; a failed expect fails the step
      - validate:                      # the whole heap, or a block
      - walk:                          # RtlWalkHeap's entries as the step's result
      - write: {at: 'a[0]', offset: 8, data: "41 42"}   # or text: "..." / fill: 0x41, size: 8
      - read: {at: 'a[0]', size: 4}
      - destroy: heap2
      - checkpoint: after_frees        # RtlWalkHeap of every live heap + the address space
      - layout: {adjacent: [a, b]}     # a goal, decided by the allocator's heap walker:
      #   {distance: [a, b], max: 0x40}, {reuse: {freed: a, by: b}}, {overlap: [a, b]}

Every step may have ``as: NAME`` (name its result), ``heap: NAME`` (default: the heap created
last; ``process_heap`` is the loader's), ``expect: VALUE`` and ``note: TEXT``. Without
``expect``, NULL from alloc/realloc, FALSE from free/validate/destroy and -1 from size fail the
step; ``expect: any`` accepts anything. Inside ``{...}`` or ``[...]`` YAML ends plain text at
``[``, so quote references there (``'a[3]'``) or use block style.

Every problem found is reported as ``file:line: step N (op): problem``, using the line marks of
the YAML nodes; nothing runs until the whole file is clean.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emu.heap.allocator import ENTRY_POINTS, OPTIONAL_ENTRY_POINTS
from emu.heap.registry import ALLOCATOR_NAMES
from emu.scenario.model import (
    ANY,
    ARCHES,
    MODULE_KINDS,
    OPS,
    PROCESS_HEAP,
    STEP_KEYS,
    AllocatorSpec,
    NameInfo,
    Ref,
    Scenario,
    Step,
    what_is,
)
from emu.scenario.ops import OP_CHECKS
from emu.scenario.shipped import find_scenario, no_such_scenario
from emu.scenario.yamlfile import MAX_INT_DIGITS, Problem, ScenarioError, load_text
from emu.win.ntdefs import HEAP_FLAG_NAMES

U64_MAX, U32_MAX = (1 << 64) - 1, (1 << 32) - 1
# step arguments passed as SIZE_T / pointers: on x86 they must fit in 32 bits
POINTER_SIZED_ARGS = ("size", "reserve", "commit", "offset")


# ---------------------------------------------------------------------- the checker
class Checker:
    """Turns loaded data into a Scenario, collecting every problem with its line."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.names: dict[str, NameInfo] = {}
        self.heap_defined = False
        self.checkpoints: set[str] = set()
        self.where = ""  # "step 3 (free): " while checking a step

    def err(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.file, line, self.where + message))

    # -------------------------------------------------------------- scalars
    def integer(
        self,
        value: Any,
        line: int | None,
        what: str,
        *,
        minimum: int = 0,
        maximum: int = U64_MAX,
    ) -> int | None:
        """An integer in [minimum, maximum]: 64 bits at most, as no argument of the Rtl* API is
        wider (``arch_problems`` narrows SIZE_T values to 32 bits for x86 runs)."""
        if isinstance(value, str) and len(value) <= MAX_INT_DIGITS:
            with contextlib.suppress(ValueError):
                value = int(value.replace("_", ""), 0)
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(line, f"{what} must be an integer (like 0x100), not {what_is(value)}")
            return None
        if value < minimum:
            self.err(line, f"{what} must be at least {minimum}, not {value}")
            return None
        if value > maximum:
            show = (lambda v: f"{v:,}") if what == "count" else hex
            self.err(line, f"{what} {show(value)} is too large: at most {show(maximum)}")
            return None
        return value

    def flags(self, value: Any, line: int | None) -> int | None:
        if value is None:
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            return self.integer(value, line, "flags", maximum=U32_MAX)
        items: list[Any]
        if isinstance(value, str):
            items = [s for s in re.split(r"[|,\s]+", value) if s]
        elif isinstance(value, list):
            items = list(value)
        else:
            self.err(
                line,
                f"flags must be names like HEAP_GROWABLE|HEAP_ZERO_MEMORY or an "
                f"integer, not {what_is(value)}",
            )
            return None
        by_name = {n: bit for bit, n in HEAP_FLAG_NAMES.items()}
        out = 0
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                if self.integer(item, line, "flags", maximum=U32_MAX) is None:
                    return None
                out |= item
                continue
            text = str(item).strip()
            try:
                number = int(text, 0) if len(text) <= MAX_INT_DIGITS else None
            except ValueError:
                number = None
            if number is not None:
                if self.integer(number, line, "flags", maximum=U32_MAX) is None:
                    return None
                out |= number
                continue
            key = text.upper()
            key = key if key.startswith("HEAP_") else "HEAP_" + key
            if key not in by_name:
                near = difflib.get_close_matches(key, list(by_name), 1)
                hint = (
                    f" (did you mean {near[0]}?)"
                    if near
                    else (f" (known: {', '.join(sorted(by_name))})")
                )
                self.err(line, f"unknown heap flag {text!r}{hint}")
                return None
            out |= by_name[key]
        return out

    # -------------------------------------------------------------- references
    def ref(
        self, value: Any, line: int | None, what: str, *, want: tuple[str, ...], many: bool = False
    ) -> Ref | list[Ref] | None:
        """A reference to an earlier named result, of one of the kinds in ``want``
        ("heap", "block"). ``many``: lists, slices and comma lists are allowed."""
        if isinstance(value, str) and many and "," in value:
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            if not many:
                self.err(line, f"{what} must name one result, not a list")
                return None
            lines = getattr(value, "lines", [line] * len(value))
            refs = [
                self.ref(v, ln, what, want=want, many=True)
                for v, ln in zip(value, lines, strict=True)
            ]
            flat: list[Ref] = []
            for r in refs:
                if r is None:
                    return None
                flat.extend(r if isinstance(r, list) else [r])
            return flat
        if not isinstance(value, str):
            self.err(
                line,
                f"{what} must be a reference to an earlier result (like a[16]), "
                f"not {what_is(value)}",
            )
            return None
        r = Ref.parse(value)
        if r is None:
            self.err(
                line,
                f"{what}: {value!r} is not a reference; write name, name[i], "
                "name[i:j] or name+0x10",
            )
            return None
        if r.name == PROCESS_HEAP:
            info = NameInfo("heap", None, 0)
        elif r.name not in self.names:
            known = ", ".join(self.names) or "none yet"
            near = difflib.get_close_matches(r.name, list(self.names), 1)
            hint = f"did you mean {near[0]}? " if near else ""
            self.err(
                line,
                f"{what}: no result named {r.name!r} before this step ({hint}"
                f"named so far: {known}; name a result with `as: NAME`)",
            )
            return None
        else:
            info = self.names[r.name]
        if info.kind == "value":
            self.err(line, f"{what}: {r.name!r} (step {info.step}) is a value, not an address")
            return None
        if info.kind == "blocks":
            if r.index is not None:
                if not -info.count <= r.index < info.count:
                    self.err(
                        line,
                        f"{what}: {r} is out of range: {r.name} has {info.count} "
                        f"blocks ({r.name}[0] .. {r.name}[{info.count - 1}])",
                    )
                    return None
                kind = "block"
            elif many:
                return [
                    Ref(r.name, index=i, offset=r.offset)
                    for i in range(info.count)[slice(*(r.slice or (None, None)))]
                ]
            else:
                self.err(
                    line,
                    f"{what}: {r.name} is a list of {info.count} blocks; name one, "
                    f"like {r.name}[0]",
                )
                return None
        else:
            if r.index is not None or r.slice is not None:
                self.err(line, f"{what}: {r.name} is one {info.kind}, not a list; write {r.name}")
                return None
            kind = info.kind
        if kind not in want:
            self.err(line, f"{what}: {r} is a {kind}; a {' or '.join(want)} is needed here")
            return None
        return [r] if many else r

    # -------------------------------------------------------------- top level
    def scenario(self, data: Any, path: Path | None) -> Scenario | None:
        if not isinstance(data, dict):
            self.err(
                getattr(data, "line", 1),
                "a scenario is a mapping with `steps:` (and "
                f"optionally name, description, arch, allocator), not {what_is(data)}",
            )
            return None
        lines: dict[Any, int] = getattr(data, "lines", {})
        known = ("name", "description", "arch", "allocator", "steps")
        misspelt = set()
        for key in data:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, 1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                misspelt.update(near)
                self.err(lines.get(key), f"unknown key {key!r} ({hint}keys: {', '.join(known)})")
        name = data.get("name", path.stem if path else "scenario")
        if not isinstance(name, str):
            self.err(lines.get("name"), f"name must be text, not {what_is(name)}")
            name = str(name)
        description = data.get("description", "") or ""
        arches = self.arches(data.get("arch", "both"), lines.get("arch"))
        allocators = self.allocators(data.get("allocator", "builtin"), lines.get("allocator"))
        steps_data = data.get("steps")
        steps: list[Step] = []
        if steps_data is None:
            if "steps" not in misspelt:
                self.err(getattr(data, "line", 1), "no `steps:` list")
        elif not isinstance(steps_data, list):
            self.err(lines.get("steps"), f"steps must be a list, not {what_is(steps_data)}")
        else:
            step_lines = getattr(steps_data, "lines", [None] * len(steps_data))
            for i, (raw, line) in enumerate(zip(steps_data, step_lines, strict=True), 1):
                step = self.step(i, raw, line)
                if step is not None:
                    steps.append(step)
                self.where = ""
        if self.problems:
            return None
        return Scenario(name, path, arches, allocators, steps, self.names, str(description))

    def arches(self, value: Any, line: int | None) -> list[str]:
        items = ["x86", "x64"] if value in ("both", "all") else value
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not items or any(a not in ARCHES for a in items):
            self.err(line, f"arch must be x86, x64, both or a list of them, not {value!r}")
            return list(ARCHES)
        return list(dict.fromkeys(items))

    def allocators(self, value: Any, line: int | None) -> list[AllocatorSpec]:
        items = value if isinstance(value, list) else [value]
        lines = getattr(value, "lines", None) if isinstance(value, list) else None
        lines = lines or [line] * len(items)
        out = [self.allocator(v, ln) for v, ln in zip(items, lines, strict=True)]
        return [a for a in out if a is not None] or [AllocatorSpec("builtin")]

    def allocator(self, value: Any, line: int | None) -> AllocatorSpec | None:
        if isinstance(value, str) and value in ALLOCATOR_NAMES:
            return AllocatorSpec(value, line=line)
        if not isinstance(value, dict):
            self.err(
                line,
                f"allocator must be builtin, wine, or a mapping like "
                f"{{pe: myheap.dll, exports: {{RtlAllocateHeap: MyAlloc}}}}, not "
                f"{value!r}",
            )
            return None
        lines: dict[Any, int] = getattr(value, "lines", {})
        kinds = [k for k in MODULE_KINDS if k in value]
        extra = [k for k in value if k not in (*MODULE_KINDS, "exports")]
        if len(kinds) != 1 or extra:
            self.err(
                line,
                "a module allocator has exactly one of `pe: FILE` or `flat: FILE` "
                "(FILE may contain {arch}) and optionally `exports:`",
            )
            return None
        kind = kinds[0]
        path = value[kind]
        if not isinstance(path, str) or not path:
            self.err(lines.get(kind), f"{kind}: must be a file name, not {what_is(path)}")
            return None
        exports = value.get("exports") or {}
        ok = isinstance(exports, dict) and all(isinstance(v, str) for v in exports.values())
        if not ok:
            self.err(
                lines.get("exports"),
                "exports must map Rtl* names to the module's export "
                "names, like {RtlAllocateHeap: my_alloc}",
            )
            return None
        known = ENTRY_POINTS + OPTIONAL_ENTRY_POINTS
        for key in exports:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, 1)
                hint = f"did you mean {near[0]}? " if near else ""
                self.err(
                    getattr(exports, "lines", {}).get(key, line),
                    f"exports: {key!r} is not an allocator entry point ({hint}"
                    f"known: {', '.join(ENTRY_POINTS)})",
                )
                return None
        return AllocatorSpec(kind, path, dict(exports), lines.get("exports", line))

    # -------------------------------------------------------------- steps
    def step(self, index: int, raw: Any, line: int | None) -> Step | None:
        if isinstance(raw, str) and raw in OPS:
            raw = {raw: None}  # `- walk` is `- walk:`
        if not isinstance(raw, dict):
            self.where = f"step {index}: "
            self.err(line, f"a step is a mapping like `alloc: 0x100`, not {what_is(raw)}")
            return None
        lines: dict[Any, int] = getattr(raw, "lines", {})
        ops = [k for k in raw if k in OPS]
        others = [k for k in raw if k not in OPS and k not in STEP_KEYS]
        self.where = f"step {index}: "
        if len(ops) != 1:
            if others and not ops:
                near = difflib.get_close_matches(str(others[0]), OPS, 1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                self.err(
                    lines.get(others[0], line),
                    f"unknown operation {others[0]!r} ({hint}operations: {', '.join(OPS)})",
                )
            elif ops:
                self.err(line, f"one operation per step, not {len(ops)} ({', '.join(ops)})")
            else:
                self.err(line, f"no operation (operations: {', '.join(OPS)})")
            return None
        op = ops[0]
        self.where = f"step {index} ({op}): "
        for k in others:
            near = difflib.get_close_matches(str(k), (*STEP_KEYS, *OPS), 1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            self.err(
                lines.get(k, line),
                f"unknown key {k!r} ({hint}a step has one operation "
                f"and optionally {', '.join(STEP_KEYS)})",
            )
        step = Step(index, line, op, {})
        note = raw.get("note", "")
        step.note = note if isinstance(note, str) else str(note)
        if "heap" in raw:
            if op in ("create_heap", "checkpoint", "write", "read"):
                self.err(lines.get("heap"), f"{op} takes no heap:")
            else:
                h = self.ref(raw["heap"], lines.get("heap"), "heap", want=("heap",))
                step.heap = h if isinstance(h, Ref) else None
        elif op not in ("create_heap", "checkpoint", "write", "read") and not self.heap_defined:
            self.err(
                line,
                "no heap yet: add a `create_heap:` step before this one, or give "
                f"`heap: {PROCESS_HEAP}`",
            )
        value, vline = raw[op], lines.get(op, line)
        n_before = len(self.problems)
        kind = OP_CHECKS[op](self, step, value, vline)
        if "expect" in raw:
            step.expect = self.expect(op, raw["expect"], lines.get("expect", line), kind)
        self.name(step, raw, lines.get("as", line), kind)
        return step if len(self.problems) == n_before else None

    def name(self, step: Step, raw: dict[Any, Any], line: int | None, kind: str) -> None:
        name = raw.get("as")
        if name is None and step.op == "create_heap":
            name = "heap" if "heap" not in self.names else f"heap{step.index}"
        if name is None:
            return
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            self.err(line, f"as: {name!r} is not a name (letters, digits, _)")
            return
        if kind == "none":
            self.err(line, f"{step.op} has no result to name")
            return
        if name == PROCESS_HEAP:
            self.err(line, f"as: {PROCESS_HEAP} is reserved for the loader's process heap")
            return
        if name in self.names and self.names[name].kind != kind:
            prev = self.names[name]
            self.err(
                line,
                f"as: {name!r} already names a {prev.kind} (step {prev.step}); choose another name",
            )
            return
        count = step.args.get("count") or 0
        self.names[name] = NameInfo(kind, line, step.index, count)
        step.name = name

    def expect(self, op: str, value: Any, line: int | None, kind: str) -> Any:
        if value == ANY:
            return ANY
        if op in ("free", "validate", "destroy"):
            if not isinstance(value, bool):
                self.err(line, f"expect: {op} returns true or false, not {what_is(value)}")
            return value
        if op in ("alloc", "realloc"):
            if value is None:
                return 0
            if isinstance(value, str) and not value.strip().startswith(("0x", "0X")):
                return self.ref(value, line, "expect", want=("block", "heap"))
            return self.integer(value, line, "expect")
        if op == "size":
            return self.integer(value, line, "expect", minimum=-1)
        if op == "read":
            return self.hexbytes(value, line, "expect")
        self.err(line, f"{op} has no result to expect")
        return None

    def hexbytes(self, value: Any, line: int | None, what: str) -> str | None:
        text = re.sub(r"\s+", "", str(value)) if isinstance(value, str | int) else None
        if text is None or not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", text) or not text:
            self.err(line, f"{what} must be hex bytes like '41 42 00', not {what_is(value)}")
            return None
        return text.lower()

    def mapping(
        self,
        value: Any,
        line: int | None,
        op: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
    ) -> dict[str, tuple[Any, int | None]] | None:
        """The arguments of a mapping, each with its line; None after reporting problems."""
        if not isinstance(value, dict):
            self.err(line, f"expected a mapping with {', '.join(allowed)}, not {what_is(value)}")
            return None
        lines: dict[Any, int] = getattr(value, "lines", {})
        ok = True
        for k in value:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), allowed, 1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                self.err(
                    lines.get(k, line),
                    f"unknown argument {k!r} ({hint}{op} takes {', '.join(allowed)})",
                )
                ok = False
        for k in required:
            if k not in value:
                self.err(line, f"missing {k}: ({op} takes {', '.join(allowed)})")
                ok = False
        return {str(k): (v, lines.get(k, line)) for k, v in value.items()} if ok else None


def arch_problems(scenario: Scenario, arch: str) -> list[Problem]:
    """What does not fit ``arch``'s registers: on x86 a size, reserve, commit or offset (or an
    expected address or size) above 0xffffffff, which the CPU would silently truncate (issue
    20, D8). Checked for every run asked for before any runs."""
    if arch != "x86":
        return []
    problems = []
    for step in scenario.steps:
        values = [(k, step.args.get(k)) for k in POINTER_SIZED_ARGS]
        if step.op in ("alloc", "realloc", "size") and isinstance(step.expect, int):
            values.append(("expect", step.expect))
        for key, value in values:
            if isinstance(value, int) and not isinstance(value, bool) and value > U32_MAX:
                problems.append(
                    Problem(
                        scenario.file,
                        step.line,
                        f"step {step.index} ({step.op}): {key} 0x{value:x} does not fit x86's "
                        "32-bit SIZE_T (at most 0xffffffff); run it on x64 (--arch x64)",
                    )
                )
    return problems


# ---------------------------------------------------------------------- entry points
def parse_scenario(data: Any, path: str | Path | None = None) -> Scenario:
    """A Scenario from loaded data (a dict, as from JSON or YAML); ScenarioError lists every
    problem. ``path`` names the file in messages and anchors relative module paths."""
    p = Path(path) if path is not None else None
    checker = Checker(str(p) if p else "<scenario>")
    scenario = checker.scenario(data, p)
    if scenario is None:
        raise ScenarioError(checker.problems)
    return scenario


MAX_SCENARIO_BYTES = 1 << 20  # 1 MiB: the seed's scenario is 1.8 KB


def read_scenario_text(path: Path) -> str:
    """The text of a scenario file, refused with one problem when it is not a regular file,
    is larger than MAX_SCENARIO_BYTES (read no further than that), or is not UTF-8."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ScenarioError(
                [
                    Problem(
                        str(path), None, "not a regular file (a scenario is a .yaml or .json file)"
                    )
                ]
            )
        with path.open("rb") as f:
            data = f.read(MAX_SCENARIO_BYTES + 1)
    except FileNotFoundError:
        raise ScenarioError([Problem(str(path), None, no_such_scenario(path))]) from None
    except OSError as e:
        raise ScenarioError(
            [Problem(str(path), None, f"cannot read it: {e.strerror or e}")]
        ) from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            [
                Problem(
                    str(path), None, f"larger than {MAX_SCENARIO_BYTES >> 20} MiB: not a scenario"
                )
            ]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(
            [Problem(str(path), None, f"not UTF-8 text ({e.reason} at byte {e.start})")]
        ) from None


def load_scenario(source: str | Path | Mapping[str, Any] | Scenario) -> Scenario:
    """A Scenario from a file (``.yaml``, ``.yml``, ``.json``), a shipped scenario's name
    (``lec04_growable_heap``), a mapping, or a Scenario."""
    if isinstance(source, Scenario):
        return source
    if isinstance(source, Mapping):
        return parse_scenario(dict(source))
    path = find_scenario(source)
    text = read_scenario_text(path)
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)  # strict JSON first: its errors are the ones a JSON author expects
        except json.JSONDecodeError as e:
            raise ScenarioError(
                [Problem(str(path), e.lineno, f"not valid JSON: {e.msg}")]
            ) from None
        except RecursionError:
            raise ScenarioError([Problem(str(path), None, "nested too deeply")]) from None
    return parse_scenario(load_text(text, str(path)), path)
