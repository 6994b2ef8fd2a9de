"""The grading phase's time limit: `time_limit(seconds)` raises `GradingTimeout` in the main
thread, but never inside an import (that would leave a half-made module behind for every
later submission in this grader process).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class GradingTimeout(BaseException):
    """The grader's own checks on one submission ran past Limits.grading_timeout.
    A BaseException, so that no `except Exception` guard on the way (an item's own, or one
    inside transformers) can swallow it and let the checks run on without a limit."""


def _importing(frame) -> bool:
    """Is this thread inside an import? An exception raised there leaves the module half
    made in sys.modules (sympy without .core, torch that segfaults on the next import):
    every later submission in this grader process would fail, or crash it."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float):
    """Raise GradingTimeout in this (main) thread after `seconds`, once no import is under
    way; no limit off the main thread, where signals cannot be delivered."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        if _importing(frame):  # let the import finish, then strike
            signal.setitimer(signal.ITIMER_REAL, 0.005)
            return
        raise GradingTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
