"""The synthetic benchmark: task generator, splits, SFT, the shipped base checkpoint, the demo's smoke run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic.task import (
    END_THINK,
    EXIT_TEXT,
    RECHECK_TEXT,
    TOTAL_PREFIX,
    TaskConfig,
    TrainSampler,
    answer_if_cut,
    build_splits,
    clean_trace,
    heldout_numbers,
    make_trace,
    read_jsonl,
    running_sum_lines,
    write_datasets,
)

ROOT = Path(__file__).resolve().parent.parent


def _boxed(completion: str) -> int:
    tail = completion.split("</think>")[-1]
    return int(tail.rsplit("\\boxed{", 1)[1].split("}", 1)[0])


def _pass_results(thinking: str) -> list[int]:
    """The final running sum of each complete pass in a trace's thinking, checked against its "Total:" line."""
    out = []
    for p in thinking.split(RECHECK_TEXT + "\n"):
        lines = p.strip().splitlines()
        if lines:
            assert lines[-1].startswith(TOTAL_PREFIX) and lines[-1] == TOTAL_PREFIX + lines[-2].rsplit("=", 1)[1]
            out.append(int(lines[-2].rsplit("=", 1)[1]))
    return out


def test_running_sums_hand_computed():
    assert running_sum_lines((12, 34, 56)) == (["12+34=46", "46+56=102"], 102)
    # A slip of +1 on the first line carries on to the end.
    assert running_sum_lines((12, 34, 56), slip_at=0, slip=1) == (["12+34=47", "47+56=103"], 103)
    assert clean_trace((12, 34, 56)) == "12+34=46\n46+56=102\nTotal: 102\n</think>\n\n\\boxed{102}"


def test_task_config_rejects_bad_values():
    with pytest.raises(ValueError, match="slip_prob"):
        TaskConfig(slip_prob=1.5)
    with pytest.raises(ValueError, match="min_terms"):
        TaskConfig(min_terms=5, max_terms=3)


def test_traces_structure_and_answers():
    rng, cfg = random.Random(1), TaskConfig()
    sampler = TrainSampler(1, [], cfg)
    traces = [make_trace(sampler.numbers(), rng, cfg) for _ in range(3000)]
    for t in traces:
        assert t.answer == str(sum(t.numbers))
        assert t.completion.count("</think>") == 1 and t.completion.endswith("}")
        assert _boxed(t.completion) == t.predicted
        assert cfg.min_terms <= len(t.numbers) <= cfg.max_terms
        assert all(cfg.low <= x <= cfg.high for x in t.numbers)
        thinking = t.completion.split("</think>")[0]
        assert thinking.count(RECHECK_TEXT) == (t.n_rechecks if not t.cut else thinking.count(RECHECK_TEXT))
        if not t.cut:
            assert t.completion.endswith(END_THINK + f"\\boxed{{{t.predicted}}}")
            sums = _pass_results(thinking)
            assert sums == t.pass_sums and len(sums) == 1 + t.n_rechecks
            # Re-check passes (recheck_slip_prob=0) are always right and the answer is the last pass's sum.
            assert all(s == sum(t.numbers) for s in sums[1:])
            assert t.predicted == sums[-1]
            assert t.correct == (not t.slipped or t.n_rechecks > 0)
            assert (sums[0] != sum(t.numbers)) == t.slipped
    # Rates close to the config (3000 draws: ~4 standard errors of slack).
    n = len(traces)
    assert abs(sum(t.slipped for t in traces) / n - 0.5) < 0.04
    assert abs(sum(t.cut for t in traces) / n - 0.2) < 0.03
    assert abs(sum(t.n_rechecks == 0 for t in traces) / n - 0.3) < 0.04
    assert abs(sum(t.n_rechecks == 2 for t in traces) / n - 0.49) < 0.04
    # Longer traces are more often right: the pressure under which GRPO lengthens answers.
    full = [t for t in traces if not t.cut]
    acc = {k: sum(t.correct for t in full if t.n_rechecks == k) / sum(t.n_rechecks == k for t in full) for k in (0, 1)}
    assert acc[0] < 0.7 and acc[1] == 1.0


