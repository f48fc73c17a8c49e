"""Start a node so that SIGINT at any moment ends it cleanly (exit code 0), start-up included.

Importing a node module takes seconds (torch, rclpy, the model). A Ctrl-C then would raise
KeyboardInterrupt inside an import: a traceback, and an exit code that a launcher reports as an
unclean exit. So until the node's `common.run_node` takes SIGINT over, SIGINT ends the process
at once with code 0: nothing is open yet, nothing needs cleaning up.

`python -m metasym_ros.start <node module> [args]` is what `metasym launch` runs; the console
scripts (`metasym-predictor`, …) and the ROS executables (`scripts/<node>`) call `start` too.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _exit_quietly(_signum, _frame) -> None:
    os._exit(0)


def start(module: str, argv: list[str] | None = None) -> int:
    """Import the node `module` with SIGINT set to a quiet exit, then run its `main(argv)`."""
    signal.signal(signal.SIGINT, _exit_quietly)
    # a launcher holds SIGINT blocked through the interpreter's own start-up (launcher.die_with_parent);
    # from here on it is handled: one that came meanwhile is delivered now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return importlib.import_module(module).main(argv)


def simulator() -> int:
    """Console script `metasym-simulator`."""
    return start("metasym_ros.simulator_node")


def predictor() -> int:
    """Console script `metasym-predictor`."""
    return start("metasym_ros.predictor_node")


def learner() -> int:
    """Console script `metasym-learner`."""
    return start("metasym_ros.learner_node")


def controller() -> int:
    """Console script `metasym-controller`."""
    return start("metasym_ros.controller_node")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python -m metasym_ros.start <node module> [--ros-args ...]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(start(sys.argv[1], [sys.argv[0], *sys.argv[2:]]))
