"""One job's actor groups and what is done to all of them together.

Runs in the driver process (``launch.train``, ``launch.sft``, ``launch.evaluate``,
``launch.ask``, the experiments). A ``Session`` starts the groups a job needs (retrieval,
rollout, reward, learner), or takes running ones from another session (``reuse``: an
experiment runs SFT and several RL arms on one retrieval and one rollout group), and
stops only the groups it started. It is the one place that rolls out greedily to score a
policy (``evaluate``), pushes the learner's weights to the rollout workers and writes
checkpoints. The trainers (``actors.trainer``, ``actors.sft``) are named steps over it.

``in_process=True`` builds the retriever and the rollout worker in this process without
Ray (``launch.evaluate`` and ``launch.ask`` on one machine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from actors.learner import LearnerGroup
from actors.placement import JobPlacement, placement_report
from actors.retrieval import RetrievalGroup
from actors.reward import RewardGroup, corpus_idf
from actors.rollout import RolloutGroup
from actors.weight_sync import BroadcastSync
from retrieval_service.http_client import HttpRetrieval
from workers.config import Config, LearnerConfig
from workers.data.rows import QARow
from workers.evaluation import Decode, EvalResult, evaluate_trajectories, summarize
from workers.tracking import begin_checkpoint, commit_checkpoint
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)


class Session:
    """The retrieval, rollout, reward and learner groups of one job (each started on demand)."""

    def __init__(self, cfg: Config, model_path: str, *, reuse: Session | None = None,
                 in_process: bool = False, chunk_size: int = 4) -> None:
        """``reuse``: a running session whose retrieval and rollout groups this one uses and
        leaves running. ``chunk_size``: prompts per rollout-actor call."""
        self.cfg, self.model_path = cfg, model_path
        self.in_process, self.chunk_size = in_process, chunk_size
        self.retrieval: RetrievalGroup | HttpRetrieval | None = reuse.retrieval if reuse is not None else None
        self.rollout_group: RolloutGroup | None = reuse.rollout_group if reuse is not None else None
        self.reward: RewardGroup | None = None
        self.learner: LearnerGroup | None = None
        self.placement: JobPlacement | None = reuse.placement if reuse is not None else None
        self._owns_placement = False
        self._owned: list[Any] = []
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ start

    def start_retrieval(self) -> RetrievalGroup | HttpRetrieval:
        """The retrieval group (started and loaded unless one is reused), or with
        ``retrieval.backend=http`` the client of the server at ``retrieval.url`` (checked once)."""
        if self.retrieval is None:
            place = self._place()
            group: RetrievalGroup | HttpRetrieval
            if self.cfg.retrieval.backend == "http":  # an existing server: no retrieval actors
                group = HttpRetrieval.from_config(self.cfg.retrieval)
            elif place is None:
                group = RetrievalGroup(self.cfg.retrieval, device=self.cfg.device, num_replicas=0)
            else:
                count = len(place.plan.placement.of("retrieval"))
                nodes = [place.node_id("retrieval", i) for i in range(count)]
                group = RetrievalGroup(self.cfg.retrieval, device=self.cfg.device,
                                       placement=[place.options("retrieval", i) for i in range(count)],
                                       replica_nodes=nodes if self.cfg.retrieval.replicas == "per_node" else ())
            self.retrieval = self._own(group)
            self.retrieval.wait_ready()
        return self.retrieval

    def start_rollout(self) -> RolloutGroup:
        """The rollout group over this session's retrieval (started unless one is reused)."""
        if self.rollout_group is None:
            cfg, retrieval = self.cfg, self.start_retrieval()
            rcfg = replace(cfg.rollout, num_workers=0) if self.in_process else cfg.rollout
            place = self._place()
            places = None if place is None else [{**place.options("rollout", i), "env": place.engine_env(i)}
                                                 for i in range(rcfg.num_workers)]
            self.rollout_group = self._own(RolloutGroup(
                rcfg, self.model_path, retrieval.search, topk=cfg.retrieval.topk, dtype=cfg.model.dtype,
                trust_remote_code=cfg.model.trust_remote_code, chunk_size=self.chunk_size, placement=places))
            # each worker reaches retrieval from its own node before any rollout (the search retries once)
            self.rollout_group.check_retrieval(timeout=2 * cfg.retrieval.search_timeout_s)
        return self.rollout_group

    def start_reward(self) -> RewardGroup:
        """The reward group (with the corpus idf when ``reward.info_gain_idf=corpus``)."""
        if self.reward is None:
            cfg = self.cfg
            wants_idf = cfg.reward.use_info_gain and cfg.reward.info_gain_idf == "corpus"
            place = self._place()
            places = None if place is None else [place.options("reward", i) for i in range(cfg.reward.num_workers)]
            self.reward = self._own(RewardGroup(cfg.reward, idf=corpus_idf(cfg.retrieval) if wants_idf else None,
                                                placement=places))
        return self.reward

    def start_learner(self, learner: LearnerConfig, *, total_steps: int, group_size: int = 1,
                      temperature: float = 1.0, broadcast: bool = False) -> LearnerGroup:
        """The learner ranks from ``model_path``; ``broadcast``: the rollout group (when it
        has vLLM actors) takes new weights by one broadcast from learner rank 0."""
        assert self.learner is None, "the session already has a learner"
        self.learner = self._own(LearnerGroup(learner, self.model_path, seed=self.cfg.seed,
                                              total_steps=total_steps, group_size=group_size,
                                              temperature=temperature,
                                              trust_remote_code=self.cfg.model.trust_remote_code,
                                              placement=self._learner_places(learner)))
        if broadcast and self.rollout_group is not None:
            self.rollout_group.use_broadcast(BroadcastSync(self.learner, self.cfg.rollout.weight_sync_timeout_s))
        return self.learner

    def _place(self) -> JobPlacement | None:
        """The job's plan on the connected cluster and its placement groups (created on first
        use, shared with sessions that reuse this one); None in-process."""
        if self.in_process:
            return None
        if self.placement is None:
            self.placement = JobPlacement.from_cluster(self.cfg)
            self._owns_placement = True
        return self.placement

    def _learner_places(self, learner: LearnerConfig) -> list[list[dict[str, Any]]] | None:
        """The planned bundles of the learner's ranks, per set (policy, critic); None when
        ``learner`` is not the one the plan was made for (its own placement group then)."""
        place = self._place()
        if place is None:
            return None
        plan = place.plan.placement
        sets = [plan.of("learner")] + ([plan.of("critic")] if plan.of("critic") else [])
        wanted = 1 if learner.colocate_critic or learner.advantage_estimator != "gae" else 2
        if len(sets) != wanted or len(sets[0]) != learner.num_ranks:
            logger.info("learner %d ranks x %d sets is not the planned one: a placement group of its own",
                        learner.num_ranks, wanted)
            return None
        return [[place.options(a.group, a.index) for a in ranks] for ranks in sets]

    def placement_report(self) -> list[dict[str, Any]]:
        """Per actor of this session's groups: where the plan put it and where it runs
        (``launch.train`` writes it to ``placement.json``; the rehearsal checks it)."""
        if self.placement is None:
            return []
        actors: dict[str, list[Any]] = {}
        if self.rollout_group is not None and self.rollout_group.actors:
            actors["rollout"] = list(self.rollout_group.actors)
        if self.learner is not None and self.learner.pg is None:
            actors["learner"] = list(self.learner.policy_ranks)
            if self.learner.critic_ranks:
                actors["critic"] = list(self.learner.critic_ranks)
        if isinstance(self.retrieval, RetrievalGroup) and self.retrieval.num_replicas:
            actors["retrieval"] = self.retrieval.actors
        if self.reward is not None and self.reward.actors:
            actors["reward"] = self.reward.actors
        return placement_report(self.placement, actors)

    def _own(self, group: Any) -> Any:
        self._owned.append(group)
        return group

    def owns(self, group: Any) -> bool:
        """True for a group this session started (and stops)."""
        return any(group is g for g in self._owned)

    # ------------------------------------------------------------------ use

    def search(self, queries: Sequence[str], topk: int | None = None) -> list[list[Any]]:
        """Top-k documents per query from the retrieval group."""
        return self.start_retrieval().search(queries, topk)

    def rollout(self, rows: Sequence[QARow], *, greedy: bool = False, seed: int | None = None) -> Any:
        """Trajectories of ``rows`` as an ObjectRef, once they exist (an in-process worker's
        batch goes to the object store, so the reward and learner actors read it as usual)."""
        group = self.start_rollout()
        out = group.rollout(rows, greedy=greedy, seed=seed)
        ref = out if isinstance(out, ray.ObjectRef) else ray.put(out)
        ray.wait([ref], fetch_local=False)
        group.sleep()  # the learner phase follows: engines free their GPUs (rollout.sleep_level, GPU only)
        return ref

    def evaluate(self, rows: Sequence[QARow], *, decode: bool = False) -> EvalResult:
        """Greedy rollouts of ``rows`` with the rollout workers' current weights, scored
        (EM, F1, searches, ...); ``decode``: each record's actions also as text. The only
        greedy evaluation of the project: the trainers, ``launch.evaluate`` and the
        experiments all come here."""
        if not rows:
            return summarize([])
        out = self.start_rollout().rollout(rows, greedy=True, seed=0)
        batch: TrajectoryBatch = ray.get(out) if isinstance(out, ray.ObjectRef) else out
        return evaluate_trajectories(batch, [r.question for r in rows], self.decoder() if decode else None)

    def decoder(self) -> Decode:
        """The policy tokenizer's ``decode`` (token ids -> text)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.model_path, trust_remote_code=self.cfg.model.trust_remote_code)
        tokenizer = self._tokenizer
        return lambda ids: str(tokenizer.decode(ids))

    def push_weights(self, version: int) -> None:
        """Learner -> every rollout worker, in place; the rollout's policy version becomes
        ``version``. One broadcast when attached (``start_learner(broadcast=True)``), else a
        state dict through the object store."""
        assert self.learner is not None, "push_weights needs a learner"
        rollout = self.start_rollout()
        if rollout.broadcasting:
            rollout.sync_broadcast(version)
        else:
            rollout.set_weights(self.learner.export_weights_ref(), version)

    def checkpoint(self, run_dir: Path, step: int, state: Mapping[str, Any],
                   extra: Callable[[Path], None] | None = None) -> Path:
        """The learner's state and ``state`` (``trainer_state.json``) as checkpoint ``step``
        of ``run_dir``, visible only once complete; ``extra(folder)`` adds files
        (the async loop's rolled-out batches)."""
        assert self.learner is not None, "checkpoint needs a learner"
        staging = begin_checkpoint(run_dir, step)
        self.learner.save_checkpoint(str(staging / "learner"))
        if extra is not None:
            extra(staging)
        return commit_checkpoint(staging, state)

    def load_checkpoint(self, path: Path) -> None:
        """Restore the learner from a checkpoint written by ``checkpoint``."""
        assert self.learner is not None, "load_checkpoint needs a learner"
        self.learner.load_checkpoint(str(path / "learner"))

    def stop(self) -> None:
        """Stop the groups this session started, learner first (reused groups stay up)."""
        order = (self.learner, self.rollout_group, self.reward, self.retrieval)
        for group in [g for g in order if g is not None and self.owns(g)]:
            group.shutdown()
        self._owned = []
        if self.placement is not None and self._owns_placement:
            self.placement.remove()
            self.placement, self._owns_placement = None, False