def test_answer_if_cut_hand_computed():
    trace = "12+34=47\n47+56=103\nTotal: 103\nWait, let me check.\nCheck 12+34=46\nCheck 46+56=102\nTotal: 102\n"
    cases = {
        "": 12, "1": 12, "12+34=4": 12, "12+34=47": 12,  # nothing complete yet: the question's first number
        "12+34=47\n": 47, "12+34=47\n47+56=10": 47,  # an unfinished line does not count ("10" may be "103")
        "12+34=47\n47+56=103\n": 103, "12+34=47\n47+56=103\nTotal: 10": 103,
        # during the re-check: the first pass's (slipped) total, whatever the re-check's running sums say
        "12+34=47\n47+56=103\nTotal: 103\nWait, let": 103,
        "12+34=47\n47+56=103\nTotal: 103\nWait, let me check.\nCheck 12+34=46\nCheck 46+56=102\n": 103,
        trace: 102,
    }
    for thinking, expected in cases.items():
        assert answer_if_cut(thinking, 12) == expected, thinking


def test_exit_cut_traces_answer_from_what_was_computed():
    rng, cfg = random.Random(2), TaskConfig(exit_cut_prob=1.0)
    n_mid_line, after_first_total = 0, []
    for _ in range(2000):
        t = make_trace((rng.randint(10, 99) for _ in range(rng.randint(3, 5))), rng, cfg)
        assert t.cut
        before, after = t.completion.split(EXIT_TEXT)
        assert after == f"\\boxed{{{t.predicted}}}" and t.completion.count("</think>") == 1
        assert t.predicted == answer_if_cut(before, t.numbers[0]) and len(before) == t.cut_at_char > 0
        n_mid_line += not before.endswith("\n")
        complete_totals = [line for line in before.split("\n")[:-1] if line.startswith(TOTAL_PREFIX)]
        if len(complete_totals) == 1:
            # After the first pass's "Total:" line and before a re-check's: right exactly when it did not slip.
            after_first_total.append((t.correct, not t.slipped))
    # Cuts land anywhere, mid-line included, as S-GRPO's token-level exit positions do.
    assert n_mid_line > 1000
    assert len(after_first_total) > 400 and all(c == ok for c, ok in after_first_total)


def test_slips_are_fixed_by_rechecks():
    cfg = TaskConfig(slip_prob=1.0, recheck_prob=1.0, max_rechecks=1, exit_cut_prob=0.0)
    rng = random.Random(3)
    for _ in range(200):
        nums = tuple(rng.randint(10, 99) for _ in range(4))
        t = make_trace(nums, rng, cfg)
        first, second = _pass_results(t.completion.split("</think>")[0])
        assert first != sum(nums) and abs(first - sum(nums)) <= 10
        assert second == sum(nums) and t.correct


def test_splits_disjoint_and_reproducible(tmp_path):
    a = build_splits(300, 100, seed=7)
    b = build_splits(300, 100, seed=7)
    c = build_splits(300, 100, seed=8)
    assert a == b and a != c
    train_q = {r["question"] for r in a["train"]}
    held_q = {r["question"] for r in a["heldout"]}
    assert len(train_q) == 300 and len(held_q) == 100 and not train_q & held_q
    # The SFT stream never draws a held-out question either.
    held = heldout_numbers(100, 7)
    sampler = TrainSampler(7, held, stream="sft")
    assert not {sampler.numbers() for _ in range(20000)} & set(held)
    paths = write_datasets(tmp_path, n_train=50, n_heldout=20, seed=7, n_sft_examples=10)
    assert read_jsonl(paths["heldout"]) == a["heldout"][:20] or len(read_jsonl(paths["heldout"])) == 20
    rows = read_jsonl(paths["train"])
    assert len(rows) == 50 and set(rows[0]) == {"question", "answer"}
    assert len(read_jsonl(paths["sft"])) == 10


def test_heldout_prefix_stable():
    # Evaluating on the first n held-out questions is the same set whatever the split size.
    assert heldout_numbers(50, 3) == heldout_numbers(200, 3)[:50]


def test_traces_graded_by_the_real_accuracy_reward():
    accuracy = pytest.importorskip("rewards.accuracy", reason="rewards.accuracy has not landed yet")
    rng, cfg = random.Random(4), TaskConfig()
    for _ in range(300):
        t = make_trace(tuple(rng.randint(10, 99) for _ in range(rng.randint(3, 5))), rng, cfg)
        assert accuracy.is_correct(t.completion, t.answer) == t.correct, t.completion
        assert accuracy.is_correct(clean_trace(t.numbers), t.answer)


