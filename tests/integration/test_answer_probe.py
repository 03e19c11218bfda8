"""launch.experiments.answer_probe: teacher-forced answer turns on gold trajectories."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from launch.experiments.answer_probe import answer_scores, main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gold(small_toyworld: dict) -> tuple:
    from transformers import AutoModelForCausalLM

    from launch.config import load_config
    from retrieval_service.retriever import build_retriever
    from workers.sft import build_gold

    cfg = load_config(["trainer=tiny", f"data.output_dir={small_toyworld['dir']}",
                       f"retrieval.corpus_path={small_toyworld['dir'] / 'corpus.jsonl'}"])
    retriever = build_retriever(cfg.retrieval)
    golds = build_gold(cfg, str(small_toyworld["policy"]), small_toyworld["rows"][:2], retriever.search)
    model = AutoModelForCausalLM.from_pretrained(str(small_toyworld["policy"])).eval()
    return model, golds


def test_the_answer_probability_matches_the_learner_forward(gold: tuple) -> None:
    from workers.learner.model import make_inputs, policy_forward

    model, golds = gold
    for g in golds:
        prob, _ = answer_scores(model, g)
        inputs = make_inputs(g.prompt_ids, g.prompt_lengths, g.response_ids, g.response_lengths)
        with torch.no_grad():
            logprobs, _ = policy_forward(model, inputs, torch.from_numpy(g.response_ids.astype(np.int64)))
        answer = g.turns[0][-1]
        expected = float(logprobs[0, answer.action_start:answer.action_end].sum().exp())
        assert prob == pytest.approx(expected, rel=1e-3, abs=1e-12)


def test_greedy_is_true_only_when_the_answer_is_the_argmax_path(gold: tuple) -> None:
    model, golds = gold
    g = golds[0]
    answer = g.turns[0][-1]
    p_len = int(g.prompt_lengths[0])
    prompt = g.prompt_ids[0][g.prompt_ids.shape[1] - p_len:]
    response = g.response_ids.copy()
    for t in range(answer.action_start, answer.action_end):  # the random policy's own greedy answer
        ids = torch.from_numpy(np.concatenate([prompt, response[0][:t]]).astype(np.int64))[None]
        with torch.no_grad():
            response[0, t] = int(model(input_ids=ids).logits[0, -1].argmax())
    greedy = replace(g, response_ids=response)
    prob, writes = answer_scores(model, greedy)
    assert writes and prob > 0.0
    wrong = response.copy()
    wrong[0, answer.action_end - 1] = (wrong[0, answer.action_end - 1] + 1) % model.config.vocab_size
    assert answer_scores(model, replace(g, response_ids=wrong))[1] is False


def test_prints_one_line_per_hop_count(small_toyworld: dict, capsys: pytest.CaptureFixture[str]) -> None:
    hops = sorted({r.num_hops for r in small_toyworld["rows"]})
    code = main([f"policy={small_toyworld['policy']}", f"data.output_dir={small_toyworld['dir']}", "per_hops=2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    table = out[out.index(next(line for line in out if line.strip().startswith("hops"))) + 1:]
    assert [int(line.split()[0]) for line in table] == hops
    assert all(int(line.split()[1]) <= 2 for line in table)


def test_bad_arguments_are_config_errors(small_toyworld: dict, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"policy={tmp_path}", f"data.output_dir={small_toyworld['dir']}"]) == 2
    assert "config error: policy:" in capsys.readouterr().err
    assert main([f"policy={small_toyworld['policy']}", "per_hops=0"]) == 2
    assert "per_hops: must be at least 1" in capsys.readouterr().err
    assert main([f"policy={small_toyworld['policy']}", f"data.output_dir={small_toyworld['dir']}",
                 "split=nope"]) == 2
    assert "split: no " in capsys.readouterr().err
