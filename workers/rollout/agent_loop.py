"""The multi-turn search loop (StepSearch/Search-R1 protocol), token in / token out.

Runs inside a rollout actor (or the driver when ``rollout.num_workers=0``). The policy
generates until ``</search>`` or ``</answer>``; each search is answered with an
``<information>`` block from the retriever, batched over all active episodes. The
trajectory keeps the exact token ids the engine produced and the ids of the inserted
observations; decoded text is only for logs and reward text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.config import RolloutConfig
from workers.rollout.engines import GenerationEngine, SamplingSettings
from workers.types import Document, SearchFn, Turn, TurnKind

logger = logging.getLogger(__name__)


# The notes name the tags without writing a tag pair: a pair in inserted text would read
# as a search or an answer to anything that parses the response.
INVALID_ACTION_NOTE = (
    "\nThat action was not understood. Search by putting a query inside the search tags, "
    "or answer inside the answer tags.\n")
LAST_TURN_NOTE = "\nNo searches are left. Give your final answer now, inside the answer tags.\n"

_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from ``RolloutConfig`` plus the retrieval depth."""

    max_turns: int
    max_response_tokens: int
    max_obs_tokens: int
    max_action_tokens: int
    topk: int

    @classmethod
    def from_config(cls, cfg: RolloutConfig, topk: int) -> LoopSettings:
        return cls(cfg.max_turns, cfg.max_response_tokens, cfg.max_obs_tokens, cfg.max_action_tokens, topk)


@dataclass
class Episode:
    """One episode in progress: the response so far and its turns."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    searches: int = 0
    done: bool = False

    def append(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> tuple[int, int]:
        """Append action (with log-probs) or observation (without) tokens; return their span."""
        start = len(self.response_ids)
        self.response_ids.extend(ids)
        self.action_mask.extend([1 if logprobs is not None else 0] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        return start, len(self.response_ids)


def parse_action(text: str) -> tuple[TurnKind, str | None]:
    """Classify one generation: a search (with its query), an answer, or invalid.

    >>> parse_action("<think> x </think> <search> Ann Lee born </search>")
    ('search', 'Ann Lee born')
    >>> parse_action("<answer> Paris </answer>")
    ('answer', 'Paris')
    >>> parse_action("<search>  </search>")
    ('invalid', None)
    """
    if text.rstrip().endswith("</answer>") and (m := _ANSWER.findall(text)):
        return "answer", m[-1].strip()
    if text.rstrip().endswith("</search>") and (m := _SEARCH.findall(text)):
        query = " ".join(m[-1].split())
        return ("search", query) if query else ("invalid", None)
    return "invalid", None


def format_information(docs: Sequence[Document]) -> str:
    """The observation text for one search.

    >>> format_information([Document("p1", "Paris", "Paris is in France.")])
    '\\n<information>Doc 1 (Title: Paris) Paris is in France.\\n</information>\\n'
    """
    body = "".join(f"Doc {i} (Title: {d.title}) {d.text}\n" for i, d in enumerate(docs, 1))
    return f"\n<information>{body}</information>\n"


class AgentLoop:
    """Runs episodes over one engine, one retriever and one tokenizer."""

    def __init__(self, engine: GenerationEngine, tokenizer: object, search: SearchFn,
                 settings: LoopSettings) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.search = search
        self.settings = settings
        self._close_info: list[int] = self.encode("</information>\n")

    def encode(self, text: str) -> list[int]:
        """Token ids of inserted or scripted text (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))  # type: ignore[attr-defined]

    def observation_ids(self, docs: Sequence[Document], note: str = "") -> list[int]:
        """Tokens of an ``<information>`` block, cut to ``max_obs_tokens`` with its closing tag kept."""
        ids = self.encode(format_information(docs) + note)
        limit = self.settings.max_obs_tokens
        if len(ids) > limit:
            tail = self._close_info + (self.encode(note) if note else [])
            ids = ids[: max(0, limit - len(tail))] + tail
        return ids

    def run(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[Episode]:
        """Roll out one episode per prompt until each answers or runs out of budget."""
        episodes = [Episode(list(p)) for p in prompts]
        s = self.settings
        for _ in range(s.max_turns + 2):  # searches, one final answer, and one corrective retry
            active = [e for e in episodes if not e.done]
            if not active:
                break
            self._step(active, sampling)
        for episode in episodes:
            episode.done = True
        return episodes

    def _step(self, active: list[Episode], sampling: SamplingSettings) -> None:
        s = self.settings
        budgets = [max(1, min(s.max_action_tokens, s.max_response_tokens - len(e.response_ids)))
                   for e in active]
        final = [e.searches >= s.max_turns for e in active]
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, key in enumerate(zip(budgets, final, strict=True)):
            groups.setdefault(key, []).append(i)
        pending: list[tuple[Episode, str, int, int]] = []
        for (budget, is_final), idx in groups.items():
            stop = ("</answer>",) if is_final else ("</search>", "</answer>")
            params = SamplingSettings(budget, sampling.temperature, sampling.top_p, sampling.seed,
                                      stop, sampling.stop_token_ids)
            gens = self.engine.generate([active[i].prompt_ids + active[i].response_ids for i in idx], params)
            for i, gen in zip(idx, gens, strict=True):
                episode = active[i]
                start, end = episode.append(gen.token_ids, gen.logprobs)
                kind, query = parse_action(self._decode(gen.token_ids))
                if is_final and kind == "search":
                    kind, query = "invalid", None
                if kind == "search" and query is not None:
                    pending.append((episode, query, start, end))
                    continue
                self._close_turn(episode, kind, start, end, is_final)
        self._answer_searches(pending)

    def _close_turn(self, episode: Episode, kind: TurnKind, start: int, end: int, is_final: bool) -> None:
        """An answer ends the episode; an invalid action gets a corrective note while budget remains."""
        obs = (end, end)
        note = self.encode(INVALID_ACTION_NOTE)
        room = self.settings.max_response_tokens - len(episode.response_ids)
        if kind == "invalid" and not is_final and len(note) < room:
            obs = episode.append(note, None)
        else:
            episode.done = True
        episode.turns.append(Turn(kind, start, end, obs[0], obs[1]))

    def _answer_searches(self, pending: list[tuple[Episode, str, int, int]]) -> None:
        if not pending:
            return
        results = self.search([q for _, q, _, _ in pending], self.settings.topk)
        for (episode, query, start, end), docs in zip(pending, results, strict=True):
            episode.searches += 1
            note = LAST_TURN_NOTE if episode.searches >= self.settings.max_turns else ""
            room = self.settings.max_response_tokens - len(episode.response_ids)
            ids = self.observation_ids(docs, note)
            if len(ids) > room:  # no room for the observation: the episode ends on this search
                episode.done = True
                ids = []
            obs_start, obs_end = episode.append(ids, None)
            episode.turns.append(Turn("search", start, end, obs_start, obs_end, query=query,
                                      doc_ids=tuple(d.id for d in docs),
                                      doc_texts=tuple(d.contents for d in docs)))
