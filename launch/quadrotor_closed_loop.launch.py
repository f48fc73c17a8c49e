"""`ros2 launch metasym_ros quadrotor_closed_loop.launch.py`: the quadrotor graph with the loop closed: the
controller node (MPPI on the MetaSym model) flies the simulator (`controller: external`, with its failsafe
hover), while the predictor predicts and the learner adapts the model both of them use.

Nodes and parameters come from metasym_ros.graph (config/quadrotor.yaml, `ros:`, with the override
`controller: mppi`), the same description `metasym launch quadrotor --set controller=mppi` uses. Main knobs
are launch arguments, e.g. `checkpoint:=runs/model.pt samples:=256 control_timeout_s:=0.3`
(`ros2 launch ... --show-args`).
"""

from metasym_ros.launch_description import generate


def generate_launch_description():
    return generate("quadrotor", {"controller": "mppi"})
