"""Per-GPU memory plan of a recipe, from the architecture alone (no weights, no GPU).

What it counts, per GPU, in GiB (2^30 bytes):
- the trainer's resident state: policy weights (bf16), gradients and optimizer state under the ZeRO stage and process
  count (DeepSpeed's bf16 ZeRO keeps fp32 master weights + Adam m and v = 12 bytes a parameter; without DeepSpeed
  the bf16 model trains with bf16 AdamW state, 4 bytes, and DDP's gradient buckets), the reference model when
  beta > 0 (none with LoRA: TRL disables the adapter instead), LoRA adapters in fp32 when `use_peft`;
- the activations of the largest micro-batch: `per_device_train_batch_size` rows padded to the longest prompt and
  completion (TRL pads the whole generation batch, so one long rollout pads every row), or, for S-GRPO's packed
  serial groups when a micro-batch holds whole groups, one sequence a group (prompt + thought + m exit branches,
  with its prefix-sharing mask); with gradient checkpointing
  one bf16 hidden state per layer plus one layer recomputed, without it every layer's saved tensors; the SDPA mask
  that transformers materialises for padded rows (rows x T^2 booleans, plus the bf16 bias the kernel converts it
  to); TRL 1.16's fused LM head, which never holds the full logits (tiles of 4,096 tokens x 32,768 vocabulary) but
  keeps the completion hidden states and, in backward, fp32 gradients of the hidden states and of the LM head;
- vLLM colocate: `vllm_gpu_memory_utilization` x GPU memory, inside which vLLM puts the weights / tensor parallel,
  its profiling activations (TRL caps a step at 4,096 tokens) and the KV cache; with sleep mode (TRL uses level 2)
  the engine gives its memory back while the trainer trains, without it the trainer trains beside it;
- a CUDA context + NCCL buffers per process (not seen by torch's allocator).

The peak is the larger of the generation phase (resident trainer + vLLM's budget) and the training phase (resident
trainer + activations + vLLM while asleep or awake). What it leaves out: allocator fragmentation and cached blocks
(usually 5-15% more on a real GPU than torch.cuda.max_memory_allocated), DeepSpeed's communication buckets beyond the
gathered layer, CUDA graphs captured by vLLM (TRL does not disable them: ~0.5-2 GiB inside vLLM's budget, which the
overhead term covers), and the variation of the activation tally between kernels (attention back-ends save
different tensors): take the activation and peak figures as +-25%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planning.architecture import Architecture

GIB = 2**30
HEADROOM = 0.9  # a plan fits when its peak is within 90% of the GPU: room for fragmentation and the estimate's error
CUDA_CONTEXT_GIB = 1.0  # CUDA context + NCCL buffers per process, outside torch's allocator
VLLM_OVERHEAD_GIB = 2.0  # vLLM's profiling activations, sampler, CUDA graphs and non-torch memory in its budget
VLLM_ASLEEP_GIB = 0.5  # what a level-2 sleeping engine keeps (its CUDA graphs and allocator state)
VLLM_MAX_BATCHED_TOKENS = 4096  # TRL 1.16 colocate: LLM(max_num_batched_tokens=4096)
FUSED_HEAD_TOKENS, FUSED_HEAD_VOCAB = 4096, 32768  # TRL 1.16 kernels/chunked_logprob.py tile
ADAM_STATE_BYTES_ZERO = 12  # fp32 master weights + Adam m + v (DeepSpeed bf16 ZeRO)
# Bytes per (query, key) pair at the peak of FlexAttention's dense evaluation of the packed mask rule
# (create_block_mask(..., _compile=False) in trainers/packing.py): 10-13 measured on the CPU at L = 2k-8k
# (bench/flex_mask_memory.py, 2026-12-05); not yet measured on a GPU, whose caching allocator may hold more
FLEX_DENSE_MASK_BYTES = 13
# Known GPUs by memory: name and HBM bandwidth (TB/s) for the generation-time estimate in planning/volume.py.
GPUS = {80: ("H100 80GB SXM", 3.35), 141: ("H200 141GB", 4.8), 40: ("A100 40GB", 1.56), 94: ("H100 NVL", 3.9),
        24: ("24 GB GPU (L4 / A10 / RTX 4090)", 0.6)}
# What the device reports as its total (cudaMemGetInfo, the MiB nvidia-smi prints), which vLLM multiplies by
# gpu_memory_utilization and the fit line is a share of: a card sold as "80GB" reports 81,559 MiB = 79.65 GiB.
# Figures as these cards commonly report them; a launch reads the real total (torch.cuda.mem_get_info).
REPORTED_MIB = {80: ("H100 80GB", 81559), 141: ("H200", 143771), 40: ("A100 40GB", 40960), 94: ("H100 NVL", 95830),
                24: ("L4 / A10 (an RTX 4090 reports 24,564 MiB)", 23034)}


def reported_total(gpu_memory_gib: float) -> tuple[float, str]:
    """(GiB the device reports, in words) for a GPU named by its nominal size (`--gpu_memory_gib 80`); a size that
    is not a known card's nominal one is taken as the reported total itself."""
    for nominal, (name, mib) in REPORTED_MIB.items():
        if abs(gpu_memory_gib - nominal) < 0.5:
            return mib / 1024, f"{name}: reports {mib:,} MiB ({mib / 1024:.2f} GiB) of the nominal {nominal} GB"
    return gpu_memory_gib, f"{gpu_memory_gib:g} GiB as given (not a known card's nominal size)"


