"""S-GRPO: serial-group decaying-reward policy optimisation (arXiv 2505.07686) as a thin GRPOTrainer subclass.

How it wraps TRL 1.16 (never copying `_generate_and_score_completions`):

1. `_generate_single_turn` receives the local generation batch as whole groups of G identical prompts (see
   "Groups stay whole" below). It calls TRL's own `_generate_single_turn` twice: once on one prompt per serial
   group (num_generations=1) for the full rollouts O_0, then once on the m exit prompts `prompt + O_0[:P_i] +
   exit text` with the token budget temporarily set to `max_answer_length`. Weight sync to vLLM, sampling
   parameters and both back-ends (transformers generate, vLLM colocate/server) are TRL's. It returns, per group,
   the m early-exit responses `O_0[:P_i] + exit text + C_i` in position order and the full rollout last.
   vLLM sampling logprobs: the full rollout's for the prefix, NaN for the injected text (TRL maps a NaN to an
   importance-sampling ratio of 1: no correction for tokens nobody sampled), the exit generation's for C_i.
2. `_generate` (wrapped) optionally returns a `tool_mask` that removes the injected exit text from the loss
   (`mask_exit_text`; off by default: the paper broadcasts the advantage to every response token).
3. `_calculate_rewards` (wrapped) keeps the user's reward functions' output for TRL's logging, and from the
   gathered rows decides each member's correctness (weighted reward sum > `correct_threshold`) and turns it into
   the serial rewards (decay / all_one / shortest_one) and advantages A = r - mean(r) (no std).
4. `_generate_and_score_completions` (wrapped) replaces the returned `advantages` with the S-GRPO ones, applies
   the optional unsolved-group dropping, and logs the S-GRPO metrics; with TRL's vLLM importance-sampling
   correction on, also what it did to the serial groups, read from the returned `importance_sampling_ratio`
   (`sgrpo/is_masked_frac/{full,exits,exit_q1..q4,groups_split}` or `is_clipped_frac/...` for the truncate modes,
   `sgrpo/is_kept_adv_sum_abs`, `sgrpo/is_weighted_adv_sum_abs`), and `sgrpo/exit_prompt_cached_frac`, the exit
   prompts' tokens a colocated engine served from its prefix cache (docs/sgrpo-importance-sampling.md).
5. With `vllm_enable_sleep_mode` (colocate), the two calls of step 1 share one wake of the engine
   (`_engine_awake`): TRL would put the engine to sleep after the full rollouts, then re-push the weights and reset
   the prefix cache before the exits.

Groups stay whole: TRL's `RepeatSampler` yields each prompt index `num_generations` times consecutively, and the
training dataloader hands every rank consecutive chunks of `per_device_train_batch_size * steps_per_generation`
indices (accelerate's batch-sampler sharding, one generation batch per rank). When that per-rank size is a
multiple of G (checked in `SGRPOConfig.__post_init__`), each rank holds whole groups, so the serial group is
generated and scored on one rank. The rewards are still computed from TRL's gathered tensor.

Full rollouts that never close `</think>` (cut by `max_completion_length`): the exits are drawn over the thinking
that was generated, and the full path is scored incorrect (it has no answer), whatever the reward functions say.

Packed scoring (`pack_serial_groups`, issue 20; trainers/packing.py): an exit member `O_0[:P_i] + exit text + C_i`
repeats a prefix of its full rollout, so the policy, old-policy and reference log-prob passes score each serial path
as one packed sequence (`prompt + O_0`, then per exit a copy of the last shared token + exit text + C_i) under a
prefix-sharing attention mask, and scatter the per-token log-probs / entropies back to TRL's member rows:
6. `_generate_and_score_completions` (wrapped) adds a per-row descriptor (`sgrpo_pack`: path, is_full, cut, row) that
   travels with the rows through TRL's shuffle and split.
7. `_prepare_inputs` (wrapped) re-splits TRL's shuffled generation batch so each serial path's members are consecutive
   in position order (paths in the shuffle's order): with `per_device_train_batch_size` a multiple of m + 1, every
   micro-batch holds whole serial groups; otherwise a micro-batch packs the members of each path it holds (exact, with
   less sharing; logged once).
8. `_get_per_token_logps_and_entropies` (wrapped, same signature and returns) calls the model itself on the packed
   sequences (explicit position ids = the unpacked rows', a 4D mask for SDPA / eager or a FlexAttention BlockMask,
   pre-shifted labels for TRL's fused LM head) whenever the rows carry a descriptor; anything else goes to TRL's.
   It runs as many forwards as TRL's (one per `batch_size` chunk), so ZeRO-3 ranks stay in step.
9. `_compute_loss` (wrapped) hands the micro-batch's descriptor to the hook, and reports the packed token count to
   `cost/trained_tokens` (trainers/cost.py). TRL's loss, clipping, advantages and normalisation run unchanged.
A run that cannot pack (flash attention, an unverified model type, sliding windows, MoE aux loss, context / sequence
parallel) logs the reason once and scores unpacked rows.

`serial: false` switches all of this off: the trainer is TRL's GRPO (the paper's "w/o serial group" ablation).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from trainers.packing import (
    block_mask,
    dense_mask,
    member_descriptor,
    packing_unsupported_reason,
    plan_serial_packing,
    regroup_micro_batches,
    scatter_to_rows,
)
from trainers.serial_group import (  # re-exported: `from trainers.sgrpo import decaying_rewards`
    DEFAULT_EXIT_TEXT,
    SGRPO_REWARDS,
    ThinkingSpan,
    all_one_rewards,
    decaying_rewards,
    exit_completion,
    exit_logprobs,
    exit_prompt_ids,
    exit_quantile_bins,
    exit_text_mask,
    is_affected_share,
    is_correction_stats,
    is_row_mean_ratio,
    sample_exit_positions,
    serial_advantages,
    serial_rewards_for_questions,
    sgrpo_rewards,
    shortest_one_rewards,
    thinking_span,
)

__all__ = [
    "SGRPOConfig",
    "SGRPOTrainer",
    "DEFAULT_EXIT_TEXT",
    "SGRPO_REWARDS",
    "ThinkingSpan",
    "all_one_rewards",
    "check_tokenizer",
    "decaying_rewards",
    "exit_completion",
    "exit_logprobs",
    "exit_prompt_ids",
    "exit_text_mask",
    "sample_exit_positions",
    "serial_advantages",
    "serial_rewards_for_questions",
    "sgrpo_rewards",
    "shortest_one_rewards",
    "thinking_span",
]

# Every GRPOTrainer method this file overrides or calls by private name (a contract test checks they exist).
WRAPPED_TRL_HOOKS = (
    "_generate_single_turn",
    "_generate",
    "_calculate_rewards",
    "_generate_and_score_completions",
    "_get_per_token_logps_and_entropies",  # packed scoring (pack_serial_groups)
    "_compute_loss",  # hands the micro-batch's packing descriptor to the hook above
    "_prepare_inputs",  # keeps serial paths together in micro-batches (after TRL's shuffle)
)
# Private attributes of GRPOTrainer read or temporarily changed here.
WRAPPED_TRL_ATTRIBUTES = (
    "vllm_generation",  # .max_completion_length: the exit answers' token budget on vLLM; .mode, .llm and
    # .enable_sleep_mode: one wake for both generation calls (SGRPOTrainer._engine_awake)
    "generation_config",  # .max_new_tokens: the same on transformers generate
    "generation_kwargs",
    "reward_weights",
    "eos_token_ids",
    "_tokenizer",
    "_metrics",
    "_logs",
    "num_generations",
    "use_vllm",
    "vllm_importance_sampling_correction",  # read for the sgrpo/is_* metrics
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_clip_max",
    "_buffered_inputs",  # the micro-batches TRL split a generation batch into (re-split by `_prepare_inputs`)
    "_step",
    "aux_loss_enabled",  # MoE router loss: packing falls back
    "ref_model",
)
# Keys of `_generate_and_score_completions`' output dict read or rewritten here.
REQUIRED_OUTPUT_KEYS = ("completion_ids", "completion_mask", "advantages", "num_items_in_batch")
PACK_KEY = "sgrpo_pack"  # per-row packing descriptor added to the output dict when packing is on
OPTIONAL_OUTPUT_KEYS = (
    "tool_mask",  # created when S-GRPO masks tokens and TRL did not
    "importance_sampling_ratio",  # read (vLLM IS correction on) for the sgrpo/is_* metrics
)


@dataclass
class SGRPOConfig(GRPOConfig):
    """GRPOConfig plus the S-GRPO options. Defaults follow the paper (m = 8, G = 9, lr 1e-6, no KL)."""

    # Paper defaults that differ from GRPOConfig's.
    num_generations: int | None = field(
        default=9,
        metadata={"help": "G, the group size. With `serial`, must equal num_full_rollouts * (num_exits + 1): the "
                          "m early exits plus the full rollout (S-GRPO Sec. 3.1, G = m + 1 = 9)."},
    )
    loss_type: str = field(
        default="grpo",
        metadata={"help": "TRL loss aggregation. 'grpo' = per-sequence token mean, then mean over the group, "
                          "as S-GRPO's objective (Sec. 3.3)."},
    )
    serial: bool = field(
        default=True,
        metadata={"help": "Build serial groups (S-GRPO). False = plain GRPO, the paper's 'w/o serial group' "
                          "ablation (Table 4)."},
    )
    num_exits: int = field(
        default=8,
        metadata={"help": "m, early-exit positions per full rollout, P_i ~ U(1, n) over the thought tokens "
                          "(Sec. 3.1, m = 8)."},
    )
    num_full_rollouts: int = field(
        default=1,
        metadata={"help": "Full rollouts (reasoning paths) per question. The paper uses 1; R > 1 makes a "
                          "parallel x serial group of R * (m + 1) members whose advantage baseline is the mean "
                          "over all of them (beyond the paper)."},
    )
    exit_text: str = field(
        default=DEFAULT_EXIT_TEXT,
        metadata={"help": "Text injected after O_0[:P_i] to force an answer (Sec. 3.1, exactly the paper's string). "
                          "Must contain `think_end_token` once."},
    )
    exit_position_range: list[float] = field(
        default_factory=lambda: [0.0, 1.0],
        metadata={"help": "[lo, hi]: exits are drawn among thought positions p with lo <= p/n <= hi "
                          "(paper: [0, 1], i.e. U(1, n))."},
    )
    max_answer_length: int = field(
        default=1024,
        metadata={"help": "Token budget of the answer C_i generated after the exit text (not given in the paper)."},
    )
    sgrpo_reward: str = field(
        default="decay",
        metadata={"help": "Serial reward: 'decay' = 1/2^(N_right-1) if correct else 0 (Sec. 3.2, Eq. 2); "
                          "'all_one' = 1 for every correct member; 'shortest_one' = 1 only for the earliest correct "
                          "member (the two reward ablations of Table 4)."},
    )
    correct_threshold: float = field(
        default=0.5,
        metadata={"help": "A member is correct when its weighted sum of the reward functions' outputs is > this "
                          "(0/1 accuracy rewards: correct iff the accuracy reward is 1)."},
    )
    mask_exit_text: bool = field(
        default=False,
        metadata={"help": "Exclude the injected exit text from the loss. False = the paper: the advantage reaches "
                          "every response token (thought prefix, exit text, answer)."},
    )
    drop_unsolved_groups: bool = field(
        default=False,
        metadata={"help": "Drop groups with no correct member (the paper's DAPO-style filtering, Sec. 4.1): they "
                          "are masked out of the loss and, with loss_type 'grpo', the kept sequences' advantages are "
                          "scaled by N_total/N_kept so the gradient equals the mean over kept groups. Counted in "
                          "`sgrpo/frac_groups_dropped`."},
    )
    pack_serial_groups: bool = field(
        default=True,
        metadata={"help": "Score each serial path as one packed sequence (prompt + O_0, then each exit's copy of its "
                          "last shared token + exit text + C_i) under a prefix-sharing attention mask, for the "
                          "policy, old-policy and reference passes (issue 20). An exit member O_0[:P_i] + exit text + "
                          "C_i repeats a prefix of the full rollout whose log-probs are the same in every member (same "
                          "context, token and position): unpacked rows cost about (m/2 + 1) n + m (e + a) tokens for "
                          "a thought of n tokens, packed n + m (1 + e + a). Exact: the log-probs are scattered back to "
                          "the member rows and TRL's loss is unchanged. Whole serial groups share most when "
                          "per_device_train_batch_size is a multiple of num_exits + 1. Falls back to unpacked rows, "
                          "with the reason logged once, where the attention cannot take the mask (flash attention, "
                          "sliding windows, unverified model types, MoE aux loss, context/sequence parallel)."},
    )
    think_start_token: str = field(
        default="<think>", metadata={"help": "Opening tag; skipped when a completion starts with it (Qwen3)."}
    )
    think_end_token: str = field(
        default="</think>", metadata={"help": "Closing tag: the thought tokens T_1..T_n are those before it."}
    )

    def __post_init__(self):
        if isinstance(self.exit_position_range, tuple):
            self.exit_position_range = list(self.exit_position_range)
        if self.serial:
            self._check_serial_before()
        super().__post_init__()
        if self.serial:
            self._check_whole_groups_per_rank(self.steps_per_generation)

    def _check_whole_groups_per_rank(self, steps_per_generation: int | None):
        if steps_per_generation is not None:
            per_rank = self.per_device_train_batch_size * steps_per_generation
            if per_rank % self.num_generations:
                raise ValueError(
                    f"per_device_train_batch_size * steps_per_generation = {self.per_device_train_batch_size} * "
                    f"{steps_per_generation} = {per_rank} (one rank's generation batch) must be a multiple of "
                    f"num_generations ({self.num_generations}) so that serial groups are never split across ranks. "
                    f"Set per_device_train_batch_size to a multiple of {self.num_generations}, or make "
                    f"gradient_accumulation_steps / steps_per_generation a multiple of it."
                )

    def _check_serial_before(self):
        m, r = self.num_exits, self.num_full_rollouts
        if m < 1:
            raise ValueError(f"num_exits must be >= 1 (the paper uses m = 8), got {m}.")
        if r < 1:
            raise ValueError(f"num_full_rollouts must be >= 1, got {r}.")
        if self.num_generations != r * (m + 1):
            raise ValueError(
                f"num_generations ({self.num_generations}) must equal num_full_rollouts * (num_exits + 1) = "
                f"{r} * ({m} + 1) = {r * (m + 1)}: a serial group is the m early exits plus the full rollout. "
                f"Set num_generations: {r * (m + 1)} (or change num_exits)."
            )
        # Known before GRPOConfig derives it (which happens only when generation_batch_size is unset).
        if self.generation_batch_size is None:
            self._check_whole_groups_per_rank(self.steps_per_generation or self.gradient_accumulation_steps)
        if self.sgrpo_reward not in SGRPO_REWARDS:
            raise ValueError(f"sgrpo_reward must be one of {SGRPO_REWARDS}, got {self.sgrpo_reward!r}.")
        rng = self.exit_position_range
        if len(rng) != 2 or not (0.0 <= rng[0] <= rng[1] <= 1.0):
            raise ValueError(f"exit_position_range must be [lo, hi] with 0 <= lo <= hi <= 1, got {rng}.")
        if self.max_answer_length < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {self.max_answer_length}.")
        if self.exit_text.count(self.think_end_token) != 1:
            raise ValueError(
                f"exit_text must contain think_end_token {self.think_end_token!r} exactly once (it closes the "
                f"thinking so the policy answers), got {self.exit_text!r}."
            )
        if self.use_vllm and self.vllm_max_model_length is not None:
            need = self.max_completion_length + self.max_answer_length
            if self.vllm_max_model_length < need:
                raise ValueError(
                    f"vllm_max_model_length ({self.vllm_max_model_length}) is too small: an exit prompt holds the "
                    f"prompt, up to max_completion_length ({self.max_completion_length}) thought tokens and the exit "
                    f"text, then generates max_answer_length ({self.max_answer_length}) tokens. Set it to at least "
                    f"{need} plus the longest prompt and the exit text."
                )
        if self.use_transformers_continuous_batching:
            raise ValueError("S-GRPO supports transformers `generate` and vLLM; set use_transformers_continuous_batching: false.")


def check_tokenizer(tokenizer, args: SGRPOConfig) -> tuple[list[int], int, int | None]:
    """Validate S-GRPO's token assumptions before training; returns (exit_ids, think_end_id, think_start_id).

    Cheap (no model): scripts may call it right after loading the tokenizer.
    """
    def single_id(token: str) -> int | None:
        ids = tokenizer.encode(token, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    think_end_id = single_id(args.think_end_token)
    if think_end_id is None:
        raise ValueError(
            f"The tokenizer does not encode think_end_token {args.think_end_token!r} as one token, so thought tokens "
            f"cannot be located. S-GRPO needs a thinking model (Qwen3, R1-Distill) or set think_end_token."
        )
    exit_ids = tokenizer.encode(args.exit_text, add_special_tokens=False)
    if exit_ids.count(think_end_id) != 1:
        raise ValueError(f"exit_text {args.exit_text!r} must tokenize with exactly one {args.think_end_token!r} token.")
    return exit_ids, think_end_id, single_id(args.think_start_token)


_MISSING = object()
logger = logging.getLogger(__name__)


class _AwakeHold:
    """Handle yielded by `SGRPOTrainer._engine_awake`: `second_call()` runs TRL's next `generate` without its
    sleep-mode wake / re-sync / sleep when the engine was kept awake after the first call."""

    def __init__(self, vllm_generation, deferred=None):
        self._vg, self._deferred, self._saved = vllm_generation, deferred, None

    @contextlib.contextmanager
    def second_call(self):
        if self._vg is None or not self._deferred:  # not in sleep mode, or the first call did not sleep
            yield
            return
        self._saved = self._vg.enable_sleep_mode
        self._vg.enable_sleep_mode = False
        try:
            yield
        finally:
            self.restore()

    def restore(self):
        if self._vg is not None and self._saved is not None:
            self._vg.enable_sleep_mode = self._saved
            self._saved = None


class SGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose groups are S-GRPO serial groups with decaying rewards (see the module docstring)."""

    _tag_names = ["trl", "grpo", "s-grpo", "concise-rl"]
    # With vllm_enable_sleep_mode (colocate): one wake for the full-rollout and exit calls (`_engine_awake`).
    keep_engine_awake: bool = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sgrpo_batch: dict | None = None  # local layout of the current generation batch
        self._sgrpo_scores: dict | None = None  # gathered correctness / rewards / advantages
        self._exit_draws = (-1, 0)  # (global_step, draws in that step): seeds the exit positions reproducibly
        self._sgrpo_exit_cache: list[int] | None = None  # [cached, prompt] tokens of the last exit call (vLLM)
        if self.args.serial:
            if self.tools or self.rollout_func is not None or self.environment_factories is not None:
                raise ValueError("S-GRPO builds its own serial groups; tools, rollout_func and environment_factory "
                                 "are not supported with serial: true.")
            self._exit_ids, self._think_end_id, self._think_start_id = check_tokenizer(self._tokenizer, self.args)
        # Packed scoring (pack_serial_groups): decided once from the configuration, the same on every rank.
        self._sgrpo_pack_rows: torch.Tensor | None = None  # descriptor of the rows the log-prob hook scores now
        self._sgrpo_scoring = False  # inside `_generate_and_score_completions` (old / reference passes)
        self._sgrpo_pack_counts: list[int] | None = None  # [packed tokens, row tokens] of the loss pass
        self.sgrpo_pack_reason: str | None = None
        self.sgrpo_packing = bool(self.args.serial and self.args.pack_serial_groups)
        if self.sgrpo_packing:
            self.sgrpo_pack_reason = self._packing_unsupported_reason()
            self.sgrpo_packing = self.sgrpo_pack_reason is None
            members = self.args.num_exits + 1
            if self.sgrpo_pack_reason is not None:
                self._log_once(f"S-GRPO: pack_serial_groups is off for this run ({self.sgrpo_pack_reason}); serial "
                               f"groups are scored as unpacked rows.")
            elif self.args.per_device_train_batch_size % members:
                self._log_once(f"S-GRPO: per_device_train_batch_size {self.args.per_device_train_batch_size} is not a "
                               f"multiple of num_exits + 1 = {members}: each micro-batch packs the consecutive members "
                               f"of the serial groups it holds (exact, less prefix sharing than whole groups).")

    # ------------------------------------------------------------------------------------------ helpers
    def _serial_active(self) -> bool:
        return bool(self.args.serial) and self.model.training

    def _log_once(self, message: str):
        if self.accelerator.is_main_process:
            logger.warning(message)

    def _packing_unsupported_reason(self) -> str | None:
        """Why this run cannot score packed serial groups (None: it can). Configuration only, so every rank agrees."""
        for name, model in (("policy", self.model), ("reference", self.ref_model)):
            if model is None:
                continue
            config = self.accelerator.unwrap_model(model).config
            reason = packing_unsupported_reason(config, getattr(config, "_attn_implementation", None))
            if reason is not None:
                return f"{name} model: {reason}"
        if getattr(self, "aux_loss_enabled", False):
            return "the MoE router's load-balancing loss is computed over the padded rows"
        pc = getattr(self.accelerator, "parallelism_config", None)
        if pc is not None and (getattr(pc, "cp_enabled", False) or getattr(pc, "sp_enabled", False)):
            return "context / sequence parallelism splits sequences across devices"
        return None

    def _packing_active(self) -> bool:
        return self.sgrpo_packing and self._serial_active()

    def _exit_generator(self) -> torch.Generator:
        step = self.state.global_step
        last_step, draws = self._exit_draws
        draws = draws + 1 if step == last_step else 0
        self._exit_draws = (step, draws)
        seed = ((self.args.seed * 1_000_003 + step) * 1009 + self.accelerator.process_index) * 101 + draws
        return torch.Generator().manual_seed(seed % (2**63))

    @contextlib.contextmanager
    def _answer_budget(self):
        """Temporarily give the generator `max_answer_length` new tokens (restored even on error)."""
        n = self.args.max_answer_length
        saved = []
        try:
            if self.use_vllm:
                saved.append((self.vllm_generation, "max_completion_length", self.vllm_generation.max_completion_length))
                self.vllm_generation.max_completion_length = n
            else:
                saved.append((self.generation_config, "max_new_tokens", self.generation_config.max_new_tokens))
                self.generation_config.max_new_tokens = n
                if isinstance(getattr(self, "generation_kwargs", None), dict) and "max_new_tokens" in self.generation_kwargs:
                    saved.append((self.generation_kwargs, None, self.generation_kwargs["max_new_tokens"]))
                    self.generation_kwargs["max_new_tokens"] = n
            yield
        finally:
            for obj, attr, value in reversed(saved):
                if attr is None:
                    obj["max_new_tokens"] = value
                else:
                    setattr(obj, attr, value)

    @contextlib.contextmanager
    def _engine_awake(self):
        """Keep a colocated vLLM engine in sleep mode awake from the full-rollout call to the exit call.

        TRL 1.16's `VLLMGeneration.generate` (trl/generation/vllm_generation.py) wakes the KV cache, generates, then
        calls `llm.sleep(level=2)`, which discards weights and KV cache (vLLM clears the prefix cache on any sleep of
        level >= 1) and marks the weights as sleeping; the next `generate` therefore calls `sync_weights()`, which
        re-pushes every parameter (a full gather under ZeRO-3) and calls `reset_prefix_cache()`. Called twice per
        batch, S-GRPO's exit prompts would miss the prefix cache and pay a second weight push. Here the sleep that
        ends the first call is deferred (an instance attribute shadows `llm.sleep`), the second call runs with
        `enable_sleep_mode` off (no re-sync, no wake, no sleep) on the still-awake engine, and the deferred sleep
        runs when both calls are done, or on error. Nothing is copied from TRL; `keep_engine_awake = False` turns
        this off (TRL's behaviour: two wakes, two weight pushes).
        """
        vg = getattr(self, "vllm_generation", None) if self.use_vllm else None
        if not (self.keep_engine_awake and vg is not None and getattr(vg, "mode", None) == "colocate"
                and getattr(vg, "enable_sleep_mode", False)):
            yield _AwakeHold(None)
            return
        llm = vg.llm
        shadowed = vars(llm).get("sleep", _MISSING)
        real_sleep = llm.sleep
        deferred: list[tuple[tuple, dict]] = []

        def deferred_sleep(*args, **kwargs):
            deferred.append((args, kwargs))

        llm.sleep = deferred_sleep
        hold = _AwakeHold(vg, deferred)
        try:
            yield hold
        finally:
            if shadowed is _MISSING:
                del llm.sleep
            else:
                llm.sleep = shadowed
            hold.restore()
            if deferred:
                args, kwargs = deferred[-1]
                real_sleep(*args, **kwargs)

    @contextlib.contextmanager
    def _count_cached_prompt_tokens(self):
        """Count the exit prompts' tokens that a colocated engine served from its prefix cache (vLLM's
        `RequestOutput.num_cached_tokens`), or, in server mode, that the server's prefix-cache counters grew by
        (trainers/vllm_metrics.py: its /metrics before and after, on the main process that holds the client). Yields a
        2-item list [cached, prompt tokens]; [0, 0] when not measurable (transformers, an unreadable endpoint)."""
        counts = [0, 0]
        vg = getattr(self, "vllm_generation", None) if self.use_vllm else None
        if vg is not None and getattr(vg, "mode", None) == "server":
            from trainers.vllm_metrics import cache_delta, read_prefix_cache_counters

            client = getattr(vg, "vllm_client", None)
            before = read_prefix_cache_counters(client.base_url) if client is not None else None
            yield counts
            after = read_prefix_cache_counters(client.base_url) if before is not None else None
            counts[:], _ = cache_delta(before, after)
            return
        if vg is None or getattr(vg, "mode", None) != "colocate":
            yield counts
            return
        llm = vg.llm
        shadowed = vars(llm).get("generate", _MISSING)
        real_generate = llm.generate

        def counting_generate(*args, **kwargs):
            outputs = real_generate(*args, **kwargs)
            for o in outputs:
                counts[0] += int(getattr(o, "num_cached_tokens", 0) or 0)
                counts[1] += len(o.prompt_token_ids or ())
            return outputs

        llm.generate = counting_generate
        try:
            yield counts
        finally:
            if shadowed is _MISSING:
                del llm.generate
            else:
                llm.generate = shadowed

    # ------------------------------------------------------------------------------------ generation
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not self._serial_active():
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)
        if images is not None and any(img for img in images):
            raise NotImplementedError("S-GRPO serial groups are text-only.")
        G, m, R = num_generations, self.args.num_exits, self.args.num_full_rollouts
        if len(prompt_ids) % G:
            raise RuntimeError(f"S-GRPO got {len(prompt_ids)} prompts, not whole groups of {G}: groups were split.")
        n_q = len(prompt_ids) // G
        for q in range(n_q):
            first = list(prompt_ids[q * G])
            if any(list(prompt_ids[q * G + j]) != first for j in range(1, G)):
                raise RuntimeError(f"S-GRPO group {q} mixes prompts: the local batch is not whole groups of {G}.")

        # One wake of a sleeping colocated engine for both calls, so the exits find the rollouts in the prefix cache.
        with self._engine_awake() as awake:
            return self._serial_generate(prompt_ids, G, m, R, n_q, awake)

    def _serial_generate(self, prompt_ids, G, m, R, n_q, awake):
        # 1) Full rollouts O_0: one per serial group, with TRL's sampling and max_completion_length.
        path_prompts = [list(prompt_ids[q * G]) for q in range(n_q) for _ in range(R)]
        full_ids, full_lps = super()._generate_single_turn(path_prompts, None, {}, 1)
        full_ids = [list(ids) for ids in full_ids]

        # 2) Exit positions over each rollout's thought tokens, and the exit prompts.
        gen = self._exit_generator()
        lo_hi = tuple(self.args.exit_position_range)
        spans, positions, exit_prompts = [], [], []
        for prompt, comp in zip(path_prompts, full_ids, strict=True):
            span = thinking_span(comp, self._think_end_id, self._think_start_id, self.eos_token_ids)
            ps = sample_exit_positions(span.length, m, gen, lo_hi)
            spans.append(span)
            positions.append(ps)
            exit_prompts.extend(exit_prompt_ids(prompt, comp, span.start + p, self._exit_ids) for p in ps)

        # 3) Answers C_i: the policy continues every exit prompt for at most max_answer_length tokens.
        with self._answer_budget(), awake.second_call(), self._count_cached_prompt_tokens() as cached:
            ans_ids, ans_lps = super()._generate_single_turn(exit_prompts, None, {}, 1)
        self._sgrpo_exit_cache = cached

        # 4) Serial groups: exits in position order, the full rollout last.
        completion_ids, logprobs = [], ([] if full_lps is not None else None)
        layout = {k: [] for k in ("is_full", "closed", "pos", "n_think", "cut", "full_len", "answer_len")}
        n_exit = len(self._exit_ids)
        for k, (comp, span, ps) in enumerate(zip(full_ids, spans, positions, strict=True)):
            for i, p in enumerate(ps):
                a_ids = list(ans_ids[k * m + i])
                cut = span.start + p
                completion_ids.append(exit_completion(comp, cut, self._exit_ids, a_ids))
                if logprobs is not None:
                    logprobs.append(exit_logprobs(full_lps[k], cut, n_exit, ans_lps[k * m + i]))
                self._append_layout(layout, False, span, p, cut, len(comp), len(a_ids))
            completion_ids.append(comp)
            if logprobs is not None:
                logprobs.append(list(full_lps[k]))
            self._append_layout(layout, True, span, span.length, len(comp), len(comp), 0)
        self._sgrpo_batch = layout
        return completion_ids, logprobs

    def sampled_token_count(self, completion_ids) -> int:
        """Tokens the policy generated for these rows (trainers/cost.py): the serial groups' full rollouts and exit
        answers; an exit row's rollout prefix and exit text were not sampled again."""
        b = self._sgrpo_batch
        if not self._serial_active() or b is None:
            return sum(len(ids) for ids in completion_ids)
        return sum(f if full else a for full, f, a in zip(b["is_full"], b["full_len"], b["answer_len"], strict=True))

    @staticmethod
    def _append_layout(layout, is_full, span, pos, cut, full_len, answer_len):
        layout["is_full"].append(is_full)
        layout["closed"].append(span.closed)
        layout["pos"].append(pos)
        layout["n_think"].append(span.length)
        layout["cut"].append(cut)
        layout["full_len"].append(full_len)
        layout["answer_len"].append(answer_len)

    def _generate(self, prompts):
        out = super()._generate(prompts)
        if not (self._serial_active() and self.args.mask_exit_text):
            return out
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images = out
        layout, n_exit = self._sgrpo_batch, len(self._exit_ids)
        tool_mask = [
            [1] * len(c) if full else exit_text_mask(len(c), cut, n_exit)
            for c, full, cut in zip(completion_ids, layout["is_full"], layout["cut"], strict=True)
        ]
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images

    # ---------------------------------------------------------------------------------------- scoring
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self._serial_active():
            return rewards_per_func
        device = rewards_per_func.device
        layout = self._sgrpo_batch
        if layout is None or len(layout["is_full"]) != len(prompts):
            raise RuntimeError("S-GRPO layout missing: _generate_single_turn did not build this batch's serial groups.")
        local = torch.tensor(
            [layout[k] for k in ("is_full", "closed", "pos", "n_think", "cut", "full_len", "answer_len")],
            dtype=torch.float32, device=device,
        ).T
        gathered = self.accelerator.gather(local)  # rows in the same (process-major) order as rewards_per_func
        is_full, closed = gathered[:, 0].bool(), gathered[:, 1].bool()
        weighted = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        correct = weighted > self.args.correct_threshold
        correct = correct & ~(is_full & ~closed)  # a full path that never closed its thinking has no answer
        G = self.num_generations
        rewards = serial_rewards_for_questions(correct.view(-1, G), self.args.num_full_rollouts, self.args.sgrpo_reward)
        self._sgrpo_scores = {
            "correct": correct.view(-1, G),
            "rewards": rewards,
            "advantages": serial_advantages(rewards),
            "layout": gathered,
        }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._sgrpo_batch, self._sgrpo_scores, self._sgrpo_exit_cache = None, None, None
        self._sgrpo_scoring = True  # the old-policy / reference passes inside score packed (`_pack_rows_for`)
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._sgrpo_scoring = False
        if not self._serial_active():
            return out
        if self._packing_active():
            out[PACK_KEY] = self._layout_descriptor().to(out["completion_ids"].device)
        scores = self._sgrpo_scores
        is_rows = self._is_row_stats(out)  # before the group dropping below changes out["tool_mask"]
        advantages = scores["advantages"].clone()
        n_local = out["advantages"].shape[0]
        rank = self.accelerator.process_index
        local = slice(rank * n_local, (rank + 1) * n_local)

        unsolved = ~scores["correct"].any(dim=1)  # (questions,)
        dropped = torch.zeros_like(unsolved)
        if self.args.drop_unsolved_groups:
            dropped = unsolved
            kept = (~dropped).sum().item()
            advantages[dropped] = 0.0
            if kept and self.loss_type == "grpo":
                advantages = advantages * (dropped.numel() / kept)  # mean over kept sequences, exactly
            keep_rows = (~dropped).repeat_interleave(self.num_generations)[local].to(out["completion_mask"].dtype)
            mask = out.get("tool_mask", torch.ones_like(out["completion_mask"]))
            out["tool_mask"] = mask * keep_rows.unsqueeze(1)
            out["num_items_in_batch"] = self.accelerator.gather(
                (out["completion_mask"] * out["tool_mask"]).sum()).sum()

        flat = advantages.flatten()
        out["advantages"] = flat[local].to(out["advantages"].dtype)
        # TRL logged its own (std-scaled) advantages for the completions table: show the S-GRPO ones instead.
        logged = self._logs["advantages"]
        for _ in range(min(flat.numel(), len(logged))):
            logged.pop()
        logged.extend(flat.tolist())
        self._log_serial_metrics(scores, unsolved, dropped)
        if is_rows is not None:
            self._log_is_metrics(scores, is_rows, dropped)
        self._log_exit_cache()
        return out

    # ------------------------------------------------------------------------------- packed scoring (issue 20)
    def _layout_descriptor(self) -> torch.Tensor:
        layout = self._sgrpo_batch
        return member_descriptor(layout["is_full"], layout["cut"], self.args.num_exits + 1)

    def _pack_rows_for(self, n_rows: int) -> torch.Tensor | None:
        """The packing descriptor of the rows the log-prob hook is asked to score, or None (score them TRL's way)."""
        if not self._packing_active():
            return None
        if self._sgrpo_pack_rows is not None:  # the loss pass of a micro-batch
            rows = self._sgrpo_pack_rows
        elif self._sgrpo_scoring and self._sgrpo_batch is not None:  # old-policy / reference passes
            rows = self._layout_descriptor()
        else:
            return None
        if rows.size(0) != n_rows:
            raise RuntimeError(f"S-GRPO packing: {rows.size(0)} descriptors for {n_rows} rows.")
        return rows

    def _prepare_inputs(self, generation_batch):
        before = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if (self._packing_active() and self._buffered_inputs is not before and self._buffered_inputs
                and self._buffered_inputs[0].get(PACK_KEY) is not None):
            # TRL shuffled the rows before splitting them into micro-batches: put each serial path back together.
            self._buffered_inputs = regroup_micro_batches(self._buffered_inputs, PACK_KEY)
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs

    def _compute_loss(self, model, inputs):
        rows = inputs.get(PACK_KEY) if self._packing_active() else None
        if rows is None:
            return super()._compute_loss(model, inputs)
        self._sgrpo_pack_rows, self._sgrpo_pack_counts = rows, None
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._sgrpo_pack_rows = None
        if self._sgrpo_pack_counts is not None:
            packed, unpacked = self._sgrpo_pack_counts
            if hasattr(self, "_cost_trained"):  # trainers/cost.py counted the rows' tokens just before this call
                self._cost_trained += packed - unpacked
            self._metrics["train"]["sgrpo/packed_token_frac"].append(packed / max(unpacked, 1))
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        rows = self._pack_rows_for(input_ids.size(0))
        if rows is None or compute_aux_loss or any(v is not None for v in kwargs.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        batch_size = batch_size or input_ids.size(0)
        attn = getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", None)
        all_logps, all_entropies, packed, unpacked = [], [], 0, 0
        # One forward per `batch_size` chunk, as TRL runs: ZeRO-3 ranks must run the same number of forwards.
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            plan = plan_serial_packing(input_ids[start:end], attention_mask[start:end], logits_to_keep,
                                       rows[start:end], pad_token_id=self._tokenizer.pad_token_id or 0)
            plan = plan.to(input_ids.device)
            if attn == "flex_attention":
                mask = block_mask(plan)
            else:
                # eager adds the mask to its scores: build it in the model's dtype, not float32 (half the bytes)
                mask = dense_mask(plan, "bool" if attn == "sdpa" else "additive",
                                  dtype=self.accelerator.unwrap_model(model).dtype)
            with self.accelerator.autocast():
                outputs = model(input_ids=plan.input_ids, attention_mask=mask, position_ids=plan.position_ids,
                                shift_labels=plan.shift_labels, fused_lm_head=True)
            all_logps.append(scatter_to_rows(outputs.log_probs, plan))
            if compute_entropy:
                all_entropies.append(scatter_to_rows(outputs.entropy, plan))
            packed, unpacked = packed + plan.packed_tokens, unpacked + plan.row_tokens
        if self._sgrpo_pack_rows is not None:
            self._sgrpo_pack_counts = [packed, unpacked]
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None

    # ------------------------------------------------------------------- vLLM importance-sampling correction
    def _is_row_stats(self, out):
        """Per local row: share of loss tokens TRL's vLLM IS correction masked / clipped, and the mean IS weight.
        None when the correction is off (or transformers generation): then nothing is logged."""
        ratio = out.get("importance_sampling_ratio")
        if ratio is None or not (self.use_vllm and getattr(self, "vllm_importance_sampling_correction", False)):
            return None
        mask = out["completion_mask"]
        if out.get("tool_mask") is not None:
            mask = mask * out["tool_mask"]
        mode = self.vllm_importance_sampling_mode
        share = is_affected_share(ratio, mask, mode, self.vllm_importance_sampling_clip_min,
                                  self.vllm_importance_sampling_clip_max)
        return torch.stack([share.float(), is_row_mean_ratio(ratio, mask)], dim=1)

    def _log_is_metrics(self, scores, is_rows, dropped):
        rows = self.accelerator.gather(is_rows)  # process-major, the order of scores["layout"]
        lay = scores["layout"]
        pos, n_think = lay[:, 2], lay[:, 3]
        frac = torch.where(n_think > 0, pos / n_think.clamp(min=1), torch.zeros_like(pos))
        kind = "masked" if self.vllm_importance_sampling_mode.endswith("mask") else "clipped"
        stats = is_correction_stats(rows[:, 0], rows[:, 1], lay[:, 0].bool(), frac, scores["advantages"].flatten(),
                                    self.num_generations, groups=~dropped, kind=kind,
                                    sequence_level=self.vllm_importance_sampling_mode.startswith("sequence"))
        metrics = self._metrics["train"]
        for key, value in stats.items():
            metrics[key].append(value)

    def _log_exit_cache(self):
        """sgrpo/exit_prompt_cached_frac: exit-prompt tokens served from vLLM's prefix cache (colocate: per request;
        server: the server's counters, about 1/DP with data parallel DP > 1, docs/training.md)."""
        if self._sgrpo_exit_cache is None or not self.use_vllm or self.vllm_generation.mode not in ("colocate",
                                                                                                   "server"):
            return
        counts = torch.tensor(self._sgrpo_exit_cache, dtype=torch.float32, device=self.accelerator.device)
        cached, total = self.accelerator.gather(counts).view(-1, 2).sum(dim=0).tolist()
        if total > 0:
            self._metrics["train"]["sgrpo/exit_prompt_cached_frac"].append(cached / total)

    def _log_serial_metrics(self, scores, unsolved, dropped):
        metrics = self._metrics["train"]
        lay = scores["layout"]
        is_full = lay[:, 0].bool()
        closed, pos, n_think, full_len, answer_len = lay[:, 1].bool(), lay[:, 2], lay[:, 3], lay[:, 5], lay[:, 6]
        correct = scores["correct"].flatten()
        exits = ~is_full
        frac = torch.where(n_think > 0, pos / n_think.clamp(min=1), torch.zeros_like(pos))
        metrics["sgrpo/full_length/mean"].append(full_len[is_full].mean().item())
        metrics["sgrpo/full_thinking_length/mean"].append(n_think[is_full].mean().item())
        metrics["sgrpo/full_unclosed_frac"].append((~closed[is_full]).float().mean().item())
        metrics["sgrpo/exit_position/mean"].append(pos[exits].mean().item())
        metrics["sgrpo/exit_position_frac/mean"].append(frac[exits].mean().item())
        metrics["sgrpo/exit_answer_length/mean"].append(answer_len[exits].mean().item())
        metrics["sgrpo/accuracy/full"].append(correct[is_full].float().mean().item())
        metrics["sgrpo/accuracy/exits"].append(correct[exits].float().mean().item())
        bins = exit_quantile_bins(frac[exits], 4)
        for b in range(4):
            sel = bins == b
            if sel.any():  # a quarter with no exit this step is left out rather than logged as 0
                metrics[f"sgrpo/accuracy/exit_q{b + 1}"].append(correct[exits][sel].float().mean().item())
        metrics["sgrpo/reward/mean"].append(scores["rewards"].mean().item())
        metrics["sgrpo/frac_groups_unsolved"].append(unsolved.float().mean().item())
        metrics["sgrpo/frac_groups_dropped"].append(dropped.float().mean().item())
