"""One entry point for every method: GRPO (TRL's baseline), GFPO and S-GRPO, and DPO (TRL's) on GFPO's pairs.

    accelerate launch --config_file accelerate_configs/zero3.yaml scripts/train.py --config recipes/qwen3-8b/sgrpo.yaml
    python scripts/train.py --config recipes/qwen3-8b/sgrpo.yaml --dry_run --accelerate_config accelerate_configs/zero3.yaml

The recipe names the method; TrlParser maps the YAML onto (RecipeArguments, <method config>, ModelConfig). Everything
a recipe must satisfy is checked first, in one pass, by checks/recipe.py; this file loads the data and trains.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checks.inputs import PAIR_COLUMNS, PAIRS_HINT, InputError, pair_error, run_cli  # noqa: E402
from checks.recipe import (  # noqa: E402,F401  (parse, validate, ... are used by tests and scripts through train)
    METHODS,
    NOT_PLANNED,
    Recipe,
    RecipeArguments,
    RecipeError,
    batch_plan,
    check_recipe,
    launch_for,
    load_recipe,
    method_classes,
    parse,
    resource_plan,
    validate,
)

__all__ = ["InputError", "METHODS", "RecipeError", "batch_plan", "check_recipe", "load_recipe", "main", "parse",
           "resource_plan", "validate"]


def load_train_dataset(script_args: RecipeArguments):
    """Load the training split and build the conversational `prompt` and the gold `answer` columns."""
    from benchmarks.registry import load_questions

    try:
        dataset = load_questions(script_args.dataset_name, split=script_args.dataset_train_split,
                                 config=script_args.dataset_config, question_column=script_args.question_column,
                                 answer_column=script_args.answer_column)
    except ValueError as e:  # load_questions names the file, the line or the column and what to set
        raise RecipeError(f"`dataset_name` {e}") from e
    if script_args.max_train_samples:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    system = [{"role": "system", "content": script_args.system_prompt}] if script_args.system_prompt else []

    def to_prompt(row):
        user = script_args.prompt_template.replace("{question}", row["question"])
        return {"prompt": system + [{"role": "user", "content": user}]}

    return dataset.map(to_prompt, remove_columns=["question"])


def pair_as_text(row: dict, tokenizer) -> dict:
    """One preference row as the text the policy was given and sampled: the prompt rendered by the chat template with
    its generation prompt (as GRPOTrainer renders it), each completion its message's `content` unchanged. DPOTrainer
    then appends the eos (where GRPO's completion stopped) and tokenizes prompt, prompt + chosen, prompt + rejected.

    Why not hand DPOTrainer the messages: it renders prompt + completion as one conversation, and a chat template
    renders an assistant turn differently from what was sampled after its generation prompt: synthetic/base's
    (R1-style) leaves out the `<think>\\n` its generation prompt opens, Qwen3's rebuilds the thought with its own
    whitespace, ChatML ones train the newline after `<|im_end|>`. The policy would learn sequences it never sampled
    (tests/test_dpo.py checks the round trip)."""
    problem = pair_error(row)
    if problem:
        raise RecipeError(f"`dataset_name`: a row's {problem}; {PAIRS_HINT}.")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if bos and prompt.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
            prompt = prompt[len(bos):]  # tokenizing the text adds it again
    text = lambda c: c if isinstance(c, str) else c[0]["content"]  # noqa: E731
    return {"prompt": prompt, "chosen": text(row["chosen"]), "rejected": text(row["rejected"])}


def load_pairs_dataset(script_args: RecipeArguments, tokenizer):
    """The preference pairs (a local file or a hub dataset) as text prompt/chosen/rejected columns (`pair_as_text`)."""
    from benchmarks.registry import load_any

    try:
        dataset = load_any(script_args.dataset_name, split=script_args.dataset_train_split,
                           config=script_args.dataset_config)
    except ValueError as e:
        raise RecipeError(f"`dataset_name` {e}") from e
    missing = [c for c in PAIR_COLUMNS if c not in dataset.column_names]
    if missing or len(dataset) == 0:
        raise RecipeError(f"`dataset_name` {script_args.dataset_name}: {len(dataset)} rows, columns "
                          f"{dataset.column_names}; {PAIRS_HINT}.")
    dataset = dataset.select_columns(list(PAIR_COLUMNS))
    if script_args.max_train_samples:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    return dataset.map(pair_as_text, fn_kwargs={"tokenizer": tokenizer})


def print_plan(recipe: Recipe) -> None:
    """The dry run's JSON: the resolved recipe, the batch plan, the memory, time and volume plan, and the tokens that
    end a completion (when the tokenizer is at hand)."""
    keys = ["learning_rate", "max_steps", "num_train_epochs", "max_completion_length", "beta", "loss_type",
            "temperature", "use_vllm", "vllm_mode", "bf16", "gradient_checkpointing", "num_iterations"]
    from transformers import TrainingArguments
    from trl import GRPOConfig

    script_args, method_args, model_args = recipe.script_args, recipe.method_args, recipe.model_args
    dpo = script_args.method == "dpo"
    if dpo:  # DPOConfig's own keys (beta, loss_type, max_length, ...) are its options
        keys = ["learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                "gradient_accumulation_steps", "lr_scheduler_type", "bf16", "gradient_checkpointing", "seed"]
    base = {f.name for f in fields(TrainingArguments if dpo else GRPOConfig)}
    extra = {f.name: getattr(method_args, f.name) for f in fields(method_args) if f.name not in base}
    out = {
        "method": script_args.method,
        "model": model_args.model_name_or_path,
        "model_source": recipe.files["model"],
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha} if model_args.use_peft else None,
        "dataset": f"{script_args.dataset_name}[{script_args.dataset_train_split}]",
        "dataset_source": recipe.files["dataset"],
        "rewards": None if dpo else script_args.reward_funcs,
        "launch": launch_for(script_args),
        "batch": recipe.batch,
        "training": {k: getattr(method_args, k) for k in keys},
        f"{script_args.method}_options": extra,
        "output_dir": method_args.output_dir,
        "memory": {"available": False, "reason": NOT_PLANNED.get(script_args.method) or (
            f"no config.json for {model_args.model_name_or_path} in a local folder, the hub cache or "
            "planning/model_configs/: download it (huggingface-cli download <id> config.json) to get the plan")},
        **(recipe.resources or {}),
    }
    if recipe.completion_end is not None:
        out["completion_end"] = {k: v for k, v in recipe.completion_end.items() if k != "chosen_ids"}
    print(json.dumps(out, indent=2, default=str))


def apply_eos_override(script_args, method_args, tokenizer):
    """With `eos_token`, the tokenizer TRL is given ends completions there (TRL adds the generation config's eos), and
    vLLM, which reads the checkpoint's own tokenizer, stops there too. Returns the tokenizer to pass, or None."""
    if not script_args.eos_token:
        return None
    tokenizer.eos_token = script_args.eos_token
    if method_args.use_vllm:
        kwargs = dict(method_args.generation_kwargs or {})
        kwargs["stop_token_ids"] = list(dict.fromkeys([*kwargs.get("stop_token_ids", []), tokenizer.eos_token_id]))
        method_args.generation_kwargs = kwargs
    return tokenizer


def model_init_kwargs(method_args, model_args) -> dict:
    """The recipe's model_init_kwargs with ModelConfig's revision, dtype and attention kernel filled in."""
    init_kwargs = dict(method_args.model_init_kwargs or {})
    init_kwargs.setdefault("revision", model_args.model_revision)
    init_kwargs.setdefault("trust_remote_code", method_args.trust_remote_code)
    if model_args.dtype is not None:
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    return init_kwargs


def build_dpo_trainer(recipe: Recipe):
    """TRL's DPOTrainer on the pairs (`method: dpo`). The reference is the starting policy: TRL's frozen copy of the
    model, or with LoRA the base with the adapter off. Cost per step: the chosen and rejected tokens trained."""
    from trl import get_peft_config

    from trainers.cost import with_cost_accounting

    script_args, method_args, model_args = recipe.script_args, recipe.method_args, recipe.model_args
    tokenizer = recipe.tokenizer
    if script_args.eos_token:
        tokenizer.eos_token = script_args.eos_token  # DPOTrainer appends it to every completion
    dataset = load_pairs_dataset(script_args, tokenizer)
    method_args.model_init_kwargs = model_init_kwargs(method_args, model_args)
    _, trainer_cls = method_classes("dpo")
    trainer = with_cost_accounting(trainer_cls)(
        model=model_args.model_name_or_path,
        args=method_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    if trainer.accelerator.is_main_process:
        print(f"[concise-rl] DPOTrainer: processes={trainer.accelerator.num_processes} pairs={len(dataset)} "
              f"loss={method_args.loss_type} beta={method_args.beta} completions end with {tokenizer.eos_token!r} "
              f"resume={recipe.checkpoint}", flush=True)
    return trainer


def train_and_save(trainer, recipe: Recipe):
    """Train (resuming where the recipe says), then save the model, the tokenizer and the run's log to output_dir."""
    output_dir = recipe.method_args.output_dir
    trainer.train(resume_from_checkpoint=recipe.checkpoint)
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(output_dir)
        # The run's log (rewards, lengths, cost/* per step, train_runtime) beside the final model.
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
    return trainer


def main(argv: list[str] | None = None):
    recipe = check_recipe(argv, show=print_plan)  # every check, in one pass (checks/recipe.py)
    if recipe.script_args.dry_run:
        return None
    if recipe.script_args.method == "dpo":
        return train_and_save(build_dpo_trainer(recipe), recipe)
    script_args, method_args, model_args = recipe.script_args, recipe.method_args, recipe.model_args
    from trl import get_peft_config

    from rewards import build_reward_funcs
    from trainers.cost import with_cost_accounting

    _, trainer_cls = method_classes(script_args.method)
    trainer_cls = with_cost_accounting(trainer_cls)  # cost/sampled_tokens, cost/trained_tokens per step
    processing_class = apply_eos_override(script_args, method_args, recipe.tokenizer)
    dataset = load_train_dataset(script_args)
    reward_funcs = build_reward_funcs(script_args.reward_funcs, script_args.reward_kwargs)
    method_args.model_init_kwargs = model_init_kwargs(method_args, model_args)

    if method_args.use_vllm:  # on a CPU, vLLM must keep weights that TRL's sync can reload (trainers/vllm_cpu.py)
        from trainers.vllm_cpu import keep_weights_reloadable

        keep_weights_reloadable()
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=method_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        processing_class=processing_class,
    )
    if trainer.accelerator.is_main_process:
        ds = trainer.accelerator.state.deepspeed_plugin
        end = recipe.completion_end
        print(f"[concise-rl] {trainer_cls.__name__}: processes={trainer.accelerator.num_processes} "
              f"distributed={trainer.accelerator.distributed_type.value} zero_stage={ds.zero_stage if ds else None} "
              f"G={method_args.num_generations} rows={len(dataset)} resume={recipe.checkpoint}", flush=True)
        print(f"[concise-rl] a completion ends at {end['chosen']} (tokenizer eos {end['tokenizer_eos']}, generation "
              f"config eos {end['generation_config_eos']}, chat template end of turn {end['template_end_of_turn']}; "
              f"TRL stops at {trainer.eos_token_ids})", flush=True)
    return train_and_save(trainer, recipe)


if __name__ == "__main__":
    run_cli(main, "train.py")
