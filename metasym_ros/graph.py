"""The MetaSym node graph, described once in plain Python (no rclpy, no launch).

For a system, `node_graph(system, overrides)` lists the nodes to start: package,
executable, node name and parameters. Parameters come from the `ros:` section of
config/<system>.yaml (one mapping per node), plus `system` itself, plus overrides.
The launch files (launch/<system>.launch.py) and the venv launcher
(`metasym launch <system>`, `metasym_ros.tools.launcher`) both build from this list, so
they start the same nodes with the same parameters.

The override `controller` shapes the graph: `mpc` (the default) lets the simulator fly
itself; `mppi` closes the loop (quadrotor): it adds the controller node (MPPI on the
MetaSym model) and sets the simulator's `controller: external`, so that the simulator
flies the controller's plans (launch/quadrotor_closed_loop.launch.py), in real time
(`rate_hz` = 1 / `dt`, unless overridden: the open loop runs its simulated time faster), with
predictor and learner on the controller's model.

A bundled model's recipe may carry the learner settings it was tuned with (`learner`,
`checkpoint.bundled_learner`: the nominal-mass model's adaptation rate and detector threshold,
the closed-loop model's loss watch). The learner gets them over the config's values, and under
any override the user set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from metasym_core.checkpoint import bundled_learner
from metasym_core.config import config_file, load_config
from metasym_core.errors import MetaSymError
from metasym_core.systems import CLOSED_LOOP_SYSTEMS, GRAPH_SYSTEMS

PACKAGE = "metasym_ros"
SYSTEMS: tuple[str, ...] = GRAPH_SYSTEMS  # the systems with a node graph (`metasym_core.systems.SPECS`)
# Node name -> (executable, Python module with `main`).
NODES: dict[str, tuple[str, str]] = {
    "simulator": ("simulator", "metasym_ros.simulator_node"),
    "predictor": ("predictor", "metasym_ros.predictor_node"),
    "learner": ("learner", "metasym_ros.learner_node"),
    "controller": ("controller", "metasym_ros.controller_node"),  # only in the closed loop
}
#: Values of the graph-shaping override `controller` (module doc); `mppi` flies CLOSED_LOOP_SYSTEMS.
CONTROLLERS: tuple[str, ...] = ("mpc", "mppi")
# The knobs the launch files expose as launch arguments: argument -> the (node, parameter)s it sets.
LAUNCH_ARGUMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoint": (("predictor", "checkpoint"), ("learner", "checkpoint"), ("controller", "checkpoint")),
    "device": (("predictor", "device"), ("learner", "device"), ("controller", "device")),
    "horizon": (("predictor", "horizon"),),
    "realtime_priority": (("predictor", "realtime_priority"),),
    "rate_hz": (("simulator", "rate_hz"),),
    "change_param": (("simulator", "change_param"),),
    "change_scale": (("simulator", "change_scale"),),
    "change_time": (("simulator", "change_time"),),
    "adapt_period_s": (("learner", "period_s"),),
    "train_at_start": (("learner", "train_at_start"),),
    "control_timeout_s": (("simulator", "control_timeout_s"),),
    "samples": (("controller", "samples"),),
}


#: The Fast DDS profile the nodes run with (config/fastdds.xml: a larger shared-memory segment, so the
#: multi-MB rollout_batch messages arrive in ~4 ms instead of 10-15 ms), unless the user set their own.
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def transport_profile() -> str:
    """The path of the shipped Fast DDS profile (the value `PROFILE_VARIABLE` gets when unset)."""
    return str(config_file("fastdds.xml"))


def node_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus the shipped Fast DDS profile where none is set."""
    env = dict(environ)
    if not env.get(PROFILE_VARIABLE):
        env[PROFILE_VARIABLE] = transport_profile()
    return env


@dataclass(frozen=True)
class NodeSpec:
    """One node to start."""

    name: str
    executable: str
    module: str
    package: str = PACKAGE
    parameters: dict[str, object] = field(default_factory=dict)


def node_graph(system: str, overrides: Mapping[str, object] | None = None) -> list[NodeSpec]:
    """The nodes of `system`; `overrides` maps "node.param" (or a LAUNCH_ARGUMENTS name) to a value, and
    `controller` to mpc | mppi (module doc). A launch argument sets those of its parameters whose node runs."""
    if system not in SYSTEMS:
        raise MetaSymError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")
    overrides = dict(overrides or {})
    controller = overrides.pop("controller", "mpc")
    if controller not in CONTROLLERS:
        raise MetaSymError(f"override controller={controller!r}: expected one of {', '.join(CONTROLLERS)}")
    closed_loop = controller == "mppi"
    if closed_loop and system not in CLOSED_LOOP_SYSTEMS:
        raise MetaSymError(f"controller=mppi flies {', '.join(CLOSED_LOOP_SYSTEMS)} only, not {system}")
    cfg = load_config(system)
    ros = cfg.get("ros") or {}
    if not isinstance(ros, dict):
        raise MetaSymError(f"config {cfg['_path']}: ros must be a mapping")
    params: dict[str, dict[str, object]] = {}
    for node in NODES:
        if node == "controller" and not closed_loop:
            continue
        section = ros.get(node) or {}
        if not isinstance(section, dict):
            raise MetaSymError(f"config {cfg['_path']}: ros.{node} must be a mapping")
        params[node] = {"system": system, **section}
    if closed_loop:  # the simulator becomes a plant, in real time: the controller gets a real vehicle's time
        params["simulator"]["controller"] = "external"
        params["simulator"]["rate_hz"] = 1.0 / float(params["simulator"].get("dt", 0.02))
        for node in ("predictor", "learner"):  # they predict and adapt the model the controller flies
            params[node]["checkpoint"] = params["controller"].get("checkpoint", "")
    chosen: set[tuple[str, str]] = set()  # the (node, parameter)s the overrides set
    for key, value in overrides.items():
        if "." in key:
            targets: tuple[tuple[str, str], ...] = (tuple(key.split(".", 1)),)
        elif key in LAUNCH_ARGUMENTS:
            targets = tuple((node, param) for node, param in LAUNCH_ARGUMENTS[key] if node in params)
        else:
            raise MetaSymError(f"unknown override {key!r}; use node.param, controller or one of "
                               f"{', '.join(LAUNCH_ARGUMENTS)}")
        if not targets or any(node not in params or not param for node, param in targets):
            raise MetaSymError(f"override {key!r} names no node of the graph ({', '.join(params)})")
        for node, param in targets:
            params[node][param] = _like(params[node].get(param), value, key)
            chosen.add((node, param))
    if "learner" in params:  # a bundled model's tuned learner settings, under what the user set
        tuned = bundled_learner(params["learner"].get("checkpoint") or "", system)
        for param, value in tuned.items():
            if ("learner", param) not in chosen:
                params["learner"][param] = _like(params["learner"].get(param), value, f"learner.{param}")
    return [NodeSpec(name=node, executable=exe, module=module, parameters=params[node])
            for node, (exe, module) in NODES.items() if node in params]


def _like(default: object, value: object, key: str) -> object:
    """`value` with the type of the configured `default` where that is lossless (ROS parameters are typed)."""
    if default is None or (type(value) is type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        return str(value)
    raise MetaSymError(f"override {key}={value!r} must be of type {type(default).__name__} like its default "
                       f"{default!r}")


def params_yaml(specs: list[NodeSpec]) -> dict[str, dict]:
    """A ROS 2 parameters file (`--params-file`) content for `specs`."""
    return {spec.name: {"ros__parameters": dict(spec.parameters)} for spec in specs}
