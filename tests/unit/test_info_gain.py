"""TF-IDF cosine, information gain and redundancy penalty (DESIGN.md 4), by hand and by property."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.reward import (
    CorpusIdf,
    analyze,
    information_gains,
    normalize_answer,
    redundancy_penalties,
    step_information_gain,
    tfidf_cosines,
    tfidf_cosines_reference,
)

PARIS = "Paris is the capital of France"
ROME = "Rome is in Italy."


def idf(n_fit: int, df: int) -> float:
    """scikit-learn's smooth idf for a fit on ``n_fit`` texts."""
    return math.log((1 + n_fit) / (1 + df)) + 1


def test_analyze_normalizes_then_tokenizes_like_sklearn() -> None:
    # Articles and punctuation go first ("U.S." -> "us"), then one-letter tokens drop.
    assert analyze("The U.S. and a b-side of X") == ["us", "and", "bside", "of"]


def test_cosine_one_gold_by_hand() -> None:
    # Fit on [paris, rome]: "is" has df 2 (idf 1), every other term df 1 (idf a).
    # paris = {paris, is, capital, of, france}, rome = {rome, is, in, italy}; dot = 1.
    a = idf(2, 1)
    expected = 1 / math.sqrt((4 * a * a + 1) * (3 * a * a + 1))
    assert tfidf_cosines([PARIS], [ROME])[0, 0] == pytest.approx(expected, abs=1e-12)
    assert tfidf_cosines_reference([PARIS], [ROME])[0, 0] == pytest.approx(expected, abs=1e-12)


def test_cosine_idf_depends_on_the_retrieved_document() -> None:
    # Fit on ["alpha beta", "alpha gamma", "gamma delta"]: df alpha 2, beta 1, gamma 2,
    # delta 1. Only alpha is shared with gold 0; nothing with gold 1.
    low, high = idf(3, 2), idf(3, 1)
    expected = low * low / (math.sqrt(low**2 + high**2) * math.sqrt(2 * low**2))
    cos = tfidf_cosines(["alpha beta"], ["alpha gamma", "gamma delta"])
    np.testing.assert_allclose(cos, [[expected, 0.0]], atol=1e-12)


def test_cosine_edge_cases() -> None:
    assert tfidf_cosines([PARIS], [PARIS])[0, 0] == pytest.approx(1.0)
    assert tfidf_cosines(["Berlin Germany"], [PARIS])[0, 0] == 0.0
    # A text without terms (punctuation, one-letter words) has cosine 0, also when no
    # text of the fit has a term (where TfidfVectorizer itself raises).
    for docs, golds in ((["!!! a ?"], [PARIS]), ([PARIS], ["x y"]), (["a"], ["the ."])):
        np.testing.assert_array_equal(tfidf_cosines(docs, golds), [[0.0]])
        np.testing.assert_array_equal(tfidf_cosines_reference(docs, golds), [[0.0]])
    assert tfidf_cosines([], [PARIS]).shape == (0, 1)
    assert tfidf_cosines([PARIS], []).shape == (1, 0)


def table_cosines(table: dict[str, list[float]]):
    """A cosine function reading a fixed table, to check the gain logic by hand."""
    def cosine_fn(docs: Sequence[str], golds: Sequence[str]) -> np.ndarray:
        assert len(set(docs)) == len(docs), "each distinct document is scored once"
        return np.array([table[d] for d in docs], dtype=float).reshape(len(docs), len(golds))
    return cosine_fn


TABLE = {"d1": [0.8, 0.1], "d2": [0.2, 0.5], "d3": [0.9, 0.4]}
GOLD2 = ["g1", "g2"]


def test_information_gain_hand_computed() -> None:
    fn = table_cosines(TABLE)
    # step 1: c = max(d1, d2) = [0.8, 0.5] -> 0.65; memory [0.8, 0.5]
    # step 2: c = [0.9, 0.4] -> mean(0.1, 0) = 0.05; memory [0.9, 0.5]
    # step 3: d1 again, c = [0.8, 0.1] -> 0
    gains = information_gains([["d1", "d2"], ["d3"], ["d1"]], GOLD2, fn)
    np.testing.assert_allclose(gains, [0.65, 0.05, 0.0], atol=1e-12)


