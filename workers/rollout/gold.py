"""Gold search trajectories for the supervised warm start (launch.sft).

Runs in the SFT driver. For each row, the policy's turns are written from the
decomposition: one ``<search> key </search>`` per sub-question (the first phrasing of its
search-key group), each followed by the ``<information>`` block the real retriever
returns, then ``<answer> target </answer>``. Observation tokens are made by the same
code the agent loop uses, so the warm-started policy sees at training time exactly the
kind of context it will see in rollouts; the loss goes on the action tokens only.

With a ``Renaming`` per row (``workers.data.renaming``; ``sft.rename_entities``, synthetic
worlds only) the row's
entities take other names of the world throughout its trajectory (question, queries,
retrieved paragraphs, answer), drawn anew every epoch; the searches still use the real
names, so the documents are the real ones, renamed. A policy trained on renamed copies
cannot memorise which name goes with which question and has to copy names from its
context instead. Drawing from the world's own names keeps every name one the tokenizer
was trained on (at ``model.tiny.vocab_size=5000`` nearly all are whole tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from workers.data.corpus import split_contents
from workers.data.renaming import Renaming
from workers.data.rows import QARow
from workers.rollout.agent_loop import LAST_TURN_NOTE, AgentLoop, Episode, SearchFn
from workers.types import Turn


def gold_queries(row: QARow) -> list[str]:
    """The canonical query of each sub-question, in order (empty groups are skipped)."""
    return [group[0] for group in row.ground_truth.search_keys if group and group[0].strip()]


def early_answer(row: QARow) -> str | None:
    """What a demonstrator that stops after its first search answers: the entity that
    search found, which is the title of the second support paragraph (None for one-hop
    rows and rows without support paragraphs for their searches)."""
    docs = row.ground_truth.support_docs
    if len(gold_queries(row)) < 2 or len(docs) < 2:
        return None
    return split_contents(docs[1])[0] or None


def gold_episodes(rows: Sequence[QARow], prompts: Sequence[Sequence[int]], loop: AgentLoop,
                  search: SearchFn, renamings: Sequence[Renaming] | None = None,
                  early: Sequence[bool] | None = None) -> list[Episode]:
    """One finished episode per row: gold searches with real retrieval, then the answer.

    ``loop`` supplies the tokenizer, the observation format and the budgets
    (``max_turns`` searches at most, ``max_response_tokens`` in all). ``renamings``: one
    per row, applied to everything the episode shows (``prompts`` must already be of the
    renamed rows); searches use the real queries. ``early``: per row, stop after the
    first search and answer ``early_answer(row)`` (``sft.early_answer_share``; rows
    without one stay complete).
    """
    s = loop.settings
    if renamings is None:
        renamings = [Renaming({})] * len(rows)
    if len(renamings) != len(rows) or (early is not None and len(early) != len(rows)):
        raise ValueError(f"{len(renamings)} renamings and {len(early or rows)} early flags for {len(rows)} rows")
    answers = [row.ground_truth.target[0] for row in rows]
    plans = [gold_queries(row)[: s.max_turns] for row in rows]
    for i, row in enumerate(rows):
        if early is not None and early[i] and (name := early_answer(row)) is not None:
            plans[i], answers[i] = gold_queries(row)[:1], name
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
    for answer, episode, rename in zip(answers, episodes, renamings, strict=True):
        start, end = _act(episode, loop, f"<answer> {rename(answer)} </answer>")
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