@dataclass
class Setup:
    """Everything about a run that the memory plan needs, from the recipe and the launch."""

    processes: int
    zero_stage: int  # 0: no DeepSpeed (DDP or one process); 1, 2, 3: DeepSpeed ZeRO
    offload_optimizer: bool
    offload_params: bool
    use_peft: bool
    beta: float
    rows: int  # per_device_train_batch_size
    prompt_tokens: int
    completion_tokens: int  # the longest row's completion (S-GRPO: thought + exit text + answer)
    gradient_checkpointing: bool
    attn_implementation: str | None
    use_vllm: bool
    vllm_mode: str
    vllm_utilization: float
    vllm_tensor_parallel: int
    vllm_sleep: bool
    vllm_max_model_len: int
    rollouts_per_engine: list[tuple[int, int, int]]  # (sequences, KV tokens beyond the prompt, decoded tokens) a call
    gpu_memory_gib: float
    # S-GRPO's packed serial groups (trainers/packing.py): members per packed sequence (m + 1), and each sequence's
    # length and scored positions; a micro-batch of whole groups is that many sequences instead of padded rows
    pack_members: int | None = None
    packed_length: int = 0
    packed_scored: int = 0
    packing_off_reason: str | None = None  # S-GRPO asked for packing and the trainer will fall back to padded rows
    mask_dtype_bytes: int = 2  # the model's dtype: the eager packed mask is built in it (trainers/sgrpo.py)


def micro_batch_shape(s: Setup) -> tuple[int, int, int]:
    """(sequences, tokens per sequence, scored positions per sequence) of the largest micro-batch: packed serial
    groups when the rows hold whole groups, else padded rows (a group split across micro-batches is counted
    unpacked, an upper bound)."""
    if s.pack_members and s.packing_off_reason is None and s.rows % s.pack_members == 0:
        return s.rows // s.pack_members, s.packed_length, s.packed_scored
    return s.rows, s.prompt_tokens + s.completion_tokens, s.completion_tokens


def gib(x: float) -> float:
    return round(x / GIB, 2)


def kv_bytes_per_token(arch: Architecture, tensor_parallel: int = 1) -> int:
    """bf16 K and V of every layer for one token, on one GPU of a tensor-parallel group (KV heads are split across
    it, and replicated when there are fewer heads than GPUs)."""
    kv_heads_per_gpu = max(1, math.ceil(arch.kv_heads / tensor_parallel))
    return 2 * arch.layers * kv_heads_per_gpu * arch.head_dim * 2


def layer_activation_elements(arch: Architecture) -> int:
    """bf16 values one decoder layer saves for backward, per token: both RMSNorm inputs and their outputs feeding the
    projections (4h), q, k, v, the attention output and o_proj's input (3q + 3kv counting rope's q/k outputs the
    kernel saves), the SwiGLU gate, up, activation and down-projection input (4 x intermediate), and Qwen3's q/k norm
    inputs."""
    n = 4 * arch.hidden + 3 * arch.q_dim + 3 * arch.kv_dim + 4 * arch.intermediate
    if arch.qk_norm:
        n += arch.q_dim + arch.kv_dim
    return n


