"""StepSearch step rewards: TF-IDF information gain and redundancy penalty (DESIGN.md 4).

Pure functions; they run inside a ``RewardWorker`` (a reward actor on a CPU, or the
driver when ``reward.num_workers=0``).

The cosine of a retrieved document and a gold document is *defined* as scikit-learn's
``TfidfVectorizer()`` with default settings fitted on ``[document] + gold documents``
(all passed through ``normalize_answer`` first): raw term counts, smooth idf
``ln((1 + n) / (1 + df)) + 1`` with ``n = 1 + #gold``, l2-normalized rows.
``tfidf_cosines_reference`` computes exactly that, one fit per document (slow, for
tests and benchmarks). ``tfidf_cosines`` computes the same numbers for all of a
trajectory's documents at once, without any fit: the gold term counts are built once
per trajectory, and because a term's document frequency in a fit only depends on
whether that fit's one retrieved document holds it, each term's idf is one of two
values (``idf0``: term absent from the document, ``idf1``: present). Every cosine then
comes out of one sparse product (the documents' sparse counts times a dense (V, 2G)
block of gold counts) and per-row sums.
"""

from __future__ import annotations

import logging
import re
import string
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from workers.reward.metrics import PUNCTUATION_TABLE, normalize_answer

logger = logging.getLogger(__name__)

# scikit-learn's default token_pattern r"(?u)\b\w\w+\b", applied after lower-casing. A
# left-to-right scan of r"\w\w+" finds the same maximal runs of 2+ word characters
# (it only ever enters a run at its start), a bit faster.
_TOKEN = re.compile(r"\w\w+")
_ARTICLES = ("an", "the")  # "a" is too short to be a term
_ASCII_SPLIT = str.maketrans({**dict.fromkeys(string.punctuation),
                              **{chr(code): " " for code in (*range(32), 127)}})

CosineFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""``(documents, gold_documents) -> (len(documents), len(gold_documents))`` cosines."""


def _raw_terms(text: str) -> list[str]:
    """``analyze`` before dropping the articles "an" and "the"."""
    if text.isascii():
        # Fast path: once lower-cased and without punctuation, ASCII text holds only
        # [a-z0-9] word characters, spaces and control characters; with the controls
        # turned into spaces, split() yields exactly the maximal runs of word characters.
        return [word for word in text.lower().translate(_ASCII_SPLIT).split() if len(word) > 1]
    return _TOKEN.findall(text.lower().translate(PUNCTUATION_TABLE))


def analyze(text: str) -> list[str]:
    """Terms of ``text`` as the TF-IDF definition sees them: normalized, then sklearn's analyzer.

    Equal to sklearn's analyzer applied to ``normalize_answer(text)`` (a unit test checks it)
    but skips rebuilding the string: the analyzer's terms are whole runs of word
    characters, which folding spaces leaves alone and dropping an article removes
    whole; "a" is too short to be a term; and lower-casing twice changes nothing.

    >>> analyze("The Eiffel Tower, in Paris (France) is 330 m tall.")
    ['eiffel', 'tower', 'in', 'paris', 'france', 'is', '330', 'tall']
    """
    return [term for term in _raw_terms(text) if term not in _ARTICLES]


def _term_counts(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts of the ``analyze`` terms of ``texts`` over a joint vocabulary of size V.

    Returns ``(rows, columns, counts, vocab)``: one entry per (text, term) present, sorted
    by text then term (the order of CSR storage); ``vocab[column]`` is the term (the
    articles hold columns 0 and 1 and are never counted).
    """
    terms_of = {text: _raw_terms(text) for text in dict.fromkeys(texts)}  # gold docs are
    term_lists = [terms_of[text] for text in texts]  # often retrieved too: analyze them once
    # Term -> column with pandas' hash table (about twice as fast as a dict here). The
    # articles go first, so they get the columns below len(_ARTICLES) and drop out whole.
    flat = np.array([*_ARTICLES, *chain.from_iterable(term_lists)], dtype=object)
    codes, vocab = pd.factorize(flat)
    columns = codes[len(_ARTICLES):]
    rows = np.repeat(np.arange(len(texts)), [len(terms) for terms in term_lists])
    keep = columns >= len(_ARTICLES)
    width = len(vocab)
    keys, counts = np.unique(rows[keep] * width + columns[keep], return_counts=True)
    return keys // width, keys % width, counts.astype(np.float64), np.asarray(vocab, dtype=object)


