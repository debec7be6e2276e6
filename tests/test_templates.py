"""The real chat templates on the tiny BPE: GRPO, GFPO and S-GRPO through scripts/train.py, and the evaluator, in each
layout a real checkpoint has.

- `qwen3`: TRL's copy of Qwen3's template (`trl/chat_templates/qwen3.jinja`): the generation prompt is
  `<|im_start|>assistant\\n`, the completion opens `<think>` itself;
- `qwen3_nothink`: the same with `enable_thinking: false`: the prompt ends `<think>\\n\\n</think>\\n\\n`, no thought;
- `r1`: TRL's copy of DeepSeek-R1-Distill's (`deepseek_r1_distill.jinja`): the prompt ends `<｜Assistant｜><think>\\n`;
- `phi4`: Phi-4-reasoning's documented template (tests/fixtures/templates/phi4_reasoning.jinja): its own system
  prompt, `<|im_start|>assistant<|im_sep|>`, the completion opens `<think>`.

The think tags are added, non-special tokens in every layout (as Qwen3 and R1-Distill register them). A random model
does not open `<think>` by itself: `sequence_bias` (transformers generate) makes the first completion token `<think>`
where the layout leaves it to the model, and pushes `</think>` so about half of the thoughts close.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402
from capture import capture, rows  # noqa: E402

DATA = ROOT / "recipes" / "tiny" / "data.jsonl"
EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"
PHI_SYSTEM_START = "<|im_start|>system<|im_sep|>You are Phi, a language model trained by Microsoft"


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
R1 = ["<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
LAYOUTS = {
    "qwen3": dict(template="qwen3.jinja", special=CHATML, eos="<|im_end|>", pad="<|endoftext|>", bos=None,
                  kwargs={}, prompt_end="<|im_start|>assistant\n", opens_think=True),
    "qwen3_nothink": dict(template="qwen3.jinja", special=CHATML, eos="<|im_end|>", pad="<|endoftext|>", bos=None,
                          kwargs={"enable_thinking": False},
                          prompt_end="<|im_start|>assistant\n<think>\n\n</think>\n\n", opens_think=False),
    "r1": dict(template="deepseek_r1_distill.jinja", special=R1, eos=R1[0], pad=R1[0], bos=R1[1], kwargs={},
               prompt_end="<｜Assistant｜><think>\n", opens_think=False),
    "phi4": dict(template=ROOT / "tests/fixtures/templates/phi4_reasoning.jinja",
                 special=["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"], eos="<|im_end|>",
                 pad="<|endoftext|>", bos=None, kwargs={}, prompt_end="<|im_start|>assistant<|im_sep|>",
                 opens_think=True),
}


def build_layout_tokenizer(spec: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from synthetic.tiny_model import THINK_TOKENS, corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(seed=0), trainer=trainers.BpeTrainer(
        vocab_size=320, special_tokens=spec["special"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    extra = [t for t in spec["special"] if t not in (spec["eos"], spec["pad"], spec["bos"])]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=spec["eos"], pad_token=spec["pad"],
                                   bos_token=spec["bos"], additional_special_tokens=extra)
    fast.add_tokens(THINK_TOKENS, special_tokens=False)  # as Qwen3 and R1-Distill: normal added tokens
    template = spec["template"]
    fast.chat_template = Path(template).read_text() if isinstance(template, Path) else _trl_template(template)
    fast.padding_side = "left"
    return fast


@pytest.fixture(autouse=True)
def one_thread():  # on the shared 2-core machines one torch thread is faster than two
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def layout_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random Qwen3 per tokenizer (qwen3 and qwen3_nothink share theirs), saved once per session."""
    from synthetic.tiny_model import build_model

    out, built = {}, {}
    for name, spec in LAYOUTS.items():
        key = (str(spec["template"]), tuple(spec["special"]))
        if key not in built:
            path = tmp_path_factory.mktemp(f"layout-{name}")
            tok = build_layout_tokenizer(spec)
            model = build_model(tok, seed=0)
            for cfg in (model.config, model.generation_config):
                cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
            tok.save_pretrained(path)
            model.save_pretrained(path)
            built[key] = path
        out[name] = built[key]
    return out


def ids_of(tok):
    return {"start": tok.convert_tokens_to_ids("<think>"), "end": tok.convert_tokens_to_ids("</think>"),
            "eos": tok.eos_token_id, "exit": tok.encode(EXIT_TEXT, add_special_tokens=False)}


def prompt_end_ids(tok, spec) -> list[int]:
    return tok.encode(spec["prompt_end"], add_special_tokens=False)


