"""The ``heapemu`` command line.

Subcommands live in ``COMMANDS`` (name -> Command: help, how to add its options, how to run it);
adding ``heapemu heap`` or ``heapemu trace`` is one more entry. A command raises ``CliError``
(or lets ScenarioError / LoaderError through) for bad input: ``main`` prints one line per problem
and exits 2. Exit codes: 0 success, 1 a run failed, 2 bad input or an unavailable option
(``heapemu exec`` returns the program's own exit code; see its --help).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from emu import __version__
from emu.cli.base import EXIT_OK, CliError, Command, Parser, bad_input, one_line
from emu.cli.complete import SHELLS, completion_script
from emu.cli.exec import EXEC_COMMAND
from emu.cli.inspect import INSPECT_COMMANDS
from emu.cli.replay import REPLAY_COMMAND
from emu.cli.run import RUN_COMMANDS
from emu.cli.search import SEARCH_COMMANDS
from emu.scenario import ScenarioError
from loader.errors import LoaderError

COMMANDS: dict[str, Command] = {
    **RUN_COMMANDS,
    **INSPECT_COMMANDS,
    "exec": EXEC_COMMAND,
    "replay": REPLAY_COMMAND,
    **SEARCH_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="heapemu",
        description="Run real Windows heap-allocator code on emulated x86/x64.",
        epilog="exit codes: 0 success, 1 a run failed, 2 bad input "
        "(heapemu exec: the program's own; see heapemu exec --help)",
    )
    parser.add_argument("--version", action="version", version=f"heapemu {__version__}")
    parser.add_argument(
        "--completion",
        choices=SHELLS,
        help='print a shell completion script: eval "$(heapemu --completion bash)"',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.completion:
        sys.stdout.write(completion_script(args.completion, parser))
        return EXIT_OK
    if not args.command:
        parser.error(f"name a command: {', '.join(COMMANDS)}")
    as_json = bool(getattr(args, "json", False))
    try:
        return COMMANDS[args.command].run(args)
    except BrokenPipeError:  # `heapemu ... | head`: the reader has gone, not an error
        sys.stderr.close()
        return EXIT_OK
    except ScenarioError as e:
        return bad_input([str(p) for p in e.problems], as_json)
    except (CliError, LoaderError) as e:
        return bad_input([one_line(str(e))], as_json)
    except FileNotFoundError as e:
        return bad_input([f"{e.filename}: no such file"], as_json)
    except KeyboardInterrupt:
        print("heapemu: interrupted", file=sys.stderr)
        return 130
