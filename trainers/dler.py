"""DLER: Doing Length pEnalty Right (Liu et al. 2025, arXiv 2510.15110; code: NVlabs/DLER, verl-based) as a thin
wrapper of TRL's GRPOTrainer.

DLER is a training recipe around the simplest length penalty, truncation (rewards/truncation.py): batch-wise reward
normalisation instead of group-wise, a higher clip for low-probability tokens, dynamic sampling, 16 rollouts a
prompt. TRL 1.16 has every piece but dynamic sampling: `loss_type: dapo` (token-level), `epsilon_high` (clip-higher),
`beta` (KL loss). This file adds what it lacks, never copying `_generate_and_score_completions`:

1. ``_calculate_rewards`` (wrapped): keep the gathered rewards of each call.
2. ``_generate_and_score_completions`` (wrapped, train mode): call ``super()`` once; with dynamic sampling, drop the
   groups whose rewards are all equal (`filter_groups`: no signal under a group baseline) and call ``super()`` again on
   fresh prompts drawn from the training set until every process holds as many informative groups as its generation
   batch (`select_groups`), as DAPO / verl's `filter_groups` does; merge the calls' outputs (`merge_outputs`);
3. recompute the advantages over the kept batch (`dler_advantages`: group-mean baseline, batch std, verl's
   `reinforce_plus_plus_baseline` that DLER's script runs) and TRL's `num_items_in_batch`; log the filtered count.

Groups must lie whole on each process (checked before launch), so every decision is local to a rank's whole groups;
the loop's stop test is gathered, so every rank calls TRL the same number of times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

logger = logging.getLogger(__name__)

# GRPOTrainer methods overridden or called by name, and the output keys relied on (tests/test_dler.py checks them).
WRAPPED_TRL_HOOKS = ("_calculate_rewards", "_generate_and_score_completions")
WRAPPED_TRL_ATTRIBUTES = ("_metrics", "num_generations", "reward_weights", "accelerator", "train_dataset")
REQUIRED_OUTPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                        "num_items_in_batch")
# Output keys merge_outputs knows how to pad: prompt side (left-padded), completion side (right-padded, per token).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
PER_TOKEN_KEYS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                  "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask")
ZERO_STD_ATOL = 1e-6


# ------------------------------------------------------------------------------------------------------------------
# The math, as pure functions on tensors
# ------------------------------------------------------------------------------------------------------------------
def filter_groups(rewards: torch.Tensor, num_generations: int, atol: float = ZERO_STD_ATOL) -> torch.Tensor:
    """Dynamic sampling's filter (DAPO Eq. 11; verl `algorithm.filter_groups`, metric `seq_reward`, which DLER's
    script enables): True for each group whose G rewards are not all equal (population std > atol), the groups that
    carry a signal. `rewards` is (B * G,) with a group's G responses consecutive; returns (B,) bool."""
    grouped = rewards.reshape(-1, num_generations).float()
    return grouped.std(dim=1, unbiased=False) > atol


def select_groups(keep_per_round: list[torch.Tensor], target: int) -> tuple[list[torch.Tensor], int]:
    """Which groups of each generation round make the batch: the kept groups in round order, up to `target` (the
    batch is refilled to its size, and the surplus of the last round dropped, as verl does). When the rounds ran out
    with fewer than `target` kept groups, the batch is completed with filtered groups, earliest first (their
    advantages are 0). Returns one bool mask per round (over its groups) and how many filtered groups were used."""
    chosen = [torch.zeros_like(k, dtype=torch.bool) for k in keep_per_round]
    left = target
    for keep, mask in zip(keep_per_round, chosen, strict=True):
        idx = keep.nonzero().squeeze(1)[:left]
        mask[idx] = True
        left -= idx.numel()
    padded = 0
    for keep, mask in zip(keep_per_round, chosen, strict=True):
        if left == 0:
            break
        idx = (~keep).nonzero().squeeze(1)[:left]
        mask[idx] = True
        left -= idx.numel()
        padded += idx.numel()
    if left:
        raise ValueError(f"select_groups: {target} groups wanted, the rounds hold only {target - left}")
    return chosen, padded