def test_information_gain_repeats_and_empty_steps() -> None:
    fn = table_cosines(TABLE)
    # The same document twice in a step counts once in the max.
    np.testing.assert_allclose(information_gains([["d1", "d1"]], GOLD2, fn), [0.45])
    # An empty step gains 0 and leaves the memory alone: step 3 gains mean(0.9-0.2, 0).
    np.testing.assert_allclose(information_gains([["d2"], [], ["d3"]], GOLD2, fn),
                               [0.35, 0.0, 0.35], atol=1e-12)
    assert information_gains([[], []], GOLD2, fn) == [0.0, 0.0]
    assert information_gains([["d1"]], [], fn) == [0.0]  # no gold documents
    assert information_gains([], GOLD2, fn) == []


def test_information_gain_real_texts_by_hand() -> None:
    # Gold [paris, rome]; the fit for the rome document is [rome, paris, rome]: df "is" 3,
    # rome/in/italy 2, paris/capital/of/france 1. cos(rome, paris gold) = 1 / (|rome| |paris|).
    mid, high = idf(3, 2), idf(3, 1)
    c = 1 / (math.sqrt(3 * mid**2 + 1) * math.sqrt(4 * high**2 + 1))
    gains, penalties = step_information_gain([[ROME, ROME], [PARIS], [ROME]], [PARIS, ROME])
    # step 1: c = [c, 1] -> (c + 1) / 2; step 2: c = [1, c'] -> (1 - c) / 2; step 3: 0.
    np.testing.assert_allclose(gains, [(c + 1) / 2, (1 - c) / 2, 0.0], atol=1e-12)
    assert penalties == [0.5, 0.0, 1.0]


def test_redundancy_penalty_hand_computed() -> None:
    # within a step: 1 of 3; across steps: d2 (seen) of {d2, d4}; empty step: 0;
    # then d4 twice: both already seen.
    assert redundancy_penalties([["d1", "d2", "d1"], ["d2", "d4"], [], ["d4", "d4"]]) == [
        pytest.approx(1 / 3), 0.5, 0.0, 1.0]
    assert redundancy_penalties([]) == []


def test_redundancy_compares_ids_when_given() -> None:
    texts = [["same text"], ["same text"], ["other text"]]
    ids = [["a"], ["b"], ["a"]]  # same text under two ids; two texts under one id
    _, penalties = step_information_gain(texts, [PARIS], doc_ids=ids)
    assert penalties == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="doc_ids"):
        step_information_gain(texts, [PARIS], doc_ids=[["a"], ["b"]])


def test_vectorized_gain_equals_reference_gain() -> None:
    retrieved = [[PARIS, ROME], ["Italy borders France"], [], ["Rome is the capital of Italy"]]
    golds = ["The capital of Italy is Rome", "France borders Italy and Spain"]
    fast = step_information_gain(retrieved, golds)
    slow = step_information_gain(retrieved, golds, cosine_fn=tfidf_cosines_reference)
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-12)
    assert fast[1] == slow[1]


WORDS = ["rome", "paris", "capital", "of", "the", "a", "Italy", "FRANCE", "is", "x", "river",
         "Seine", "tiber", "1999", "é", "naïve", "straße", "don't", "e-mail", "U.S.", "an"]
_word_text = st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)
_ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)  # fast path
_any_text = st.text(max_size=40)
TEXTS = st.one_of(_word_text, _word_text, _ascii_text, _any_text)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_analyze_equals_normalize_then_sklearn_analyzer(text: str) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    sklearn_analyzer = TfidfVectorizer().build_analyzer()
    assert analyze(text) == sklearn_analyzer(normalize_answer(text))


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(TEXTS, min_size=1, max_size=4), golds=st.lists(TEXTS, min_size=1, max_size=4))
def test_vectorized_cosine_equals_tfidfvectorizer(docs: list[str], golds: list[str]) -> None:
    fast = tfidf_cosines(docs, golds)
    slow = tfidf_cosines_reference(docs, golds)
    assert fast.shape == slow.shape == (len(docs), len(golds))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(corpus=st.lists(TEXTS, min_size=1, max_size=6), data=st.data())
