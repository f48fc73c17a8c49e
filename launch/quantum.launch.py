"""`ros2 launch metasym_ros quantum.launch.py`: simulator, predictor and learner for the quantum
system (the oscillator frequency changes mid-run).

Nodes and parameters come from metasym_ros.graph (config/quantum.yaml, `ros:`), the same
description `metasym launch quantum` uses. Main knobs are launch arguments, e.g.
`checkpoint:=runs/model.pt horizon:=20 change_time:=-1` (`ros2 launch ... --show-args`).
"""

from metasym_ros.launch_description import generate


def generate_launch_description():
    return generate("quantum")
