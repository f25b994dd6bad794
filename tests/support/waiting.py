"""The one `wait_for` of the suite: poll a condition until it holds or time runs out."""
from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable, timeout: float = 15.0, what: str | Callable[[], str] = "condition",
             interval: float = 0.05):
    """Call ``predicate`` every ``interval`` seconds until it returns something true; return that.

    After ``timeout`` seconds (and one last call) it raises AssertionError naming ``what``: a
    string, or a function called only then (for a log to show, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
