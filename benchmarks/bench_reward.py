"""Benchmark: vectorized TF-IDF step rewards vs the per-document ``TfidfVectorizer`` definition.

Runs on the CPU of the calling process (no Ray). Scores two kinds of trajectories:
synthetic ones (3 searches x 3 documents, 2-4 gold documents each, some documents repeated
within and across steps) and ones shaped like real MuSiQue, built from
``../shared/data/musique_train100.json`` (one search per decomposition step, 1-3 of the
question's real paragraphs a step, its supporting paragraphs as gold; skipped with a
message when the file is absent). Each kind is scored twice: with ``tfidf_cosines`` and with
``tfidf_cosines_reference`` (one ``TfidfVectorizer()`` fit per document). Prints both
timings (process CPU time, which other jobs on a shared machine disturb less than
wall time; wall time is printed too), their ratio and the largest difference of the
step rewards; fails when the scores differ (> 1e-9) or the speed-up is below
``--min-ratio`` (synthetic) or ``--min-ratio-musique``. Real paragraphs make fewer, shorter
steps, so the fixed cost per call weighs more and the ratio is lower there.

    python -m benchmarks.bench_reward            # 2,000 trajectories (about half a minute)
    python benchmarks/bench_reward.py --num 200  # a quick look
    python -m benchmarks.bench_reward --idf-terms 1000000   # also the corpus idf's storage

``--idf-terms N`` also compares, for a corpus vocabulary of N synthetic terms, how
``CorpusIdf`` holds the document frequencies (sorted term hashes and counts in two arrays,
which reward replicas read from the object store without a copy) with a term -> count dict
(which each replica would unpickle into its heap): memory, and the time of one idf lookup of
a step's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.reward import step_information_gain, tfidf_cosines, tfidf_cosines_reference
from workers.reward.info_gain import CosineFn

MUSIQUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "musique_train100.json"


@dataclass(frozen=True)
class Episode:
    """The retrieval side of one synthetic trajectory."""

    texts: list[list[str]]  # (steps, docs per step)
    ids: list[list[str]]
    gold: list[str]


def _passage(rng: random.Random, vocab: list[str], topic: list[str]) -> str:
    """~60-120 words: common words, topic words and some punctuation and articles."""
    words = []
    for _ in range(rng.randint(60, 120)):
        roll = rng.random()
        words.append(rng.choice(topic) if roll < 0.3 else
                     rng.choice(("the", "a", "an", "of", "in", "is", "was")) if roll < 0.45 else
                     rng.choice(vocab))
    return " ".join(words).capitalize() + "."


def make_episodes(num: int, seed: int = 0, steps: int = 3, per_step: int = 3) -> list[Episode]:
    """Synthetic trajectories: a corpus of passages on topics, gold and retrieved documents."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "ni", "qu", "bra", "est"]
    vocab = sorted({"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(6000)})
    topics = [rng.sample(vocab, 20) for _ in range(200)]
    corpus = [(f"doc{i}", _passage(rng, vocab, topics[i % len(topics)])) for i in range(3000)]
    episodes = []
    for _ in range(num):
        gold_docs = rng.sample(corpus, rng.randint(2, 4))
        texts: list[list[str]] = []
        ids: list[list[str]] = []
        seen = list(gold_docs)
        for _ in range(steps):
            step = []
            for _ in range(per_step):
                roll = rng.random()
                pool = gold_docs if roll < 0.3 else seen if roll < 0.4 else corpus
                step.append(rng.choice(pool))
            seen.extend(step)
            texts.append([text for _, text in step])
            ids.append([doc_id for doc_id, _ in step])
        episodes.append(Episode(texts, ids, [text for _, text in gold_docs]))
    return episodes


def _contents(paragraph: dict) -> str:
    return f'"{paragraph["title"]}"\n{paragraph["paragraph_text"]}'


def make_musique_episodes(path: Path, num: int, seed: int = 0) -> list[Episode]:
    """Trajectories shaped like real MuSiQue: one step per decomposition step, each step
    1-3 of the question's 20 real paragraphs (a supporting one with probability 0.4,
    sometimes one seen before), gold = the question's supporting paragraphs."""
    rng = random.Random(seed)
    records = json.loads(path.read_text(encoding="utf-8"))
    episodes = []
    for n in range(num):
        record = records[n % len(records)]
        paragraphs = [(f"{record['id']}-{p['idx']}", _contents(p)) for p in record["paragraphs"]]
        gold_docs = [doc for doc, p in zip(paragraphs, record["paragraphs"], strict=True) if p["is_supporting"]]
        texts: list[list[str]] = []
        ids: list[list[str]] = []
        seen: list[tuple[str, str]] = []
        for _ in range(len(record["question_decomposition"])):
            step = []
            for _ in range(rng.randint(1, 3)):
                roll = rng.random()
                pool = gold_docs if roll < 0.4 else seen if roll < 0.5 and seen else paragraphs
                step.append(rng.choice(pool))
            seen.extend(step)
            texts.append([text for _, text in step])
            ids.append([doc_id for doc_id, _ in step])
        episodes.append(Episode(texts, ids, [text for _, text in gold_docs]))
    return episodes


def score_all(episodes: list[Episode], cosine_fn: CosineFn) -> tuple[float, float, list[list[float]]]:
    """(CPU seconds, wall seconds, per-episode step rewards s_t = G_t - P_t)."""
    cpu, wall = time.process_time(), time.perf_counter()
    rewards = []
    for ep in episodes:
        gains, penalties = step_information_gain(ep.texts, ep.gold, doc_ids=ep.ids,
                                                 cosine_fn=cosine_fn)
        rewards.append([g - p for g, p in zip(gains, penalties, strict=True)])
    return time.process_time() - cpu, time.perf_counter() - wall, rewards


def idf_storage(num_terms: int, seed: int = 0, repeats: int = 500) -> None:
    import pickle
    import string
    import tracemalloc

    from workers.reward.info_gain import CorpusIdf

    rng = random.Random(seed)
    doc_freq = {"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12))): rng.randint(1, 1000)
                for _ in range(num_terms)}
    start = time.perf_counter()
    idf = CorpusIdf.from_counts(2 * num_terms, doc_freq)
    built = time.perf_counter() - start
    tracemalloc.start()
    copy = pickle.loads(pickle.dumps(doc_freq))  # what a replica would hold
    dict_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    vocab = np.asarray(rng.sample(list(doc_freq), 300) + ["notaterm"] * 20, dtype=object)
    times = {}
    for name, lookup in (("arrays", idf.doc_freq),
                         ("dict", lambda v: np.fromiter((copy.get(t, 0) for t in v), np.int64, len(v)))):
        start = time.perf_counter()
        for _ in range(repeats):
            lookup(vocab)
        times[name] = (time.perf_counter() - start) / repeats
    assert np.array_equal(idf.doc_freq(vocab), [copy.get(t, 0) for t in vocab])
    array_bytes = idf.hashes.nbytes + idf.counts.nbytes
    print(f"\ncorpus idf of {idf.num_terms:,} terms (built in {built:.2f} s): arrays {array_bytes / 1e6:.0f} MB, "
          f"dict {dict_bytes / 1e6:.0f} MB per replica ({dict_bytes / array_bytes:.1f}x); lookup of "
          f"{len(vocab)} terms: arrays {1e3 * times['arrays']:.3f} ms, dict {1e3 * times['dict']:.3f} ms "
          f"({times['arrays'] / times['dict']:.2f}x)")


def compare(label: str, episodes: list[Episode]) -> tuple[float, float]:
    """Score ``episodes`` both ways, print timings; return (speed ratio, max |difference|)."""
    docs = sum(len(step) for ep in episodes for step in ep.texts)
    steps = sum(len(ep.texts) for ep in episodes)
    golds = sum(len(ep.gold) for ep in episodes)
    words = np.mean([len(doc.split()) for ep in episodes for step in ep.texts for doc in step])
    print(f"\n{label}: {len(episodes)} trajectories, {steps} steps, {docs} retrieved documents "
          f"({words:.0f} words on average), {golds} gold documents")
    runs: dict[str, Callable] = {"vectorized": tfidf_cosines, "per-document": tfidf_cosines_reference}
    cpu, scores = {}, {}
    for name, fn in runs.items():
        cpu[name], wall, scores[name] = score_all(episodes, fn)
        per_traj_ms = 1e3 * cpu[name] / len(episodes)
        print(f"{name:>13}: {cpu[name]:8.3f} s CPU ({per_traj_ms:.3f} ms / trajectory), "
              f"{wall:8.3f} s wall")
    fast = np.concatenate([np.asarray(r, dtype=float) for r in scores["vectorized"]])
    slow = np.concatenate([np.asarray(r, dtype=float) for r in scores["per-document"]])
    max_diff = float(np.abs(fast - slow).max())
    ratio = cpu["per-document"] / cpu["vectorized"]
    print(f"speed ratio (per-document / vectorized, CPU time): {ratio:.1f}x")
    print(f"max |difference| of step rewards: {max_diff:.3e}  (mean step reward {fast.mean():.4f})")
    return ratio, max_diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="trajectories to score (each kind)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-ratio", type=float, default=20.0, help="required speed-up (synthetic cases)")
    parser.add_argument("--min-ratio-musique", type=float, default=10.0,
                        help="required speed-up (MuSiQue-shaped cases)")
    parser.add_argument("--musique", type=Path, default=MUSIQUE,
                        help="MuSiQue official-format JSON for the real-shaped cases")
    parser.add_argument("--idf-terms", type=int, default=0, help="also compare corpus idf storage at this vocabulary")
    args = parser.parse_args(argv)

    ratio, max_diff = compare("synthetic (3 steps x 3 documents of 60-120 words)",
                              make_episodes(args.num, args.seed))
    ok = max_diff <= 1e-9 and ratio >= args.min_ratio
    failures = [] if ok else [f"synthetic: need max diff <= 1e-9 and ratio >= {args.min_ratio}"]
    if args.musique.is_file():
        ratio, max_diff = compare(f"MuSiQue-shaped (1-3 real paragraphs a step, {args.musique.name})",
                                  make_musique_episodes(args.musique, args.num, args.seed))
        if max_diff > 1e-9 or ratio < args.min_ratio_musique:
            failures.append(f"MuSiQue-shaped: need max diff <= 1e-9 and ratio >= {args.min_ratio_musique}")
    else:
        print(f"\nMuSiQue-shaped cases skipped: {args.musique} not found (pass --musique FILE)")
    if args.idf_terms:
        idf_storage(args.idf_terms, args.seed)
    print("OK" if not failures else "FAILED: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
