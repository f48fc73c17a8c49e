"""Real-time (SCHED_FIFO) scheduling for a latency-critical node process, the usual ROS 2 set-up.

On a loaded machine the tail of a DDS hop is the time a woken thread waits for a core:
the simulator, the learner and the probe all wake at once at every state. A SCHED_FIFO
thread pre-empts normal ones at once (docs/benchmarks.md, "ROS latency": state → prediction
p99 5.6 → 3.4 ms on 2 cores, predictor and probe real-time). The policy is set for every thread of the process — the DDS
receive threads, the executor, the workers — and threads started later inherit it, so a
node process calls `set_fifo` once its threads exist. No rclpy import here.

Setting it needs CAP_SYS_NICE or an rtprio limit (`ulimit -r`, /etc/security/limits.conf);
where it is refused the caller gets the reason and keeps normal scheduling, as
ros2_control's controller manager does. The kernel's RT throttling (95 % per second by
default) still leaves the other processes some time.
"""

from __future__ import annotations

import os

from metasym_core.errors import MetaSymError
from metasym_core.online.heap import keep_heap

_TASKS = "/proc/self/task"


def check_priority(priority: int) -> None:
    """Raise MetaSymError unless `priority` is 0 (normal scheduling) or a SCHED_FIFO priority."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 99:
        raise MetaSymError(f"parameter realtime_priority must be 0 (off) or a SCHED_FIFO priority 1-99, "
                           f"got {priority!r}")


def set_fifo(priority: int) -> str | None:
    """Every thread of this process to SCHED_FIFO `priority` (0: back to SCHED_OTHER).

    Returns None when done, else why it was refused (the threads keep their policy)."""
    check_priority(priority)
    if not hasattr(os, "sched_setscheduler") or not os.path.isdir(_TASKS):
        return "real-time scheduling needs Linux (os.sched_setscheduler, /proc/self/task)"
    policy = os.SCHED_FIFO if priority else os.SCHED_OTHER
    param = os.sched_param(priority)
    for tid in sorted(int(t) for t in os.listdir(_TASKS)):
        try:
            os.sched_setscheduler(tid, policy, param)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except PermissionError:
            return (f"SCHED_FIFO priority {priority} refused (needs CAP_SYS_NICE or an rtprio limit >= "
                    f"{priority}: `ulimit -r`, /etc/security/limits.conf)")
        except OSError as exc:
            return f"SCHED_FIFO priority {priority} refused: {exc.strerror or exc}"
    return None


def go_real_time(priority: int, logger) -> None:
    """The real-time set-up of a latency-critical node process, once its threads exist: its heap kept
    (`metasym_core.online.heap.keep_heap`: no page faults in its loops' allocations), then
    `set_fifo(priority)` (later threads, e.g. rollout pools, inherit it; 0: normal scheduling), saying in
    the node's log what came of it."""
    if not keep_heap():
        logger.info("heap thresholds left as they are (not glibc)")
    if not priority:
        return
    refused = set_fifo(priority)
    if refused:
        logger.warning(f"{refused}; running with normal scheduling")
    else:
        logger.info(f"real-time scheduling: SCHED_FIFO priority {priority}")


def permitted(priority: int) -> bool:
    """Whether this process may take SCHED_FIFO `priority`: CAP_SYS_NICE, or an rtprio limit that high."""
    import resource

    try:
        with open("/proc/self/status") as f:
            caps = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
        if int(caps, 16) >> 23 & 1:  # CAP_SYS_NICE
            return True
        soft = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        return soft == resource.RLIM_INFINITY or soft >= priority
    except (OSError, ValueError, AttributeError):
        return False


def child_fifo_priority(parent: int, marker: str) -> int | None:
    """`fifo_priority` of the child process of `parent` whose command line contains `marker` (None: no such)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    return fifo_priority(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return None


def fifo_priority(pid: int | None = None) -> int:
    """The SCHED_FIFO priority process `pid` (default: this one) runs with: the lowest over its SCHED_FIFO
    threads, 0 if none is. Threads that a real-time process runs normal-scheduled on purpose (background
    work, e.g. the quantum stream's chunk worker) do not count; a process that left real-time reads 0
    only once every thread has."""
    root = _TASKS if pid is None else f"/proc/{pid}/task"
    priorities = []
    for tid in os.listdir(root):
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_FIFO:
                priorities.append(os.sched_getparam(int(tid)).sched_priority)
        except ProcessLookupError:
            continue
    return min(priorities, default=0)
