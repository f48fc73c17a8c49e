"""The generated metasym_ros interfaces work end to end through rclpy and DDS.

Two nodes in one process exchange a Prediction over a topic and a RolloutBatch
over a service. Discovery stays on this host, on a random domain in 100-200.
Nothing is skipped: without rclpy or the built interfaces (tools/build_interfaces.sh)
these tests fail.
"""

import array
import contextlib
import importlib
import time
import uuid

import _ros_env  # noqa: F401 - isolates DDS before any rclpy use
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(30)]


DEADLINE_S = 10.0


def _ros():
    """Import rclpy and the interfaces inside the test, so a missing piece is a test failure."""
    rclpy = importlib.import_module("rclpy")
    executors = importlib.import_module("rclpy.executors")
    msg = importlib.import_module("metasym_ros.msg")
    srv = importlib.import_module("metasym_ros.srv")
    return rclpy, executors, msg, srv


def _f64(values):
    """float64[] fields take array.array('d') as is; numpy arrays are rejected by the setters."""
    return array.array("d", np.ascontiguousarray(values, dtype=np.float64).tobytes())


@contextlib.contextmanager
def _ros_session():
    """An rclpy context of its own plus an executor; yields a node factory and the executor.

    A context manager rather than a fixture, so that a broken ROS install fails the test
    instead of erroring in setup.
    """
    rclpy, executors, _, _ = _ros()
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = executors.SingleThreadedExecutor(context=context)
    nodes = []

    def make_node(name):
        node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:8]}", context=context)
        executor.add_node(node)
        nodes.append(node)
        return node

    try:
        yield make_node, executor
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        context.try_shutdown()


def _spin_until(executor, done, what):
    end = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        executor.spin_once(timeout_sec=0.05)


def test_messages_serialise_roundtrip():
    _, _, msg, srv = _ros()
    serialization = importlib.import_module("rclpy.serialization")
    samples = [
        msg.SystemState(
            system="pendulum",
            state_names=["q", "p"],
            state=[0.1, -0.2],
            control=[0.5],
            dt=0.01,
            step=7,
            param_names=["m"],
            param_values=[1.3],
        ),
        msg.Prediction(
            system="pendulum",
            times=[0.01, 0.02],
            horizon=2,
            state_dim=2,
            states=[1.0, 2.0, 3.0, 4.0],
            params_version=3,
        ),
        msg.AdaptationStatus(
            system="pendulum",
            version=4,
            loss_before=0.5,
            loss_after=0.25,
            latency_ms=12.5,
            accepted=True,
            reason="loss improved",
        ),
        msg.PredictionMetrics(
            system="pendulum",
            realised_mse=0.01,
            realised_mse_step1=0.001,
            params_version=4,
            dropped_messages=2,
            latency_ms=3.5,
        ),
        srv.ChangeParameter.Request(name="m", scale=1.3),
        srv.ChangeParameter.Response(success=True, message="ok", new_value=1.3),
    ]
    for sample in samples:
        data = serialization.serialize_message(sample)
        assert serialization.deserialize_message(data, type(sample)) == sample


def test_prediction_topic_between_two_nodes():
    _, _, msg, _ = _ros()
    with _ros_session() as (make_node, executor):
        topic = f"/metasym_test_{uuid.uuid4().hex[:8]}/prediction"
        pub_node, sub_node = make_node("metasym_test_pub"), make_node("metasym_test_sub")
        received = []
        sub_node.create_subscription(msg.Prediction, topic, received.append, 10)
        pub = pub_node.create_publisher(msg.Prediction, topic, 10)
        _spin_until(executor, lambda: pub.get_subscription_count() > 0, "subscriber discovery")

        horizon, state_dim = 5, 4
        states = np.arange(horizon * state_dim, dtype=np.float64).reshape(horizon, state_dim) / 7.0
        out = msg.Prediction(
            system="cartpole", horizon=horizon, state_dim=state_dim, params_version=2**63 + 5
        )
        out.header.stamp.sec, out.header.stamp.nanosec = 12, 345
        out.header.frame_id = "world"
        out.times = _f64(0.02 * np.arange(1, horizon + 1))
        out.states = _f64(states)

        end = time.monotonic() + DEADLINE_S
        while not received:
            assert time.monotonic() < end, "timed out waiting for the Prediction"
            pub.publish(out)  # a late-matched reliable reader may miss the first sample
            executor.spin_once(timeout_sec=0.1)

        got = received[0]
        assert got == out
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (12, 345)
        assert got.params_version == 2**63 + 5
        np.testing.assert_array_equal(
            np.frombuffer(got.states, dtype=np.float64).reshape(horizon, state_dim), states
        )


def test_rollout_batch_service_between_two_nodes():
    _, _, _, srv = _ros()
    with _ros_session() as (make_node, executor):
        name = f"/metasym_test_{uuid.uuid4().hex[:8]}/rollout_batch"
        server_node, client_node = make_node("metasym_test_server"), make_node("metasym_test_client")

        def rollout(request, response):
            # Toy model: every state coordinate integrates the first control component.
            K, H, S, C = request.candidates, request.horizon, request.state_dim, request.control_dim
            x0 = np.frombuffer(request.context_states, dtype=np.float64).reshape(-1, S)[-1]
            u = np.frombuffer(request.candidate_controls, dtype=np.float64).reshape(K, H, C)
            states = x0 + request.dt * np.cumsum(u[:, :, :1], axis=1)  # (K, H, S) by broadcasting
            response.success, response.message = True, "ok"
            response.horizon, response.state_dim, response.candidates = H, S, K
            response.states = _f64(states)
            response.params_version = 9
            response.latency_ms = 0.5
            return response

        server_node.create_service(srv.RolloutBatch, name, rollout)
        client = client_node.create_client(srv.RolloutBatch, name)
        _spin_until(executor, client.service_is_ready, "service discovery")

        L, S, C, H, K, dt = 3, 2, 1, 4, 3, 0.1
        context_states = np.arange(L * S, dtype=np.float64)
        controls = np.linspace(-1.0, 1.0, K * H * C)
        request = srv.RolloutBatch.Request(
            context_len=L, state_dim=S, control_dim=C, horizon=H, candidates=K, dt=dt
        )
        request.context_states = _f64(context_states)
        request.context_controls = _f64(np.zeros(L * C))
        request.context_dt = _f64(np.full(L, dt))
        request.candidate_controls = _f64(controls)

        future = client.call_async(request)
        _spin_until(executor, future.done, "the RolloutBatch response")
        response = future.result()
        assert response.success and response.message == "ok"
        assert (response.horizon, response.state_dim, response.candidates, response.params_version) == (
            H,
            S,
            K,
            9,
        )
        expected = context_states[-S:] + dt * np.cumsum(controls.reshape(K, H, C), axis=1)
        np.testing.assert_allclose(
            np.frombuffer(response.states, dtype=np.float64).reshape(K, H, S), expected
        )


def test_f64_takes_any_shape_including_no_controls():
    """`common.f64` fills float64[] fields; an autonomous system's controls are [H, 0] (the spring mesh
    and quantum predictions), which a memoryview cannot cast unflattened."""
    from metasym_ros.common import f64

    assert f64(np.zeros((30, 0))) == array.array("d")
    assert f64(np.arange(6.0).reshape(2, 3)) == array.array("d", range(6))
    assert f64(np.arange(4.0)[::2]) == array.array("d", [0.0, 2.0])  # strided views too
