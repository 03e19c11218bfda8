"""The learning experiment's report: held-out subset and the markdown table."""

from __future__ import annotations

from launch.experiments.toyworld_learning import held_out, markdown_table


def _result(seed: int, em: float) -> dict:
    return {"seed": seed, "em": em, "f1": em + 0.1, "searches": 2.5, "gold_hit": 0.5, "redundancy": 0.1}


def test_held_out_keeps_the_reported_metrics_under_short_names() -> None:
    metrics = {"eval/em": 0.25, "eval/f1": 0.5, "eval/searches": 3.0, "eval/gold_hit": 0.4,
               "eval/redundancy": 0.2, "eval/format_ok": 1.0, "eval/toyworld/em": 0.25, "eval/count": 8.0}
    assert held_out(metrics) == {"em": 0.25, "f1": 0.5, "searches": 3.0, "gold_hit": 0.4, "redundancy": 0.2,
                                 "format_ok": 1.0, "empty_answer": 0.0}
    assert held_out({})["em"] == 0.0 and "by_hops" not in held_out({})


def test_held_out_reports_each_hop_count() -> None:
    metrics = {"eval/em": 0.3, "eval/2hop/em": 0.5, "eval/2hop/f1": 0.6, "eval/2hop/gold_hit": 0.9,
               "eval/2hop/count": 4.0, "eval/10hop/em": 0.0, "eval/10hop/count": 1.0, "eval/toyworld/em": 0.3}
    assert held_out(metrics)["by_hops"] == {
        "2": {"em": 0.5, "f1": 0.6, "gold_hit": 0.9, "count": 4.0},
        "10": {"em": 0.0, "f1": 0.0, "gold_hit": 0.0, "count": 1.0}}


def test_table_has_the_warm_start_and_each_arm_with_mean_and_spread() -> None:
    results = {"sft": _result(0, 0.1), "steppo": [_result(1, 0.2), _result(2, 0.4)],
               "outcome_only": [_result(1, 0.1), _result(2, 0.1)], "arms": ["steppo", "outcome_only"], "steps": 12}
    lines = markdown_table(results).splitlines()
    assert lines[2].startswith("| SFT warm start | 0.100 | 0.200 |")
    assert lines[3].startswith("| after 12 steps of steppo (seeds 1,2) | 0.300 ± 0.100 | 0.400 ± 0.100 |")
    assert lines[4].startswith("| after 12 steps of outcome_only (seeds 1,2) | 0.100 ± 0.000 |")
    assert "steppo seed 2: 0.400 / 0.500" in lines[-1]
    assert "steppo +20.0 points; outcome_only +0.0 points" in markdown_table(results)
    assert "by number of hops" not in markdown_table(results)  # runs without hop counts: no table


def test_table_of_em_by_hops_averages_the_seeds() -> None:
    def hops(em2: float, em3: float) -> dict:
        return {"2": {"em": em2, "count": 5.0}, "3": {"em": em3, "count": 4.0}}

    results = {"sft": {**_result(0, 0.1), "by_hops": hops(0.2, 0.0)},
               "steppo": [{**_result(1, 0.2), "by_hops": hops(0.4, 0.25)},
                          {**_result(2, 0.4), "by_hops": hops(0.6, 0.5)}],
               "arms": ["steppo"], "steps": 12}
    lines = markdown_table(results).splitlines()
    start = lines.index("| policy | 2-hop (n=5) | 3-hop (n=4) |")
    assert lines[start + 2:start + 4] == ["| SFT warm start | 0.200 | 0.000 |", "| steppo | 0.500 | 0.375 |"]


def test_a_missing_sft_policy_is_a_config_error_before_any_work(tmp_path, capsys) -> None:
    from launch.experiments.toyworld_learning import main

    code = main([f"sft_policy={tmp_path / 'nope'}", f"run_dir={tmp_path / 'runs'}"])
    assert code == 2
    assert "config error: sft_policy:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
