"""Adaptations travel in the messages: a learner and a predictor that share no files.

The nodes run as separate processes, each in its own working directory with its own private
temporary directory, and the learner writes no parameter files (`params_dir` empty): an
accepted adaptation still reaches the predictor, which swaps it in. This is the multi-machine
deployment (a learner on a ground station, a predictor on board) on one host.
"""

import subprocess

import numpy as np
import pytest
import yaml
from _ros_env import ros_context, wait_for  # isolates DDS before any rclpy use

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


@pytest.mark.slow
def test_adaptation_reaches_a_predictor_that_shares_no_files_with_the_learner(tmp_path):
    import os

    from metasym_ros.msg import AdaptationStatus, Prediction

    from metasym_ros import qos
    from metasym_ros.graph import node_graph, params_yaml
    from metasym_ros.start import STOP_GRACE_S
    from metasym_ros.tools.launcher import die_with_parent, node_command, stop_all

    overrides = {"change_time": 2.0, "learner.window": 50, "learner.period_s": 0.5, "learner.min_gain": 0.0,
                 "learner.bias_threshold": 0.0, "learner.params_dir": "", "predictor.realtime_priority": 0}
    specs = {spec.name: spec for spec in node_graph("quadrotor", overrides)}
    procs, logs = [], []
    with ros_context() as (_, make, thread):
        probe = make("probe")
        statuses, preds = [], []
        # the nodes run outside this test's namespace: absolute topic names
        probe.create_subscription(AdaptationStatus, "/" + qos.ADAPTATION_TOPIC, statuses.append, qos.ADAPTATION_QOS)
        probe.create_subscription(Prediction, "/" + qos.PREDICTION_TOPIC, preds.append, qos.PREDICTION_QOS)
        thread.start()
        try:
            for name in ("learner", "predictor", "simulator"):
                home = tmp_path / name  # a machine of its own: working directory, temporary directory
                (home / "tmp").mkdir(parents=True)
                params = home / "params.yaml"
                params.write_text(yaml.safe_dump(params_yaml([specs[name]])), encoding="utf-8")
                log = open(home / "node.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
                logs.append(log)
                env = dict(os.environ, TMPDIR=str(home / "tmp"), HOME=str(home))
                procs.append(subprocess.Popen(node_command(specs[name], params), cwd=home, env=env, stdout=log,
                                              stderr=subprocess.STDOUT, preexec_fn=die_with_parent()))
            wait_for(lambda: any(s.accepted for s in statuses), "an accepted adaptation", 90)
            first = next(s for s in statuses if s.accepted)
            assert first.params and first.params_path == "" and first.model_tag == ""
            assert all(np.isfinite(np.asarray(p.values)).all() for p in first.params)
            wait_for(lambda: any(p.params_version >= first.version for p in preds),
                     "predictions with the adapted parameters", 30)
            assert not any((tmp_path / "learner").rglob("*.pt")), "the learner wrote no parameter file"
        finally:
            codes = stop_all(procs, STOP_GRACE_S)
            for log in logs:
                log.close()
        assert codes == [0, 0, 0], [(tmp_path / n / "node.log").read_text()[-1500:] for n in ("learner", "predictor")]
