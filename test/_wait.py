"""Waiting for a condition in tests (a deadline, never a timing assertion)."""

import time


def wait_for(done, what, deadline: float = 20.0) -> None:
    """Poll `done()` until true; fail naming `what` (a string, or a callable giving one) after `deadline` s."""
    end = time.monotonic() + deadline
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.02)
