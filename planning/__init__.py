"""What a recipe will cost before it runs: the per-GPU memory plan (`planning.memory`), the time and volume plan
(`planning.volume`), both from the model's config.json alone (`planning.architecture`, with shipped copies of the
configs of every model the recipes name in `planning/model_configs/`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from planning.architecture import Architecture, load_architecture
from planning.memory import Setup, memory_plan, vllm_plan
from planning.volume import volume_plan

PROMPT_TOKENS = 1024  # assumed longest prompt (DeepMath / MATH questions with the template: a few hundred tokens)
EXIT_TEXT_TOKENS = 32  # S-GRPO's exit text, "Time is limited, stop thinking and start answering.\n</think>\n\n": ~15

__all__ = ["Architecture", "PROMPT_TOKENS", "Setup", "deepspeed_settings", "load_architecture", "plan_run"]


def deepspeed_settings(accelerate_config: dict | None = None, deepspeed=None, env=None) -> dict:
    """ZeRO stage and offloading from (in order) the recipe's `deepspeed` JSON, the accelerate config the dry run
    names, or the environment `accelerate launch` sets (ACCELERATE_DEEPSPEED_*)."""
    out = {"zero_stage": 0, "offload_optimizer": False, "offload_params": False}
    if deepspeed:
        ds = deepspeed if isinstance(deepspeed, dict) else (
            json.loads(deepspeed) if str(deepspeed).lstrip().startswith("{") else json.loads(Path(deepspeed).read_text()))
        zero = ds.get("zero_optimization", {})
        return {"zero_stage": int(zero.get("stage", 0)),
                "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None),
                "offload_params": zero.get("offload_param", {}).get("device", "none") not in ("none", None)}
    if accelerate_config is not None:
        if str(accelerate_config.get("distributed_type", "")).upper() != "DEEPSPEED":
            return out
        ds = accelerate_config.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            return deepspeed_settings(deepspeed=ds["deepspeed_config_file"])
        return {"zero_stage": int(ds.get("zero_stage", 2)),
                "offload_optimizer": str(ds.get("offload_optimizer_device", "none")) != "none",
                "offload_params": str(ds.get("offload_param_device", "none")) != "none"}
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return {"zero_stage": int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2)),
                "offload_optimizer": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") != "none",
                "offload_params": env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") != "none"}
    return out


def completion_tokens(method: str, method_args) -> int:
    """The longest completion row the trainer scores: S-GRPO's exit rows hold the thought, the exit text and the
    answer; every other method's rows hold at most max_completion_length."""
    if method == "sgrpo" and getattr(method_args, "serial", False):
        return method_args.max_completion_length + EXIT_TEXT_TOKENS + method_args.max_answer_length
    return method_args.max_completion_length


def prompt_tokens(method_args, max_positions: int | None) -> int:
    """The assumed longest prompt, capped by the room the vLLM window leaves beside the completion."""
    window = getattr(method_args, "vllm_max_model_length", None) or max_positions
    room = (window - method_args.max_completion_length) if window else PROMPT_TOKENS
    return max(1, min(PROMPT_TOKENS, room))


def generation_calls(method: str, method_args, per_rank: int, tp: int) -> list[tuple[int, int, int]]:
    """(sequences, KV tokens per sequence beyond the prompt, decoded tokens) of each vLLM call one engine serves in a
    step; a tensor-parallel group of `tp` ranks generates its ranks' prompts together."""
    if method == "sgrpo" and getattr(method_args, "serial", False):
        paths = per_rank // method_args.num_generations * method_args.num_full_rollouts * tp
        m, answer = method_args.num_exits, method_args.max_answer_length
        # the m exits of a path share its thought in the prefix cache: one path's exits hold n + m (e + a) tokens
        return [(paths, method_args.max_completion_length, method_args.max_completion_length),
                (paths, method_args.max_completion_length + m * (EXIT_TEXT_TOKENS + answer), answer)]
    return [(per_rank * tp, method_args.max_completion_length, method_args.max_completion_length)]


def packing_off_reason(arch: Architecture, attn_implementation: str | None) -> str | None:
    """Why the trainer will score S-GRPO's serial groups as padded rows although the recipe asks for packing: the
    same rule the trainer applies at start (trainers/packing.py `packing_unsupported_reason`), from the config."""
    from trainers.packing import attention_unsupported_reason

    # sdpa: transformers' default kernel when the recipe names none
    return attention_unsupported_reason(attn_implementation or "sdpa") or arch.packing_model_reason


def packing(method: str, method_args, prompt: int, arch: Architecture, attn_implementation: str | None) -> dict:
    """S-GRPO's packed serial groups (`pack_serial_groups`): one sequence a full rollout with its m exit branches, a
    branch being a copy of the last prefix token, the exit text and the answer (trainers/packing.py). When the
    trainer will fall back to padded rows, the plan plans those and says why."""
    if not (method == "sgrpo" and getattr(method_args, "serial", False) and getattr(method_args, "pack_serial_groups",
                                                                                   False)):
        return {}
    m, thought = method_args.num_exits, method_args.max_completion_length
    branch = 1 + EXIT_TEXT_TOKENS + method_args.max_answer_length
    return {"pack_members": m + 1, "packed_length": prompt + thought + m * branch, "packed_scored": thought + m * branch,
            "packing_off_reason": packing_off_reason(arch, attn_implementation)}


def plan_run(method: str, method_args, model_args, batch: dict, gpu_memory_gib: float, launch: dict) -> dict | None:
    """{"memory": ..., "time_and_volume": ...} for the recipe, or None when no config.json of the model can be read
    without a download."""
    arch = load_architecture(model_args.model_name_or_path, model_args.model_revision,
                             lora_r=model_args.lora_r if model_args.use_peft else None,
                             lora_target_modules=model_args.lora_target_modules)
    if arch is None:
        return None
    tp = getattr(method_args, "vllm_tensor_parallel_size", 1) or 1
    calls = generation_calls(method, method_args, batch["completions_per_process_per_generation"], tp)
    setup = Setup(
        processes=batch["processes"],
        zero_stage=launch["zero_stage"],
        offload_optimizer=launch["offload_optimizer"],
        offload_params=launch["offload_params"],
        use_peft=bool(model_args.use_peft),
        beta=method_args.beta,
        rows=method_args.per_device_train_batch_size,
        prompt_tokens=prompt_tokens(method_args, arch.max_positions),
        completion_tokens=completion_tokens(method, method_args),
        gradient_checkpointing=bool(method_args.gradient_checkpointing),
        attn_implementation=model_args.attn_implementation,
        use_vllm=bool(method_args.use_vllm),
        vllm_mode=method_args.vllm_mode,
        vllm_utilization=method_args.vllm_gpu_memory_utilization,
        vllm_tensor_parallel=tp,
        vllm_sleep=bool(method_args.vllm_enable_sleep_mode),
        # unset, vLLM takes the model's own context length
        vllm_max_model_len=method_args.vllm_max_model_length or arch.max_positions or PROMPT_TOKENS + completion_tokens(
            method, method_args),
        rollouts_per_engine=calls,
        gpu_memory_gib=gpu_memory_gib,
        mask_dtype_bytes=4 if str(model_args.dtype) in ("float32", "torch.float32") else 2,
        **packing(method, method_args, prompt_tokens(method_args, arch.max_positions), arch,
                  model_args.attn_implementation),
    )
    memory = memory_plan(arch, setup)
    vllm = vllm_plan(arch, setup) if setup.use_vllm and setup.vllm_mode == "colocate" else None
    return {"memory": memory, "time_and_volume": volume_plan(arch, setup, method_args, batch, vllm, method)}
