"""Gold search trajectories for the supervised warm start (launch.sft).

Runs in the SFT driver. For each row, the policy's turns are written from the
decomposition: one ``<search> key </search>`` per sub-question (the first phrasing of its
search-key group), each followed by the ``<information>`` block the real retriever
returns, then ``<answer> target </answer>``. Observation tokens are made by the same
code the agent loop uses, so the warm-started policy sees at training time exactly the
kind of context it will see in rollouts; the loss goes on the action tokens only.

With a ``Renaming`` per row (``sft.rename_entities``, synthetic worlds only) the row's
entities take other names of the world throughout its trajectory (question, queries,
retrieved paragraphs, answer), drawn anew every epoch; the searches still use the real
names, so the documents are the real ones, renamed. A policy trained on renamed copies
cannot memorise which name goes with which question and has to copy names from its
context instead. Drawing from the world's own names keeps every name one the tokenizer
was trained on (at ``model.tiny.vocab_size=5000`` nearly all are whole tokens).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from workers.data.rows import QARow
from workers.data.toyworld import FRAME_WORDS
from workers.rollout.agent_loop import LAST_TURN_NOTE, AgentLoop, Episode, SearchFn
from workers.types import Document, Turn


def gold_queries(row: QARow) -> list[str]:
    """The canonical query of each sub-question, in order (empty groups are skipped)."""
    return [group[0] for group in row.ground_truth.search_keys if group and group[0].strip()]


def entity_names(row: QARow) -> list[str]:
    """The names a row's gold trajectory is about: its supporting paragraphs' titles and answers."""
    titles = [doc.split("\n", 1)[0].strip('"') for doc in row.ground_truth.support_docs]
    return [n for n in dict.fromkeys([*titles, *row.ground_truth.target]) if n.strip()]


class NamePool:
    """Names to rename entities with, grouped by shape: frame words (``University``,
    ``The``, ...) kept, every other word by its case. A person's name is replaced by a
    two-word name, a university by another ``X University``, a currency by a lower-case word."""

    def __init__(self, names: Iterable[str]) -> None:
        self._by_shape: dict[tuple[str, ...], list[str]] = {}
        for name in dict.fromkeys(n for n in names if n.strip()):
            self._by_shape.setdefault(self.shape(name), []).append(name)

    @staticmethod
    def shape(name: str) -> tuple[str, ...]:
        return tuple(w if w in FRAME_WORDS else ("a" if w.islower() else "A") for w in name.split(" "))

    def draw(self, name: str, rng: random.Random, taken: set[str]) -> str:
        """Another name of ``name``'s shape not in ``taken`` (``name`` itself when there is none)."""
        options = self._by_shape.get(self.shape(name), [])
        for _ in range(8):  # random probes first: pools are large, ``taken`` small
            if options and (pick := rng.choice(options)) != name and pick not in taken:
                return pick
        free = [n for n in options if n != name and n not in taken]
        return rng.choice(free) if free else name


class Renaming:
    """A consistent substitution of whole names in texts (longest name first)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = {k: v for k, v in mapping.items() if k}
        names = sorted(self.mapping, key=len, reverse=True)
        self._pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b") if names else None

    @classmethod
    def draw(cls, row: QARow, pool: NamePool, rng: random.Random) -> Renaming:
        """Other names from ``pool`` for ``row``'s entities, distinct within the row."""
        names = entity_names(row)
        taken, mapping = set(names), {}
        for name in names:
            mapping[name] = new = pool.draw(name, rng, taken)
            taken.add(new)
        return cls(mapping)

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(0)], text)

    def document(self, doc: Document) -> Document:
        return replace(doc, title=self(doc.title), text=self(doc.text))

    def row(self, row: QARow) -> QARow:
        """``row`` as the renamed world would have it (question, prompt, ground truth)."""
        gt = row.ground_truth
        return replace(
            row, question=self(row.question),
            prompt=tuple({**m, "content": self(m["content"])} for m in row.prompt),
            ground_truth=replace(gt, target=tuple(map(self, gt.target)),
                                 search_keys=tuple(tuple(map(self, g)) for g in gt.search_keys),
                                 support_docs=tuple(map(self, gt.support_docs))))


def gold_episodes(rows: Sequence[QARow], prompts: Sequence[Sequence[int]], loop: AgentLoop,
                  search: SearchFn, renamings: Sequence[Renaming] | None = None) -> list[Episode]:
    """One finished episode per row: gold searches with real retrieval, then the answer.

    ``loop`` supplies the tokenizer, the observation format and the budgets
    (``max_turns`` searches at most, ``max_response_tokens`` in all). ``renamings``: one
    per row, applied to everything the episode shows (``prompts`` must already be of the
    renamed rows); searches use the real queries.
    """
    s = loop.settings
    if renamings is None:
        renamings = [Renaming({})] * len(rows)
    if len(renamings) != len(rows):
        raise ValueError(f"{len(renamings)} renamings for {len(rows)} rows")
    plans = [gold_queries(row)[: s.max_turns] for row in rows]
    episodes = [Episode(list(p)) for p in prompts]
    for turn in range(max((len(p) for p in plans), default=0)):
        active = [i for i, plan in enumerate(plans) if turn < len(plan)]
        results = search([plans[i][turn] for i in active], s.topk)
        for i, found in zip(active, results, strict=True):
            episode, query = episodes[i], renamings[i](plans[i][turn])
            docs = [renamings[i].document(d) for d in found]
            start, end = _act(episode, loop, f"<search> {query} </search>")
            episode.searches += 1
            note = LAST_TURN_NOTE if episode.searches >= s.max_turns else ""
            obs_start, obs_end = episode.append(loop.observation_ids(docs, note), None)
            episode.turns.append(Turn("search", start, end, obs_start, obs_end, query=query,
                                      doc_ids=tuple(d.id for d in docs),
                                      doc_texts=tuple(d.contents for d in docs)))
    for row, episode, rename in zip(rows, episodes, renamings, strict=True):
        start, end = _act(episode, loop, f"<answer> {rename(row.ground_truth.target[0])} </answer>")
        episode.turns.append(Turn("answer", start, end, end, end))
        episode.done = True
    return episodes


def _act(episode: Episode, loop: AgentLoop, text: str) -> tuple[int, int]:
    """Append a gold action (log-prob 0: it was not sampled); return its span."""
    ids = loop.encode(text)
    return episode.append(ids, [0.0] * len(ids))


def first_action(episode: Episode) -> Episode:
    """The episode cut after its first action (the first search of a gold trajectory).

    What ``sft.first_search_steps`` trains on: the prompt and the first query alone, the
    step where the policy copies the question's entity into a search.
    """
    if not episode.turns:
        raise ValueError("the episode has no action to keep")
    turn = episode.turns[0]
    end = turn.action_end
    return Episode(list(episode.prompt_ids), episode.response_ids[:end], episode.action_mask[:end],
                   episode.logprobs[:end], [replace(turn, obs_start=end, obs_end=end)],
                   searches=int(turn.kind == "search"), done=True)
