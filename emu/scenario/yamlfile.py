"""Scenario files' YAML (and JSON) with line numbers, and the one error type of scenarios.

Mappings and lists come back as ``LineDict`` / ``LineList``, which remember the line of every
value (from the YAML nodes' marks), so the checker can say ``file:line: problem``.
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


class _Loader(yaml.SafeLoader):
    pass


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


def _yaml_problem(file: str, e: yaml.YAMLError) -> Problem:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    line = mark.line + 1 if mark is not None else None
    text = f"not valid YAML: {problem}"
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
