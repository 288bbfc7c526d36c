"""Shell completion for ``heapemu``, generated from the command table's own parsers:
``eval "$(heapemu --completion bash)"`` (zsh: ``--completion zsh``, through bashcompinit).
Subcommands, their options, the choices of choice options (``--arch``, ``--allocator``,
heap views) and the shipped scenarios' names; files everywhere else."""

from __future__ import annotations

import argparse
import shlex

from emu.scenario import shipped_scenarios

SHELLS = ("bash", "zsh")


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(option strings, option -> its choices, choices of positional arguments)."""
    options: list[str] = []
    choices: dict[str, list[str]] = {}
    positional: list[str] = []
    for action in parser._actions:
        values = [str(c) for c in action.choices] if action.choices else []
        if action.option_strings:
            options += action.option_strings
            for opt in action.option_strings:
                if values:
                    choices[opt] = values
        elif values and not isinstance(action, argparse._SubParsersAction):
            positional += values
    return options, choices, positional


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion function for ``shell`` (bash or zsh)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top_options, _, _ = _options(parser)
    commands: dict[str, argparse.ArgumentParser] = dict(sub.choices)
    scenarios = " ".join(p.stem for p in shipped_scenarios())
    value_cases: dict[str, list[str]] = {"--arch": ["x86", "x64", "both"]}
    cases = []
    for name, p in commands.items():
        options, choices, positional = _options(p)
        value_cases.update(choices)
        words = [*positional, *(scenarios.split() if name in ("run", "heap", "trace") else [])]
        cases.append(
            f"    {name}) opts={shlex.quote(' '.join(options))}; "
            f"words={shlex.quote(' '.join(words))};;"
        )
    values = [
        f'    {opt}) COMPREPLY=($(compgen -W {shlex.quote(" ".join(v))} -- "$cur")); return;;'
        for opt, v in sorted(value_cases.items())
    ]
    body = "\n".join(
        [
            "_heapemu() {",
            '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '  local cmd="${COMP_WORDS[1]}" opts="" words=""',
            '  if [ "$COMP_CWORD" -eq 1 ]; then',
            f"    COMPREPLY=($(compgen -W {shlex.quote(' '.join([*commands, *top_options]))}"
            ' -- "$cur")); return',
            "  fi",
            '  case "$prev" in',
            *values,
            "  esac",
            '  case "$cmd" in',
            *cases,
            "  esac",
            '  if [[ "$cur" == -* ]]; then',
            '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
            "  else",
            '    COMPREPLY=($(compgen -W "$words" -- "$cur") $(compgen -f -- "$cur"))',
            "  fi",
            "}",
            "complete -o filenames -F _heapemu heapemu",
        ]
    )
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body + "\n"
    return body + "\n"
