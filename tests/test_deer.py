"""DEER (benchmarks/deer.py): the confidence computation and the stop decision against hand-computed values, the replay
on scripted rollouts, and `scripts/evaluate.py --early_exit deer` on the shipped synthetic base (transformers, vLLM)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.deer import (
    DeerSettings,
    boxed_trial_length,
    deer_exits,
    first_exit,
    transition_cuts,
    trial_confidence,
)
from benchmarks.generation import GenOutput

ROOT = Path(__file__).resolve().parent.parent


def test_trial_confidence_by_hand():
    lps = [math.log(0.5), math.log(0.9), math.log(0.8)]  # the first token ("{") is not scored
    assert trial_confidence(lps, "mean") == pytest.approx((0.9 + 0.8) / 2)
    assert trial_confidence(lps, "geometric") == pytest.approx(math.sqrt(0.9 * 0.8))
    assert trial_confidence(lps, "min") == pytest.approx(0.8)
    assert trial_confidence([math.log(0.99)], "mean") == 0.0  # nothing after the brace
    with pytest.raises(ValueError, match="policy"):
        trial_confidence(lps, "max")


def test_stop_decision_by_hand():
    confidences = [0.5, 0.96, 0.999]
    assert first_exit(confidences, 0.95) == 1
    assert first_exit(confidences, 0.5) == 1  # DEER exits when the confidence is above the threshold, not equal
    assert first_exit(confidences, 0.4) == 0
    assert first_exit(confidences, 0.999) is None


def test_trial_length_stops_where_the_box_closes():
    assert boxed_trial_length(["{", "1", "2", "}", " and", " more"]) == 4
    assert boxed_trial_length(["{\\frac{1}", "{2}", "}", "x"]) == 3  # nested braces
    assert boxed_trial_length(["{", "1", "2"]) == 3  # never closed: the whole trial


def test_transition_cuts_are_token_boundaries_before_the_marker():
    pieces = ["12", "+", "3", "\n", "Wait", ", ", "ok", "\n", " Wait", " more", "Waiting"]
    assert transition_cuts(pieces, "Wait") == [4, 8]  # " Wait" cuts before its token; "Waiting" is not a marker
    assert transition_cuts(["Wait", " a"], "Wait") == []  # a thought that starts with the marker has nothing to exit


class CharTokenizer:
    """One id per character; 1000 is `</think>`."""

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            if text.startswith("</think>", i):
                ids.append(1000)
                i += 8
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return "".join("</think>" if t == 1000 else chr(t) for t in ids)


class DeerScript:
    """Trial calls (logprobs=True) answer "{7}" with the confidence the script gives for that prompt length;
    answer calls write "{7}" and eos (0)."""

    def __init__(self, confidence_at: dict[int, float]):
        self.confidence_at, self.calls = confidence_at, []

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids, greedy=False, logprobs=False):
        self.calls.append(("trial" if logprobs else "answer", [len(p) for p in prompts], max_new_tokens, greedy))
        outs = []
        for p in prompts:
            if logprobs:
                c = self.confidence_at[len(p)]
                outs.append(GenOutput([ord(ch) for ch in "{7} tail"], True,
                                      logprobs=[math.log(0.5)] + [math.log(c)] * 7))
            else:
                outs.append(GenOutput([ord("{"), ord("7"), ord("}"), 0], True))
        return outs


def test_replay_on_scripted_rollouts_with_a_threshold_sweep():
    tok = CharTokenizer()
    prompt = [1, 2]  # 2 prompt tokens
    rollout = tok.encode("ab\nWait c\nWait d</think>x")  # transitions before each "Wait": after 3 and 10 tokens
    settings = DeerSettings(inducer="|B", exit_text="</think>")
    trial_prompt = lambda cut: len(prompt) + cut + 2  # noqa: E731  prompt + rollout[:cut] + inducer
    backend = DeerScript({trial_prompt(3): 0.6, trial_prompt(10): 0.97})
    (row,) = deer_exits(backend, tok, [prompt], [rollout], [5], [0.5, 0.95, 0.99], settings, max_tokens=100,
                        answer_max_tokens=8, eos_ids=[0], think_end_id=1000, think_start_id=None)
    low, mid, high = row
    # 0.5: exits at the first trial (0.6 > 0.5); its cost is that trial's 3 tokens "{7}"
    assert (low.exited, low.trials, low.trial_tokens, low.cut) == (True, 1, 3, 3)
    assert low.completion.ids == rollout[:3] + [1000] + [ord("{"), ord("7"), ord("}"), 0]
    assert low.completion.forced_exit and low.completion.injected_at == 3
    # 0.95: the second trial (0.97); two trials paid
    assert (mid.exited, mid.trials, mid.trial_tokens, mid.cut) == (True, 2, 6, 10)
    # 0.99: never confident; the thought runs to its own end, both trials still paid
    assert (high.exited, high.trials, high.trial_tokens, high.cut) == (False, 2, 6, None)
    assert high.completion.ids == rollout and not high.completion.forced_exit
    assert high.confidences == pytest.approx([0.6, 0.97])
    # two rounds of trials (greedy, 20 tokens), then one answer call for the two distinct cuts
    assert [c[0] for c in backend.calls] == ["trial", "trial", "answer"]
    assert backend.calls[0][2:] == (20, True) and backend.calls[2][1] == [2 + 3 + 1, 2 + 10 + 1]


def test_think_ratio_closes_a_long_thought():
    tok = CharTokenizer()
    rollout = tok.encode("x" * 50)  # never closed, no marker
    backend = DeerScript({})
    (row,) = deer_exits(backend, tok, [[1]], [rollout], [0], [0.95], DeerSettings(exit_text="</think>"),
                        max_tokens=40, answer_max_tokens=8, eos_ids=[0], think_end_id=1000, think_start_id=None)
    assert row[0].limit_exit and row[0].cut == 36 and row[0].trials == 0  # 0.9 x 40 thought tokens


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic-v4")
    subprocess.run([sys.executable, "-m", "synthetic.task", "--output_dir", str(out), "--task_version", "4"],
                   cwd=ROOT, check=True, capture_output=True)
    return out / "heldout.jsonl"


def run_deer(heldout, tmp_path, *extra):
    from test_evaluate import load_script

    main = load_script("evaluate").main
    return main(["--config", str(ROOT / "recipes/synthetic/deer_eval.yaml"), "--model", str(ROOT / "synthetic/base_v4"),
                 "--benchmarks", str(heldout), "--limit", "8", "--num_samples", "1", "--output_dir",
                 str(tmp_path / "run"), "--no_progress", "--deer_thresholds", "0.95", *extra])


@pytest.mark.slow
def test_evaluate_deer_on_the_synthetic_base(heldout, tmp_path):
    run = run_deer(heldout, tmp_path)
    budgets = run["benchmarks"]["heldout"]["budgets"]
    full, deer = budgets["full"], budgets["deer=0.95"]
    assert deer["n_samples"] == full["n_samples"] == 8
    records = [json.loads(line) for line in (tmp_path / "run/heldout/samples.jsonl").read_text().splitlines()]
    exits = [r for r in records if r["budget"] == "deer=0.95" and r["deer_exit"]]
    assert exits, "the base re-checks with 'Wait': some sample must exit"
    for r in exits:  # a trial was paid for each exit, the stored tail is the exit text and the answer
        assert r["deer_trials"] >= 1 and r["deer_trial_tokens"] >= r["deer_trials"] * 2
        assert r["completion"].startswith("</think>\n\n\\boxed") and r["forced_exit"]
    assert deer["mean_thinking_tokens"] < full["mean_thinking_tokens"]
    assert deer["mean_trial_tokens"] == pytest.approx(
        sum(r["deer_trial_tokens"] for r in records if r["budget"] == "deer=0.95") / 8)


@pytest.mark.slow
@pytest.mark.vllm
def test_evaluate_deer_with_vllm(heldout, tmp_path):
    run = run_deer(heldout, tmp_path, "--backend", "vllm", "--enforce_eager", "--batch_size", "8")
    deer = run["benchmarks"]["heldout"]["budgets"]["deer=0.95"]
    assert deer["n_samples"] == 8 and deer["mean_trials"] > 0 and 0 < deer["exit_rate"] <= 1
    assert deer["mean_trial_tokens"] >= 2 * deer["mean_trials"]  # a trial writes "{" and at least one more token


def test_deer_recipe_sends_deer_s_instruction_as_a_system_message(tiny_tokenizer):
    """recipes/eval/deer.yaml claims DEER's settings: like vllm-deer.py, the instruction is the system message and the
    user turn is the question alone (issue 28, item 4); GPQA's options are `A. text`, with the letter asked for."""
    from test_evaluate import FIX, load_script

    from benchmarks.evaluation import build_prompt
    from benchmarks.registry import load_benchmark

    root = Path(__file__).resolve().parent.parent
    args = load_script("evaluate").parse_args(["--config", str(root / "recipes/eval/deer.yaml"), "--model", "m"])
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert args.system_prompt == instruction and args.prompt_template == "{question}"
    question = load_benchmark("gpqa_diamond", path=str(FIX / "gpqa_diamond.jsonl"))[0].question
    text, _ = build_prompt(tiny_tokenizer, question, args.prompt_template, args.system_prompt)
    assert text.startswith(f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>")
    assert "\nA. " in question and "letter of the correct option" in question
