"""`ros2 launch metasym_ros quadrotor.launch.py`: simulator, predictor and learner for the quadrotor
system (watch the model adapt when the quadrotor's mass changes mid-flight).

Nodes and parameters come from metasym_ros.graph (config/quadrotor.yaml, `ros:`), the same
description `metasym launch quadrotor` uses. Main knobs are launch arguments, e.g.
`checkpoint:=runs/model.pt horizon:=20 change_time:=-1` (`ros2 launch ... --show-args`).
"""

from metasym_ros.launch_description import generate


def generate_launch_description():
    return generate("quadrotor")
