"""QoS profile of every MetaSym topic (imported only by code that already uses rclpy).

- ``metasym/state`` (SystemState): best effort, keep last 10, volatile. Sensor-like:
  a late sample is worth less than the next one, and a slow predictor must never
  make the simulator block or queue without bound (a flood stays bounded by the depth).
- ``metasym/prediction`` (Prediction): reliable, keep last 10, volatile. Consumers
  (controllers, loggers) should see every prediction; 10 absorbs short hiccups.
- ``metasym/control_plan`` (ControlPlan): reliable, keep last 5, volatile. A controller's plan at
  every solve; the predictor needs the newest one, and reliable delivery on the same host keeps
  a plan from being lost to the state it starts from.
- ``metasym/predicted_path`` (nav_msgs/Path): reliable, keep last 1 (display only).
- ``metasym/metrics`` (PredictionMetrics): reliable, keep last 10.
- ``metasym/adaptation`` (AdaptationStatus): reliable, keep last 1, transient local:
  a predictor that starts (or restarts) after the learner still gets the latest
  accepted parameters (the message carries them, see metasym_core.online.local_params).
- ``metasym/model`` (ModelCheckpoint): reliable, keep last 1, transient local: the bytes of the
  checkpoint the learner meta-trained last; a predictor that starts late still gets it.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
PREDICTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE)
PLAN_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
PATH_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
METRICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
ADAPTATION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
MODEL_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)

STATE_TOPIC = "metasym/state"
PREDICTION_TOPIC = "metasym/prediction"
PLAN_TOPIC = "metasym/control_plan"
PATH_TOPIC = "metasym/predicted_path"
METRICS_TOPIC = "metasym/metrics"
ADAPTATION_TOPIC = "metasym/adaptation"
MODEL_TOPIC = "metasym/model"
