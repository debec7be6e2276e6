"""One entry point for every method: GRPO (TRL's baseline), GFPO and S-GRPO.

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

from checks.inputs import InputError, run_cli  # noqa: E402
from checks.recipe import (  # noqa: E402,F401  (parse, validate, ... are used by tests and scripts through train)
    METHODS,
    Recipe,
    RecipeArguments,
    RecipeError,
    batch_plan,
    check_recipe,
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


def print_plan(recipe: Recipe) -> None:
    """The dry run's JSON: the resolved recipe, the batch plan, the memory, time and volume plan, and the tokens that
    end a completion (when the tokenizer is at hand)."""
    keys = ["learning_rate", "max_steps", "num_train_epochs", "max_completion_length", "beta", "loss_type",
            "temperature", "use_vllm", "vllm_mode", "bf16", "gradient_checkpointing", "num_iterations"]
    from trl import GRPOConfig

    script_args, method_args, model_args = recipe.script_args, recipe.method_args, recipe.model_args
    base = {f.name for f in fields(GRPOConfig)}
    extra = {f.name: getattr(method_args, f.name) for f in fields(method_args) if f.name not in base}
    out = {
        "method": script_args.method,
        "model": model_args.model_name_or_path,
        "model_source": recipe.files["model"],
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha} if model_args.use_peft else None,
        "dataset": f"{script_args.dataset_name}[{script_args.dataset_train_split}]",
        "dataset_source": recipe.files["dataset"],
        "rewards": script_args.reward_funcs,
        "batch": recipe.batch,
        "training": {k: getattr(method_args, k) for k in keys},
        f"{script_args.method}_options": extra,
        "output_dir": method_args.output_dir,
        "memory": {"available": False, "reason": (
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


def main(argv: list[str] | None = None):
    recipe = check_recipe(argv, show=print_plan)  # every check, in one pass (checks/recipe.py)
    if recipe.script_args.dry_run:
        return None
    script_args, method_args, model_args = recipe.script_args, recipe.method_args, recipe.model_args
    from trl import get_peft_config

    from rewards import build_reward_funcs
    from trainers.cost import with_cost_accounting

    _, trainer_cls = method_classes(script_args.method)
    trainer_cls = with_cost_accounting(trainer_cls)  # cost/sampled_tokens, cost/trained_tokens per step
    processing_class = apply_eos_override(script_args, method_args, recipe.tokenizer)
    dataset = load_train_dataset(script_args)
    reward_funcs = build_reward_funcs(script_args.reward_funcs, script_args.reward_kwargs)
    init_kwargs = dict(method_args.model_init_kwargs or {})
    init_kwargs.setdefault("revision", model_args.model_revision)
    init_kwargs.setdefault("trust_remote_code", method_args.trust_remote_code)
    if model_args.dtype is not None:
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    method_args.model_init_kwargs = init_kwargs

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
    trainer.train(resume_from_checkpoint=recipe.checkpoint)
    trainer.save_model(method_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(method_args.output_dir)
        # The run's log (rewards, lengths, cost/* per step, train_runtime) beside the final model.
        trainer.state.save_to_json(os.path.join(method_args.output_dir, "trainer_state.json"))
    return trainer


if __name__ == "__main__":
    run_cli(main, "train.py")
