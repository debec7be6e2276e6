"""`method: dpo` (scripts/train.py): TRL's DPOTrainer on the preference pairs GFPO exports (`pairs_output_file`).

The pairs are written here in GFPO's format (conversational prompt, one assistant message per completion holding the
thought after the generation prompt's `<think>\\n`, then `</think>` and the answer). The model is the shipped
synthetic/base_v4 (372k parameters, the R1-style template whose generation prompt opens `<think>`).
"""

import json
import math
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402

from trainers.cost import total_cost  # noqa: E402

MODEL = str(ROOT / "synthetic" / "base_v4")
RECIPE = str(ROOT / "recipes" / "synthetic" / "gfpo_dpo.yaml")


def gfpo_pair(i: int) -> dict:
    """A pair as GFPO writes it: chosen a short correct thought, rejected a long one with a re-check (and, every
    third pair, a slip)."""
    a, b, c = 11 + 7 * i, 23 + 5 * i, 31 + 3 * i
    total = a + b + c
    wrong = total + 10 * (i % 3 == 0)
    prompt = [{"role": "user", "content": f"What is {a} + {b} + {c}?"}]
    if i % 4 == 1:
        prompt.insert(0, {"role": "system", "content": "Add the numbers."})
    chosen = f"{a}+{b}={a + b}\n{a + b}+{c}={total}\nTotal: {total}\n</think>\n\n\\boxed{{{total}}}"
    rejected = (f"{a}+{b}={a + b}\n{a + b}+{c}={wrong}\nTotal: {wrong}\nWait, let me check.\nCheck {a}+{b}={a + b}\n"
                f"Check {a + b}+{c}={wrong}\nTotal: {wrong}\n</think>\n\n\\boxed{{{wrong}}}")
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def write_pairs(path: Path, n: int) -> str:
    path.write_text("".join(json.dumps(gfpo_pair(i)) + "\n" for i in range(n)))
    return str(path)


@pytest.fixture
def no_model_load(monkeypatch):
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an invalid recipe")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)


# ------------------------------------------------------------------------------------------ dry run, refusals
def test_dry_run_prints_the_dpo_plan(tmp_path, capsys, no_model_load):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 20)
    assert train.main(["--config", RECIPE, "--dry_run", "--model_name_or_path", MODEL, "--dataset_name", pairs,
                       "--num_processes", "2"]) is None
    plan = json.loads(capsys.readouterr().out)
    assert plan["method"] == "dpo" and plan["model"] == MODEL and plan["rewards"] is None
    assert "20 pairs" in plan["dataset_source"]
    assert plan["batch"] == {"processes": 2, "pairs_per_optimizer_step": 16, "sequences_per_optimizer_step": 32,
                             "pairs_in_dataset": 20, "optimizer_steps_per_epoch": 2}
    assert plan["training"]["learning_rate"] == 3e-5 and plan["training"]["num_train_epochs"] == 1
    options = plan["dpo_options"]
    assert options["beta"] == 0.1 and options["loss_type"] == ["sigmoid"] and options["max_length"] == 512
    assert plan["memory"]["available"] is False and plan["memory"]["reason"].startswith("not planned for dpo")
    assert plan["completion_end"]["chosen"] == ["<|im_end|>=2"]


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing", [], r"`dataset_name` .*missing.jsonl: no such file.*run GFPO with `pairs_output_file` first"),
        ("empty", [], r"`dataset_name` .*empty.jsonl: the file is empty.*pairs_output_file"),
        ("no_rejected", [], r"row 1 has no rejected column \(it has \['chosen', 'prompt'\]\).*pairs_output_file"),
        ("two_messages", [], r"row 1: `chosen` must be one assistant message"),
        ("ok", ["--reward_funcs", "accuracy"], r"`reward_funcs` .* means nothing to method dpo.*remove it"),
        ("ok", ["--num_generations", "8"], r"unknown key `num_generations`"),
        ("ok", ["--loss_type", "sigmod"], r"`loss_type` 'sigmod' is not a DPO loss: use one of \[.*'sigmoid'"),
        ("ok", ["--resume_from_checkpoint", "/nonexistent/checkpoint-2"], r"resume_from_checkpoint=.*no such folder"),
    ],
)
def test_bad_dpo_inputs_refused_before_the_model(tmp_path, no_model_load, case, extra, message):
    pair = gfpo_pair(0)
    rows = {"missing": None, "empty": "", "ok": json.dumps(pair) + "\n",
            "no_rejected": json.dumps({k: pair[k] for k in ("prompt", "chosen")}) + "\n",
            "two_messages": json.dumps({**pair, "chosen": pair["chosen"] * 2}) + "\n"}[case]
    path = tmp_path / f"{case}.jsonl"
    if rows is not None:
        path.write_text(rows)
    with pytest.raises(train.InputError, match=message):
        train.main(["--config", RECIPE, "--model_name_or_path", MODEL, "--dataset_name", str(path),
                    "--output_dir", str(tmp_path / "out"), *extra])


