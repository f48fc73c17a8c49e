"""Helpers shared by the MetaSym nodes: typed, described parameters; float64[] fields;
stamps; and a `main` that shuts down cleanly on SIGINT (exit code 0)."""

from __future__ import annotations

import array
import sys
from collections.abc import Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from metasym_core.errors import MetaSymError


def declare(node: Node, name: str, default, description: str, read_only: bool = False):
    """Declare a parameter with a description (typed by its default) and return its value."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    return node.declare_parameter(name, default, descriptor).value


def f64(values) -> array.array:
    """A float64[] field value (the generated setters take array.array('d'), not numpy); one copy."""
    out = array.array("d")
    out.frombytes(memoryview(np.ascontiguousarray(values, dtype=np.float64)).cast("B"))
    return out


def stamp_seconds(stamp) -> float:
    """A builtin_interfaces/Time as float seconds."""
    return stamp.sec + 1e-9 * stamp.nanosec


def seconds_stamp(msg_stamp, seconds: float) -> None:
    """Set a builtin_interfaces/Time in place from float seconds."""
    sec = int(seconds // 1)
    msg_stamp.sec, msg_stamp.nanosec = sec, min(int(round((seconds - sec) * 1e9)), 999_999_999)


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """Init rclpy, spin the node from `factory` until SIGINT / shutdown, clean up. 0 on clean exit."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok():
            raise
        # SIGINT shut the context down while the executor was taking a message (a race inside
        # rclpy: "Unable to convert call argument"); the node is stopping anyway: a clean exit
    except (MetaSymError, ParameterException) as exc:  # bad parameter / config / checkpoint: one line
        print(f"metasym_ros: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