def dler_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "batch", eps: float = 1e-6,
                    batch_std: torch.Tensor | None = None) -> torch.Tensor:
    """DLER's advantage (Sec. 3.1, batch-wise reward normalisation; DLER's script runs verl's
    `reinforce_plus_plus_baseline`): A_i = (r_i - mean of its group) / std over the batch of those centred rewards.

    `scale`: 'batch' (DLER), 'group' (GRPO's per-group std, the paper's baseline), 'none' (no division, Dr. GRPO).
    `batch_std`: the batch std when the batch spans processes (computed from the gathered centred rewards); else the
    std of this batch's centred rewards. Population std, like verl's `masked_whiten` (which weighs each response by
    its token count: here each response counts once)."""
    grouped = rewards.reshape(-1, num_generations).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred.reshape(-1)
    if scale == "group":
        std = grouped.std(dim=1, unbiased=False, keepdim=True)
        return torch.where(std > ZERO_STD_ATOL, centred / (std + eps), torch.zeros_like(centred)).reshape(-1)
    if scale != "batch":
        raise ValueError(f"scale must be 'batch', 'group' or 'none', got {scale!r}")
    std = centred.std(unbiased=False) if batch_std is None else batch_std
    return (centred / (std + eps)).reshape(-1)


def _pad_width(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    if t.size(1) == width:
        return t
    pad = t.new_full((t.size(0), width - t.size(1), *t.shape[2:]), value)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def merge_outputs(parts: list[dict], rows: list[torch.Tensor], pad_token_id: int,
                  sequence_level_is: bool = False) -> dict:
    """The rows `rows[i]` (index tensors) of each round's output `parts[i]`, as one output dict: prompt tensors
    left-padded (TRL pads prompts on the left), per-token tensors right-padded to the widest round; a per-sequence
    (B, 1) importance ratio (`sequence_level_is`, TRL's sequence_* modes) stays as is. `num_items_in_batch` is left to
    the caller (it is gathered)."""
    if len(parts) == 1:
        return {k: (v[rows[0].to(v.device)] if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
                for k, v in parts[0].items()}
    unknown = sorted({k for p in parts for k in p} - {*PROMPT_KEYS, *PER_TOKEN_KEYS, "advantages", "num_items_in_batch"})
    if unknown:
        raise ValueError(f"DLER's dynamic sampling cannot merge TRL outputs holding {unknown} (multimodal or tool "
                         "inputs): set dynamic_sampling: false.")
    p_width = max(p["prompt_ids"].size(1) for p in parts)
    c_width = max(p["completion_ids"].size(1) for p in parts)
    out = {}
    for key in parts[0]:
        if key == "num_items_in_batch":
            continue
        pieces = []
        for part, idx in zip(parts, rows, strict=True):
            t = part[key][idx.to(part[key].device)]
            if key in PROMPT_KEYS:
                t = _pad_width(t, p_width, pad_token_id if key == "prompt_ids" else 0, left=True)
            elif key in PER_TOKEN_KEYS and not (key == "importance_sampling_ratio" and sequence_level_is):
                t = _pad_width(t, c_width, pad_token_id if key == "completion_ids" else 0, left=False)
            pieces.append(t)
        out[key] = torch.cat(pieces, dim=0)
    return out


# ------------------------------------------------------------------------------------------------------------------
# Config and trainer
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class DLERConfig(GRPOConfig):
    r"""GRPOConfig with DLER's values as defaults (arXiv 2510.15110 Sec. 3; NVlabs/DLER `dler_slurm.sh`) and dynamic
    sampling. The truncation length is the recipe's `max_completion_length` with `reward_funcs: [truncation]`."""

    requires_whole_groups_per_rank = True  # a class attribute (not a field): checks/recipe.py's batch plan reads it

    num_generations: int | None = field(
        default=16, metadata={"help": "Rollouts per prompt: 16 (DLER Sec. 3; dler_slurm.sh n_resp_per_prompt=16)."})
    learning_rate: float = field(
        default=1e-6, metadata={"help": "1e-6, constant, no warm-up (dler_slurm.sh actor.optim.lr=1e-6)."})
    beta: float = field(
        default=0.0005,
        metadata={"help": "KL loss coefficient: 0.0005 (dler_slurm.sh use_kl_loss=True, kl_loss_coef=0.0005)."})
    epsilon: float = field(
        default=0.2, metadata={"help": "Lower clip: 0.2 (dler_slurm.sh clip_ratio_low=0.2)."})
    epsilon_high: float | None = field(
        default=0.28,
        metadata={"help": "Higher clip (DAPO's clip-higher, DLER Sec. 3.2: keeps low-probability, high-entropy "
                          "tokens updating and the entropy from collapsing): 0.28 (dler_slurm.sh clip_ratio_high)."})
    scale_rewards: str = field(
        default="batch",
        metadata={"help": "Reward normalisation. 'batch' (DLER Sec. 3.1): advantages are the group-centred rewards "
                          "divided by their std over the whole batch (dler_slurm.sh adv_estimator="
                          "reinforce_plus_plus_baseline), which removes the bias that group-wise std shows under "
                          "truncation's many zero rewards. 'group' (GRPO) and 'none' for ablations."})
    loss_type: str = field(
        default="dapo",
        metadata={"help": "Token-level loss aggregation: 'dapo' (dler_slurm.sh loss_agg_mode=token-mean)."})
    dynamic_sampling: bool = field(
        default=True,
        metadata={"help": "Dynamic sampling (DLER Sec. 3.3, from DAPO; dler_slurm.sh algorithm.filter_groups."
                          "enable=True): drop the groups whose rewards are all equal and sample fresh prompts until the "
                          "batch is full again. Logged: dler/filtered_groups, dler/generation_rounds."})
    max_num_gen_batches: int = field(
        default=10,
        metadata={"help": "Generation rounds per batch at most, the first included (verl's filter_groups."
                          "max_num_gen_batches; DLER leaves verl's 0 = no limit). When reached, the batch is completed "
                          "with filtered groups (advantage 0) and a warning; 0 = no limit."})

    def __post_init__(self):
        super().__post_init__()
        if self.scale_rewards not in ("batch", "group", "none"):
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: use 'batch' (DLER), 'group' or 'none'.")
        if self.mask_truncated_completions:
            raise ValueError("mask_truncated_completions: true removes the truncated responses from the loss, and they "
                             "are DLER's length penalty (reward 0): set it to false.")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError("DLER normalises the summed reward: set multi_objective_aggregation: sum_then_normalize.")
        if self.max_num_gen_batches < 0:
            raise ValueError(f"max_num_gen_batches must be >= 0 (0: no limit), got {self.max_num_gen_batches}.")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: DLER's baseline is the group mean (paper: 16).")
        spg = self.steps_per_generation
        if spg is not None and (self.per_device_train_batch_size * spg) % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x steps_per_generation = {self.per_device_train_batch_size} x {spg} "
                f"must be a multiple of num_generations ({self.num_generations}): DLER filters whole groups, so each "
                "process must hold whole groups.")


class DLERTrainer(GRPOTrainer):
    """GRPOTrainer with DLER's dynamic sampling and batch-wise advantages (module docstring). Eval mode is TRL's."""

    _tag_names = ["trl", "grpo", "dler"]

    def __init__(self, model, reward_funcs=None, args: DLERConfig | None = None, **kwargs):
        if not isinstance(args, DLERConfig):
            raise ValueError("DLERTrainer needs args=DLERConfig(...).")
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self._dler_rewards: torch.Tensor | None = None
        self._dler_refill_gen = torch.Generator().manual_seed(int(self.args.seed) + 7919)
        self._dler_refill_order: list[int] = []
        self.dler_last: dict = {}  # the last batch's decisions, for inspection and tests

    # -------------------------------------------------------------------------------------------- wrapped hooks
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self._dler_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        G, acc = self.num_generations, self.accelerator
        n_local = len(inputs)
        if n_local % G:
            raise RuntimeError(f"DLER needs whole groups on each process: {n_local} rows here, G = {G}.")
        target = n_local // G
        parts, rewards, keeps = [], [], []
        rounds, filtered, batch = 0, 0, inputs
        while True:
            out = super()._generate_and_score_completions(batch)
            missing = [k for k in REQUIRED_OUTPUT_KEYS if k not in out]
            if missing:
                raise RuntimeError(f"TRL's _generate_and_score_completions no longer returns {missing}; update DLER.")
            local = self._dler_local_rewards(len(batch))
            keep = filter_groups(local, G) if self.args.dynamic_sampling else torch.ones(target, dtype=torch.bool)
            parts.append(out)
            rewards.append(local)
            keeps.append(keep)
            rounds += 1
            filtered += int((~keep).sum())
            have = torch.tensor([sum(int(k.sum()) for k in keeps)], device=acc.device)
            fewest = int(acc.gather(have).min())
            limit = self.args.max_num_gen_batches
            if not self.args.dynamic_sampling or fewest >= target or (limit and rounds >= limit):
                break
            batch = self._dler_refill_inputs(n_local)
        chosen, padded = select_groups(keeps, target)
        padded_total = int(acc.gather(torch.tensor([padded], device=acc.device)).sum())
        if padded_total:
            logger.warning("DLER dynamic sampling: %d generation rounds left %d groups without signal in the batch "
                           "(advantage 0); raise max_num_gen_batches or check the data's difficulty.", rounds,
                           padded_total)
        rows = [(m.repeat_interleave(G)).nonzero().squeeze(1) for m in chosen]
        sequence_is = str(getattr(self.args, "vllm_importance_sampling_mode", "")).startswith("sequence")
        merged = merge_outputs(parts, rows, self._dler_pad_id(), sequence_is)
        kept_rewards = torch.cat([r[idx] for r, idx in zip(rewards, rows, strict=True)]).to(acc.device)
        merged["advantages"] = self._dler_advantages(kept_rewards).to(merged["advantages"].dtype)
        loss_mask = merged["completion_mask"] if "tool_mask" not in merged else merged["completion_mask"] * merged[
            "tool_mask"]
        merged["num_items_in_batch"] = acc.gather(loss_mask.sum()).sum()
        self._dler_log(rounds, filtered, padded_total, target)
        self.dler_last = {"rounds": rounds, "keep_per_round": keeps, "chosen": chosen, "rewards": kept_rewards,
                          "advantages": merged["advantages"]}
        return merged

    # ---------------------------------------------------------------------------------------------------- helpers
    def _dler_local_rewards(self, n_local: int) -> torch.Tensor:
        """This process's rows of the summed, weighted rewards TRL normalises (sum_then_normalize)."""
        per_func = self._dler_rewards
        weights = self.reward_weights.to(per_func.device)
        total = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        start = self.accelerator.process_index * n_local
        return total[start:start + n_local].detach().cpu()

    def _dler_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        G, scale = self.num_generations, self.args.scale_rewards
        batch_std = None
        if scale == "batch":  # the std of the centred rewards over every process's batch (equal sizes)
            grouped = rewards.reshape(-1, G).float()
            centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
            batch_std = self.accelerator.gather(centred).float().std(unbiased=False)
        return dler_advantages(rewards, G, scale, batch_std=batch_std)

    def _dler_refill_inputs(self, n_local: int) -> list[dict]:
        """Fresh prompts for the next round: the same draw on every process (a seeded permutation of the training
        set, its own stream), each process taking its slice, each prompt repeated G times as TRL's sampler does."""
        dataset = self.train_dataset
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError("DLER's dynamic sampling draws refill prompts by index: give a map-style train_dataset "
                             "or set dynamic_sampling: false.")
        G, acc = self.num_generations, self.accelerator
        n_q = n_local // G
        need = n_q * acc.num_processes
        while len(self._dler_refill_order) < need:
            self._dler_refill_order += torch.randperm(len(dataset), generator=self._dler_refill_gen).tolist()
        draw, self._dler_refill_order = self._dler_refill_order[:need], self._dler_refill_order[need:]
        mine = draw[acc.process_index * n_q:(acc.process_index + 1) * n_q]
        return [dict(dataset[int(i)]) for i in mine for _ in range(G)]

    def _dler_pad_id(self) -> int:
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        pad = getattr(tok, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def _dler_log(self, rounds: int, filtered: int, padded: int, target: int) -> None:
        acc = self.accelerator
        totals = acc.gather(torch.tensor([filtered, target], device=acc.device).unsqueeze(0)).sum(dim=0).tolist()
        metrics = self._metrics["train"]
        metrics["dler/filtered_groups"].append(float(totals[0]))  # groups dropped this batch, all processes
        metrics["dler/generation_rounds"].append(float(rounds))
        metrics["dler/padded_groups"].append(float(padded))
        metrics["dler/kept_fraction"].append(1.0 - totals[0] / max(1, rounds * totals[1]))
