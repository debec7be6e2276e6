"""Time and volume plan of a recipe: worst-case tokens sampled per step, the waves of rollouts vLLM's KV cache needs,
an upper estimate of one generation step's time against `ddp_timeout`, checkpoint size x `save_total_limit`, and the
completion log written per logging step.

The generation-time estimate is a memory-bandwidth bound: a decode step reads the engine's weights and, at worst, its
whole KV cache, at `DECODE_EFFICIENCY` of the GPU's HBM bandwidth; every sequence runs to its token limit, and a wave
of sequences is admitted when the KV cache can hold them all at full length. Real steps are usually shorter (most
rollouts stop early, vLLM admits more sequences than the worst case), rarely longer: take it as an upper figure,
within a factor of 2.
"""

from __future__ import annotations

import math

from planning.architecture import Architecture
from planning.memory import GIB, GPUS, Setup

DECODE_EFFICIENCY = 0.5  # share of HBM bandwidth a large-batch decode step reaches (vLLM on H100: 0.5-0.7)
TEXT_BYTES_PER_TOKEN = 4  # UTF-8 bytes per BPE token of English and LaTeX, roughly
TIMEOUT_SAFETY = 1.5  # ddp_timeout should exceed the worst-case generation step by this factor


def gpu_bandwidth(gpu_memory_gib: float) -> tuple[str, float]:
    """(GPU name, HBM TB/s) for a known memory size; otherwise the H100's bandwidth, named as an assumption."""
    for size, (name, tbs) in GPUS.items():
        if abs(size - gpu_memory_gib) < 2:
            return name, tbs
    return f"unknown {gpu_memory_gib:g} GiB GPU (H100 bandwidth assumed)", 3.35


def checkpoint_bytes(arch: Architecture, s: Setup) -> int:
    """One checkpoint-N folder: the 16-bit model (or the adapter) plus the optimizer state the Trainer saves to
    resume (DeepSpeed: bf16 weight shards + fp32 master + Adam m, v = 16 bytes a parameter; torch AdamW on a bf16
    model: 4 bytes of state)."""
    if s.use_peft:
        return arch.lora_parameters * (4 + 12 + 4)  # fp32 adapter, fp32 master + Adam, the adapter's model copy
    if s.zero_stage:
        return arch.parameters * (2 + 2 + 12)
    return arch.parameters * (2 + 4)


def gfpo_expected_sampling(method_args, step_completions: int) -> dict:
    """GFPO's expected tokens sampled per step under planning.early_stop's length model, with and without early stop
    (trainers/early_stop.py), or why early stop is off. The worst case is the same either way: a step whose responses
    all run to max_completion_length stops nothing."""
    from planning import early_stop as model
    from trainers.early_stop import support_reason

    reason = support_reason(method_args)
    if reason is not None:
        return {"gfpo_early_stop": f"off: {reason}"}
    G, k = method_args.num_generations, method_args.num_remains_in_group
    mean = model.expected_mean_length_fraction() * method_args.max_completion_length
    frac = model.expected_sampled_fraction(G, k)
    return {"gfpo_early_stop": f"on (k = {k} of G = {G}" + (", the annealed k's target" if getattr(
                method_args, "anneal", "none") == "k" else "") + ")",
            "length_model": model.LENGTH_MODEL,
            "expected_tokens_sampled_per_step": int(step_completions * mean),
            "expected_tokens_sampled_per_step_with_early_stop": int(step_completions * mean * frac),
            "early_stop_sampled_fraction": round(frac, 3)}


