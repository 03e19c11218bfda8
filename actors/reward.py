"""Reward actors: ``RewardWorker`` replicas behind one ``RewardGroup`` (DESIGN.md 3 step 3).

The group lives in the driver; the replicas are CPU Ray actors. The driver hands the
group a ``TrajectoryBatch`` ObjectRef; every replica receives that same ref plus its
shard index (Ray resolves the ref inside the actor, zero-copy on one node) and a tiny
task concatenates the shards, so the driver never fetches the batch. With
``reward.num_workers=0`` the group scores in-process with a plain ``RewardWorker``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import ray
from ray.actor import ActorClass, ActorHandle

from workers.config import ConfigError, RetrievalConfig, RewardConfig
from workers.reward import RewardTotals, RewardWorker, concat_reward_batches
from workers.reward.info_gain import CorpusIdf
from workers.types import RewardBatch, TrajectoryBatch

logger = logging.getLogger(__name__)

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1, "max_restarts": 1, "max_task_retries": 1}
"""Reward workers are stateless, so a crashed replica can restart and redo its shard."""


class RewardActor:
    """A ``RewardWorker`` whose corpus idf arrives with each call, not with the constructor.

    An ObjectRef among an actor's constructor arguments is one Ray could not restore when
    it restarts the actor (ray-project/ray#53727); as a call argument, Ray resolves it on
    every call (zero-copy from the object store) and a restarted replica simply gets it again.
    """

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self._worker: RewardWorker | None = None

    def score_shard(self, batch: TrajectoryBatch, shard: int, num_shards: int,
                    idf: CorpusIdf | None = None) -> RewardBatch:
        return self._scorer(idf).score_shard(batch, shard, num_shards)

    def score_shard_totals(self, batch: TrajectoryBatch, shard: int, num_shards: int,
                           idf: CorpusIdf | None = None) -> tuple[RewardBatch, RewardTotals]:
        """The shard's rewards and, as a second return, their ``RewardTotals``."""
        return self._scorer(idf).score_shard_totals(batch, shard, num_shards)

    def _scorer(self, idf: CorpusIdf | None) -> RewardWorker:
        if self._worker is None:
            self._worker = RewardWorker(self.cfg, idf)
        return self._worker


def make_reward_actor(**options: Any) -> ActorClass:
    """``RewardActor`` wrapped with ``ray.remote(**options)``, built at launch time."""
    return ray.remote(**{**DEFAULT_ACTOR_OPTIONS, **options})(RewardActor)


def _concat(*parts: RewardBatch) -> RewardBatch:
    return concat_reward_batches(parts)


IDF_CACHE_FILE = "corpus_idf.npz"
"""Where ``corpus_idf`` keeps the counts of an index's corpus, next to its manifest."""


def corpus_idf(retrieval: RetrievalConfig) -> CorpusIdf:
    """Document frequencies over the retrieval corpus, for ``reward.info_gain_idf=corpus``.

    Reads the corpus store of ``retrieval.index_dir`` when it has one, else parses
    ``retrieval.corpus_path`` (bad lines raise ``CorpusError`` with their line numbers).
    One pass over every passage (~30,000 a second here): seconds for toyworld, minutes
    for a corpus of millions. With an index, the counts are kept in ``IDF_CACHE_FILE``
    next to it, keyed by the corpus checksum of its manifest, and later runs read them.
    """
    from retrieval_service.corpus import CORPUS_FILE, CorpusStore, iter_passages
    from retrieval_service.index import Manifest

    started = time.perf_counter()
    index_dir = Path(retrieval.index_dir) if retrieval.index_dir else None
    if index_dir is not None and (index_dir / CORPUS_FILE).is_file():
        fingerprint = f"sha256:{Manifest.load(index_dir).corpus_sha256}"
        cache = index_dir / IDF_CACHE_FILE
        idf = CorpusIdf.load(cache, fingerprint)
        if idf is not None:
            logger.info("corpus idf: %d passages, %d terms, read from %s", idf.num_docs, idf.num_terms, cache)
            return idf
        idf = CorpusIdf.from_texts(t for batch in CorpusStore(index_dir).iter_contents(10_000) for t in batch)
        try:
            idf.save(cache, fingerprint)
        except OSError as exc:  # a read-only index directory: count again next time
            logger.warning("corpus idf: could not keep the counts in %s (%s)", cache, exc)
    elif retrieval.corpus_path:
        idf = CorpusIdf.from_texts(d.contents for d in iter_passages(retrieval.corpus_path))
    else:
        raise ConfigError("reward.info_gain_idf", "corpus needs retrieval.corpus_path or an index_dir "
                                                  "with a corpus store")
    logger.info("corpus idf: %d passages, %d terms in %.1f s", idf.num_docs, idf.num_terms,
                time.perf_counter() - started)
    return idf


class RewardGroup:
    """``cfg.num_workers`` reward actors scoring shards of each batch, or one in-process worker.

    ``idf``: the corpus document frequencies when ``cfg.info_gain_idf`` is ``corpus``
    (``corpus_idf``); it goes to the object store once and every replica reads that copy.
    """

    def __init__(self, cfg: RewardConfig, actor_options: Mapping[str, Any] | None = None,
                 idf: CorpusIdf | None = None, placement: Sequence[Mapping[str, Any]] | None = None) -> None:
        """``placement``: per actor, the Ray options of its planned node (``actors.placement``),
        over ``actor_options``."""
        self.cfg = cfg
        self._places = list(placement) if placement is not None else [{}] * cfg.num_workers
        self._local: RewardWorker | None = None
        self._actors: list[ActorHandle] = []
        self._concat = ray.remote(num_cpus=0)(_concat)
        self._idf_ref: ray.ObjectRef | None = None
        self._actor_cls: ActorClass | None = None
        if cfg.num_workers == 0:
            self._local = RewardWorker(cfg, idf)
        else:
            self._actor_cls = make_reward_actor(**dict(actor_options or {}))
            # In the object store once, referenced here for the group's life, given with each call.
            self._idf_ref = None if idf is None else ray.put(idf)
            self._actors = self._spawn()
        logger.info("reward group %r: %d actor(s)", cfg.name, len(self._actors))

    def restart(self) -> None:
        """Replace every reward actor by a fresh one (a hung replica does not come back by itself;
        scoring is stateless, so nothing is lost)."""
        if self._actor_cls is None:
            return
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = self._spawn()

    def _spawn(self) -> list[ActorHandle]:
        assert self._actor_cls is not None
        return [cast(ActorHandle, self._actor_cls.options(**place).remote(self.cfg)) for place in self._places]

    @property
    def actors(self) -> list[ActorHandle]:
        """The reward actors (empty when scoring in-process)."""
        return list(self._actors)

    @property
    def num_workers(self) -> int:
        """Number of reward actors (0 when scoring in-process)."""
        return len(self._actors)

    def score_ref(self, batch: ray.ObjectRef | TrajectoryBatch) -> ray.ObjectRef:
        """Score ``batch`` (preferably an ObjectRef); return the ``RewardBatch``'s ObjectRef.

        A malformed trajectory surfaces as ``MalformedTrajectoryError`` when the result
        is fetched (``ray.get``), naming the sample id.
        """
        if self._local is not None:
            return ray.put(self.score(batch))
        if not self._actors:
            raise RuntimeError("the reward group was shut down")
        if not isinstance(batch, ray.ObjectRef):
            batch = ray.put(batch)  # once, so the replicas share one copy
        count = len(self._actors)
        shards = [actor.score_shard.remote(batch, k, count, self._idf_ref) for k, actor in enumerate(self._actors)]
        return shards[0] if count == 1 else self._concat.remote(*shards)

    def score_with_totals(self, batch: ray.ObjectRef | TrajectoryBatch) -> tuple[ray.ObjectRef, list[ray.ObjectRef]]:
        """Score ``batch``: the ``RewardBatch``'s ObjectRef and, beside it, one ``RewardTotals``
        ObjectRef per shard; their sum gives the batch's ``reward/...`` metrics without
        fetching the rewards or running a task to summarize them."""
        if self._local is not None:
            rewards = self.score(batch)
            return ray.put(rewards), [ray.put(RewardTotals.of(rewards))]
        if not self._actors:
            raise RuntimeError("the reward group was shut down")
        if not isinstance(batch, ray.ObjectRef):
            batch = ray.put(batch)
        count = len(self._actors)
        pairs = [actor.score_shard_totals.options(num_returns=2).remote(batch, k, count, self._idf_ref)
                 for k, actor in enumerate(self._actors)]
        shards = [shard for shard, _ in pairs]
        return (shards[0] if count == 1 else self._concat.remote(*shards)), [totals for _, totals in pairs]

    def score(self, batch: ray.ObjectRef | TrajectoryBatch) -> RewardBatch:
        """Score ``batch`` and return the ``RewardBatch`` in this process."""
        if self._local is None:
            result: RewardBatch = ray.get(self.score_ref(batch))
            return result
        # In-process scoring needs the data here.
        data: TrajectoryBatch = ray.get(batch) if isinstance(batch, ray.ObjectRef) else batch
        return self._local.score(data)

    def shutdown(self) -> None:
        """Kill the reward actors (the in-process worker needs nothing)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
