"""Reporting bad input rows: where (file and line or record), what, and how many were dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """An input row or file is unusable. The message names the file, the place and the reason."""


@dataclass(frozen=True)
class Problem:
    """One dropped input record: ``where`` is ``file:line`` (JSONL) or ``file[record]`` (JSON)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ProblemLog:
    """Collects dropped records; logs the first few in full and keeps the count of all."""

    max_logged: int = 20
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        problem = Problem(where, reason)
        self.problems.append(problem)
        if len(self.problems) <= self.max_logged:
            logger.warning("dropped %s", problem)
        elif len(self.problems) == self.max_logged + 1:
            logger.warning("more dropped records; only the count is reported from here on")

    def __len__(self) -> int:
        return len(self.problems)
