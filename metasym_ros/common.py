"""Helpers shared by the MetaSym nodes: typed, described parameters (each read-only or live);
float64[] fields; stamps; messages to and from the core's types; and a `main` that shuts down cleanly on
SIGINT (exit code 0)."""

from __future__ import annotations

import array
import math
import signal
import sys
from collections.abc import Callable

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from metasym_core.errors import MetaSymError
from metasym_core.online.live_predictor import Adaptation, ModelUpdate
from metasym_core.online.plan import ControlPlan as Plan
from metasym_core.online.predictor import describe_model
from metasym_ros.msg import AdaptationStatus, ControlPlan, ModelCheckpoint
from metasym_ros.realtime import set_fifo
from metasym_ros.start import teardown_watchdog


def declare(node: Node, name: str, default, description: str, apply: Callable[[object], None] | None = None,
            check: Callable[[object], None] | None = None):
    """Declare a parameter with a description (typed by its default) and return its value.

    A parameter is either read-only (read once at start; `ros2 param set` is refused) or live: with
    `apply`, a new value takes effect at once. `check(value)` runs first for every value, the start
    value included, and refuses a bad one by raising MetaSymError or ValueError: at start that is the
    node's one-line error, later the reason `ros2 param set` prints (nothing changes then). `apply(value)`
    runs after a set succeeded, on the executor thread that served it."""
    descriptor = ParameterDescriptor(description=description, read_only=apply is None)
    value = node.declare_parameter(name, default, descriptor).value
    if check is not None:
        try:
            check(value)
        except ValueError as exc:
            raise MetaSymError(f"parameter {name}: {exc}") from None
    if apply is not None:
        live = getattr(node, "_metasym_live", None)
        if live is None:
            live = node._metasym_live = {}
            node.add_on_set_parameters_callback(lambda params: _check_live(live, params))
            node.add_post_set_parameters_callback(lambda params: _apply_live(live, params))
        live[name] = (check, apply)
    return value


def declare_realtime_priority(node: Node) -> int:
    """The read-only `realtime_priority` of a latency-critical node (checked; `realtime.go_real_time` applies it
    once the node's threads exist)."""
    from metasym_ros.realtime import check_priority

    return declare(node, "realtime_priority", 0, "SCHED_FIFO priority 1-99 of this node's process (all its "
                   "threads); 0 = normal scheduling", check=check_priority)


def _check_live(live: dict, params) -> SetParametersResult:
    for param in params:
        check = live.get(param.name, (None, None))[0]
        if check is None:
            continue
        try:
            check(param.value)
        except (MetaSymError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=f"{param.name}: {exc}")
    return SetParametersResult(successful=True)


def _apply_live(live: dict, params) -> None:
    for param in params:
        if param.name in live:
            live[param.name][1](param.value)


def log_model(node: Node, system: str, checkpoint: str, model, warning: str | None) -> None:
    """Log once at start which model `node` runs (`describe_model`); an untrained one as a warning."""
    text = describe_model(system, checkpoint, model) + (f" ({warning})" if warning else "")
    (node.get_logger().warning if warning else node.get_logger().info)(text)


def one_of(choices) -> Callable[[object], None]:
    """`check` of a value in `choices`."""
    def check(value) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return check