def generation_bias(tok, spec) -> dict:
    """`<think>` right after the generation prompt where the layout leaves it to the model; `</think>` pushed."""
    ids = ids_of(tok)
    bias = []
    if spec["opens_think"]:
        bias.append([prompt_end_ids(tok, spec) + [ids["start"]], 30.0])
    if spec["prompt_end"].rstrip().endswith("<think>") or spec["opens_think"]:
        bias.append([[ids["end"]], 3.0])
    return {"sequence_bias": bias} if bias else {}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_think_tags_are_printed_at_start(layout, capsys):
    """The start-up check prints what the loaded tokenizer makes of each think tag (issue 28, item 3): in every layout,
    Phi-4-reasoning's fixture included, one added, non-special token each. Phi-4-reasoning's real tokenizer was not
    read: its run prints the same line, and a special tag is refused (test_tokenizer_checks.py)."""
    from checks.tokenizer import check_think_tags

    tok = build_layout_tokenizer(LAYOUTS[layout])
    ids = ids_of(tok)
    line = check_think_tags(tok)
    assert line == (f"'<think>' = [{ids['start']}] (one added token, special=False); "
                    f"'</think>' = [{ids['end']}] (one added token, special=False)")
    assert f"[concise-rl] think tags: {line}" in capsys.readouterr().err


