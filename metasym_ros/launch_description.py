"""The launch_ros description of a system's node graph (`launch/<system>.launch.py`).

Built from `metasym_ros.graph.node_graph`, the same description `metasym launch`
uses, so the two cannot drift: the launch arguments the user changed become
`node_graph` overrides when the launch runs (an `OpaqueFunction`), so a `checkpoint:=`
also brings a bundled model's tuned learner settings, as `--set checkpoint=` does.
Imports `launch`/`launch_ros`, so it is loaded only by `ros2 launch` in a ROS 2
install (the venv has no launch packages).
"""

from __future__ import annotations

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from metasym_ros.graph import LAUNCH_ARGUMENTS, PROFILE_VARIABLE, node_graph, transport_profile


def generate(system: str, overrides: dict[str, object] | None = None) -> LaunchDescription:
    """The shipped Fast DDS profile (unless one is set), launch arguments for the main knobs, then the
    graph's `Node` actions (`overrides` as in `node_graph`, e.g. {"controller": "mppi"}), built with the
    arguments the user changed."""
    overrides = dict(overrides or {})
    defaults = {spec.name: spec.parameters for spec in node_graph(system, overrides)}
    actions = [SetEnvironmentVariable(PROFILE_VARIABLE,
                                      EnvironmentVariable(PROFILE_VARIABLE, default_value=transport_profile()))]
    declared: dict[str, str] = {}  # argument -> its default, as text
    for arg, targets in LAUNCH_ARGUMENTS.items():
        present = [(node, param) for node, param in targets if param in defaults.get(node, {})]
        if not present:
            continue
        node, param = present[0]
        declared[arg] = str(defaults[node][param])
        where = ", ".join(f"{n}.{p}" for n, p in present)
        actions.append(DeclareLaunchArgument(arg, default_value=declared[arg], description=f"sets {where}"))

    def nodes(context) -> list[Node]:
        changed = {}
        for arg, default in declared.items():
            text = LaunchConfiguration(arg).perform(context)
            if text != default:  # a YAML scalar, as `ros2 param set` reads one ("" stays a string)
                changed[arg] = yaml.safe_load(text) if text.strip() else text
        return [Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                     emulate_tty=True, parameters=[spec.parameters])
                for spec in node_graph(system, {**overrides, **changed})]

    actions.append(OpaqueFunction(function=nodes))
    return LaunchDescription(actions)
