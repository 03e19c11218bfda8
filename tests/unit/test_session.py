"""``actors.session.Session`` bookkeeping: it stops only the groups it started.

The groups here are plain objects with a ``shutdown`` (no Ray starts): what is checked is
which of them a session owns, not what the real groups do.
"""

from __future__ import annotations

from actors.session import Session
from workers.config import Config


class Group:
    def __init__(self, name: str, stopped: list[str]) -> None:
        self.name, self.stopped = name, stopped

    def shutdown(self) -> None:
        self.stopped.append(self.name)


def test_a_session_stops_what_it_started_and_leaves_reused_groups_running() -> None:
    stopped: list[str] = []
    shared = Session(Config(), "policy")
    shared.retrieval = shared._own(Group("retrieval", stopped))  # type: ignore[assignment]
    shared.rollout_group = shared._own(Group("rollout", stopped))  # type: ignore[assignment]
    run = Session(Config(), "other-policy", reuse=shared)
    assert run.retrieval is shared.retrieval and run.rollout_group is shared.rollout_group
    run.reward = run._own(Group("reward", stopped))  # type: ignore[assignment]
    run.learner = run._own(Group("learner", stopped))  # type: ignore[assignment]
    assert not run.owns(shared.retrieval) and run.owns(run.learner)
    run.stop()
    assert stopped == ["learner", "reward"]
    run.stop()  # twice is harmless
    assert stopped == ["learner", "reward"]
    shared.stop()
    assert stopped == ["learner", "reward", "rollout", "retrieval"]


def test_evaluating_no_rows_gives_zero_counts_without_starting_anything() -> None:
    session = Session(Config(), "policy", in_process=True)
    result = session.evaluate([])
    assert result.overall["eval/count"] == 0.0 and result.records == ()
    assert session.retrieval is None and session.rollout_group is None