METHODS = {"grpo": ("grpo.yaml", "trl", "GRPOTrainer"), "gfpo": ("gfpo-shortest.yaml", "trainers.gfpo", "GFPOTrainer"),
           "sgrpo": ("sgrpo.yaml", "trainers.sgrpo", "SGRPOTrainer")}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_through_train(layout, method, layout_models, tmp_path, capfd, monkeypatch):
    import importlib

    from transformers import AutoTokenizer

    from rewards.accuracy import extract_answer
    from rewards.parsing import last_boxed
    from trainers.serial_group import thinking_span

    spec, model = LAYOUTS[layout], layout_models[layout]
    tok = AutoTokenizer.from_pretrained(model)
    ids = ids_of(tok)
    recipe_file, module, cls_name = METHODS[method]
    cls = getattr(importlib.import_module(module), cls_name)
    captured = capture(monkeypatch, cls)
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny" / recipe_file).read_text())
    recipe.update(model_name_or_path=str(model), dataset_name=str(DATA), output_dir=str(tmp_path / "out"),
                  max_steps=1, max_completion_length=24, reward_funcs=["accuracy", "tests.reward_stubs:digit_count"],
                  reward_weights=[1.0, 1.0], generation_kwargs=generation_bias(tok, spec))
    if method == "gfpo":  # shortest 2 of 4 (the recipe's 2 of 8 x 2 questions costs 16 rows of Phi's long prompt)
        recipe.update(num_generations=4, num_remains_in_group=2, per_device_train_batch_size=8)
    if spec["kwargs"]:
        recipe["chat_template_kwargs"] = spec["kwargs"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    if layout == "qwen3_nothink" and method == "sgrpo":  # no thought to cut: refused before anything loads
        with pytest.raises(train.RecipeError, match="S-GRPO cuts the model's thought"):
            train.main(["--config", str(path)])
        return
    trainer = train.main(["--config", str(path)])
    assert trainer.state.global_step == 1
    out_text, err_text = capfd.readouterr()
    # every layout's end of turn is its eos: one id ends a completion, no disagreement to warn about
    eos = f"{spec['eos']}={ids['eos']}"
    assert f"[concise-rl] a completion ends at ['{eos}']" in out_text and f"end of turn {eos}" in out_text
    assert "train.py: warning: the chat template" not in err_text

    out = captured[0]
    prompts, comps = rows(out, "prompt"), rows(out)
    end_ids = prompt_end_ids(tok, spec)
    for p in prompts:
        assert p[-len(end_ids):] == end_ids
        text = tok.decode(p)
        assert text.endswith(spec["prompt_end"])
        if layout == "phi4":
            assert text.startswith(PHI_SYSTEM_START)
        if layout == "r1":
            assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>")
    for c in comps:
        assert ids["eos"] not in c[:-1]
        if spec["opens_think"]:
            assert c[0] == ids["start"], "the completion must open <think> in this layout"
        # what the rewards see (TRL decodes with skip_special_tokens=True): the think tags survive; the answer is the
        # last \boxed{} after the last </think>, none without one
        text = tok.decode(c, skip_special_tokens=True)
        assert text.count("</think>") == c.count(ids["end"])
        expected = last_boxed(text.rsplit("</think>", 1)[1]) if "</think>" in text else None
        assert extract_answer(text) == (expected.strip() if expected and expected.strip() else None)
        if layout == "qwen3_nothink" and ids["end"] not in c:
            assert extract_answer(text) is None  # the prompt closed the thought: no `</think>` in the completion
            assert extract_answer(text, require_thinking=False) == (
                last_boxed(text).strip() if last_boxed(text) and last_boxed(text).strip() else None)

    if method != "sgrpo":
        return
    # S-GRPO: thought spans, exit positions and exit texts on the layout's own ids
    G, m = 4, 3
    layout_rows = trainer._sgrpo_batch
    for g in range(len(comps) // G):
        grp = comps[g * G : (g + 1) * G]
        full = grp[-1]
        span = thinking_span(full, ids["end"], ids["start"], [ids["eos"]])
        assert span.start == (1 if spec["opens_think"] else 0)  # after the completion's own <think>, or 0
        assert ids["start"] not in full[span.start : span.end] or layout in ("r1", "qwen3_nothink")
        for i, r in enumerate(grp[:-1]):
            k = g * G + i
            cut = layout_rows["cut"][k]
            assert cut == span.start + layout_rows["pos"][k] and layout_rows["n_think"][k] == span.length
            assert span.start + min(1, span.length) <= cut <= span.end  # never before <think>, never past </think>
            assert r[:cut] == full[:cut] and r[cut : cut + len(ids["exit"])] == ids["exit"]
            assert r[cut : cut + len(ids["exit"])].count(ids["end"]) == 1
            if spec["opens_think"]:
                assert r[0] == ids["start"]
            text = tok.decode(r, skip_special_tokens=True)
            assert text.count(EXIT_TEXT) == 1 and text.startswith(tok.decode(full[:cut], skip_special_tokens=True))
            after = text.split(EXIT_TEXT, 1)[1]
            assert extract_answer(text) == (last_boxed(after).strip() if last_boxed(after) and last_boxed(after).strip()
                                            else None)
        assert layout_rows["is_full"][g * G + m] and layout_rows["cut"][g * G + m] == len(full)


class OpensThink:
    """The evaluator's back-end for a layout whose completion opens `<think>`: a fresh completion (the prompt ends with
    the generation prompt) starts with `<think>`, as the real model writes it; the rest is the tiny model's."""

    def __init__(self, inner, prompt_end: list[int], think_id: int):
        self.inner, self.prompt_end, self.think_id = inner, prompt_end, think_id

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids):
        from benchmarks.generation import GenOutput

        fresh = [p[-len(self.prompt_end):] == self.prompt_end for p in prompts]
        outs = self.inner.generate([list(p) + [self.think_id] if f else p for p, f in zip(prompts, fresh, strict=True)],
                                   max_new_tokens - 1 if any(fresh) else max_new_tokens, seeds, stop_token_ids)
        return [GenOutput([self.think_id] + o.ids, o.finished) if f else o for o, f in zip(outs, fresh, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_evaluator_token_counts(layout, layout_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.evaluation import Protocol, read_records, run_benchmark
    from benchmarks.generation import Budget, TransformersBackend
    from benchmarks.registry import load_benchmark
    from trainers.serial_group import thinking_span

    spec, path = LAYOUTS[layout], layout_models[layout]
    tok = AutoTokenizer.from_pretrained(path)
    ids = ids_of(tok)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    backend = TransformersBackend(model, tok.pad_token_id, temperature=1.0, batch_size=8)
    if spec["opens_think"]:
        backend = OpensThink(backend, prompt_end_ids(tok, spec), ids["start"])
    questions = load_benchmark("gsm8k", path=str(ROOT / "tests/fixtures/benchmarks/gsm8k.jsonl"))
    protocol = Protocol(model=layout, temperature=1.0, top_p=1.0, max_tokens=16, answer_max_tokens=6,
                        chat_template_kwargs=spec["kwargs"], require_thinking=layout != "qwen3_nothink")
    B = 4
    run_benchmark(backend, tok, questions, "gsm8k", [Budget("full"), Budget("thinking", B)], 3, protocol, tmp_path,
                  progress=False, eos_ids=[ids["eos"]], exit_fractions=[0.5])
    records = read_records(tmp_path)
    assert len(records) == 3 * 3 * 3
    assert all(r["prompt"].endswith(spec["prompt_end"]) for r in records)
    full = {(r["question_id"], r["sample_index"]): r for r in records if r["budget"] == "full"}
    for r in records:
        c = r["completion_ids"]
        if r["budget"].startswith("exit="):  # a tail after the full rollout's own thought prefix
            rollout = full[(r["question_id"], r["sample_index"])]["completion_ids"]
            span = thinking_span(rollout, ids["end"], ids["start"], [ids["eos"]])
            p = r["prefix_tokens"]
            assert p == span.start + r["exit_thought_tokens"] and r["thought_tokens"] == span.length
            assert c[: len(ids["exit"])] == ids["exit"] and r["thinking_tokens"] == p
            continue
        assert r["num_tokens"] == len(c) == r["thinking_tokens"] + r["injected_tokens"] + r["answer_tokens"]
        if spec["opens_think"]:
            assert c[0] == ids["start"]
        if r["forced_exit"]:
            # B generated tokens (the opening <think> among them where the model writes it), then the exit text
            assert r["thinking_tokens"] == B and c[B : B + len(ids["exit"])] == ids["exit"] and ids["end"] not in c[:B]
        else:
            # by hand: every token up to and including the model's own </think>; all of them when it never closed.
            # The evaluator counts the opening <think> and the closing </think>; S-GRPO's span counts neither.
            span = thinking_span(c, ids["end"], ids["start"], [ids["eos"]])
            if ids["end"] in c:
                assert r["thinking_tokens"] == c.index(ids["end"]) + 1 == span.start + span.length + 1
            else:
                assert r["thinking_tokens"] == len(c)
        text = r["completion"]
        assert text == tok.decode(c, skip_special_tokens=True)
        if r["extracted"] is not None and protocol.require_thinking:
            assert "</think>" in text
