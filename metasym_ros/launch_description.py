"""The launch_ros description of a system's node graph (`launch/<system>.launch.py`).

Built from `metasym_ros.graph.node_graph`, the same description `metasym launch`
uses, so the two cannot drift. Imports `launch`/`launch_ros`, so it is loaded only
by `ros2 launch` in a ROS 2 install (the venv has no launch packages).
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from metasym_ros.graph import LAUNCH_ARGUMENTS, PROFILE_VARIABLE, node_graph, transport_profile


def generate(system: str, overrides: dict[str, object] | None = None) -> LaunchDescription:
    """The shipped Fast DDS profile (unless one is set), launch arguments for the main knobs, then one
    `Node` action per node of the graph (`overrides` as in `node_graph`, e.g. {"controller": "mppi"})."""
    specs = node_graph(system, overrides)
    defaults = {spec.name: spec.parameters for spec in specs}
    actions = [SetEnvironmentVariable(PROFILE_VARIABLE,
                                      EnvironmentVariable(PROFILE_VARIABLE, default_value=transport_profile()))]
    knobs: dict[str, dict[str, ParameterValue]] = {spec.name: {} for spec in specs}
    for arg, targets in LAUNCH_ARGUMENTS.items():
        present = [(node, param) for node, param in targets if param in defaults.get(node, {})]
        if not present:
            continue
        node, param = present[0]
        default = defaults[node][param]
        where = ", ".join(f"{n}.{p}" for n, p in present)
        actions.append(DeclareLaunchArgument(arg, default_value=str(default), description=f"sets {where}"))
        for node, param in present:
            knobs[node][param] = ParameterValue(LaunchConfiguration(arg), value_type=type(defaults[node][param]))
    for spec in specs:
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            emulate_tty=True, parameters=[{**spec.parameters, **knobs[spec.name]}]))
    return LaunchDescription(actions)
