"""Background threads of a real-time process run normal-scheduled.

A latency-critical node process goes SCHED_FIFO as a whole (its `realtime_priority` parameter: every
thread, and threads started later inherit it). Threads that only prepare work ahead of need (the
quantum stream's next chunk, the predictor's next model) should not compete at that priority with the
thread that publishes or predicts: between equal SCHED_FIFO priorities there is no time slicing, and a
quantum chunk of 200 steps (~150 ms of solving) cost the graph 5 % of its states (docs/decisions.md,
"The quantum simulator lost 5 % of its states under SCHED_FIFO"). Each such thread calls
`background_scheduling()` before its work. No ROS here.
"""

from __future__ import annotations

import os


def background_scheduling() -> None:
    """Put the calling thread back to normal scheduling if it runs real-time (SCHED_FIFO or SCHED_RR);
    otherwise, or where the policy cannot be changed, leave it as it is."""
    if not hasattr(os, "sched_getscheduler"):
        return
    try:
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:  # refused, or no such policy here: the thread keeps what it has
        pass