def test_corpus_idf_cosine_equals_tfidfvectorizer_fitted_on_the_corpus(corpus: list[str], data) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = data.draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=3))
    golds = data.draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=3))
    ours = CorpusIdf.from_texts(corpus).cosines(docs, golds)
    assert ours.shape == (len(docs), len(golds))
    try:
        fitted = TfidfVectorizer().fit([normalize_answer(t) for t in corpus])
    except ValueError:  # no text of the corpus has a term
        np.testing.assert_array_equal(ours, 0.0)
        return
    expected = (fitted.transform([normalize_answer(d) for d in docs])
                @ fitted.transform([normalize_answer(g) for g in golds]).T).toarray()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_corpus_idf_gives_a_wrong_passage_of_the_right_kind_little_gain() -> None:
    # Passages of one kind share a template; only the entity names tell them apart.
    rng = random.Random(0)
    syllables = ["ka", "to", "rei", "mun", "sha", "vel", "dor", "qui", "zan", "bei", "lo", "fur"]

    def name() -> str:
        return "".join(rng.choice(syllables) for _ in range(3)).capitalize()

    countries = [name() for _ in range(5)]
    cities = [(name(), rng.choice(countries), rng.randrange(10_000, 900_000)) for _ in range(40)]
    city_text = {c: f"{c} is a city in {k}, with about {n} residents." for c, k, n in cities}
    people = [(f"{name()} {name()}", rng.choice(cities)[0], name()) for _ in range(40)]
    person_text = [f"{who} is a lawyer born in {city}. {who} studied at {uni} University." for who, city, uni in people]
    born_in = people[0][1]
    other = next(c for c, _, _ in cities if c != born_in)
    gold = [person_text[0], city_text[born_in]]  # born in X; X is in country Y
    right = [[person_text[0]], [city_text[born_in]]]
    wrong = [[person_text[0]], [city_text[other]]]  # the second search found another city
    cos = CorpusIdf.from_texts([*city_text.values(), *person_text]).cosines
    pair_right, pair_wrong = information_gains(right, gold)[1], information_gains(wrong, gold)[1]
    corpus_right, corpus_wrong = information_gains(right, gold, cos)[1], information_gains(wrong, gold, cos)[1]
    assert pair_wrong > 0.4 * pair_right  # the template earns the wrong city much of the gain
    assert corpus_wrong < 0.2 * corpus_right
    assert corpus_right - corpus_wrong > 1.5 * (pair_right - pair_wrong)


def test_corpus_idf_counts_each_term_once_per_text_and_round_trips(tmp_path) -> None:
    texts = [PARIS, ROME, "Paris, Paris and Rome", "nothing here"]
    counted = CorpusIdf.from_texts(texts)
    assert counted.num_docs == 4 and counted.num_terms == len({t for text in texts for t in analyze(text)})
    np.testing.assert_array_equal(counted.doc_freq(["paris", "rome", "is", "here", "london"]), [2, 2, 2, 1, 0])
    assert counted.idf(["london"])[0] == pytest.approx(idf(4, 0))
    assert counted.idf(["paris"])[0] == pytest.approx(idf(4, 2))
    assert CorpusIdf.from_texts([]).doc_freq(["paris"]).tolist() == [0]

    path = tmp_path / "idf.npz"
    counted.save(path, "sha256:abc")
    assert CorpusIdf.load(path, "sha256:abc") == counted
    assert CorpusIdf.load(path, "sha256:other") is None  # another corpus: count again
    assert CorpusIdf.load(tmp_path / "missing.npz", "sha256:abc") is None
    path.write_bytes(path.read_bytes()[:40])  # a truncated file is not trusted either
    assert CorpusIdf.load(path, "sha256:abc") is None


def test_corpus_idf_of_an_index_is_kept_next_to_it(tmp_path) -> None:
    import json

    from actors.reward import IDF_CACHE_FILE, corpus_idf
    from retrieval_service.index import Manifest
    from retrieval_service.retriever import build_retriever
    from workers.config import RetrievalConfig

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": f"T{i}", "text": text}) + "\n"
                              for i, text in enumerate([PARIS, ROME, "Lyon is a city of France"])))
    cfg = RetrievalConfig(method="bm25", corpus_path=str(corpus), index_dir=str(tmp_path / "index"))
    build_retriever(cfg)
    parsed = corpus_idf(RetrievalConfig(corpus_path=str(corpus)))  # no index: parses the JSONL
    first = corpus_idf(cfg)
    cache = tmp_path / "index" / IDF_CACHE_FILE
    assert first == parsed and cache.is_file()
    # Later runs read the file (a stand-in written there with the same key comes back) ...
    fingerprint = f"sha256:{Manifest.load(cfg.index_dir).corpus_sha256}"
    CorpusIdf.from_texts(["stand-in"]).save(cache, fingerprint)
    assert corpus_idf(cfg) == CorpusIdf.from_texts(["stand-in"])
    # ... until the index is of another corpus: then they count again and replace it.
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / "manifest.json").write_text(json.dumps({**manifest, "corpus_sha256": "0" * 64}))
    assert corpus_idf(cfg) == parsed
    assert CorpusIdf.load(cache, "sha256:" + "0" * 64) == parsed
