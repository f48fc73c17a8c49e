"""Online (streaming) helpers the ROS nodes call: pure Python/NumPy/PyTorch, no rclpy.

- `window`: the context window with input validation (dimension, NaN, stale or
  out-of-order stamps) and drop counters.
- `realised`: realised error of earlier predictions against the states that arrived later.
- `streams`: step-by-step simulators (quadrotor flight, spring mesh, quantum record).
- `local_params`: the file format by which adapted local parameters travel to the predictor.
- `predictor`: model + window + local parameters -> one prediction / one batched rollout.
- `poses`: quadrotor poses of predicted log6 states (for nav_msgs/Path).
"""
