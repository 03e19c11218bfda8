"""Fault bookkeeping shared by the actor groups, Ray-free: a windowed restart budget and
the test-only hang knob.

``RestartBudget`` runs in the driver (inside a group object). ``hang_point`` runs in the
worker processes (rollout actors, learner ranks) at the start of the calls the driver
waits on; it does nothing unless the test-only environment variable ``HANG_ENV`` is set.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

logger = logging.getLogger(__name__)

HANG_ENV = "STEPSEARCH_TEST_HANG"
"""Test-only: ``POINT:SECONDS:FLAG_FILE`` makes the first call that reaches ``hang_point(POINT)``
in any process sleep SECONDS (a real hang for the driver's timeouts to catch). FLAG_FILE is
created by that call, so the call redone after the hung process is killed does not hang again.
Points: ``rollout`` (a rollout chunk), ``learner_update``, ``learner_export`` (weights for the
engines), ``learner_checkpoint``. Never set it outside tests and benchmarks."""


class RestartBudgetExceeded(RuntimeError):
    """More actor deaths within the window than the budget allows."""


class RestartBudget:
    """At most ``max_restarts`` deaths within any ``window_s`` seconds (older ones expire).

    >>> b = RestartBudget(2, window_s=10.0)
    >>> b.record("actor 0", now=0.0), b.record("actor 1", now=5.0), b.record("actor 0", now=11.0)
    (1, 2, 2)
    """

    def __init__(self, max_restarts: int, window_s: float, what: str = "actor",
                 fields: str = "max_restarts/restart_window_s") -> None:
        if max_restarts < 0 or window_s <= 0:
            raise ValueError(f"max_restarts must be >= 0 and window_s > 0, got {max_restarts}, {window_s}")
        self.max_restarts, self.window_s, self.what, self.fields = max_restarts, window_s, what, fields
        self._deaths: deque[float] = deque()

    def record(self, who: str, now: float | None = None) -> int:
        """Count one death of ``who``; returns the deaths in the window, or raises
        ``RestartBudgetExceeded`` when they are more than ``max_restarts``."""
        now = time.monotonic() if now is None else now
        while self._deaths and self._deaths[0] <= now - self.window_s:
            self._deaths.popleft()
        self._deaths.append(now)
        if len(self._deaths) > self.max_restarts:
            raise RestartBudgetExceeded(
                f"{self.what}: {len(self._deaths)} deaths within {self.window_s:g} s (the last: {who}), "
                f"more than the {self.max_restarts} allowed by {self.fields}")
        return len(self._deaths)

    @property
    def in_window(self) -> int:
        """Deaths counted in the current window (as of the last ``record``)."""
        return len(self._deaths)


def hang_point(point: str) -> None:
    """Sleep here once if the test-only ``HANG_ENV`` names ``point`` (see ``HANG_ENV``)."""
    spec = os.environ.get(HANG_ENV)
    if not spec:
        return
    name, seconds, flag = spec.split(":", 2)
    if name != point:
        return
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # hung once already (in this or an earlier, killed, process)
    logger.warning("%s=%s: hanging at %s for %s s (test-only)", HANG_ENV, spec, point, seconds)
    time.sleep(float(seconds))