def _stacked_csr(values: tuple[np.ndarray, np.ndarray], rows: np.ndarray, columns: np.ndarray,
                 shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR (2 x n_rows, width): two row blocks with one sparsity pattern and two value arrays."""
    n_rows, width = shape
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    nnz = len(columns)
    stacked_indptr = np.concatenate([indptr, indptr[1:] + nnz])
    data = np.concatenate(values)
    return sp.csr_matrix((data, np.tile(columns, 2), stacked_indptr), shape=(2 * n_rows, width))


def tfidf_cosines(documents: Sequence[str], gold_documents: Sequence[str]) -> np.ndarray:
    """TF-IDF cosines of each document with each gold document, vectorized; (R, G) float64.

    Equal (to float rounding) to ``tfidf_cosines_reference``, which fits one
    ``TfidfVectorizer()`` per document on ``[document] + gold_documents``. The documents
    are a sparse (2R, V) matrix, the gold counts a dense (V, 2G) block built once.

    >>> cos = tfidf_cosines(["Paris is the capital of France", "Berlin"],
    ...                     ["Paris is the capital of France", "Rome is in Italy"])
    >>> cos.round(4).tolist()
    [[1.0, 0.1168], [0.0, 0.0]]
    """
    n_docs, n_gold = len(documents), len(gold_documents)
    if not n_docs or not n_gold:
        return np.zeros((n_docs, n_gold))
    rows, columns, counts, vocab = _term_counts([*gold_documents, *documents])  # gold first
    width = len(vocab)
    split = int(np.searchsorted(rows, n_gold))
    g_row, g_col, g_val = rows[:split], columns[:split], counts[:split]
    d_row, d_col, d_val = rows[split:] - n_gold, columns[split:], counts[split:]

    # Squared smooth idf ln((1 + n) / (1 + df)) + 1 of a fit on n = G + 1 texts, for each
    # gold document frequency 0..G: idf0 when the fit's document lacks the term, idf1
    # when it holds it (df + 1).
    n_fit, gold_df_values = n_gold + 1, np.arange(n_gold + 1)
    idf0_sq = (np.log((1.0 + n_fit) / (1.0 + gold_df_values)) + 1.0) ** 2
    idf1_sq = (np.log((1.0 + n_fit) / (2.0 + gold_df_values)) + 1.0) ** 2
    gold_df = np.bincount(g_col, minlength=width)  # (V,)
    d_idf1_sq = idf1_sq[gold_df[d_col]]  # per document entry
    g_idf0_sq, g_idf1_sq = idf0_sq[gold_df[g_col]], idf1_sq[gold_df[g_col]]  # per gold entry
    doc_norm_sq = np.bincount(d_row, d_val**2 * d_idf1_sq, minlength=n_docs)  # (R,)
    gold_base_sq = np.bincount(g_row, g_val**2 * g_idf0_sq, minlength=n_gold)  # (G,)

    # One sparse product gives both terms that depend on the pair (document d, gold i):
    # [c_d idf1^2 ; 1_d] @ [c_i , c_i^2 (idf1^2 - idf0^2)], of which we keep the diagonal
    # blocks: the dot product, and how |gold_i|^2 changes for the terms d holds.
    gold = np.zeros((width, 2 * n_gold))  # (V, 2G)
    gold[g_col, g_row] = g_val
    gold[g_col, n_gold + g_row] = g_val**2 * (g_idf1_sq - g_idf0_sq)
    values = (d_val * d_idf1_sq, np.ones_like(d_val))
    docs = _stacked_csr(values, d_row, d_col, (n_docs, width))  # (2R, V)
    pairs = docs @ gold  # (2R, 2G)
    dot = pairs[:n_docs, :n_gold]  # (R, G)
    gold_norm_sq = gold_base_sq[None, :] + pairs[n_docs:, n_gold:]  # (R, G)

    denom = np.sqrt(doc_norm_sq[:, None] * gold_norm_sq)
    return np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0.0)  # 0 for empty texts


ANALYZER_VERSION = 1
"""Bump when ``analyze`` changes: cached corpus document frequencies then no longer match."""


def term_hashes(terms: Iterable[str]) -> np.ndarray:
    """64-bit hashes of terms, the same in every process (``hash`` is salted per process):
    pandas' keyed SipHash, vectorized; (len(terms),) uint64."""
    values = terms if isinstance(terms, np.ndarray) else np.asarray(list(terms), dtype=object)
    if not len(values):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(values.astype(object, copy=False), categorize=False)


def _cache_key(fingerprint: str) -> str:
    """What a saved ``CorpusIdf`` must match: the corpus, the analyzer and the hash function."""
    return f"{fingerprint}:analyzer{ANALYZER_VERSION}:hash{int(term_hashes(['stepsearch'])[0])}"


@dataclass(frozen=True, eq=False)
class CorpusIdf:
    """Document frequencies of the ``analyze`` terms over a whole corpus.

    ``reward.info_gain_idf=corpus`` scores the information gain with TF-IDF cosines whose
    idf comes from the retrieval corpus (smooth idf ``ln((1 + N) / (1 + df)) + 1``, raw
    term counts, l2-normalized rows, as scikit-learn's ``TfidfVectorizer`` fitted on the
    corpus) instead of from each retrieved document and the gold documents alone. Words
    that many passages share (function words, and the template words of passages of one
    kind) then weigh little, so a passage about the wrong entity of the right kind earns
    little of the gain of the right one. A term the corpus lacks counts as df 0.

    Held as two arrays, sorted 64-bit term hashes and their counts (16 bytes a term), so
    that reward replicas read one copy from the object store without unpickling a dict of
    every term. Two terms whose hashes collide would share the sum of their counts; among
    ten million terms the chance of any collision is about 3 in a million.
    """

    num_docs: int
    hashes: np.ndarray  # (V,) uint64, sorted, unique
    counts: np.ndarray  # (V,) int64, aligned with hashes

    @classmethod
    def from_counts(cls, num_docs: int, doc_freq: Mapping[str, int]) -> CorpusIdf:
        """From a term -> number of texts holding it mapping."""
        hashes = term_hashes(doc_freq)
        counts = np.fromiter(doc_freq.values(), dtype=np.int64, count=len(doc_freq))
        order = np.argsort(hashes, kind="stable")
        hashes, counts = hashes[order], counts[order]
        unique, starts = np.unique(hashes, return_index=True)
        return cls(num_docs, unique, np.add.reduceat(counts, starts) if len(counts) else counts)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CorpusIdf:
        """Count, for each term, the texts that hold it."""
        counts: Counter[str] = Counter()
        num_docs = 0
        for text in texts:
            counts.update(set(analyze(text)))
            num_docs += 1
        return cls.from_counts(num_docs, counts)

    @property
    def num_terms(self) -> int:
        return len(self.hashes)

    def doc_freq(self, terms: Sequence[str] | np.ndarray) -> np.ndarray:
        """Number of corpus texts holding each term (0 when none does); (len(terms),) int64."""
        if not self.num_terms:
            return np.zeros(len(terms), dtype=np.int64)
        wanted = term_hashes(terms)
        pos = np.minimum(np.searchsorted(self.hashes, wanted), self.num_terms - 1)
        return np.where(self.hashes[pos] == wanted, self.counts[pos], 0)

    def idf(self, terms: Sequence[str] | np.ndarray) -> np.ndarray:
        """Smooth idf of each term; (len(terms),) float64."""
        return np.log((1.0 + self.num_docs) / (1.0 + self.doc_freq(terms))) + 1.0

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CorpusIdf) and self.num_docs == other.num_docs
                and np.array_equal(self.hashes, other.hashes) and np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write to ``path`` (``.npz``) with the fingerprint of what was counted; atomic."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, num_docs=np.int64(self.num_docs), hashes=self.hashes, counts=self.counts,
                     fingerprint=np.array(_cache_key(fingerprint)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> CorpusIdf | None:
        """What ``save`` wrote with the same fingerprint, analyzer and term hash, else None
        (missing, stale or unreadable: the caller counts again)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["fingerprint"]) != _cache_key(fingerprint):
                    return None
                return cls(int(data["num_docs"]), data["hashes"], data["counts"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    def cosines(self, documents: Sequence[str], gold_documents: Sequence[str]) -> np.ndarray:
        """TF-IDF cosines of each document with each gold document under the corpus idf; (R, G).

        >>> idf = CorpusIdf.from_texts(["Paris is a city in France", "Lyon is a city in France",
        ...                             "Rome is a city in Italy"])
        >>> idf.cosines(["Lyon is a city in France"], ["Paris is a city in France"]).round(4).tolist()
        [[0.619]]
        """
        n_docs, n_gold = len(documents), len(gold_documents)
        if not n_docs or not n_gold:
            return np.zeros((n_docs, n_gold))
        rows, columns, counts, vocab = _term_counts([*gold_documents, *documents])  # gold first
        weighted = sp.csr_matrix((counts * self.idf(vocab)[columns], (rows, columns)),
                                 shape=(n_gold + n_docs, len(vocab)))
        norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
        inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0.0)  # empty texts: 0
        unit = sp.diags(inverse) @ weighted
        return np.asarray((unit[n_gold:] @ unit[:n_gold].T).todense())


def tfidf_cosines_reference(documents: Sequence[str], gold_documents: Sequence[str]) -> np.ndarray:
    """The definition of the TF-IDF cosine: one ``TfidfVectorizer()`` fit per document.

    Slow (for tests and benchmarks). Texts without any term give cosine 0, also when the
    whole fit has no term at all (where scikit-learn raises "empty vocabulary").

    >>> tfidf_cosines_reference(["Paris is the capital of France"],
    ...                         ["Rome is in Italy"]).round(4).tolist()
    [[0.1274]]
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    golds = [normalize_answer(g) for g in gold_documents]
    cosines = np.zeros((len(documents), len(golds)))
    if not golds:
        return cosines
    for row, doc in enumerate(documents):
        try:
            tfidf = TfidfVectorizer().fit_transform([normalize_answer(doc), *golds])
        except ValueError:  # empty vocabulary: no text has a term
            continue
        cosines[row] = (tfidf[1:] @ tfidf[0].T).toarray().ravel()
    return cosines


def information_gains(retrieved: Sequence[Sequence[str]], support_docs: Sequence[str],
                      cosine_fn: CosineFn = tfidf_cosines) -> list[float]:
    """Information gain G_t of each search step (DESIGN.md 4).

    c_i^t = max over step t's documents of cos(doc, gold_i); G_t = mean_i
    max(c_i^t - m_i^(t-1), 0) with memory m_i^t = max(m_i^(t-1), c_i^t), m^0 = 0. An
    empty step, or no gold documents, gains 0. Each distinct text is scored once.

    >>> gold = ["Paris is the capital of France", "Rome is in Italy"]
    >>> [round(g, 4) for g in information_gains(
    ...     [["Paris is the capital of France"], [], ["Paris is the capital of France"]], gold)]
    [0.5584, 0.0, 0.0]
    """
    distinct = list(dict.fromkeys(doc for step in retrieved for doc in step))
    if not support_docs or not distinct:
        return [0.0] * len(retrieved)
    cosines = cosine_fn(distinct, support_docs)  # (distinct docs, G), all >= 0
    row_of = {doc: row for row, doc in enumerate(distinct)}
    # c^t for every step: max over its documents; an empty step stays 0, which gains
    # nothing and leaves the memory alone (cosines are never negative).
    best = np.zeros((len(retrieved), len(support_docs)))  # (steps, G)
    filled = [t for t, step in enumerate(retrieved) if step]
    starts = np.cumsum([0] + [len(retrieved[t]) for t in filled[:-1]])
    rows = [row_of[doc] for step in retrieved for doc in step]
    best[filled] = np.maximum.reduceat(cosines[rows], starts, axis=0)
    memory = np.maximum.accumulate(best, axis=0)  # m^t
    previous = np.vstack([np.zeros((1, best.shape[1])), memory[:-1]])  # m^(t-1)
    return np.maximum(best - previous, 0.0).mean(axis=1).tolist()


def redundancy_penalties(retrieved: Sequence[Sequence[str]]) -> list[float]:
    """Redundancy penalty P_t of each step: share of its documents already seen (DESIGN.md 4).

    A document is redundant when it was retrieved at an earlier step or earlier in the
    same step; documents are compared by identity (id or text). An empty step is 0.

    >>> redundancy_penalties([["d1", "d2", "d1"], ["d2", "d3"], []])
    [0.3333333333333333, 0.5, 0.0]
    """
    seen: set[str] = set()
    penalties = []
    for step in retrieved:
        repeats = 0
        for doc in step:
            repeats += doc in seen
            seen.add(doc)
        penalties.append(repeats / len(step) if step else 0.0)
    return penalties


def step_information_gain(retrieved: Sequence[Sequence[str]], support_docs: Sequence[str], *,
                          doc_ids: Sequence[Sequence[str]] | None = None,
                          cosine_fn: CosineFn = tfidf_cosines) -> tuple[list[float], list[float]]:
    """Per search step: (information gains G_t, redundancy penalties P_t).

    ``retrieved`` holds each step's document texts (for the gain); the penalty compares
    ``doc_ids`` when given (same shape), else the texts. ``cosine_fn`` selects the
    vectorized cosine (default) or ``tfidf_cosines_reference``.

    >>> gold = ["Paris is the capital of France", "Rome is in Italy"]
    >>> gains, penalties = step_information_gain(
    ...     [["Rome is in Italy", "Rome is in Italy"], ["Paris is the capital of France"]], gold)
    >>> [round(g, 4) for g in gains], penalties
    ([0.5579, 0.4421], [0.5, 0.0])
    """
    if doc_ids is not None and [len(s) for s in doc_ids] != [len(s) for s in retrieved]:
        raise ValueError("doc_ids must have the shape of retrieved (one id per document)")
    gains = information_gains(retrieved, support_docs, cosine_fn)
    penalties = redundancy_penalties(retrieved if doc_ids is None else doc_ids)
    return gains, penalties
