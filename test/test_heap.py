"""`online.heap.keep_heap`: a control loop's allocations stop faulting pages in once the heap holds them."""

import subprocess
import sys

# one MPPI cost evaluation's allocations (K = 512 candidates, H = 20), repeated; prints page faults per call
_LOOP = """
import resource, sys
import numpy as np
from metasym_core.online.heap import keep_heap
from metasym_core.control.cost import tracking_cost
from metasym_core.control.reference import FigureEight
if sys.argv[1] == "keep":
    assert keep_heap()
rng, ref = np.random.default_rng(0), FigureEight()
def solve():
    return tracking_cost(rng.normal(size=(512, 20, 12)), rng.normal(size=(512, 20, 4)), ref, 0.0, 0.02, 3.6)
for _ in range(5):
    solve()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    solve()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_call(mode: str) -> float:
    run = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return float(run.stdout.split()[-1])


def test_kept_heap_serves_a_control_loop_without_page_faults():
    kept, default = _faults_per_call("keep"), _faults_per_call("default")
    assert kept < 5 < default  # glibc's defaults hand ~0.5 k pages back to the kernel per call (measured)