def trainer_state(arch: Architecture, s: Setup) -> dict[str, float]:
    """Resident bytes per GPU: weights, gradients, optimizer state, reference model."""
    p, n = arch.parameters, s.processes
    shard_weights = s.zero_stage == 3
    out = {"weights": 2 * p / (n if shard_weights else 1) * (0 if s.offload_params else 1)}
    trainable = 4 * arch.lora_parameters if s.use_peft else 0  # peft keeps adapters in fp32
    if s.use_peft:
        out["weights"] += trainable / (n if shard_weights else 1)
        grads, optim = arch.lora_parameters * 4, arch.lora_parameters * 8  # fp32 grads, Adam m and v
        if s.zero_stage:
            grads, optim = grads / (n if s.zero_stage >= 2 else 1), arch.lora_parameters * 12 / n
    elif s.zero_stage:
        grads = 2 * p / (n if s.zero_stage >= 2 else 1)
        optim = ADAM_STATE_BYTES_ZERO * p / n
    else:
        grads = 2 * p * (2 if n > 1 else 1)  # bf16 .grad, plus DDP's bucket copy
        optim = 4 * p  # bf16 AdamW m and v
    out["gradients"] = grads
    out["optimizer"] = 0 if s.offload_optimizer else optim
    # TRL builds a reference model only when beta > 0 and no adapter can be switched off
    ref = 2 * p / (n if shard_weights else 1) if (s.beta > 0 and not s.use_peft) else 0
    out["reference_model"] = ref
    return out


def activations(arch: Architecture, s: Setup) -> dict[str, float]:
    """Peak bytes of one micro-batch's forward and backward beyond the resident state."""
    sequences, t, scored_each = micro_batch_shape(s)
    tokens = sequences * t
    scored = sequences * scored_each  # positions the fused LM head scores
    layer = layer_activation_elements(arch) * 2 * tokens
    # backward of one layer: gradients of its widest tensors (gate, up and activation) live at once
    layer_grads = 3 * arch.intermediate * 2 * tokens
    if s.gradient_checkpointing:
        saved = arch.layers * arch.hidden * 2 * tokens + layer + layer_grads  # layer inputs; one layer recomputed
    else:
        saved = arch.layers * layer + layer_grads
    attn = (s.attn_implementation or "sdpa").lower()
    packed = bool(s.pack_members) and s.packing_off_reason is None
    if "flex" in attn and packed:
        # the packed BlockMask is built by create_block_mask(..., _compile=False) (trainers/packing.py), which
        # evaluates the mask rule densely: int64 segment / visibility gathers and bool comparisons of T x T each
        mask = FLEX_DENSE_MASK_BYTES * sequences * t * t
    elif "flash" in attn or "flex" in attn or "paged" in attn:
        mask = 0
    else:  # sdpa/eager: a (sequences, 1, T, T) boolean mask (padding, or the packed groups' prefix-sharing mask),
        # and the bias the kernel adds: SDPA's bf16 one; eager's additive mask in the model's dtype
        mask = (1 + (s.mask_dtype_bytes if attn == "eager" else 2)) * sequences * t * t
    if attn == "eager":  # attention probabilities of one layer at a time (with checkpointing), per head
        mask += 2 * sequences * arch.heads * t * t * (1 if s.gradient_checkpointing else arch.layers)
    head_weight_grad = 0 if s.use_peft else 4 * arch.lm_head_parameters  # fp32 accumulator in the fused head
    lm_head = (2 * scored * arch.hidden  # completion hidden states kept for the recomputing backward
               + 4 * scored * arch.hidden  # their fp32 gradient
               + 2 * FUSED_HEAD_TOKENS * FUSED_HEAD_VOCAB
               + head_weight_grad)
    gathered = 0
    if s.zero_stage == 3:  # the layer being computed + the one prefetched, and the LM head the fused kernel gathers
        gathered = 2 * 2 * arch.largest_layer_parameters + 2 * arch.lm_head_parameters
    hidden_io = 2 * 2 * tokens * arch.hidden  # embeddings out / final norm in and out
    return {"layers": saved + hidden_io, "attention_mask": mask, "lm_head": lm_head, "zero3_gathered": gathered}


