"""Launch the MetaSym quadrotor graph (simulator + predictor): `ros2 launch metasym_ros quadrotor.launch.py`.

Nodes and default parameters come from metasym_ros.graph (config/quadrotor.yaml, `ros:`),
the same description `metasym launch quadrotor` uses; the main knobs are launch arguments,
e.g. `checkpoint:=runs/quadrotor.pt horizon:=20 change_time:=-1`.
"""

from launch import LaunchDescription  # noqa: I001 - `launch` is the ROS package, not this repo's launch/ folder
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from metasym_ros.graph import LAUNCH_ARGUMENTS, node_graph

SYSTEM = "quadrotor"


def generate_launch_description() -> LaunchDescription:
    specs = node_graph(SYSTEM)
    defaults = {spec.name: spec.parameters for spec in specs}
    actions = []
    knobs: dict[str, dict[str, ParameterValue]] = {spec.name: {} for spec in specs}
    for arg, (node, param) in LAUNCH_ARGUMENTS.items():
        if param not in defaults[node]:
            continue
        default = defaults[node][param]
        actions.append(DeclareLaunchArgument(arg, default_value=str(default),
                                             description=f"{node} parameter {param}"))
        knobs[node][param] = ParameterValue(LaunchConfiguration(arg), value_type=type(default))
    for spec in specs:
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            emulate_tty=True, parameters=[{**spec.parameters, **knobs[spec.name]}]))
    return LaunchDescription(actions)