def positive(value) -> None:
    """`check` of a positive finite number."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be positive, got {value!r}")


def at_least(low: float) -> Callable[[object], None]:
    """`check` of a number >= `low`."""
    def check(value) -> None:
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"must be >= {low:g}, got {value!r}")
    return check


def f64(values) -> array.array:
    """A float64[] field value (the generated setters take array.array('d'), not numpy); one copy."""
    out = array.array("d")
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)  # [H, 0] (no controls) casts only flat
    out.frombytes(memoryview(flat).cast("B"))
    return out


def stamp_seconds(stamp) -> float:
    """A builtin_interfaces/Time as float seconds."""
    return stamp.sec + 1e-9 * stamp.nanosec


def seconds_stamp(msg_stamp, seconds: float) -> None:
    """Set a builtin_interfaces/Time in place from float seconds."""
    sec = int(seconds // 1)
    msg_stamp.sec, msg_stamp.nanosec = sec, min(int(round((seconds - sec) * 1e9)), 999_999_999)


def path_message(stamp, frame_id: str, positions: np.ndarray, quaternions: np.ndarray, times: np.ndarray) -> Path:
    """nav_msgs/Path of predicted poses (`positions [H, 3]`, `quaternions [H, 4]` as x, y, z, w), each stamped
    `stamp` + its time offset `times [H]` [s] (what RViz draws of a prediction)."""
    base = stamp_seconds(stamp)
    path = Path()
    path.header.stamp = stamp
    path.header.frame_id = frame_id
    for (x, y, z), (qx, qy, qz, qw), t in zip(positions, quaternions, times, strict=True):
        pose = PoseStamped()
        pose.header.frame_id = frame_id
        seconds_stamp(pose.header.stamp, base + t)
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = float(x), float(y), float(z)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = float(qx), float(qy), float(qz), float(qw)
        path.poses.append(pose)
    return path


def adaptation_of(msg: AdaptationStatus) -> Adaptation:
    """An accepted AdaptationStatus as the core applies it (predictor and controller alike)."""
    return Adaptation(msg.model_tag, msg.version, [(p.name, p.shape, p.values) for p in msg.params], msg.params_path,
                      msg.loss_before, msg.loss_after)


def model_update_of(msg: ModelCheckpoint) -> ModelUpdate:
    """A ModelCheckpoint as the core loads it."""
    return ModelUpdate(bytes(msg.data), msg.sha256, msg.tag, msg.path)


def state_fields(msg) -> tuple[str, int, float, np.ndarray, np.ndarray, float]:
    """A SystemState message's (system, step, stamp, state, control, dt), the leading arguments of the core's
    `on_state` (`LivePredictor`, `LiveController`)."""
    return (msg.system, msg.step, stamp_seconds(msg.header.stamp), np.frombuffer(msg.state, dtype=np.float64),
            np.frombuffer(msg.control, dtype=np.float64), msg.dt)


def plan_fields(msg: ControlPlan) -> tuple[str, int, float, float, np.ndarray, int, int]:
    """A ControlPlan message's (system, step, stamp, dt, flat controls, horizon, control_dim), the arguments the
    core's plan consumers take (`LivePredictor.on_plan`, `ExternalPlant.on_plan`, before `now`)."""
    return (msg.system, msg.step, stamp_seconds(msg.header.stamp), msg.dt,
            np.frombuffer(msg.controls, dtype=np.float64), msg.horizon, msg.control_dim)


def plan_message(plan: Plan) -> ControlPlan:
    """A core plan (`metasym_core.online.plan.ControlPlan`) as a ControlPlan message; the header is the caller's."""
    controls = np.asarray(plan.controls)
    out = ControlPlan(system=plan.system, step=int(plan.step), dt=float(plan.dt), horizon=controls.shape[0],
                      control_dim=controls.shape[1])
    out.controls = f64(controls)
    return out


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """Init rclpy, spin the node from `factory` until SIGINT / shutdown, clean up. 0 on clean exit.

    SIGINT is never raised as a KeyboardInterrupt here: one raised while the executor converts a message
    surfaced as a RuntimeError from inside rclpy ("Unable to convert call argument"), a traceback and exit
    code 1. rclpy's own handler (installed by `rclpy.init`) shuts the context down, which ends `spin` with
    ExternalShutdownException; ours only records that the stop was asked for, so that whatever the shut-down
    context makes fail meanwhile (a node still being constructed) counts as the clean exit it is. A real-time
    node also goes back to normal scheduling then: on a small machine its shutdown must not hold a core while
    the other nodes of the graph are stopping too."""
    node = None
    code = 0
    interrupted = []

    def on_sigint(_signum, _frame) -> None:
        interrupted.append(True)
        set_fifo(0)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        rclpy.init(args=args)
        node = factory()
        if not interrupted:
            rclpy.spin(node)
    except ExternalShutdownException:
        pass
    except (MetaSymError, ParameterException) as exc:  # bad parameter / config / checkpoint: one line
        if not interrupted:
            print(f"metasym_ros: error: {exc}", file=sys.stderr)
            code = 1
    except Exception:
        if not interrupted and rclpy.ok():
            code = 1  # the exit code, should the teardown on the way out hang (`teardown_watchdog`)
            raise
        # stopping: the shut-down context made the node's start-up or the executor fail; a clean exit
    finally:
        set_fifo(0)  # however the node stops
        watchdog = teardown_watchdog(lambda: code)  # a teardown stuck in native code ends the process anyway
        try:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
        finally:
            watchdog.cancel()
    return code
