"""GFPO: Group Filtered Policy Optimization (arXiv 2508.09726) as a thin wrapper of TRL's GRPOTrainer.

Flow per generation batch (train mode), never copying ``_generate_and_score_completions``:

1. ``_generate`` (wrapped): record each completion's length (model tokens) and gather them over all ranks. When
   the selection depends on lengths only (``length`` metric, fixed or annealed k) and ``rejection_mode="drop"``,
   the retained set is already known here, so the old/ref log-prob passes that TRL runs next skip the dropped rows.
2. ``_calculate_rewards`` (wrapped): keep the gathered rewards per function (and gather texts when a metric, the
   legacy ``group_filter_func`` or the pair export needs them).
3. ``super()._generate_and_score_completions`` runs unchanged; then the advantages of the whole GATHERED batch
   are recomputed inside the retained sets (``trainers.selection``), identically on every rank, and the local
   slice is put back. ``drop`` removes the rejected rows from the local batch.

With the ``length`` metric in ``drop`` mode, generation itself is cut short: a rollout stops once k shorter members
of its group have finished (``gfpo_early_stop``, ``trainers/early_stop.py``; exact, so the retained set and, on
transformers, the retained tokens are those of the full rollout).

Also supports TRL's removed ``trl.experimental.gfpo`` API: ``GFPOTrainer(..., group_filter_func=f)`` with
``f(group_completions=[[...G]...], group_rewards=[[...G]...]) -> [[score]*G]*B``; the k highest scores are kept.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from trainers import early_stop as es
from trainers import selection as sel

logger = logging.getLogger(__name__)

# Every GRPOTrainer method overridden or called by its private name, and the dict keys relied on: a contract test
# checks these still exist in the pinned TRL.
WRAPPED_TRL_HOOKS = (
    "_generate",
    "_calculate_rewards",
    "_generate_and_score_completions",
    "_get_per_token_logps_and_entropies",
    "_save_checkpoint",
    "_load_optimizer_and_scheduler",
    "_get_output_dir",
    "_prepare_inputs",  # not overridden; drop mode relies on its shuffle + split into steps_per_generation chunks
    "_generate_single_turn",  # early stop: the transformers logits processor / the vLLM engine loop around it
)
WRAPPED_TRL_ATTRIBUTES = ("_metrics", "_logs", "num_generations", "reward_weights", "accelerator", "state",
                          "eos_token_ids", "rollout_func", "tools", "vllm_generation")
REQUIRED_OUTPUT_KEYS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "advantages",
    "num_items_in_batch",
)
STATE_FILE = "gfpo_state.json"
# Loss types whose normaliser is `num_items_in_batch` (global tokens): for them `drop` with
# drop_loss_normalizer="group" gives exactly the `zero` mode's policy gradient.
_GLOBAL_NORMALISED_LOSSES = ("dapo", "cispo", "vespo")


@dataclass
class GFPOConfig(GRPOConfig):
    r"""GRPOConfig plus GFPO's options. `num_generations` is G (sampled per question), `num_remains_in_group` is k.

    Paper defaults (Phi-4-reasoning): loss_type="dapo", beta=0.001, entropy_coef=0.001, temperature=1.0.
    """

    num_remains_in_group: int | None = field(
        default=None,
        metadata={
            "help": "k: responses retained per question out of G=num_generations (GFPO sec. 3, 'Shortest k/G'). "
            "1 <= k < G (k = 1 only with rejection_mode penalty/stratified: a one-member retained set has zero std). "
            "Optional when adaptive_difficulty is on (k then comes from adaptive_ks)."
        },
    )
    filter_metric: str = field(
        default="length",
        metadata={
            "help": "Metric ranking the G responses (GFPO sec. 3): 'length' (keep the k shortest), 'token_efficiency' "
            "(keep the k highest reward/length), a registered name, 'module:function' (higher is better), or a "
            'weighted composite as JSON/mapping, e.g. {"length": 1.0, "my.mod:classifier": 0.5}: each component is '
            "z-scored per group (population std) and the weighted sum ranks (negative weight = lower is better)."
        },
    )
    rejection_mode: str = field(
        default="zero",
        metadata={
            "help": "What rejected responses get. 'zero': advantage 0, rows kept, loss normalised over all G (the "
            "paper, A_i = m_i (R_i - mean_S)/std_S). 'drop': rows removed before the policy forward/backward "
            "(training compute ~ k, not G). 'penalty': A = -rejection_penalty (seed analysis, soft penalty). "
            "'stratified': A = (R - mean_G)/std_G - stratified_delta (seed analysis, stratified learning)."
        },
    )
    rejection_penalty: float = field(
        default=0.1, metadata={"help": "lambda_rej of rejection_mode='penalty': rejected responses get A = -lambda."}
    )
    stratified_delta: float = field(
        default=0.1,
        metadata={"help": "delta of rejection_mode='stratified': rejected get (R - mean_G)/std_G - delta."},
    )
    drop_loss_normalizer: str = field(
        default="group",
        metadata={
            "help": "rejection_mode='drop' only. 'group': num_items_in_batch counts the tokens of all G responses, as "
            "in 'zero' mode (the paper's 1/sum_{i<=G}|o_i|), so drop reproduces zero's policy gradient with a "
            "dapo/cispo/vespo loss. 'retained': count only the retained tokens (a larger effective step)."
        },
    )
    gfpo_early_stop: bool = field(
        default=True,
        metadata={
            "help": "Stop a rollout as soon as it can no longer be retained: with filter_metric 'length', a fixed or "
            "annealed k and rejection_mode 'drop', a running response is stopped once k finished members of its group "
            "are shorter than it can end (ties to the earlier position, as the selection breaks them). Exact: the "
            "retained set, and on transformers generation the retained tokens bit for bit, are those of the full "
            "rollout (trainers/early_stop.py). Elsewhere it is off with a one-line logged reason."
        },
    )
    gfpo_early_stop_normalizer: str = field(
        default="sampled",
        metadata={
            "help": "With early stop and drop_loss_normalizer='group': which length a stopped row adds to the DAPO "
            "normaliser 1/sum_{i<=G}|o_i|. 'sampled': its sampled tokens (a lower bound of its full length, so the "
            "normaliser is at most the paper's and the step at least the paper's); 'max_length': "
            "max_completion_length (an upper bound: a step at most the paper's). The paper's lies between the two."
        },
    )
    gfpo_request_seeds: bool = field(
        default=False,
        metadata={
            "help": "vLLM colocate: give every request its own seed (from seed, step and row), so its samples do not "
            "depend on which other requests run beside it; then a run with early stop samples the retained responses "
            "of the run without it, where vLLM's logits are batch-invariant. Off: the engine's shared generator."
        },
    )
    adaptive_difficulty: bool = field(
        default=False,
        metadata={
            "help": "Adaptive Difficulty GFPO: difficulty = mean reward of the G responses; a streaming t-digest of "
            "difficulties gives the adaptive_quantiles; a question's bucket picks its k from adaptive_ks."
        },
    )
    adaptive_quantiles: list[float] = field(
        default_factory=lambda: list(sel.PAPER_ADAPTIVE_QUANTILES),
        metadata={"help": "Bucket boundaries as quantiles of past difficulty (paper: q25, q50, q75)."},
    )
    adaptive_ks: list[int] | None = field(
        default=None,
        metadata={
            "help": "k per bucket, hardest first (len(adaptive_quantiles) + 1 values, each <= G). Default: the paper's "
            "8, 8, 6, 4 for G = 16, scaled by G/16 otherwise."
        },
    )
    adaptive_warmup_k: int | None = field(
        default=None, metadata={"help": "k for every question until the digest is warm (paper: 8 for G = 16)."}
    )
    adaptive_warmup_questions: int = field(
        default=128,
        metadata={"help": "Questions the digest must have seen before buckets are used (paper: unspecified)."},
    )
    adaptive_digest_max_centroids: int = field(
        default=1000, metadata={"help": "t-digest compression (fastdigest max_centroids)."}
    )
    anneal: str = field(
        default="none",
        metadata={
            "help": "Seed-analysis annealing: 'k' moves k (every bucket's k in adaptive mode) linearly from G "
            "(GRPO-like) to its target over anneal_steps optimizer steps; 'penalty' moves rejection_penalty from 0."
        },
    )
    anneal_steps: int = field(default=0, metadata={"help": "Optimizer steps of the linear annealing schedule."})
    pairs_output_file: str | None = field(
        default=None,
        metadata={
            "help": "If set, append one (prompt, chosen, rejected) JSONL line per filtered group, in TRL DPOTrainer's "
            "format (seed analysis: GFPO then preference learning). Main process only."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        G = self.num_generations
        modes = sel.REJECTION_MODES
        if self.rejection_mode not in modes:
            raise ValueError(f"rejection_mode={self.rejection_mode!r} is unknown: set it to one of {modes}.")
        min_k = 1 if self.rejection_mode in ("penalty", "stratified") else 2
        k = self.num_remains_in_group
        if k is None and not self.adaptive_difficulty:
            raise ValueError(
                "num_remains_in_group (k) is required: set it to the number of responses to keep per question "
                f"(e.g. 8 of num_generations={G}), or set adaptive_difficulty: true."
            )
        if k is not None and not (min_k <= k < G):
            raise ValueError(
                f"num_remains_in_group={k} must satisfy {min_k} <= k < num_generations={G}. k = G filters nothing "
                "(use method: grpo); k = 1 leaves a one-member retained set whose population std is 0 (use "
                "rejection_mode penalty or stratified, or k >= 2)."
            )
        if isinstance(self.filter_metric, dict):
            self.filter_metric = json.dumps(self.filter_metric)
        sel.parse_metric_spec(self.filter_metric)  # raises naming filter_metric
        if self.rejection_penalty < 0 or not math.isfinite(self.rejection_penalty):
            raise ValueError(f"rejection_penalty={self.rejection_penalty} must be >= 0 (rejected get A = -lambda).")
        if self.stratified_delta < 0:
            raise ValueError(f"stratified_delta={self.stratified_delta} must be >= 0.")
        if self.drop_loss_normalizer not in ("group", "retained"):
            raise ValueError(f"drop_loss_normalizer={self.drop_loss_normalizer!r}: use 'group' or 'retained'.")
        if self.gfpo_early_stop_normalizer not in ("sampled", "max_length"):
            raise ValueError(
                f"gfpo_early_stop_normalizer={self.gfpo_early_stop_normalizer!r}: use 'sampled' or 'max_length'."
            )
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r}: GFPO normalises inside each retained set; use 'group' "
                "(divide by std_S, the paper) or 'none' (no division)."
            )
        if self.anneal not in sel.ANNEAL_MODES:
            raise ValueError(f"anneal={self.anneal!r} is unknown: use one of {sel.ANNEAL_MODES}.")
        if self.anneal != "none" and self.anneal_steps < 1:
            raise ValueError(f"anneal={self.anneal!r} needs anneal_steps >= 1 (got {self.anneal_steps}).")
        if self.anneal == "penalty" and self.rejection_mode != "penalty":
            raise ValueError("anneal='penalty' anneals rejection_penalty: set rejection_mode: penalty (or anneal: k).")
        if self.adaptive_difficulty:
            qs = list(self.adaptive_quantiles)
            if not qs or any(not 0 < q < 1 for q in qs) or any(a >= b for a, b in zip(qs, qs[1:], strict=False)):
                raise ValueError(f"adaptive_quantiles={qs} must be strictly increasing values in (0, 1).")
            if self.adaptive_ks is None:
                self.adaptive_ks = sel.default_adaptive_ks(G)
            if len(self.adaptive_ks) != len(qs) + 1:
                raise ValueError(
                    f"adaptive_ks={self.adaptive_ks} needs len(adaptive_quantiles) + 1 = {len(qs) + 1} values "
                    "(one k per bucket, hardest first)."
                )
            if self.adaptive_warmup_k is None:
                self.adaptive_warmup_k = sel.default_adaptive_warmup_k(G)
            for name, val in [("adaptive_ks", v) for v in self.adaptive_ks] + [
                ("adaptive_warmup_k", self.adaptive_warmup_k)
            ]:
                if not min_k <= int(val) <= G:
                    raise ValueError(
                        f"{name} contains {val}: every bucket k must satisfy {min_k} <= k <= num_generations={G}."
                    )
            if self.adaptive_warmup_questions < 0:
                raise ValueError("adaptive_warmup_questions must be >= 0.")
        if self.rejection_mode == "drop" and self.loss_type not in _GLOBAL_NORMALISED_LOSSES:
            logger.warning(
                "rejection_mode='drop' with loss_type=%r: this loss normalises per micro-batch, so dropping rows "
                "changes its scale relative to 'zero' mode. Use loss_type='dapo' (the paper's) for an exact match.",
                self.loss_type,
            )


class GFPOTrainer(GRPOTrainer):
    """GRPOTrainer that filters each group of G responses to a retained set of k (GFPO).

    ``rejection_mode="drop"`` removes rejected rows from the batch before the policy forward/backward. What it does
    not save: generation of all G responses (needed to select; with early stop, a rejected one only up to the
    k-th shortest finished length of its group), reward computation, and - unless the selection is
    known before rewards (``length`` metric with a fixed or annealed k) - the no-grad old/ref log-prob passes over
    all G (TRL runs them before the rewards). Per-rank batches are padded to the largest local retained count
    (rounded up to a multiple of steps_per_generation) with zero-mask, zero-advantage copies, so every rank runs the
    same number of micro-batches even when k varies per question or groups straddle ranks.

    Eval mode is left to GRPO's advantages (GFPO filters training groups only).
    """

    _tag_names = ["trl", "grpo", "gfpo"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: GFPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        group_filter_func=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        **kwargs,
    ):
        if not isinstance(args, GFPOConfig):
            raise ValueError("GFPOTrainer needs args=GFPOConfig(...) (num_remains_in_group, filter_metric, ...).")
        if group_filter_func is not None and not callable(group_filter_func):
            raise ValueError("group_filter_func must be callable: f(group_completions, group_rewards) -> scores.")
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **kwargs,
        )
        self.group_filter_func = group_filter_func
        self.num_remains_in_group = args.num_remains_in_group
        self.metric_weights = sel.parse_metric_spec(args.filter_metric)
        needs_rewards, needs_text = sel.metric_needs(self.metric_weights)
        if group_filter_func is not None:
            needs_rewards = needs_text = True
        self._gfpo_needs_rewards = needs_rewards or args.adaptive_difficulty
        self._gfpo_needs_text = needs_text or args.pairs_output_file is not None
        self.difficulty_digest = (
            sel.QuantileDigest(args.adaptive_digest_max_centroids) if args.adaptive_difficulty else None
        )
        self._gfpo_capture: dict[str, Any] = {}
        self._gfpo_in_scoring = False
        self._gfpo_presel_keep: torch.Tensor | None = None
        self._gfpo_last: dict[str, Any] = {}  # last selection, for inspection and tests
        # Which reward says "correct" for the signal metrics: the one named accuracy (rewards/accuracy.py), if any.
        names = [str(n).lower() for n in self.reward_func_names]
        self._gfpo_accuracy_column = names.index("accuracy") if "accuracy" in names else None
        self._gfpo_init_early_stop(group_filter_func)

    # ---------------------------------------------------------------------------------------------------------
    # Early stop of rejected rollouts (trainers/early_stop.py)
    # ---------------------------------------------------------------------------------------------------------
    def _gfpo_init_early_stop(self, group_filter_func) -> None:
        args = self.args
        kw = dict(group_filter_func=group_filter_func, rollout_func=self.rollout_func, tools=self.tools)
        reason = es.support_reason(args, **kw)
        # "Eligible": the rule would be exact here. Then a run with gfpo_early_stop false samples through the same
        # seeding as one with it, so the two can be compared (transformers: a per-call seed; vLLM: request seeds).
        self._gfpo_es_eligible = es.support_reason(args, check_flag=False, **kw) is None
        self._gfpo_es_active = reason is None
        self._gfpo_es_reason = reason
        self._gfpo_es_call: dict | None = None
        self._gfpo_es_stopped: list[bool] | None = None
        self._gfpo_gen_calls = 0
        if reason is not None and reason != es.REASONS["disabled"]:
            logger.warning("GFPO early stop is off: %s", reason)
        if self._gfpo_es_eligible and args.use_vllm and args.vllm_mode == "colocate":
            llm = self.vllm_generation.llm
            llm.generate = self._gfpo_wrap_llm_generate(llm, llm.generate)

    def _gfpo_wrap_llm_generate(self, llm, original):
        def generate(prompts, sampling_params=None, **kwargs):
            call = self._gfpo_es_call
            if call is None or not (call["active"] or self.args.gfpo_request_seeds):
                return original(prompts, sampling_params=sampling_params, **kwargs)
            n_rows, tp = len(prompts), call["tp"]
            pi = self.accelerator.process_index
            offset = (pi // tp) * n_rows  # TRL gathers the prompts of a tensor-parallel group in rank order
            layout = es.GroupLayout(offset, n_rows, self.num_generations, call["k"]) if call["active"] else None
            seeds = None
            if self.args.gfpo_request_seeds:
                seeds = es.request_seeds(self.args.seed, self._gfpo_step(), call["index"], offset, n_rows)
            outputs, stopped = es.generate_with_early_stop(
                llm, prompts, sampling_params, layout, self.eos_token_ids[0], seeds
            )
            n_local = call["n_local"]
            local = pi % tp
            self._gfpo_es_stopped = stopped[local * n_local : (local + 1) * n_local]
            return outputs

        return generate

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        self._gfpo_es_stopped = None
        if not (self.model.training and self._gfpo_es_eligible):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        self._gfpo_gen_calls += 1
        n_local, k = len(prompt_ids), self.current_k()
        if self.use_vllm:
            tp = self.vllm_generation.tensor_parallel_size
            self._gfpo_es_call = dict(active=self._gfpo_es_active, k=k, n_local=n_local, tp=tp,
                                      index=self._gfpo_gen_calls)
            try:
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)
            finally:
                self._gfpo_es_call = None
        # transformers: sample from a seed drawn once from the global generator, so the global stream after the call
        # does not depend on how many steps generation ran (early stop ends it sooner).
        seed = int(torch.randint(0, 2**62, (1,)).item())
        device = self.accelerator.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            if not self._gfpo_es_active:
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)
            layout = es.GroupLayout(self.accelerator.process_index * n_local, n_local, self.num_generations, k)
            processor = es.EarlyStopLogitsProcessor(layout, self.eos_token_ids)
            model = self.accelerator.unwrap_model(self.model_wrapped)
            original = model.generate
            had_own = "generate" in model.__dict__

            def generate(*g_args, **g_kwargs):
                from transformers import LogitsProcessorList

                g_kwargs["logits_processor"] = LogitsProcessorList([*(g_kwargs.get("logits_processor") or []),
                                                                    processor])
                return original(*g_args, **g_kwargs)

            model.generate = generate
            try:
                result = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            finally:
                if had_own:
                    model.generate = original
                else:
                    del model.generate
            if processor.stopped is not None:
                self._gfpo_es_stopped = processor.stopped.cpu().tolist()
            return result

    def sampled_token_count(self, completion_ids) -> int:
        """Tokens generated (trainers/cost.py): a row stopped under vLLM did not sample its forced EOS."""
        n = sum(len(ids) for ids in completion_ids)
        if self.use_vllm and self._gfpo_es_stopped is not None:
            n -= sum(self._gfpo_es_stopped)
        return n

    # ---------------------------------------------------------------------------------------------------------
    # Schedules
    # ---------------------------------------------------------------------------------------------------------
    def _gfpo_step(self) -> int:
        return int(self.state.global_step)

    def current_k(self, target: int | None = None) -> int:
        """k of this step for a fixed target (annealed from G when anneal='k')."""
        G, target = self.num_generations, self.args.num_remains_in_group if target is None else target
        if self.args.anneal == "k":
            return sel.annealed_k(target, G, self._gfpo_step(), self.args.anneal_steps)
        return int(target)

    def current_penalty(self) -> float:
        if self.args.anneal == "penalty":
            return sel.annealed_value(self.args.rejection_penalty, self._gfpo_step(), self.args.anneal_steps)
        return float(self.args.rejection_penalty)

    def _selection_known_before_rewards(self) -> bool:
        return not self._gfpo_needs_rewards and not self._gfpo_needs_text and self.group_filter_func is None

    # ---------------------------------------------------------------------------------------------------------
    # Wrapped hooks
    # ---------------------------------------------------------------------------------------------------------
    def _generate(self, prompts: list):
        result = super()._generate(prompts)
        if not self.model.training:
            return result
        completion_ids, tool_mask = result[1], result[2]
        # Same length TRL logs: model-generated tokens only (tool outputs excluded). Taken from the raw ids, so
        # mask_truncated_completions (which zeroes a truncated row's mask) cannot make a long answer look short.
        if tool_mask is not None:
            local = [int(sum(m)) for m in tool_mask]
        else:
            local = [len(ids) for ids in completion_ids]
        device = self.accelerator.device
        lengths = self.accelerator.gather(torch.tensor(local, device=device, dtype=torch.long))
        self._gfpo_capture["lengths"] = lengths
        self._gfpo_capture["n_local"] = len(local)
        self._gfpo_presel_keep = None
        stopped_local = self._gfpo_es_stopped
        if self._gfpo_es_eligible:
            flags = stopped_local if stopped_local is not None else [False] * len(local)
            stopped = self.accelerator.gather(torch.tensor(flags, device=device, dtype=torch.bool))
            self._gfpo_capture["early_stopped"] = stopped.cpu()
            self._gfpo_capture["early_stopped_local"] = list(flags)
        if self.args.rejection_mode == "drop" and self._selection_known_before_rewards():
            G = self.num_generations
            scores = sel.metric_scores(self.metric_weights, torch.zeros(lengths.numel()), lengths.float().cpu(), G)
            retained, _ = sel.topk_retained_mask(scores, self.current_k())
            stopped = self._gfpo_capture.get("early_stopped")
            if stopped is not None and (retained.reshape(-1) & stopped).any():
                raise RuntimeError("GFPO: an early-stopped row was retained; the stop rule is wrong (report this bug).")
            # Equal row counts on every rank (ZeRO-3). A rank with no retained row scores from row 0, which its
            # padding rows copy, so they get real log-probs.
            keep = sel.local_scoring_rows(retained, self.accelerator.process_index, self.accelerator.num_processes)
            self._gfpo_presel_keep = keep.to(device)
        return result

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        keep = self._gfpo_presel_keep
        extra = list(args[1:]) + [v for k, v in kwargs.items() if k != "batch_size"]  # args[0] is batch_size
        if (
            self._gfpo_in_scoring
            and keep is not None
            and not torch.is_grad_enabled()
            and input_ids.size(0) == keep.numel()
            and not any(v is not None and v is not False for v in extra)  # text-only, no entropy / aux loss
        ):
            idx = keep.nonzero().squeeze(1)
            logps, _, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids[idx], attention_mask[idx], logits_to_keep, *args, **kwargs
            )
            # Dropped rows get NaN: they are removed before the loss; TRL's sampling-divergence metrics skip NaN.
            full = logps.new_full((input_ids.size(0), logps.size(1)), float("nan"))
            full[idx] = logps
            self._gfpo_capture["skipped_logp_rows"] = self._gfpo_capture.get("skipped_logp_rows", 0) + int(
                (~keep).sum()
            )
            return full, None, aux
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            stopped = self._gfpo_capture.get("early_stopped")
            if stopped is not None:
                # A stopped row's text is cut: its reward enters no statistic (TRL's unscorable row: NaN, excluded
                # from the logged rewards, advantage 0; it is rejected and dropped anyway).
                rewards_per_func = rewards_per_func.clone()
                rewards_per_func[stopped.to(rewards_per_func.device)] = float("nan")
                self._log_completion_extra("gfpo_early_stopped", self._gfpo_capture["early_stopped_local"])
            self._gfpo_capture["rewards_per_func"] = rewards_per_func
            if self._gfpo_needs_text:
                self._gfpo_capture["completions"] = gather_object(list(completions))
                self._gfpo_capture["prompts"] = gather_object(list(prompts))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        self._gfpo_capture = {}
        self._gfpo_in_scoring = True
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._gfpo_in_scoring = False
        missing = [k for k in REQUIRED_OUTPUT_KEYS if k not in output]
        if missing:
            raise RuntimeError(f"TRL's _generate_and_score_completions no longer returns {missing}; update GFPO.")
        return self._gfpo_postprocess(output)

    # ---------------------------------------------------------------------------------------------------------
    # Selection and advantages on the gathered batch
    # ---------------------------------------------------------------------------------------------------------
    def _gfpo_scores(self, rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        G = self.num_generations
        cap = self._gfpo_capture
        if self.group_filter_func is not None:
            comps = cap["completions"]
            group_completions = [comps[i * G : (i + 1) * G] for i in range(len(comps) // G)]
            group_rewards = rewards.view(-1, G).tolist()
            kwargs = {}
            params = inspect.signature(self.group_filter_func).parameters.values()
            if any(p.kind == p.VAR_KEYWORD for p in params):
                prompts = cap["prompts"]
                kwargs = {
                    "group_lengths": lengths.view(-1, G).tolist(),
                    "group_prompts": [prompts[i * G] for i in range(len(prompts) // G)],
                    "trainer_state": self.state,
                }
            scores = self.group_filter_func(group_completions=group_completions, group_rewards=group_rewards, **kwargs)
            return torch.as_tensor(scores, dtype=torch.float32).reshape(-1, G)
        return sel.metric_scores(
            self.metric_weights,
            rewards,
            lengths.float(),
            G,
            completions=cap.get("completions"),
            prompts=cap.get("prompts"),
            trainer_state=self.state,
        )

    def _gfpo_postprocess(self, output: dict) -> dict:
        args, G, cap = self.args, self.num_generations, self._gfpo_capture
        metrics = self._metrics["train"]
        rewards_per_func = cap["rewards_per_func"].detach().float().cpu()
        lengths = cap["lengths"].cpu()
        n_local = cap["n_local"]
        # Same aggregation as TRL's sum_then_normalize; unscorable rows (every reward function None) stay NaN.
        rewards = (rewards_per_func * self.reward_weights.float().cpu().unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        R = rewards.view(-1, G)

        bucket = None
        if args.adaptive_difficulty:
            difficulty = sel.group_difficulty(R)
            # Every rank updates with the same gathered difficulties, so the digests stay identical.
            self.difficulty_digest.update(difficulty)
            ks = [self.current_k(k) for k in args.adaptive_ks]
            k, bucket, thresholds = sel.adaptive_k(
                difficulty,
                self.difficulty_digest,
                args.adaptive_quantiles,
                ks,
                self.current_k(args.adaptive_warmup_k),
                args.adaptive_warmup_questions,
            )
            metrics["gfpo/digest_questions"].append(float(self.difficulty_digest.count))
            for i, kb in enumerate(ks):
                metrics[f"gfpo/k_bucket{i}"].append(float(kb))
                frac = float((bucket == i).float().mean()) if bucket is not None else float("nan")
                metrics[f"gfpo/frac_bucket{i}"].append(frac)
            if thresholds is not None:
                for q, t in zip(args.adaptive_quantiles, thresholds, strict=True):
                    metrics[f"gfpo/difficulty_q{round(q * 100)}"].append(t)
        else:
            k = self.current_k()

        scores = self._gfpo_scores(rewards, lengths)
        # With a pre-reward selection (drop + length), unscorable rows stay eligible so both selections agree;
        # their advantage is 0 either way.
        valid = None if self._gfpo_presel_keep is not None else ~torch.isnan(R)
        retained, rank = sel.topk_retained_mask(scores, k, valid=valid)
        penalty = self.current_penalty()
        adv, zero_std = sel.gfpo_advantages(
            R,
            retained,
            rejection_mode=args.rejection_mode,
            rejection_penalty=penalty,
            stratified_delta=args.stratified_delta,
            scale_rewards=args.scale_rewards,
        )
        flat_keep, flat_adv = retained.reshape(-1), adv.reshape(-1)
        if self._gfpo_presel_keep is not None:
            pi = self.accelerator.process_index
            pre = self._gfpo_presel_keep.cpu()
            post = flat_keep[pi * n_local : (pi + 1) * n_local]
            if not torch.equal(pre | post, pre):  # every retained row must have had its log-probs computed
                raise RuntimeError("GFPO: the pre-reward selection disagrees with the final one (report this bug).")

        # Logging: all G vs retained k (the paper's 'length of all sampled vs retained').
        L = lengths.float().view(-1, G)
        k_t = torch.as_tensor(k).float()
        metrics["gfpo/k_mean"].append(float(k_t.mean()))
        metrics["gfpo/completion_length_all"].append(float(L.mean()))
        metrics["gfpo/completion_length_retained"].append(float(L[retained].mean()) if retained.any() else 0.0)
        metrics["gfpo/retained_fraction"].append(float(retained.float().mean()))
        metrics["gfpo/zero_std_fraction"].append(float(zero_std.float().mean()))
        rr, rj = R[retained], R[~retained & ~torch.isnan(R)]
        metrics["gfpo/reward_retained"].append(float(rr.mean()) if rr.numel() else float("nan"))
        metrics["gfpo/reward_rejected"].append(float(rj.mean()) if rj.numel() else float("nan"))
        if args.rejection_mode == "penalty":
            metrics["gfpo/rejection_penalty"].append(penalty)
        if self._gfpo_accuracy_column is not None:  # the seed analysis's questions, per step
            correct = rewards_per_func[:, self._gfpo_accuracy_column].view(-1, G) > 0.5
            for name, value in sel.signal_stats(adv, retained, correct, ~torch.isnan(R)).items():
                metrics[f"gfpo/{name}"].append(value)
        if "skipped_logp_rows" in cap:
            metrics["gfpo/skipped_logprob_rows"].append(float(cap["skipped_logp_rows"]))
        stopped = cap.get("early_stopped")
        if stopped is not None:
            stopped_lengths = lengths[stopped].long()
            metrics["gfpo/early_stopped"].append(float(stopped.sum()))
            metrics["gfpo/early_stopped_fraction"].append(float(stopped.float().mean()))
            # The full lengths of stopped rows are unknown: what they sampled, and the most they could have saved.
            metrics["gfpo/early_stopped_tokens"].append(float(stopped_lengths.sum()))
            metrics["gfpo/tokens_saved_max"].append(float((args.max_completion_length - stopped_lengths).sum()))
            if args.rejection_mode == "drop" and args.drop_loss_normalizer == "group" and stopped.any() and (
                args.gfpo_early_stop_normalizer == "max_length"
            ):
                extra = float((args.max_completion_length - stopped_lengths).clamp(min=0).sum())
                output["num_items_in_batch"] = output["num_items_in_batch"] + extra

        # The completions table shows GFPO's advantages, not GRPO's.
        logged = self._logs["advantages"]
        for _ in range(min(len(logged), flat_adv.numel())):
            logged.pop()
        logged.extend(flat_adv.tolist())

        if args.pairs_output_file and self.accelerator.is_main_process:
            self._gfpo_write_pairs(R, rank, retained)

        self._gfpo_last = {
            "rewards": R.clone(),
            "lengths": L.clone(),
            "retained": retained.clone(),
            "advantages": adv.clone(),
            "k": torch.as_tensor(k).clone(),
            "bucket": None if bucket is None else bucket.clone(),
            "zero_std": zero_std.clone(),
            "early_stopped": None if stopped is None else stopped.view(-1, G).clone(),
        }

        pi = self.accelerator.process_index
        device = output["advantages"].device
        local_adv = flat_adv[pi * n_local : (pi + 1) * n_local].to(device=device, dtype=output["advantages"].dtype)
        output["advantages"] = local_adv
        if args.rejection_mode == "drop":
            output = self._gfpo_drop_rows(output, flat_keep[pi * n_local : (pi + 1) * n_local].to(device))
        self._gfpo_last["local_rows"] = int(output["completion_ids"].size(0))
        return output

    def _gfpo_drop_rows(self, output: dict, keep: torch.Tensor) -> dict:
        """Remove the rejected rows of the local batch; pad every rank to the same multiple of
        steps_per_generation with zero-mask, zero-advantage copies of a row that has real log-probs."""
        n = keep.numel()
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask"):
            if output.get(key) is not None:
                raise NotImplementedError(f"rejection_mode='drop' does not support multimodal batches ({key}).")
        spg = self.args.steps_per_generation
        kept = keep.nonzero().squeeze(1)
        counts = self.accelerator.gather(torch.tensor([kept.numel()], device=keep.device))
        target = max(int(counts.max()), 1)
        target = int(math.ceil(target / spg) * spg)
        n_pad = target - kept.numel()
        src = int(kept[0]) if kept.numel() else 0
        index = torch.cat([kept, torch.full((n_pad,), src, dtype=torch.long, device=keep.device)])
        pad_rows = torch.zeros(target, dtype=torch.bool, device=keep.device)
        pad_rows[kept.numel() :] = True

        if self.args.drop_loss_normalizer == "retained":
            loss_mask = output["completion_mask"]
            if output.get("tool_mask") is not None:
                loss_mask = loss_mask * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask[kept].sum()).sum()

        new = {}
        for key, value in output.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == n:
                new[key] = value[index]
            elif isinstance(value, list) and len(value) == n:
                new[key] = [value[i] for i in index.tolist()]
            else:
                new[key] = value
        for key in ("completion_mask", "tool_mask"):
            if new.get(key) is not None:
                new[key] = new[key].masked_fill(pad_rows.unsqueeze(1), 0)
        new["advantages"] = new["advantages"].masked_fill(pad_rows, 0.0)
        new = self._gfpo_trim_completion_width(new)
        self._metrics["train"]["gfpo/drop_padding_rows"].append(
            float(self.accelerator.gather(torch.tensor([n_pad], device=keep.device)).float().mean())
        )
        return new

    _PER_TOKEN_KEYS = ("completion_ids", "completion_mask", "tool_mask", "old_per_token_logps", "ref_per_token_logps",
                       "sampling_per_token_logps", "importance_sampling_ratio")

    def _gfpo_trim_completion_width(self, batch: dict) -> dict:
        """Cut the completion columns that no kept row uses (the dropped rows were the longest ones): the loss's
        forward then runs on the retained rows' width, the same with or without early stop. Every rank keeps its own
        width (the loss is a per-rank forward); kept only for text batches whose per-token tensors are all known."""
        if any(k in batch for k in ("token_type_ids", "mm_token_type_ids")):
            return batch
        mask = batch["completion_mask"]
        width = mask.size(1)
        used = mask.bool().any(dim=0).nonzero()
        keep = max(int(used[-1]) + 1 if used.numel() else 1, 1)
        if keep >= width:
            return batch
        for key in self._PER_TOKEN_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.size(1) == width:
                batch[key] = value[:, :keep].contiguous()
        return batch

    def _gfpo_write_pairs(self, R, rank, retained):
        G = self.num_generations
        prompts, comps = self._gfpo_capture.get("prompts"), self._gfpo_capture.get("completions")
        if prompts is None or comps is None:
            return
        pairs = sel.preference_pairs(R, rank, retained)
        path = self.args.pairs_output_file
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for b, c, r in pairs:
                row = {"prompt": prompts[b * G], "chosen": comps[b * G + c], "rejected": comps[b * G + r]}
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._metrics["train"]["gfpo/pairs_written"].append(float(len(pairs)))

    # ---------------------------------------------------------------------------------------------------------
    # Checkpoints: the difficulty digest travels with them
    # ---------------------------------------------------------------------------------------------------------
    def gfpo_state_dict(self) -> dict:
        return {"difficulty_digest": None if self.difficulty_digest is None else self.difficulty_digest.state_dict()}

    def load_gfpo_state_dict(self, state: dict) -> None:
        if self.difficulty_digest is not None and state.get("difficulty_digest") is not None:
            self.difficulty_digest.load_state_dict(state["difficulty_digest"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(self.gfpo_state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Called on every resume path (DDP and DeepSpeed), as TRL does for its entropy controller state.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, STATE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    self.load_gfpo_state_dict(json.load(f))
            elif self.difficulty_digest is not None:
                logger.warning(
                    "Resuming from %s without %s: the difficulty digest starts empty.", checkpoint, STATE_FILE
                )