# ------------------------------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """12 pairs, 4 a step: 2 steps with a checkpoint, then resumed for the third (one epoch in all)."""
    tmp = tmp_path_factory.mktemp("dpo")
    pairs = write_pairs(tmp / "pairs.jsonl", 12)
    out = tmp / "out"
    args = ["--config", RECIPE, "--model_name_or_path", MODEL, "--dataset_name", pairs, "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--save_strategy", "steps", "--save_steps", "2"]
    train.main([*args, "--max_steps", "2"])
    assert (out / "checkpoint-2").is_dir()
    return train.main([*args, "--max_steps", "3", "--resume_from_checkpoint", "last"]), out


@pytest.mark.slow
def test_dpo_trains_saves_and_logs_cost(dpo_run):
    from safetensors.torch import load_file

    trainer, out = dpo_run
    assert trainer.state.global_step == 3
    for name in ("model.safetensors", "trainer_state.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3], "the resumed run continues at step 3"
    assert all(math.isfinite(h["loss"]) for h in steps)
    assert any("train_runtime" in h for h in history)
    # cost: nothing sampled; trained = every chosen and rejected token of the epoch's 12 pairs
    data = trainer.train_dataset
    assert total_cost(history, "cost/sampled_tokens") == 0
    assert total_cost(history, "cost/trained_tokens") == sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in data)
    before, after = load_file(f"{MODEL}/model.safetensors"), load_file(str(out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before), "no weight changed"
    # the policy now prefers chosen over rejected more than the reference (the starting model) does
    metrics = trainer.evaluate(eval_dataset=data)
    assert metrics["eval_rewards/margins"] > 0 and metrics["eval_rewards/accuracies"] > 0.5


# ------------------------------------------------------------------------------------------ the text trained
def sampled_sequence(tokenizer, pair: dict, completion: str) -> tuple[list[int], str]:
    """What GRPOTrainer gave the policy (the prompt through the chat template with its generation prompt) and the
    completion text it decoded: the sequence DPO must train on, the completion ended by the eos."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    return list(prompt), pair[completion][0]["content"] + tokenizer.eos_token


@pytest.mark.slow
def test_dpo_trains_the_sampled_text_thought_included(dpo_run):
    """DPOTrainer's own tokenization of our rows: the prompt tokens are those the policy was given, the chosen and
    rejected tokens decode to the stored completion, thought included, then the eos."""
    trainer, _ = dpo_run
    tokenizer = trainer.processing_class
    for i, row in enumerate(trainer.train_dataset):
        pair = gfpo_pair(i)
        prompt_ids, chosen = sampled_sequence(tokenizer, pair, "chosen")
        assert row["prompt_ids"] == prompt_ids
        assert tokenizer.decode(row["chosen_ids"]) == chosen
        assert tokenizer.decode(row["rejected_ids"]) == sampled_sequence(tokenizer, pair, "rejected")[1]
        assert "</think>" in chosen and chosen.startswith(pair["chosen"][0]["content"][:8])


def trl_tokenize(row: dict, tokenizer) -> dict:
    """TRL's DPOTrainer dataset processing (`_prepare_dataset`) without building a trainer."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", use_cpu=True, report_to="none", max_length=512)
    stand_in = types.SimpleNamespace(_tokenizer=tokenizer)
    return DPOTrainer._prepare_dataset(stand_in, Dataset.from_list([row]), tokenizer, args, "train")[0]


@pytest.mark.parametrize("template", ["base_v4", "qwen3"])
def test_conversational_pairs_would_not_train_the_sampled_text(template):
    """Why scripts/train.py renders the prompt itself (`pair_as_text`): given the messages, DPOTrainer renders prompt
    + completion as one conversation, which is not what was sampled: base_v4's template leaves out the `<think>\\n`
    its generation prompt opened (and trains the newline after `<|im_end|>`); Qwen3's rebuilds the thought with its
    own whitespace. The text rows reproduce the sampled sequence exactly in both."""
    import trl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    pair = gfpo_pair(1)
    if template == "qwen3":  # Qwen3's generation prompt is `<|im_start|>assistant\n`: the completion opens <think>
        tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
        for side in ("chosen", "rejected"):
            pair[side][0]["content"] = "<think>" + pair[side][0]["content"]  # as sampled: no newline after it
    prompt_ids, chosen = sampled_sequence(tokenizer, pair, "chosen")
    as_messages, as_text = trl_tokenize(pair, tokenizer), trl_tokenize(train.pair_as_text(pair, tokenizer), tokenizer)
    assert (as_text["prompt_ids"], tokenizer.decode(as_text["chosen_ids"])) == (prompt_ids, chosen)
    assert (as_messages["prompt_ids"], tokenizer.decode(as_messages["chosen_ids"])) != (prompt_ids, chosen)
