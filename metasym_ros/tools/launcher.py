"""`metasym launch <system>`: start the node graph of metasym_ros.graph as subprocesses.

The same nodes and parameters as launch/<system>.launch.py, without ros2 launch:
each node runs as `python -m metasym_ros.start <module> --ros-args -r __node:=<name> --params-file <yaml>`
(`metasym_ros.start`: SIGINT during its start-up ends it cleanly too)
in its own session, so a terminal Ctrl-C reaches the launcher only, which forwards
SIGINT to every node once, waits for them to exit (then SIGKILL after a grace
period) and returns 0 when all of them exited cleanly. If a node dies on its own,
the others are stopped and its exit code is returned. SIGTERM and SIGHUP (a closed
terminal) stop the graph like SIGINT, and every node gets SIGINT from the kernel if
the launcher dies without stopping it (SIGKILL): no node outlives its launcher.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from metasym_ros.graph import NodeSpec, node_environment, node_graph, params_yaml
from metasym_ros.start import STACKS_SIGNAL, STOP_GRACE_S

STACKS_WAIT_S = 0.5  # time a hung node gets to write its stacks before SIGKILL
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGINT, hold_sigint: bool = False):
    """A `preexec_fn` for Popen: the child gets `sig` when the process that started it dies
    (Linux PR_SET_PDEATHSIG), so a parent killed outright leaves no orphans. None elsewhere.

    With `hold_sigint` (a node run by `metasym_ros.start`) SIGINT is blocked in the child: one that comes
    while the interpreter itself starts up (before any Python handler can run, e.g. during `site`: "Fatal
    Python error", exit 1) stays pending until `start` has its handler and unblocks it."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    prctl = getattr(ctypes.CDLL(name, use_errno=True), "prctl", None) if name else None
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: no imports, no locks
        if hold_sigint:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the mask survives exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return preexec


def node_command(spec: NodeSpec, params_file: str | Path) -> list[str]:
    """The command line that runs one node."""
    return [sys.executable, "-m", "metasym_ros.start", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
            "--params-file", str(params_file)]


def stop_all(procs: list[subprocess.Popen], grace_s: float) -> list[int]:
    """SIGINT every running process once, wait up to `grace_s` in all, then SIGKILL; their exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    end = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"metasym launch: {proc.args[3]} did not exit after SIGINT; its stacks go to its log, then "
                  "it is killed", file=sys.stderr)
            proc.send_signal(STACKS_SIGNAL)  # metasym_ros.start: every thread's stack to the node's stderr
            time.sleep(STACKS_WAIT_S)
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]


class GraphRunner:
    """The one way the project starts a node graph: `metasym launch`, `metasym flight` and `metasym bench ros`.

    `start(specs)` writes the nodes' parameters file (a private temporary folder, removed at the end) and
    starts each node as `node_command` in its own session, SIGINT held until its handler is in place and
    the kernel's SIGINT on the runner's death (`die_with_parent`), with the shipped transport profile
    (`graph.node_environment`). It may be called again for more nodes (e.g. listeners first, then the
    simulator). `dead()` is the first node that exited, `pid(name)` a node's process, `stop()` SIGINTs all,
    waits, then kills (`stop_all`) and returns their exit codes; `close()` (or leaving the context) stops
    what still runs and removes the parameters files.
    """

    def __init__(self, stdout=None, environ: Mapping[str, str] | None = None, announce=None):
        self.stdout, self.announce = stdout, announce
        self.env = node_environment(os.environ if environ is None else environ)
        self.specs: list[NodeSpec] = []
        self.procs: list[subprocess.Popen] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="metasym-graph-")
        self.codes: list[int] | None = None

    def start(self, specs: list[NodeSpec]) -> None:
        """Start the nodes of `specs` (module doc)."""
        params_file = Path(self._tmp.name) / f"params{len(self.procs)}.yaml"
        params_file.write_text(yaml.safe_dump(params_yaml(specs), sort_keys=False), encoding="utf-8")
        for spec in specs:
            out = {} if self.stdout is None else {"stdout": self.stdout, "stderr": subprocess.STDOUT}
            self.procs.append(subprocess.Popen(node_command(spec, params_file), start_new_session=True, env=self.env,
                                               preexec_fn=die_with_parent(hold_sigint=True), **out))
            self.specs.append(spec)
            if self.announce is not None:
                self.announce(f"started {spec.name} (pid {self.procs[-1].pid})")

    def dead(self) -> subprocess.Popen | None:
        """The first node that has exited, or None."""
        return next((p for p in self.procs if p.poll() is not None), None)

    def name_of(self, proc: subprocess.Popen) -> str:
        """The node name of one of the runner's processes."""
        return self.specs[self.procs.index(proc)].name

    def pid(self, name: str) -> int:
        """The process id of the node `name`."""
        return next(p.pid for spec, p in zip(self.specs, self.procs, strict=True) if spec.name == name)

    def stop(self, grace_s: float = STOP_GRACE_S) -> list[int]:
        """Stop every node (SIGINT, then SIGKILL after `grace_s`); their exit codes, in start order."""
        if self.codes is None:
            self.codes = stop_all(self.procs, grace_s)
        return self.codes

    def __enter__(self) -> GraphRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """`stop` what still runs and remove the parameters files."""
        try:
            self.stop(grace_s)
        finally:
            for proc in self.procs:  # only if stopping itself failed
                if proc.poll() is None:
                    proc.kill()
            self._tmp.cleanup()


def launch(system: str, overrides: Mapping[str, object] | None = None, duration_s: float | None = None,
           grace_s: float = STOP_GRACE_S) -> int:
    """Run the graph of `system` until SIGINT/SIGTERM (or `duration_s`); the exit code of the graph."""
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    # the handlers first: a SIGINT while the graph is built (config, parameters) stops it like any other
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        specs = node_graph(system, overrides)
        with GraphRunner(announce=lambda line: print(f"metasym launch: {line}", flush=True)) as graph:
            graph.start(specs)
            end = time.monotonic() + duration_s if duration_s else None
            failed = None
            while stop["signal"] is None and failed is None and (end is None or time.monotonic() < end):
                failed = graph.dead()
                time.sleep(0.05)
            if stop["signal"] is not None:
                print(f"metasym launch: {signal.Signals(stop['signal']).name} received; stopping the nodes",
                      flush=True)
            codes = graph.stop(grace_s)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if failed is not None:
        print(f"metasym launch: {failed.args[3]} exited with code {failed.returncode}", file=sys.stderr)
        return failed.returncode or 1
    bad = [(spec.name, code) for spec, code in zip(specs, codes, strict=True) if code != 0]
    if bad:
        print(f"metasym launch: unclean exit: {bad}", file=sys.stderr)
        return 1
    return 0
