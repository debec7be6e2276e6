"""The model's window caps every request (issue 28, item 1): vLLM's max_model_len and each request's max_tokens are at
most the window minus the prompt; the transformers back-end never generates past the trained positions; a run that
asks for more says so in one line. Phi-4-reasoning's GFPO protocol (32,768 positions) fits."""

import json
import shutil
from pathlib import Path

import pytest
from test_evaluate import fixture_files, load_script

from benchmarks.generation import Budget, generate_completions, request_limits

ROOT = Path(__file__).resolve().parent.parent
PHI4 = ROOT / "planning/model_configs/microsoft/Phi-4-reasoning"


def test_request_limits_cap_each_prompt_at_its_own_room():
    prompts = [[1] * 10, [1] * 25]
    assert request_limits(prompts, 100, None) == [100, 100]
    assert request_limits(prompts, 100, 40) == [30, 15]
    assert request_limits(prompts, 8, 40) == [8, 8]
    with pytest.raises(ValueError, match="leaves no room in the model's window of 25"):
        request_limits(prompts, 8, 25)


def test_transformers_backend_stops_at_the_window(tiny_model_path):
    """Two prompts of different lengths in one batch: each row stops at the window minus its own prompt (left padding
    does not count), as truncated; a thinking budget the window cuts is a truncated completion, not an error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.evaluation import build_prompt
    from benchmarks.generation import TransformersBackend

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    prompts = [build_prompt(tok, "What is 1 + 1?")[1], build_prompt(tok, "Add 12, 34 and 56 please, step by step.")[1]]
    window = max(len(p) for p in prompts) + 3
    backend = TransformersBackend(model, tok.pad_token_id, temperature=1.0, top_p=1.0, window=window)
    outs = backend.generate(prompts, 40, [1, 2], [])  # no stop token: only the limit ends a row
    assert [len(o.ids) for o in outs] == [window - len(p) for p in prompts]
    assert not any(o.finished for o in outs)
    T = tok.convert_tokens_to_ids("</think>")
    cut = generate_completions(backend, prompts, [1, 2], Budget("thinking", 30), 40, 5, [], T, [T])
    assert all(c.truncated and not c.forced_exit and len(c.ids) < 30 for c in cut)


def test_model_window_from_config_or_tokenizer(tmp_path):
    ev = load_script("evaluate")
    assert ev.model_window(str(PHI4), None) == (32768, "max_position_embeddings in its config.json")

    class Tok:
        model_max_length = 4096

    assert ev.model_window(str(tmp_path), None, Tok()) == (4096, "the tokenizer's model_max_length")
    Tok.model_max_length = int(1e30)  # transformers' "no limit"
    assert ev.model_window(str(tmp_path), None, Tok()) == (None, "")


def test_phi4_gfpo_protocol_fits_its_window():
    """recipes/eval/gfpo.yaml: 30,720 generated tokens (the GFPO training recipes' budget) + a prompt of up to 2,048
    tokens fit Phi-4-reasoning's 32,768 positions; the old 32,768 did not, and is capped with one line."""
    ev = load_script("evaluate")
    args = ev.parse_args(["--config", str(ROOT / "recipes/eval/gfpo.yaml"), "--model", "microsoft/Phi-4-reasoning"])
    assert args.max_tokens == 30720
    window, source = ev.model_window(str(PHI4), None)
    assert ev.fit_window(args, 1500 + args.max_tokens, 1500, window, source) == (1500 + 30720, None)
    args.max_tokens = 32768
    length, message = ev.fit_window(args, 1500 + 32768, 1500, window, source)
    assert length == 32768 and "\n" not in message
    assert "exceeds microsoft/Phi-4-reasoning's window of 32768 positions (max_position_embeddings" in message
    assert "--max_tokens 31268 fits every prompt" in message
    args.max_model_len = 40000  # an explicit --max_model_len past the window: capped too
    assert ev.fit_window(args, 100, 50, window, source)[0] == 32768


@pytest.mark.slow
def test_evaluate_caps_generation_at_a_short_window(tiny_model_path, tmp_path, capsys):
    """The tiny model with a window just above its longest prompt: the run says so once, and no sample goes past it."""
    model = tmp_path / "short-window"
    shutil.copytree(tiny_model_path, model)
    config = json.loads((model / "config.json").read_text())
    ev = load_script("evaluate")
    common = ["--benchmarks", "gsm8k", "--benchmark_files", fixture_files("gsm8k"), "--limit", "2",
              "--num_samples", "1", "--max_tokens", "64", "--no_progress", "--temperature", "1.0"]
    from transformers import AutoTokenizer

    from benchmarks.evaluation import build_prompt
    from benchmarks.registry import load_benchmark

    tok = AutoTokenizer.from_pretrained(model)
    qs = load_benchmark("gsm8k", path=fixture_files("gsm8k").split("=", 1)[1], limit=2)
    longest = max(len(build_prompt(tok, q.question)[1]) for q in qs)
    config["max_position_embeddings"] = longest + 5
    (model / "config.json").write_text(json.dumps(config))
    ev.main(["--model", str(model), "--output_dir", str(tmp_path / "run"), *common])
    err = capsys.readouterr().err
    assert err.count(f"window of {longest + 5} positions (max_position_embeddings in its config.json)") == 1
    records = [json.loads(line) for line in (tmp_path / "run/gsm8k/samples.jsonl").read_text().splitlines()]
    assert records and all(len(tok.encode(r["prompt"], add_special_tokens=False)) + r["num_tokens"] <= longest + 5
                           for r in records)
