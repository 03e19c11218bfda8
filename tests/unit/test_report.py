"""The closing table of a training run: start -> end, and one sentence of verdict."""

from __future__ import annotations

from pathlib import Path

from launch.report import print_results, start_end_rows, verdict, write_plots
from workers.tracking import MetricsLogger


def _summary(start_em: float, end_em: float) -> dict:
    start = {"eval/em": start_em, "eval/f1": 0.3, "eval/searches": 2.0, "eval/gold_hit": 0.5,
             "eval/redundancy": 0.1, "eval/count": 64.0}
    end = {**start, "eval/em": end_em, "eval/f1": 0.4, "eval/searches": 2.5}
    return {"steps": 24, "eval_start": start, "eval": end}


def test_rows_compare_start_and_end_and_the_reward_of_the_first_and_last_steps() -> None:
    records = [{"step": 0, "eval/em": 0.2}] + [
        {"step": s, "reward/outcome": 0.1 * s, "reward/answer_f1": 0.05 * s} for s in range(1, 7)]
    rows = {r[0]: r[1:] for r in start_end_rows(_summary(0.25, 0.3125), records)}
    assert rows["validation EM"] == ("0.250", "0.312", "+0.062")
    assert rows["validation searches / question"] == ("2.000", "2.500", "+0.500")
    # 6 steps: the first 3 (0.1, 0.2, 0.3) against the last 3 (0.4, 0.5, 0.6)
    assert rows["train reward (steps 3 first / last)"] == ("0.200", "0.500", "+0.300")
    assert rows["train answer F1 (steps 3 first / last)"] == ("0.100", "0.250", "+0.150")


def test_the_verdict_says_which_way_em_moved() -> None:
    assert verdict(_summary(0.25, 0.3125)) == (
        "StePPO raised validation EM from 0.250 to 0.312 (+0.062) on 64 validation questions in 24 steps.")
    assert verdict(_summary(0.3, 0.2)).startswith("Validation EM fell from 0.300 to 0.200 (-0.100)")
    assert verdict(_summary(0.3, 0.3)).startswith("Validation EM stayed at 0.300")
    assert verdict({"steps": 3, "eval": {"eval/em": 0.1}}).startswith("No start and end validation")


def test_the_plot_and_the_table_come_from_the_run_directory(tmp_path: Path, capsys) -> None:
    tracker = MetricsLogger(tmp_path, tensorboard=False)
    tracker.log(0, {"eval/em": 0.2})
    for s in range(1, 5):
        tracker.log(s, {"reward/outcome": 0.1 * s})
    tracker.log(4, {"eval/em": 0.3})
    tracker.close()
    plots = write_plots(tmp_path)
    assert plots == [tmp_path / "plots.png"] and plots[0].stat().st_size > 10_000
    print_results({**_summary(0.2, 0.3), "steps": 4}, tmp_path)
    out = capsys.readouterr().out
    assert "validation EM" in out and "+0.100" in out and "StePPO raised validation EM" in out
