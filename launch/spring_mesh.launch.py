"""`ros2 launch metasym_ros spring_mesh.launch.py`: simulator, predictor and learner for the spring_mesh
system (the spring stiffness changes mid-run).

Nodes and parameters come from metasym_ros.graph (config/spring_mesh.yaml, `ros:`), the same
description `metasym launch spring_mesh` uses. Main knobs are launch arguments, e.g.
`checkpoint:=runs/model.pt horizon:=20 change_time:=-1` (`ros2 launch ... --show-args`).
"""

from metasym_ros.launch_description import generate


def generate_launch_description():
    return generate("spring_mesh")
