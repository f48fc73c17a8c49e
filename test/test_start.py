"""metasym_ros.start and the launcher's stop, on stand-in node modules (no ROS, no DDS): how a node process
ends, and what a launcher learns from one that does not."""

import os
import subprocess
import sys
import textwrap
import time

from metasym_ros.tools.launcher import stop_all

NODE = textwrap.dedent("""
    import atexit, signal, sys, time

    def main(argv):
        mode = argv[1]
        atexit.register(lambda: print("finalized", flush=True))
        if mode == "raise":
            raise RuntimeError("a bug in the node")
        if mode == "hang":  # a node whose shutdown never ends
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(60)
        if mode.startswith("teardown"):  # common.run_node's teardown, stuck (as in native code) or not
            from metasym_ros.start import teardown_watchdog
            watchdog = teardown_watchdog(lambda: 4, limit_s=0.5)
            time.sleep(60 if mode == "teardown-stuck" else 0.1)
            watchdog.cancel()
        print("ran", argv[1:], end="")  # still buffered when main returns
        return 3
""")


def _node(tmp_path, mode: str) -> subprocess.Popen:
    (tmp_path / "stand_in_node.py").write_text(NODE, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "metasym_ros.start", "stand_in_node", mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_node_process_ends_with_mains_code_and_its_output_but_without_finalization(tmp_path):
    """Once main returned (the node released what it held), the process ends at once: what it printed is
    written, the interpreter's finalization (seconds of tearing down torch, Pinocchio, DDS) is skipped."""
    proc = _node(tmp_path, "ok")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and out == "ran ['ok']", out


def test_an_exception_from_main_still_ends_the_normal_way(tmp_path):
    proc = _node(tmp_path, "raise")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" in out and "RuntimeError: a bug in the node" in out, out
    assert "finalized" in out  # the usual exit, atexit included


def test_a_node_that_does_not_exit_after_sigint_says_where_it_hangs_then_is_killed(tmp_path, capsys):
    proc = _node(tmp_path, "hang")
    assert proc.stdout.readline() == "ready\n"
    assert stop_all([proc], grace_s=0.5) == [-9]
    out = proc.stdout.read()
    assert "most recent call first" in out and "stand_in_node.py" in out and "in main" in out, out
    assert "stand_in_node did not exit after SIGINT" in capsys.readouterr().err


def test_a_teardown_stuck_past_its_limit_ends_the_node_and_says_where(tmp_path):
    """`teardown_watchdog`: a node's teardown that hangs (in rclpy or DDS, beyond Python's reach) ends the process
    by itself after the limit, with the node's exit code, one line and every thread's stack; one that ends in time
    is not disturbed."""
    t0 = time.monotonic()
    proc = _node(tmp_path, "teardown-stuck")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert time.monotonic() - t0 < 30  # the limit (0.5 s here) after the interpreter's start, not the 60 s sleep
    assert "teardown did not end within 0.5 s" in out and "stand_in_node.py" in out and "in main" in out, out
    assert "finalized" not in out
    proc = _node(tmp_path, "teardown-ok")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and out == "ran ['teardown-ok']", out
