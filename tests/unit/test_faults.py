"""The windowed restart budget, the test-only hang knob and the chaos run's tally."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.chaos import tally
from workers.faults import HANG_ENV, RestartBudget, RestartBudgetExceeded, hang_point


def test_restart_budget_counts_deaths_within_the_window_only() -> None:
    budget = RestartBudget(2, window_s=60.0, what="rollout actors", fields="rollout.max_restarts")
    assert budget.record("actor 0", now=0.0) == 1
    assert budget.record("actor 1", now=30.0) == 2
    with pytest.raises(RestartBudgetExceeded, match=r"rollout actors: 3 deaths within 60 s \(the last: "
                                                    r"actor 0\).*rollout.max_restarts"):
        budget.record("actor 0", now=59.0)


def test_restart_budget_forgets_deaths_older_than_the_window() -> None:
    budget = RestartBudget(2, window_s=60.0)
    budget.record("a", now=0.0)
    budget.record("a", now=30.0)
    assert budget.record("a", now=60.0) == 2  # the death at 0 s left the window at 60 s
    assert budget.record("a", now=91.0) == 2  # and the one at 30 s at 90 s
    # A job's life holds many more deaths than the budget, spread out: never refused.
    for k in range(10):
        budget.record("a", now=200.0 + 61.0 * k)


def test_restart_budget_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RestartBudget(1, window_s=0.0)


def test_hang_point_hangs_once_for_its_point_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "hung"
    monkeypatch.setenv(HANG_ENV, f"rollout:0.5:{flag}")
    started = time.monotonic()
    hang_point("learner_update")  # another point: no hang
    assert time.monotonic() - started < 0.3 and not flag.exists()
    hang_point("rollout")
    assert time.monotonic() - started >= 0.5 and flag.exists()
    again = time.monotonic()
    hang_point("rollout")  # the redone call (in the restarted process) goes through
    assert time.monotonic() - again < 0.3


def test_hang_point_does_nothing_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HANG_ENV, raising=False)
    started = time.monotonic()
    hang_point("rollout")
    assert time.monotonic() - started < 0.1


def test_chaos_tally_counts_duplicates_missing_and_unexpected_ids_per_step() -> None:
    expected = [["a#0", "b#0"], ["a#0", "c#0"]]  # a prompt drawn again in a later step is a new trajectory
    assert tally(expected, [["b#0", "a#0"], ["a#0", "c#0"]]) == {
        "expected": 4, "trained": 4, "duplicates": 0, "missing": 0, "unexpected": 0}
    assert tally(expected, [["a#0", "a#0", "b#0"], ["c#0", "x#0"]]) == {
        "expected": 4, "trained": 5, "duplicates": 1, "missing": 1, "unexpected": 1}
    assert tally(expected, [["a#0", "b#0"]]) == {  # the run stopped before step 2's update
        "expected": 4, "trained": 2, "duplicates": 0, "missing": 2, "unexpected": 0}