def volume_plan(arch: Architecture, s: Setup, method_args, plan_batch: dict, vllm: dict | None, method: str) -> dict:
    """The dry run's `time_and_volume` object; `warnings` lists what the user should change or know."""
    warnings = []
    step_completions = plan_batch["completions_per_optimizer_step"]
    questions = plan_batch["questions_per_optimizer_step"]
    max_len = method_args.max_completion_length
    if method == "sgrpo" and getattr(method_args, "serial", False):
        paths = questions * method_args.num_full_rollouts
        sampled = paths * max_len + paths * method_args.num_exits * method_args.max_answer_length
    else:
        sampled = step_completions * max_len
    out = {"worst_case_tokens_sampled_per_step": int(sampled),
           "completions_trained_per_step": int(step_completions)}
    if method == "gfpo":
        out.update(gfpo_expected_sampling(method_args, step_completions))

    gpu_name, tbs = gpu_bandwidth(s.gpu_memory_gib)
    if vllm is not None:
        weights = 2 * arch.parameters / s.vllm_tensor_parallel
        step_seconds = (weights + max(vllm["kv_pool_bytes"], 0)) / (tbs * 1e12 * DECODE_EFFICIENCY)
        seconds = 0.0
        for call in vllm["generation_calls"]:
            seconds += (call["waves"] or call["sequences"]) * call["decoded_tokens"] * step_seconds
        out["vllm_waves_per_generation_call"] = [call["waves"] for call in vllm["generation_calls"]]
        out["decode_step_ms_estimate"] = round(step_seconds * 1000, 1)
        out["worst_case_generation_seconds"] = round(seconds)
        if "expected_tokens_sampled_per_step_with_early_stop" in out and sampled:
            # the worst case's cost per decoded token (a full KV cache read each step) times the expected tokens
            share = out["expected_tokens_sampled_per_step_with_early_stop"] / sampled
            out["expected_generation_seconds_with_early_stop"] = round(seconds * share)
        out["gpu_assumed"] = f"{gpu_name}, {tbs} TB/s at {DECODE_EFFICIENCY:.0%}"
        timeout = method_args.ddp_timeout
        out["ddp_timeout"] = timeout
        if timeout < TIMEOUT_SAFETY * seconds:
            need = int(math.ceil(TIMEOUT_SAFETY * seconds / 1800) * 1800)
            warnings.append(f"ddp_timeout ({timeout} s) is below {TIMEOUT_SAFETY:g} x the worst-case generation step "
                            f"(~{round(seconds)} s): a rank still generating can be killed by the NCCL watchdog; set "
                            f"ddp_timeout: {need}")

    ckpt = checkpoint_bytes(arch, s)
    keep = method_args.save_total_limit
    out["checkpoint_gib"] = round(ckpt / GIB, 1)
    out["save_total_limit"] = keep
    out["checkpoints_on_disk_gib"] = round(ckpt * ((keep or 0) + 1) / GIB, 1) if keep else None
    if method_args.save_strategy != "no" and not keep:
        steps = method_args.max_steps if method_args.max_steps > 0 else None
        warnings.append("save_total_limit is unset: every checkpoint is kept"
                        + (f" (up to {steps // method_args.save_steps} x {out['checkpoint_gib']} GiB)"
                           if steps and isinstance(method_args.save_steps, int | float) and method_args.save_steps >= 1
                           else ""))

    if method_args.log_completions:
        # TRL 1.16 keeps the last generation batch's prompts and completions and writes them at every logging step
        # (output_dir/completions/completions_<step>.parquet, and a wandb table when wandb is on)
        rows = plan_batch["generation_batch_completions"]
        per_log = rows * (s.prompt_tokens + s.completion_tokens) * TEXT_BYTES_PER_TOKEN
        logs = max(1, (method_args.max_steps if method_args.max_steps > 0 else 1) // max(1, int(method_args.logging_steps)))
        out["completion_log_mib_per_logging_step"] = round(per_log / 2**20)
        out["completion_log_gib_per_run"] = round(per_log * logs / GIB, 1)
        if per_log * logs > 20 * GIB:
            warnings.append(f"log_completions writes up to {round(per_log / 2**20)} MiB of text per logging step "
                            f"({out['completion_log_gib_per_run']} GiB over the run, uncompressed, once to parquet and "
                            "once to wandb): raise logging_steps or set log_completions: false")
    out["warnings"] = warnings
    return out
