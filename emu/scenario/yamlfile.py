"""Scenario files' YAML (and JSON) with line numbers, and the one error type of scenarios.

Mappings and lists come back as ``LineDict`` / ``LineList``, which remember the line of every
value (from the YAML nodes' marks), so the checker can say ``file:line: problem``.

Hostile files are refused before they cost anything (issue 20, D9): nesting deeper than
``MAX_DEPTH`` while composing, anchors whose expansion would make more than ``MAX_NODES``
values (billion laughs) or that refer to themselves, integers longer than ``MAX_INT_DIGITS``
characters; the file's size is checked by ``emu.scenario.schema.load_scenario``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


# ---------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else (f"{self.file}: {self.message}")
        )


class ScenarioError(Exception):
    """A scenario that cannot run: every problem, one line each (``file:line: problem``)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------------- YAML with line numbers
class LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself, of each key and of each value."""

    line: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


class LineList(list[Any]):
    line: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


MAX_DEPTH = 64  # nested mappings/lists: a scenario needs four or five
MAX_NODES = 100_000  # values in the document once aliases are expanded
MAX_INT_DIGITS = 40  # characters of one integer (2**64 has 20 digits, 0x... 18)


class _Limit(yaml.YAMLError):
    """A limit of MAX_DEPTH / MAX_NODES / MAX_INT_DIGITS, with the line it was found at."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        # the composer recurses once per level: count the levels before Python's stack does
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(
                    f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES values, or loop."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: the size of a node counts every alias expansion
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_NODES:
                raise _Limit(
                    f"more than {MAX_NODES:,} values once its anchors and aliases are expanded",
                    node.start_mark,
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise _Limit("an alias refers to a node that contains it", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in sizes]


def _int(loader: _Loader, node: yaml.ScalarNode) -> int:
    if len(str(node.value)) > MAX_INT_DIGITS:
        raise _Limit(f"an integer of more than {MAX_INT_DIGITS} characters", node.start_mark)
    return int(yaml.SafeLoader.construct_yaml_int(loader, node))


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in out
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = value_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList()
    out.line = node.start_mark.line + 1
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.lines.append(item.start_mark.line + 1)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _int)


def _yaml_problem(file: str, e: yaml.YAMLError) -> Problem:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    line = mark.line + 1 if mark is not None else None
    text = problem if isinstance(e, _Limit) else f"not valid YAML: {problem}"
    if mark is not None:
        text += f" (column {mark.column + 1})"
    if "got '['" in problem:  # `{block: a[3]}`: YAML ends plain text at [ inside {...}/[...]
        text += "; inside {...} or [...] quote references ('a[3]') or use block style"
    return Problem(file, line, text)


def load_text(text: str, file: str = "<scenario>") -> Any:
    """YAML (or JSON) text into plain data whose mappings and lists carry line numbers."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as e:
        raise ScenarioError([_yaml_problem(file, e)]) from None
    except (RecursionError, MemoryError, ValueError) as e:  # a limit PyYAML itself hit
        raise ScenarioError(
            [Problem(file, None, f"not a usable scenario: {type(e).__name__}")]
        ) from None
