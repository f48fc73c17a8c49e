"""The `metasym` command: one parser, subcommands registered by feature modules.

Each module in `_COMMAND_MODULES`, and each module another package declares in the entry-point
group `metasym.commands` (`metasym_core.plugins`; the ROS package adds `launch` and `flight`),
exposes `register(subparsers)`, which adds its subcommands with `set_defaults(func=...)`;
`func(args) -> int` is the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from metasym_core.errors import MetaSymError

_COMMAND_MODULES = [
    "metasym_core.bench.cli",
    "metasym_core.systems.cli",
    "metasym_core.train.cli",
    "metasym_core.demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands)."""
    from metasym_core.plugins import COMMANDS, load

    plugins, failed = load(COMMANDS)
    epilog = ("Commands from other packages that could not be loaded (install them to use these): "
              + "; ".join(failed)) if failed else None
    parser = argparse.ArgumentParser(prog="metasym", description=__doc__.splitlines()[0], epilog=epilog)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for module in plugins:
        module.register(sub)
    return parser


def _quiet_exit(_signum, _frame) -> None:
    sys.stderr.write("metasym: interrupted during start-up; nothing was done\n")
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def _sigint_exits_quietly() -> Iterator[None]:
    """While the parser imports every command (torch among them: seconds), SIGINT ends the process at once
    with one line and code 0, instead of a KeyboardInterrupt traceback from inside an import: nothing has
    started yet. The previous handler is back once the command runs. (Only the main thread may set it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _quiet_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and exits with) a non-zero code on any user error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "bench" and argv[1].startswith("--") and argv[1] != "--help":
        argv.insert(1, "table1")  # `metasym bench --system S [--quick]` is the paper's benchmark (Table 1)
    with _sigint_exits_quietly():
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("metasym: interrupted", file=sys.stderr)
        return 130
    except (MetaSymError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"metasym: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
