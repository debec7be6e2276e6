"""The unbiased pass@k estimator (Chen et al. 2021): by hand, per benchmark, in the summaries, the printed table
and the report tables."""

import json
from math import comb

import pytest
from test_evaluate import load_script

from benchmarks.evaluation import summarize_records
from benchmarks.report import budget_table, common_k, main_table
from benchmarks.scoring import benchmark_pass_at_k, pass_at_k, pass_at_k_ks


def test_pass_at_k_by_hand():
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)  # 1 - C(6,4) / C(8,4)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - comb(6, 4) / comb(8, 4))
    assert pass_at_k(5, 0, 1) == pass_at_k(5, 0, 3) == pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 5, 1) == pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(2, 1, 2) == 1.0 and pass_at_k(8, 5, 4) == 1.0  # n - c < k: every k-subset holds a correct one
    for n, c in [(1, 0), (1, 1), (3, 1), (7, 3), (16, 5)]:
        assert pass_at_k(n, c, 1) == c / n  # exact, not just close: pass@1 is the accuracy
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    # large n stays exact and in [0, 1] (integer binomials)
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5) and 0 < pass_at_k(1024, 1, 1) < 1
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_reported_ks():
    assert pass_at_k_ks(8) == [1, 2, 4, 8]
    assert pass_at_k_ks(2) == [1, 2] and pass_at_k_ks(1) == [1]
    assert pass_at_k_ks(5) == [1, 2, 4, 5] and pass_at_k_ks(16) == [1, 2, 4, 8, 16]


