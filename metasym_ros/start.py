"""Start a node so that SIGINT at any moment ends it cleanly (exit code 0), start-up included.

Importing a node module takes seconds (torch, rclpy, the model). A Ctrl-C then would raise
KeyboardInterrupt inside an import: a traceback, and an exit code that a launcher reports as an
unclean exit. So until the node's `common.run_node` takes SIGINT over, SIGINT ends the process
at once with code 0: nothing is open yet, nothing needs cleaning up.

Once the node's `main` returns, it has released what it holds (`common.run_node`: the node
destroyed, rclpy and its logging shut down), and the process ends at once with main's code,
without the interpreter's finalization: that took 2.3-2.9 s of the node's 1.5-4.5 s exit on a
2-core machine (tearing down torch, Pinocchio, DDS), three nodes at once compete for the cores
then, and once a node outlasted its launcher's 10 s grace and was killed. An exception from
main still ends the process the normal way, with its traceback.

`python -m metasym_ros.start <node module> [args]` is what `metasym launch` runs; the console
scripts (`metasym-predictor`, …) and the ROS executables (`scripts/<node>`) call `start` too.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

STACKS_SIGNAL = signal.SIGUSR1  # dumps every thread's Python stack to stderr
# Time a launcher gives a node to exit after SIGINT before it is killed (`metasym launch`; ros2 launch sends
# SIGTERM after 5 s and SIGKILL 5 s later): every wait of a node's shutdown must fit in it together.
STOP_GRACE_S = 10.0
# A node's teardown (destroying it, shutting rclpy down) that has not ended this long after it began gives up
# (`teardown_watchdog`), inside the grace
TEARDOWN_LIMIT_S = STOP_GRACE_S - 2.0


def _exit_quietly(_signum, _frame) -> None:
    os._exit(0)


def _exit_now(code: int) -> None:
    """End the process with `code` once what Python buffers is written, skipping finalization."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(code)


def teardown_watchdog(code: Callable[[], int], limit_s: float = TEARDOWN_LIMIT_S) -> threading.Timer:
    """A started timer: unless cancelled within `limit_s` seconds, it writes one line and every thread's stack to
    stderr and ends the process with `code()`.

    Why: destroying a node can hang in native code, out of Python's reach. It did once in CI (a learner blocked
    in rclpy's `destroy_when_not_in_use`, its own waits long done, killed at its launcher's grace); rclpy and the
    DDS implementations have a history of such hangs (ros2/rclpy#456, ros2/rmw_cyclonedds#104). A node that has
    released what it holds then still ends by itself, saying where it hung, rather than being killed."""

    def give_up() -> None:
        print(f"metasym_ros: the node's teardown did not end within {limit_s:g} s (where it is stuck: below); "
              "exiting without it", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        _exit_now(code())

    timer = threading.Timer(limit_s, give_up)
    timer.daemon = True
    timer.start()
    return timer


def start(module: str, argv: list[str] | None = None) -> int:
    """Import the node `module` with SIGINT set to a quiet exit, run its `main(argv)`, and end the
    process with its exit code (module doc: without the interpreter's finalization)."""
    signal.signal(signal.SIGINT, _exit_quietly)
    # a node that does not exit after SIGINT gets SIGUSR1 from its launcher before SIGKILL: its threads'
    # stacks go to its log (launcher.stop_all), so that a hang says where it hung
    faulthandler.register(STACKS_SIGNAL, all_threads=True)
    # a launcher holds SIGINT blocked through the interpreter's own start-up (launcher.die_with_parent);
    # from here on it is handled: one that came meanwhile is delivered now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    code = importlib.import_module(module).main(argv)
    _exit_now(code if isinstance(code, int) else 0 if code is None else 1)
    return code  # not reached: for the type checker and the console scripts' `return start(...)`


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
