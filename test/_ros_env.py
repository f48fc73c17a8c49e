"""DDS isolation for the ROS tests: a random domain in 100-200, discovery on this host only.

rcl reads these variables when a context is initialised, so test modules import
this before any rclpy use."""

import os
import random

os.environ["ROS_DOMAIN_ID"] = str(random.randint(100, 200))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_STATIC_PEERS"] = ""
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
