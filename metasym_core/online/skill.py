"""How a stream of published predictions compares with simply holding the last state.

A prediction from the state of step n predicts steps n+1 … n+H. Holding that state is the
baseline any predictor must beat: its error is the mean squared difference between the state
of step n and the states that arrived at n+1 … n+H. `hold_errors` computes it for each
prediction; `skill_summary` gives the ratio of the two errors over a whole flight and per
window of simulated time (the ratio of the window's mean errors, as a subscriber averaging
over that window would see it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def hold_errors(states: Mapping[int, np.ndarray], bases, horizon: int) -> np.ndarray:
    """Per base step, the MSE of holding its state over the next `horizon` steps (NaN where a state is
    missing)."""
    out = np.full(len(bases), np.nan)
    for i, base in enumerate(bases):
        base = int(base)
        if base not in states or any(s not in states for s in range(base + 1, base + horizon + 1)):
            continue
        x = np.asarray(states[base], dtype=np.float64)
        future = np.stack([np.asarray(states[s], dtype=np.float64) for s in range(base + 1, base + horizon + 1)])
        out[i] = float(np.mean((future - x) ** 2))
    return out


def skill_summary(times_s, mse, hold, window_s: float = 2.0, exclude: tuple[float, float] | None = None,
                  target: float = 0.5) -> dict[str, float]:
    """Ratio of prediction to hold-the-state error over all predictions (`ratio_to_hold`), and per window
    of `window_s` simulated seconds by the time each prediction starts from: the windows' worst and
    median ratio and the fraction at most `target`. Windows that overlap `exclude` (start, end) are left
    out of the window figures (e.g. the seconds after a parameter change, before adaptation)."""
    t, e, h = (np.asarray(a, dtype=np.float64).ravel() for a in (times_s, mse, hold))
    ok = np.isfinite(e) & np.isfinite(h)
    t, e, h = t[ok], e[ok], h[ok]
    nan = float("nan")
    out = {"ratio_to_hold": float(e.mean() / h.mean()) if e.size and h.mean() > 0 else nan,
           "predictions_scored": int(e.size)}
    ratios = []
    if e.size:
        start = math.floor(t.min() / window_s) * window_s
        for lo in np.arange(start, t.max() + 1e-9, window_s):
            hi = lo + window_s
            if exclude is not None and lo < exclude[1] and hi > exclude[0]:
                continue
            mask = (t >= lo) & (t < hi)
            if mask.sum() >= 2 and h[mask].mean() > 0:
                ratios.append(float(e[mask].mean() / h[mask].mean()))
    r = np.array(ratios)
    out.update({"windows": int(r.size),
                "window_ratio_median": float(np.median(r)) if r.size else nan,
                "window_ratio_max": float(r.max()) if r.size else nan,
                f"windows_at_most_{target:g}_fraction": float(np.mean(r <= target)) if r.size else nan})
    return out
