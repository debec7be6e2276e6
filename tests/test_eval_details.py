"""scripts/evaluate.py details a real run meets: top_k from the model's card, Qwen3's non-thinking mode, the vLLM
context from the prompts, every benchmark loaded (a gated one refused) before the model, and the eos header."""

import shutil
from pathlib import Path

import pytest
from test_evaluate import FIX, fixture_files, load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model, top_k", [
    ("Qwen/Qwen3-8B", 20), ("microsoft/Phi-4-reasoning", 50), ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 0),
])
def test_top_k_follows_the_model_card(model, top_k):
    k, why = load_script("evaluate").recommended_top_k(model)
    assert k == top_k and why


def test_top_k_default_is_resolved_and_explicit_wins(tiny_model_path, tmp_path, capsys):
    parse_args = load_script("evaluate").parse_args
    assert parse_args(["--model", str(tiny_model_path)]).top_k == 0  # a Qwen3 class, not Qwen3's vocabulary
    assert "no top_k recommendation known" in capsys.readouterr().err
    qwen3 = tmp_path / "my-finetune"  # a fine-tuned Qwen3 in a local folder: Qwen3's config
    qwen3.mkdir()
    shutil.copy(ROOT / "planning/model_configs/Qwen/Qwen3-8B/config.json", qwen3 / "config.json")
    assert load_script("evaluate").recommended_top_k(str(qwen3))[0] == 20
    assert parse_args(["--model", str(tiny_model_path), "--top_k", "5"]).top_k == 5


def test_non_thinking_mode_grades_without_a_thought(tiny_model_path):
    parse_args = load_script("evaluate").parse_args
    args = parse_args(["--model", str(tiny_model_path), "--chat_template_kwargs", '{"enable_thinking": false}'])
    assert args.no_require_thinking is True
    assert parse_args(["--model", str(tiny_model_path)]).no_require_thinking is False


def test_context_is_longest_prompt_plus_generation(tiny_model_path, tiny_tokenizer):
    ev = load_script("evaluate")
    from benchmarks.evaluation import build_prompt
    from benchmarks.registry import load_benchmark

    args = ev.parse_args(["--model", str(tiny_model_path), "--benchmarks", "gsm8k", "--benchmark_files",
                          fixture_files("gsm8k"), "--max_tokens", "100", "--answer_max_tokens", "7",
                          "--thinking_budgets", "40"])
    protocol = ev.protocol_of(args, str(tiny_model_path), None)
    questions = load_benchmark("gsm8k", path=str(FIX / "gsm8k.jsonl"))
    longest = max(len(build_prompt(tiny_tokenizer, q.question, args.prompt_template)[1]) for q in questions)
    exit_len = len(tiny_tokenizer.encode(args.exit_text, add_special_tokens=False))
    assert ev.context_needed(args, tiny_tokenizer, questions, protocol) == (longest + 100 + exit_len + 7, longest)


@pytest.mark.slow
def test_gated_benchmark_fails_before_any_generation(tiny_model_path, tmp_path, capsys):
    """gpqa_diamond from the hub (offline here, as a gated dataset without a token is): refused before gsm8k, listed
    first, generates anything."""
    main = load_script("evaluate").main
    out = tmp_path / "run"
    with pytest.raises(load_script("evaluate").InputError) as err:
        main(["--model", str(tiny_model_path), "--benchmarks", "gsm8k,gpqa_diamond", "--benchmark_files",
              fixture_files("gsm8k"), "--num_samples", "1", "--max_tokens", "4", "--output_dir", str(out),
              "--no_progress"])
    assert "--benchmarks gpqa_diamond: Idavidrein/gpqa could not be loaded (a gated dataset" in str(err.value)
    assert not (out / "gsm8k" / "samples.jsonl").exists()
    assert "a completion ends at ['<|im_end|>=" in capsys.readouterr().err
