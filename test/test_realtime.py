"""Real-time scheduling of a node process (metasym_ros/realtime.py): every thread, later ones too."""

import os
import subprocess
import sys
import textwrap

import pytest

from metasym_core.errors import MetaSymError
from metasym_ros import realtime


@pytest.mark.parametrize("bad", [-1, 100, 1.5, True, "20"])
def test_priorities_outside_0_to_99_are_refused_with_the_parameter_named(bad):
    with pytest.raises(MetaSymError, match="realtime_priority"):
        realtime.check_priority(bad)


def test_every_thread_of_the_process_and_later_ones_run_fifo_then_back_to_normal():
    # in a child process: pytest itself must not run real-time
    code = textwrap.dedent("""
        import os, threading
        from metasym_ros import realtime
        stop = threading.Event()
        before = threading.Thread(target=stop.wait); before.start()
        refused = realtime.set_fifo(7)
        after = threading.Thread(target=stop.wait); after.start()
        print(refused, realtime.fifo_priority(), len(os.listdir("/proc/self/task")))
        print(realtime.set_fifo(0), realtime.fifo_priority())
        stop.set()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, second = out.stdout.split("\n")[:2]
    refused, priority, threads = first.split(" ", 2)[0], first.split()[-2], int(first.split()[-1])
    assert threads >= 3
    if realtime.permitted(7):
        assert (refused, priority) == ("None", "7")
        assert second == "None 0"
    else:
        assert priority == "0" and "refused" in first and "CAP_SYS_NICE" in first


def test_a_refusal_is_reported_and_leaves_scheduling_alone(monkeypatch):
    def deny(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", deny)
    message = realtime.set_fifo(20)
    assert "refused" in message and "rtprio" in message
    assert realtime.fifo_priority() == 0


def test_an_unknown_child_has_no_priority_and_this_process_runs_normally():
    assert realtime.child_fifo_priority(os.getpid(), "no-such-process-marker") is None
    assert realtime.fifo_priority() == 0


@pytest.mark.ros
def test_a_real_time_node_asked_to_stop_runs_normally_before_it_is_destroyed():
    """SIGINT to a real-time node process (`common.run_node`): by the time its node is destroyed the whole
    process is back to normal scheduling, so that its shutdown never holds a core the rest of the graph needs
    to stop; and it exits cleanly (0)."""
    import _ros_env  # noqa: F401 - isolates DDS for the child

    code = textwrap.dedent("""
        import os, signal, threading
        from rclpy.node import Node
        from metasym_ros import realtime
        from metasym_ros.common import run_node

        class Probe(Node):
            def __init__(self):
                super().__init__("rt_probe")
                threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

            def destroy_node(self):
                print("at destroy", realtime.fifo_priority(), flush=True)
                super().destroy_node()

        print("refused", realtime.set_fifo(7), realtime.fifo_priority(), flush=True)
        print("exit", run_node(Probe), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    if realtime.permitted(7):
        assert "refused None 7" in lines, out.stdout
    assert "at destroy 0" in lines and "exit 0" in lines, out.stdout + out.stderr