# ---------------------------------------------------------------------------------------------------------------
# SFT and the shipped checkpoint


def test_encode_masks_prompt_and_exit_text():
    from synthetic.sft import BaseConfig, build_task_tokenizer, encode_example

    tok = build_task_tokenizer(BaseConfig())
    cut = "12+34=46\n" + EXIT_TEXT + "\\boxed{46}"
    ids, mask = encode_example(tok, "What is 12 + 34 + 56?", cut)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "Time is limited" not in trained and "What is" not in trained
    assert trained.startswith("12+34=46\n") and "\\boxed{46}" in trained and ids[-1] == tok.eos_token_id
    # Digits are single tokens and the think tags survive skip_special_tokens.
    assert len(tok("1234", add_special_tokens=False).input_ids) == 4
    assert "</think>" in tok.decode(tok("a</think>b").input_ids, skip_special_tokens=True)


@pytest.mark.slow
def test_sft_few_steps_reduces_loss():
    import torch

    from synthetic.sft import BaseConfig, train_base

    torch.set_num_threads(2)
    cfg = BaseConfig(steps=30, batch_size=16, warmup_steps=3, hidden_size=64, intermediate_size=128, num_heads=1,
                     lr=3e-3)
    meta = train_base(cfg, eval_samples=0, log=None)
    assert meta["loss_last_50_mean"] < meta["loss_first"] - 1.0
    again = train_base(cfg, eval_samples=0, log=None)  # reproducible from the seed
    assert again["loss_last_50_mean"] == pytest.approx(meta["loss_last_50_mean"], abs=1e-4)


def test_shipped_base_checkpoint_matches_its_metadata():
    from synthetic.sft import SHIPPED_DIR, BaseConfig, preset, read_meta

    meta = read_meta(SHIPPED_DIR)
    if meta is None:
        pytest.fail(f"no shipped base checkpoint in {SHIPPED_DIR}: run scripts/build_base_model.py --output_dir "
                    f"{SHIPPED_DIR}")
    cfg_dict = {k: v for k, v in meta["config"].items() if k != "format_version"}
    cfg = BaseConfig(**cfg_dict)
    assert cfg.config_hash() == meta["config_hash"] == preset("cpu").config_hash()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"]
    assert model.config.hidden_size == cfg.hidden_size and model.config.num_hidden_layers == cfg.num_layers
    assert model.config.head_dim == 64 and len(tok) == model.config.vocab_size
    ev = meta["heldout_eval"]
    assert 0.0 < ev["accuracy"] < 1.0 and ev["mean_tokens"] > 0 and meta["command"].startswith("python scripts/")


# ---------------------------------------------------------------------------------------------------------------
# The demo driver


def _demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_aggregation_hand_computed():
    demo = _demo()
    # GFPO's worked definition: GRPO 120 tokens, SFT 100, GFPO 105 -> 75% of the excess removed.
    assert demo.elr(120.0, 105.0, 100.0) == pytest.approx(75.0)
    assert demo.elr(100.0, 90.0, 100.0) is None  # GRPO did not lengthen: ELR undefined
    results = {
        "base": [{"accuracy": 50.0, "mean_tokens": 100.0}, {"accuracy": 60.0, "mean_tokens": 100.0}],
        "grpo": [{"accuracy": 70.0, "mean_tokens": 130.0}, {"accuracy": 70.0, "mean_tokens": 110.0}],
        "gfpo": [{"accuracy": 68.0, "mean_tokens": 100.0}, {"accuracy": 72.0, "mean_tokens": 110.0}],
    }
    rows = {r["method"]: r for r in demo.aggregate(results)}
    assert rows["base"]["accuracy"] == 55.0 and rows["base"]["accuracy_std"] == pytest.approx(7.0711, abs=1e-3)
    assert rows["grpo"]["d_accuracy_points"] == 15.0 and rows["grpo"]["d_tokens_percent"] == pytest.approx(20.0)
    assert rows["gfpo"]["elr_percent"] == pytest.approx(75.0)  # (120 - 105) / (120 - 100)
    assert "elr_percent" not in rows["grpo"]
    table = demo.format_table(demo.aggregate(results))
    assert "| gfpo | 2 | 70.0 ± 2.8 | 105.0 ± 7.1 | +15.0 | +5.0% | 75% | - | - | - |" in table
    # what training cost, mean over seeds (a row lacking it for some seed shows none)
    for r, cost in zip(results["gfpo"], [(20_000, 10_000, 100.0), (30_000, 12_000, 120.0)], strict=True):
        r.update(sampled_tokens=cost[0], trained_tokens=cost[1], train_seconds=cost[2])
    table = demo.format_table(demo.aggregate(results))
    assert "| gfpo | 2 | 70.0 ± 2.8 | 105.0 ± 7.1 | +15.0 | +5.0% | 75% | 25k | 11k | 110 s |" in table
    # A "-cos" row (length-aware reward) takes its ELR against "grpo-cos", the same reward without the filter.
    results["grpo-cos"] = [{"accuracy": 70.0, "mean_tokens": 140.0}]
    results["gfpo-x-cos"] = [{"accuracy": 70.0, "mean_tokens": 110.0}]
    rows = {r["method"]: r for r in demo.aggregate(results)}
    assert rows["gfpo-x-cos"]["elr_percent"] == pytest.approx(75.0)  # (140 - 110) / (140 - 100)
    assert rows["gfpo"]["elr_percent"] == pytest.approx(75.0)