def test_benchmark_mean_over_questions():
    counts = [(4, 0), (4, 1), (4, 4)]  # per question (n, c)
    got = benchmark_pass_at_k(counts, [1, 2, 4])
    assert list(got) == ["1", "2", "4"]
    assert got["1"] == pytest.approx((0 + 0.25 + 1) / 3)
    assert got["2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert got["4"] == pytest.approx((0 + 1 + 1) / 3)
    # only questions with >= k samples count for pass@k; a k none reaches is left out
    got = benchmark_pass_at_k([(2, 1), (4, 1)], [1, 2, 4, 8])
    assert got == pytest.approx({"1": (0.5 + 0.25) / 2, "2": (1 + 0.5) / 2, "4": 1.0})


def _records(correct: dict[str, list[bool]], budget: str = "full") -> list[dict]:
    """Minimal graded sample records, as summarize_records reads them."""
    return [{"question_id": q, "sample_index": i, "budget": budget, "correct": c, "extracted": "1",
             "num_tokens": 10, "thinking_tokens": 8, "answer_tokens": 2, "injected_tokens": 0, "truncated": False,
             "forced_exit": False, "closed_thinking": True}
            for q, cs in correct.items() for i, c in enumerate(cs)]


def test_summary_key_every_budget():
    full = {"q1": [True, False] * 4, "q2": [False] * 8, "q3": [True] * 8}
    s = summarize_records(_records(full) + _records({"q1": [True, False], "q2": [False, True]}, "thinking=64"))
    passk = s["full"]["pass_at_k"]
    assert list(passk) == ["1", "2", "4", "8"] and all(0 <= v <= 1 for v in passk.values())
    assert passk["1"] == s["full"]["accuracy"] == pytest.approx(1.5 / 3)
    assert passk["2"] == pytest.approx((pass_at_k(8, 4, 2) + 0 + 1) / 3)
    assert passk["8"] == pytest.approx(2 / 3)
    assert s["thinking=64"]["pass_at_k"] == {"1": 0.5, "2": 1.0}
    # uneven samples (an unfinished run): k up to the fewest, every question counted
    s = summarize_records(_records({"q1": [True, False, False], "q2": [False, True]}))
    assert s["full"]["samples_per_question"] == [2, 3] and set(s["full"]["pass_at_k"]) == {"1", "2"}
    assert s["full"]["pass_at_k"]["2"] == pytest.approx((pass_at_k(3, 1, 2) + 1) / 2)
    assert summarize_records(_records({"q1": [True], "q2": [False]}))["full"]["pass_at_k"] == {"1": 0.5}


def test_regrade_writes_pass_at_k_and_prints_it(tmp_path, capsys):
    """--regrade (no model) recomputes the key from the stored samples, and the printed table shows pass@n."""
    bench = tmp_path / "run" / "gsm8k"
    bench.mkdir(parents=True)
    (bench / "protocol.json").write_text(json.dumps({"model": "m", "require_thinking": True}))
    records = []
    for budget in ("full", "thinking=4"):
        for q, answers in {"q1": ["7", "3", "3", "3"], "q2": ["5", "5", "5", "5"]}.items():
            for i, a in enumerate(answers):
                r = _records({q: [False]}, budget)[0]  # stored grades are stale: regrade decides
                records.append({**r, "sample_index": i, "completion": f"t</think>\\boxed{{{a}}}", "gold": "7",
                                "kind": "math"})
    (bench / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_script("evaluate").main(["--output_dir", str(tmp_path / "run"), "--regrade"])
    for budget in ("full", "thinking=4"):
        passk = run["benchmarks"]["gsm8k"]["budgets"][budget]["pass_at_k"]
        assert passk == pytest.approx({"1": 0.125, "2": 0.25, "4": 0.5})  # q1: 1 of 4 correct, q2: none
    out = capsys.readouterr().out
    assert "pass@n (%)" in out and "50.0 (n=4)" in out


def _run(label: str, cells: dict[str, tuple[float, dict | None]]) -> dict:
    """A run summary: cells = {bench: (accuracy, pass_at_k or None for a summary written before pass@k)}."""
    budgets = {b: {"full": {"accuracy": acc, "accuracy_stderr": None, "mean_tokens": 100.0,
                            **({"pass_at_k": pk} if pk else {})}} for b, (acc, pk) in cells.items()}
    return {"run": label, "benchmarks": {b: {"protocol": {}, "budgets": v} for b, v in budgets.items()}}


def test_report_tables_show_pass_at_k():
    a = _run("a", {"gsm8k": (0.5, {"1": 0.5, "2": 0.7, "4": 0.9}), "aime24": (0.1, {"1": 0.1, "2": 0.15})})
    b = _run("b", {"gsm8k": (0.6, {"1": 0.6, "2": 0.8}), "aime24": (0.2, None)})  # fewer samples; an old summary
    lines = main_table([a, b], ["gsm8k", "aime24"]).splitlines()
    # K: the largest k common to the runs (gsm8k: 2); a summary without the key is left out of K and shows "-"
    assert lines[0] == "| run | GSM8K | AIME24 | overall | GSM8K pass@2 | AIME24 pass@2 |"
    assert lines[2] == "| a | 50.0 / 100 | 10.0 / 100 | 30.00 / 100 | 70.0 | 15.0 |"
    assert lines[3] == "| b | 60.0 / 100 | 20.0 / 100 | 40.00 / 100 | 80.0 | - |"
    assert main_table([a], ["gsm8k"]).splitlines()[0].endswith("| overall | GSM8K pass@4 |")
    # only pass@1 (one sample) or no key at all: the table is as before
    one = _run("one", {"gsm8k": (0.5, {"1": 0.5})})
    assert main_table([one], ["gsm8k"]).splitlines()[0] == "| run | GSM8K | overall |"
    assert common_k([None, {"accuracy": 0.5}]) is None and common_k([{"pass_at_k": {"1": 0.5, "2": 0.6}}]) == 2
    a["benchmarks"]["gsm8k"]["budgets"]["thinking=64"] = {"accuracy": 0.4, "mean_tokens": 50.0,
                                                          "pass_at_k": {"1": 0.4, "2": 0.55, "4": 0.65}}
    lines = budget_table(a, ["gsm8k"]).splitlines()
    assert lines[0] == "| a: budget | GSM8K | overall | GSM8K pass@4 |"
    assert lines[3] == "| thinking=64 | 40.0 / 50 | 40.00 / 50 | 65.0 |"
