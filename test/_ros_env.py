"""DDS isolation for the ROS tests: a random domain in 100-200, discovery on this host only.

rcl reads these variables when a context is initialised, so test modules import
this before any rclpy use. Also: `ros_context` (nodes spun by one executor thread in a
fresh namespace) and `wait_for` (poll with a deadline)."""

import contextlib
import os
import random
import threading
import uuid

from _wait import wait_for  # noqa: F401 - re-exported for the ROS tests

os.environ["ROS_DOMAIN_ID"] = str(random.randint(100, 200))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_STATIC_PEERS"] = ""
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


@contextlib.contextmanager
def ros_context():
    """An rclpy context whose executor spins in a thread (start it once the nodes exist).

    Yields (namespace, make(node_class_or_name, params), thread); every node lives in one fresh
    namespace and is destroyed on exit (after the executor stopped)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    namespace = f"/t{uuid.uuid4().hex[:8]}"
    nodes = []

    def make(kind, params=None):
        if isinstance(kind, str):
            node = rclpy.create_node(kind, namespace=namespace, context=context)
        else:
            overrides = [Parameter(k, value=v) for k, v in (params or {}).items()]
            node = kind(context=context, namespace=namespace, parameter_overrides=overrides)
        executor.add_node(node)
        nodes.append(node)
        return node

    thread = threading.Thread(target=executor.spin, daemon=True)
    try:
        yield namespace, make, thread
    finally:
        executor.shutdown(timeout_sec=5)
        if thread.is_alive():
            thread.join(timeout=5)
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()