@pytest.mark.slow
def test_demo_quick_smoke(tmp_path):
    """`scripts/demo.py --quick` end to end: data, shipped base, train.py per method, evaluate.py, table; with the GFPO
    study's rows and options (--study: pass@8, the hard split, the signal metrics, DPO on gfpo-drop's pairs)."""
    out = tmp_path / "demo"
    study = ["grpo", "gfpo-drop", "gfpo-penalty", "gfpo-stratified", "gfpo-anneal", "gfpo-dpo"]
    cmd = [sys.executable, "scripts/demo.py", "--quick", "--study", "--output_dir", str(out), "--backend",
           "transformers", "--methods", ",".join(study + ["sgrpo"])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "quick" / "report" / "results.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["base", *study, "sgrpo"]
    for r in result["rows"]:
        assert 0 <= r["accuracy"] <= 100 and r["tokens"] > 0 and r["per_seed"][0]["n_samples"] == 8 * 8
        assert r["accuracy"] <= r["pass@2"] <= r["pass@4"] <= r["pass@8"] <= 100  # 8 samples per question
        assert 0 <= r["hard_accuracy"] <= r["hard_pass@8"] and r["hard_mean_tokens"] > 0
    assert (out / "quick" / "report" / "accuracy_vs_tokens_seeds.png").stat().st_size > 0
    assert "| grpo | 1 |" in proc.stdout and "| gfpo-dpo | " in proc.stdout and "hard pass@8 (%)" in proc.stdout
    rows = {r["method"]: r for r in result["rows"]}
    # what each run cost: GRPO trains what it samples; S-GRPO's exit rows also train their rollout prefixes
    assert rows["grpo"]["sampled_tokens"] == rows["grpo"]["trained_tokens"] > 0
    assert rows["sgrpo"]["trained_tokens"] > rows["sgrpo"]["sampled_tokens"] > 0
    assert all(rows[m]["train_seconds"] > 0 for m in (*study, "sgrpo"))
    assert "sampled_tokens" not in rows["base"]
    # gfpo-drop trains k of G; the DPO stage samples nothing and trains on gfpo-drop's pairs, from its checkpoint
    drop, dpo = rows["gfpo-drop"], rows["gfpo-dpo"]
    assert drop["trained_tokens"] < drop["sampled_tokens"]
    assert dpo["sampled_tokens"] == drop["sampled_tokens"] and dpo["trained_tokens"] > drop["trained_tokens"]
    pairs = (out / "quick" / "runs" / "gfpo-drop-s0" / "pairs.jsonl").read_text().splitlines()
    assert pairs and {"prompt", "chosen", "rejected"} <= set(json.loads(pairs[0]))
    assert "pairs.jsonl" in (out / "quick" / "logs" / "train-gfpo-dpo-s0.log").read_text().splitlines()[0]
    # the seed analysis's signal metrics: logged by every GFPO row, not by GRPO; drop gives rejected rows nothing
    for m in study[1:5]:
        assert 0 <= rows[m]["gfpo/incorrect_no_signal"] <= 1 and "entropy" in rows[m]
    assert "gfpo/incorrect_no_signal" not in rows["grpo"] and rows["gfpo-drop"]["gfpo/rejected_advantage_mean"] == 0
    assert rows["gfpo-penalty"]["gfpo/rejected_advantage_mean"] == pytest.approx(-0.1)


def test_sgrpo_credit_of_the_recheck_decision():
    # One full rollout that re-checks a sound pass; the credit of "Wait" (the first token after "Total: 102")
    # depends on whether the earliest correct exit lands before it (synthetic/sgrpo_credit.py).
    from transformers import AutoTokenizer

    from synthetic.sft import SHIPPED_DIR
    from synthetic.sgrpo_credit import decision_credit

    tok = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    thinking = ("12+34=46\n46+56=102\nTotal: 102\n" + RECHECK_TEXT + "\nCheck 12+34=46\nCheck 46+56=102\n"
                "Total: 102\n")
    offsets = tok(thinking, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    wait = next(i for i, (start, _) in enumerate(offsets) if start >= thinking.index("Wait"))
    in_first_pass, in_recheck = 3, len(offsets) - 4
    # Exits: in the first pass (answers 12: wrong), right before "Wait" (answers 102), later (102): rewards
    # 0, 1, 1/2, full 1/4; mean 7/16; A = -7/16, 9/16, 1/16, -3/16. "Wait" is in exit 3 and the full rollout.
    _, tok_level = decision_credit(thinking, 12, "102", 102, tok, cuts=[in_first_pass, wait, in_recheck])
    assert tok_level == pytest.approx(1 / 16 - 3 / 16)  # pushed down: a correct exit came first
    # Move the second exit into the re-check: "Wait" is now in exits 2, 3 and the full rollout -> pushed up.
    seq, tok_level = decision_credit(thinking, 12, "102", 102, tok, cuts=[in_first_pass, wait + 2, in_recheck])
    assert tok_level == pytest.approx(9 / 16 + 1 / 16 - 3 / 16)
    assert seq > 0


def test_sgrpo_credit_cli_prints_the_four_cases(capsys):
    from synthetic.sgrpo_credit import main

    main(["--n", "60", "--slip_prob", "0.5"])
    out = capsys.readouterr().out
    for case in ("| sound | stop |", "| sound | re-check |", "| slipped | stop |", "| slipped | re-check |"):
        assert case in out
    assert "E[credit | stop] - E[credit | re-check]" in out and "60 full rollouts" in out


# ------------------------------------------------------------------------------------------------- task v4
def test_v4_exit_answers_finish_the_remaining_additions():
    from synthetic.task import exit_answer

    v4 = TaskConfig.v4(exit_slip_prob=0.0)
    numbers = (12, 34, 56, 7)
    # inside the first pass: finish from the last complete running sum (a cut line is redone)
    assert exit_answer("12+34=46\n46+5", numbers, random.Random(0), v4) == ("46+56=102\n102+7=109\n\\boxed{109}", 109)
    assert exit_answer("", numbers, random.Random(0), v4) == (
        "12+34=46\n46+56=102\n102+7=109\n\\boxed{109}", 109)
    # after a stated total (in a re-check, say): copy it, like v3
    assert exit_answer("12+34=46\n46+56=102\n102+7=109\nTotal: 109\nWait", numbers, random.Random(0), v4) == (
        "\\boxed{109}", 109)
    # a first-pass slip before the cut is carried on; exit slips happen at exit_slip_prob per addition
    assert exit_answer("12+34=45\n", numbers, random.Random(0), v4)[1] == 108
    slips = [exit_answer("", numbers, random.Random(i), TaskConfig.v4(exit_slip_prob=0.1))[1] != 109
             for i in range(3000)]
    assert abs(sum(slips) / 3000 - (1 - 0.9 ** 3)) < 0.03
    # v3 keeps copying what was computed
    assert exit_answer("12+34=46\n46+5", numbers, random.Random(0), TaskConfig()) == ("\\boxed{46}", 46)


def test_v4_generator_realism():
    """First passes slip more on longer sums; rounds do not depend on the length; later rounds rarely change the
    answer (synthetic/realism.py prints the full table)."""
    from synthetic.realism import generator_samples, row_stats

    samples = generator_samples(TaskConfig.v4(), n=3000, seed=1)
    by = {t: row_stats([s for terms, s in samples if terms == t]) for t in (2, 6)}
    assert by[2]["first_round_right"] == pytest.approx(0.94, abs=0.03)  # 1 addition at 6% slips
    assert by[6]["first_round_right"] == pytest.approx(0.94 ** 5, abs=0.05)
    assert abs(by[2]["mean_rounds"] - by[6]["mean_rounds"]) < 0.15  # 1 + 0.7 + 0.49 either way
    overall = row_stats([s for _, s in samples])
    assert overall["later_rounds_changing"] < 0.15 and overall["exit_Q1"] > 0.6


def test_task_versions_keep_their_hashes():
    """v3's config (and so the shipped base's hash) is unchanged by v4's fields."""
    from synthetic.sft import SHIPPED_DIR, preset, read_meta

    assert preset("cpu").config_hash() == read_meta(SHIPPED_DIR)["config_hash"]
    assert preset("cpu", task=TaskConfig.v4()).config_hash() != preset("cpu").config_hash()
    assert "exit_slip_prob" not in TaskConfig().to_dict() and TaskConfig.v4().to_dict()["version"] == 4
    assert TaskConfig.of_version(3) == TaskConfig() and TaskConfig.of_version(4) == TaskConfig.v4()
    assert TaskConfig.of_version(4, slip_prob=0.2) == TaskConfig.v4(slip_prob=0.2)


def test_sgrpo_credit_of_v4_exit_answers(capsys):
    from synthetic.sgrpo_credit import main

    main(["--n", "60", "--task_version", "4"])
    out = capsys.readouterr().out
    assert "version=4" in out and "60 full rollouts" in out


def test_hard_split_is_longer_and_disjoint():
    from synthetic.task import TaskConfig, build_splits, hard_split

    cfg = TaskConfig.v4()
    splits = build_splits(300, 40, seed=0, cfg=cfg)
    out = hard_split(splits, 25, seed=0, cfg=cfg)
    terms = lambda row: row["question"].count("+") + 1  # noqa: E731
    assert len(out["heldout_hard"]) == 25 and {terms(r) for r in out["heldout_hard"]} == {cfg.max_terms}
    assert max(terms(r) for r in out["train"]) == cfg.max_terms - 1  # RL never sees the longest sums
    assert len(out["train"]) == sum(terms(r) < cfg.max_terms for r in splits["train"]) > 0
    assert out["heldout"] == splits["heldout"]  # the ordinary held-out split is unchanged
    questions = [r["question"] for name in ("train", "heldout") for r in splits[name]]
    assert not {r["question"] for r in out["heldout_hard"]} & set(questions)
    row = out["heldout_hard"][0]
    assert int(row["answer"]) == sum(int(x) for x in row["question"][len("What is "):-1].split(" + "))
    assert hard_split(splits, 25, seed=0, cfg=cfg) == out  # a pure function of its inputs


def test_token_drift_roles_of_a_trace():
    from transformers import AutoTokenizer

    from synthetic.token_drift import line_roles, token_roles

    trace = ("12+34=46\n46+56=102\nTotal: 102\nWait, let me check.\nCheck 12+34=46\nCheck 46+56=102\nTotal: 102\n"
             "</think>\n\n\\boxed{102}")
    spans = [(trace[a:b], role) for a, b, role in line_roles(trace)]
    assert spans[:5] == [("12+34=", "pass operands"), ("46\n", "pass sums"), ("46+56=", "pass operands"),
                         ("102\n", "pass sums"), ("Total: 102\n", "first total")]
    assert spans[-2:] == [("Total: 102\n", "later totals"), ("</think>\n\n\\boxed{102}", "answer")]
    tok = AutoTokenizer.from_pretrained(ROOT / "synthetic" / "base_v4")
    ids = tok(trace, add_special_tokens=False)["input_ids"]
    roles = token_roles(tok, ids)
    decision = roles.index("decision: re-check")
    assert tok.decode([ids[decision]]) == "Wait" and roles[decision - 1] == "first total"
    stop = "12+34=46\nTotal: 46\n</think>\n\n\\boxed{46}"
    ids = tok(stop, add_special_tokens=False)["input_ids"]
    roles = token_roles(tok, ids)
    assert roles.count("decision: close") == 1 and "re-check" not in roles
    assert tok.decode([ids[roles.index("decision: close")]]).startswith("</think>")