def vllm_plan(arch: Architecture, s: Setup) -> dict:
    """vLLM colocate's share of one GPU and its KV cache capacity."""
    budget = s.vllm_utilization * s.gpu_memory_gib * GIB
    weights = 2 * arch.parameters / s.vllm_tensor_parallel
    profile = VLLM_MAX_BATCHED_TOKENS * (arch.hidden * 4 + arch.intermediate * 4) * 2 / s.vllm_tensor_parallel
    overhead = VLLM_OVERHEAD_GIB * GIB + profile
    kv_pool = budget - weights - overhead
    per_token = kv_bytes_per_token(arch, s.vllm_tensor_parallel)
    per_sequence = per_token * s.vllm_max_model_len
    concurrent = max(0, int(kv_pool // per_sequence)) if kv_pool > 0 else 0
    calls = []
    for sequences, kv_tokens, decoded in s.rollouts_per_engine:
        # sequences whose KV grows to prompt + kv_tokens, admitted together up to the pool's size
        fit = int(kv_pool // (per_token * (s.prompt_tokens + kv_tokens))) if kv_pool > 0 else 0
        calls.append({"sequences": sequences, "kv_tokens_each": s.prompt_tokens + kv_tokens,
                      "decoded_tokens": decoded, "waves": math.ceil(sequences / fit) if fit else None})
    return {
        "budget_gib": gib(budget),
        "weights_gib": gib(weights),
        "overhead_gib": gib(overhead),
        "kv_cache_gib": gib(max(kv_pool, 0)),
        "kv_per_token_kib": round(per_token / 1024, 1),
        "kv_per_max_sequence_gib": gib(per_sequence),
        "concurrent_max_length_sequences": concurrent,
        "generation_calls": calls,
        "kv_pool_bytes": kv_pool,
    }


def memory_plan(arch: Architecture, s: Setup) -> dict:
    """The plan as the dry run prints it, with `fits` and, when it does not fit, `fix`: one line naming the key."""
    state = trainer_state(arch, s)
    act = activations(arch, s)
    resident = sum(state.values())
    context = CUDA_CONTEXT_GIB * GIB
    colocate = s.use_vllm and s.vllm_mode == "colocate"
    vllm = vllm_plan(arch, s) if colocate else None
    budget = s.vllm_utilization * s.gpu_memory_gib * GIB if colocate else 0
    asleep = (VLLM_ASLEEP_GIB * GIB if s.vllm_sleep else budget) if colocate else 0
    generation = resident + budget + context
    training = resident + sum(act.values()) + asleep + context
    # the weight sync once per step: TRL wakes vLLM's weights (the whole budget when it does not sleep) and pushes
    # every parameter; with LoRA under ZeRO-3 it first gathers ALL parameters at once to merge the adapter
    # (trl/generation/vllm_generation.py `_iter_named_params`): a full 16-bit copy beside the shards
    gathered_copy = 2 * arch.parameters if (s.use_peft and s.zero_stage == 3 and colocate) else 0
    vllm_weights = 2 * arch.parameters / s.vllm_tensor_parallel if colocate else 0
    sync = resident + gathered_copy + ((VLLM_ASLEEP_GIB * GIB + vllm_weights) if s.vllm_sleep else budget) + context \
        if colocate else 0
    peak = max(generation, training, sync)
    total = s.gpu_memory_gib * GIB  # _fix and the fit test use HEADROOM of it
    plan = {
        "gpu_memory_gib": round(s.gpu_memory_gib, 2),
        "policy_weights_gib": gib(2 * arch.parameters),
        "parameters": arch.parameters,
        "trainable_parameters": arch.lora_parameters if s.use_peft else arch.parameters,
        "architecture_source": arch.source,
        "zero_stage": s.zero_stage,
        "processes": s.processes,
        "micro_batch": {"rows": s.rows, "tokens_per_row": s.prompt_tokens + s.completion_tokens,
                        "prompt_tokens_assumed": s.prompt_tokens,
                        **({"packed_sequences": micro_batch_shape(s)[0], "tokens_per_packed_sequence": s.packed_length}
                           if micro_batch_shape(s)[1] == s.packed_length and s.pack_members else {})},
        **{f"{k}_gib": gib(v) for k, v in state.items()},
        "activations_gib": {k: gib(v) for k, v in act.items()},
        "cuda_context_gib": CUDA_CONTEXT_GIB,
        "vllm": {k: v for k, v in vllm.items() if k != "kv_pool_bytes"} if vllm else None,
        # right after the trainer is built: weights (shards under ZeRO-3) and reference model, vLLM started and put
        # to sleep (or awake without sleep mode); optimizer state and gradients come with the first step
        "model_built_gib": gib(state["weights"] + state["reference_model"] + context + asleep),
        "generation_phase_gib": gib(generation),
        "weight_sync_phase_gib": gib(sync) if colocate else None,
        "lora_zero3_gathered_copy_gib": gib(gathered_copy) if gathered_copy else None,
        "training_phase_gib": gib(training),
        "packing": None if not s.pack_members else (
            {"active": False, "reason": s.packing_off_reason} if s.packing_off_reason else {"active": True}),
        "peak_gib": gib(peak),
        "usable_gib": round(HEADROOM * s.gpu_memory_gib, 1),
        "fits": peak <= HEADROOM * total and (vllm is None or vllm["concurrent_max_length_sequences"] >= 1),
        "error_margin": "activations and peak +-25%; allocator fragmentation adds 5-15% on a real GPU",
    }
    plan["fix"] = None if plan["fits"] else _fix(arch, s, act, vllm, resident, generation, training,
                                                  HEADROOM * total, sync)
    return plan


def _fix(arch, s, act, vllm, resident, generation, training, usable, sync=0) -> str:
    """One line naming the key to change, for the first thing that does not fit in `usable` bytes."""
    need = (f"{gib(max(generation, training, sync))} GiB of the {gib(usable)} GiB usable on a GPU that reports "
            f"{s.gpu_memory_gib:.2f} GiB")
    if vllm is not None and vllm["concurrent_max_length_sequences"] < 1:
        # enough for the weights, the overhead and four sequences of the full window
        per_seq = kv_bytes_per_token(arch, s.vllm_tensor_parallel) * s.vllm_max_model_len
        want = (2 * arch.parameters / s.vllm_tensor_parallel + VLLM_OVERHEAD_GIB * GIB + 4 * per_seq) / (
            s.gpu_memory_gib * GIB)
        return (f"vLLM gets {vllm['budget_gib']} GiB (vllm_gpu_memory_utilization {s.vllm_utilization:g} x "
                f"{s.gpu_memory_gib:g} GiB) for {vllm['weights_gib']} GiB of weights and leaves no KV cache for one "
                f"{s.vllm_max_model_len}-token sequence ({vllm['kv_per_max_sequence_gib']} GiB): raise "
                f"vllm_gpu_memory_utilization to about {math.ceil(want * 100) / 100:g}, or set "
                f"vllm_tensor_parallel_size: {2 * s.vllm_tensor_parallel}")
    if generation > usable:
        spare = (usable - resident - CUDA_CONTEXT_GIB * GIB) / (s.gpu_memory_gib * GIB)
        hint = (f"lower vllm_gpu_memory_utilization to at most {math.floor(spare * 100) / 100:g}" if spare > 0
                else "shard the policy (accelerate_configs/zero3.yaml) or train with LoRA (use_peft: true)")
        return (f"while vLLM generates, the trainer holds {gib(resident)} GiB beside vLLM's "
                f"{s.vllm_utilization:g} of the GPU ({need}): {hint}")
    if sync > usable and sync >= training:
        return (f"the weight sync gathers the whole {gib(2 * arch.parameters)} GiB model at once to merge the LoRA "
                f"adapter under ZeRO-3 beside the trainer's shards and vLLM's weights ({need}): use "
                "accelerate_configs/zero2.yaml (the adapter merges without a gather), or lower "
                "vllm_gpu_memory_utilization")
    if s.packing_off_reason:
        return (f"S-GRPO's serial groups cannot be packed ({s.packing_off_reason}), so the trainer scores padded rows "
                f"and a micro-batch needs {need}: set attn_implementation: sdpa (packing needs a kernel that takes "
                "the prefix-sharing mask), or lower per_device_train_batch_size")
    if not s.gradient_checkpointing:
        return f"training a micro-batch needs {need}: set gradient_checkpointing: true"
    others = training - sum(act.values())  # everything but this micro-batch's activations
    rows = next((r for r in range(s.rows - 1, 0, -1)
                 if others + sum(activations(arch, Setup(**{**s.__dict__, "rows": r})).values()) <= usable), None)
    tokens = s.prompt_tokens + s.completion_tokens
    if rows is not None:
        return (f"training a micro-batch of {s.rows} rows x {tokens} tokens needs {need}: set "
                f"per_device_train_batch_size: {rows} (and raise gradient_accumulation_steps to keep the batch)")
    if "flash" not in (s.attn_implementation or "") and not s.pack_members and act["attention_mask"] > 0.1 * training:
        return (f"training one row of {tokens} tokens needs {need}, {gib(act['attention_mask'])} GiB of it the padded "
                "SDPA mask: set attn_implementation: flash_attention_2 (pip install flash-attn)")
    return (f"training one row of {tokens} tokens needs {need}: lower max_completion_length, or shard more "
            "(accelerate_configs/zero3.yaml, vllm_enable_sleep_mode: true)")
