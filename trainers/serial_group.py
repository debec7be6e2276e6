"""S-GRPO's math as pure functions (arXiv 2505.07686, Section 3): no TRL, no model.

Vocabulary from the paper:
- *full rollout* O_0 = T_1 .. T_n </think> C_0: one complete response to the question;
- *exit positions* P_i ~ U(1, n) over the n thought tokens (m = `num_exits` of them, sorted);
- *early-exit rollout* O_i = O_0[:P_i] + exit text + C_i, where C_i is the answer the policy writes after the
  injected exit text;
- *serial group* {O_1 .. O_m, O_0}: the exits in position order, the full rollout last (G = m + 1);
- *decaying reward* r_i = 1 / 2^(N_right - 1) if C_i is correct else 0, N_right counting the correct answers up
  to and including position i.

Token positions here are indices into the *completion* token ids (what the policy generated after the prompt).
The thinking span is `completion[s:e]`: `s` is just after a `<think>` token when the completion opens one (Qwen3
templates leave `<think>` to the model), else 0 (R1-Distill style templates put it in the prompt); `e` is the
first `</think>`, or the end of the completion when the thinking never closed. A thought position p in 1..n
(n = e - s) keeps the first p thought tokens: the prefix is `completion[: s + p]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"
SGRPO_REWARDS = ("decay", "all_one", "shortest_one")


# --------------------------------------------------------------------------------------------------- rewards
def decaying_rewards(correct: torch.Tensor) -> torch.Tensor:
    """Paper eq. (decaying reward): r_i = 1/2^(N_right - 1) if correct else 0, in position order.

    Args:
        correct: bool tensor (groups x G); each row is a serial group in position order (earliest exit first,
            full rollout last).
    Returns:
        float32 tensor (groups x G). Example (paper): [F, T, T, T, T, T, T, T, T] -> [0, 1, 1/2, ..., 1/128].
    """
    correct = _as_bool_2d(correct)
    n_right = correct.to(torch.int64).cumsum(dim=1)  # correct answers up to and including position i
    decay = torch.pow(0.5, (n_right - 1).clamp(min=0).to(torch.float32))
    return torch.where(correct, decay, torch.zeros_like(decay))


def all_one_rewards(correct: torch.Tensor) -> torch.Tensor:
    """Ablation "all 1" (paper Table 4): every correct member gets 1, no decay."""
    return _as_bool_2d(correct).to(torch.float32)


def shortest_one_rewards(correct: torch.Tensor) -> torch.Tensor:
    """Ablation "shortest 1" (paper Table 4): only the earliest (shortest) correct member gets 1."""
    correct = _as_bool_2d(correct)
    first = correct & (correct.to(torch.int64).cumsum(dim=1) == 1)
    return first.to(torch.float32)


def sgrpo_rewards(correct: torch.Tensor, kind: str = "decay") -> torch.Tensor:
    """Dispatch on `SGRPOConfig.sgrpo_reward`: 'decay' (the paper), 'all_one' or 'shortest_one' (its ablations)."""
    if kind == "decay":
        return decaying_rewards(correct)
    if kind == "all_one":
        return all_one_rewards(correct)
    if kind == "shortest_one":
        return shortest_one_rewards(correct)
    raise ValueError(f"sgrpo_reward must be one of {SGRPO_REWARDS}, got {kind!r}.")


def serial_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Paper: A_i = r_i - mean(r) over the group, with no division by the std (for stability)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def serial_rewards_for_questions(correct: torch.Tensor, num_full_rollouts: int, kind: str = "decay") -> torch.Tensor:
    """Rewards for question groups of R serial groups each (parallel x serial, beyond the paper).

    `correct` is (questions x R*(m+1)) laid out as R consecutive serial groups; the decaying reward restarts in
    each serial group (N_right counts along one reasoning path). With R = 1 this is `sgrpo_rewards`.
    """
    correct = _as_bool_2d(correct)
    q, g = correct.shape
    if g % num_full_rollouts:
        raise ValueError(f"group width {g} is not a multiple of num_full_rollouts={num_full_rollouts}")
    per_path = correct.reshape(q * num_full_rollouts, g // num_full_rollouts)
    return sgrpo_rewards(per_path, kind).reshape(q, g)


def _as_bool_2d(correct: torch.Tensor) -> torch.Tensor:
    correct = torch.as_tensor(correct)
    if correct.dim() == 1:
        correct = correct.unsqueeze(0)
    if correct.dim() != 2:
        raise ValueError(f"correctness must be (groups x G), got shape {tuple(correct.shape)}")
    return correct.to(torch.bool)


# ------------------------------------------------------------------------------------------- thinking span
@dataclass(frozen=True)
class ThinkingSpan:
    """Where the thought tokens T_1..T_n sit in a completion: `completion[start:end]`."""

    start: int  # s: index of T_1 (after a leading `<think>` if the completion opens one)
    end: int  # e: index of `</think>`, or where the thinking stopped when it never closed
    closed: bool  # False when the rollout never produced `</think>` (truncated, or ended without closing)

    @property
    def length(self) -> int:  # n in the paper
        return self.end - self.start


def thinking_span(
    completion_ids: Sequence[int], think_end_id: int, think_start_id: int | None = None, eos_ids: Sequence[int] = ()
) -> ThinkingSpan:
    """Locate the thought tokens of a full rollout.

    A rollout that never closes `</think>` (cut by the length limit, or ending on EOS inside the thinking) has
    all its generated thinking as thought tokens (a trailing EOS is excluded), and `closed=False`: exits are still
    drawn over it, and the trainer scores the full path 0 because it has no answer.
    """
    ids = list(completion_ids)
    start = 1 if (think_start_id is not None and ids and ids[0] == think_start_id) else 0
    try:
        end = ids.index(think_end_id, start)
        return ThinkingSpan(start, end, True)
    except ValueError:
        end = len(ids)
        while end > start and ids[end - 1] in eos_ids:
            end -= 1
        return ThinkingSpan(start, end, False)


# ------------------------------------------------------------------------------------------ exit positions
def exit_position_bounds(n_thinking: int, position_range: tuple[float, float] = (0.0, 1.0)) -> tuple[int, int]:
    """Inclusive bounds [lo, hi] of the thought positions p in 1..n allowed by `exit_position_range`.

    p / n must lie in [range_lo, range_hi]; at least one position is always allowed when n >= 1 (a short
    thought with a narrow range falls back to the nearest position). n = 0 gives (0, 0): the exit comes right
    after the opening of the thinking.
    """
    if n_thinking <= 0:
        return 0, 0
    lo_f, hi_f = position_range
    lo = max(1, math.ceil(lo_f * n_thinking - 1e-9))
    hi = min(n_thinking, math.floor(hi_f * n_thinking + 1e-9))
    lo = min(lo, n_thinking)
    hi = max(hi, lo)
    return lo, hi


def sample_exit_positions(
    n_thinking: int,
    num_exits: int,
    generator: torch.Generator | None = None,
    position_range: tuple[float, float] = (0.0, 1.0),
) -> list[int]:
    """Paper step 2: m positions P_i ~ U(1, n) over the thought tokens, without replacement, sorted ascending.

    Returns thought positions p (the exit keeps T_1..T_p). When fewer positions are allowed than `num_exits`
    (a very short thought), they are drawn *with* replacement so the group keeps its G = m + 1 shape; with
    n = 0 every exit is at p = 0.
    """
    if num_exits < 1:
        raise ValueError(f"num_exits must be >= 1, got {num_exits}")
    lo, hi = exit_position_bounds(n_thinking, position_range)
    if n_thinking <= 0:
        return [0] * num_exits
    width = hi - lo + 1
    if width >= num_exits:
        picks = torch.randperm(width, generator=generator)[:num_exits]
    else:
        picks = torch.randint(0, width, (num_exits,), generator=generator)
    return sorted(int(p) + lo for p in picks)


# ------------------------------------------------------------------------------------------ group assembly
def exit_prompt_ids(prompt_ids: Sequence[int], full_completion_ids: Sequence[int], cut: int,
                    exit_ids: Sequence[int]) -> list[int]:
    """What the policy continues for one exit: prompt + O_0[:cut] + exit text ids."""
    return list(prompt_ids) + list(full_completion_ids[:cut]) + list(exit_ids)


def exit_completion(full_completion_ids: Sequence[int], cut: int, exit_ids: Sequence[int],
                    answer_ids: Sequence[int]) -> list[int]:
    """An early-exit member's response tokens: O_0[:cut] + exit text + C_i (what the loss trains on)."""
    return list(full_completion_ids[:cut]) + list(exit_ids) + list(answer_ids)


def exit_logprobs(full_logprobs: Sequence[float] | None, cut: int, n_exit: int,
                  answer_logprobs: Sequence[float] | None) -> list[float] | None:
    """Sampling logprobs aligned with `exit_completion`: the full rollout's for the prefix (same context, same
    sampled tokens), NaN for the injected exit text (never sampled; TRL turns a NaN into importance ratio 1),
    the exit generation's for the answer."""
    if full_logprobs is None or answer_logprobs is None:
        return None
    return list(full_logprobs[:cut]) + [float("nan")] * n_exit + list(answer_logprobs)


def exit_text_mask(completion_len: int, cut: int, n_exit: int) -> list[int]:
    """Loss mask for one early-exit member with the injected text masked out (1 = trained token)."""
    if not 0 <= cut <= cut + n_exit <= completion_len:
        raise ValueError(f"exit text [{cut}, {cut + n_exit}) does not fit a completion of {completion_len} tokens")
    return [1] * cut + [0] * n_exit + [1] * (completion_len - cut - n_exit)


def serial_group_order(num_exits: int, num_full_rollouts: int = 1) -> list[tuple[int, int]]:
    """Member layout of one question's group: (path r, member j) with j < m an exit, j == m the full rollout.

    Paths are consecutive; inside a path the exits come in position order and the full rollout last.
    """
    return [(r, j) for r in range(num_full_rollouts) for j in range(num_exits + 1)]


def exit_quantile_bins(fractions: torch.Tensor, num_bins: int = 4) -> torch.Tensor:
    """Bin index of each exit by thought fraction p/n: [0, 1/B) -> 0, ..., [(B-1)/B, 1] -> B-1."""
    return (fractions.clamp(0.0, 1.0) * num_bins).floor().clamp(max=num_bins - 1).to(torch.long)


# ------------------------------------------------------------------------------------------- credit analysis
def prefix_token_credit(cuts: Sequence[int], advantages: Sequence[float], token: int,
                        lengths: Sequence[int] | None = None) -> float:
    """Net advantage that thought token `token` (0-based) of the full rollout O_0 receives in one serial group.

    The paper broadcasts each member's advantage to all its response tokens, and exit i's response starts with
    O_0[:P_i]; so the token is trained by the full rollout and by every exit with P_i > token. Since the
    advantages sum to zero, a token after the earliest correct exit (r = 1) is pushed down unless enough wrong
    exits precede it. `advantages` = [A_1..A_m, A_0] in serial order (full rollout last), `cuts` = [P_1..P_m].
    `lengths` = the members' response lengths |O_i| in the same order, for the per-sequence token mean of
    loss_type 'grpo' (each term / |O_i|); None weighs all tokens alike (a token-level loss such as 'dapo').
    """
    if len(advantages) != len(cuts) + 1:
        raise ValueError(f"need m + 1 advantages for m = {len(cuts)} exits, got {len(advantages)}")
    if lengths is not None and len(lengths) != len(advantages):
        raise ValueError(f"need one length per member ({len(advantages)}), got {len(lengths)}")
    weight = (lambda i: 1.0) if lengths is None else (lambda i: 1.0 / lengths[i])
    members = [i for i, p in enumerate(cuts) if p > token] + [len(cuts)]
    return float(sum(advantages[i] * weight(i) for i in members))


# ------------------------------------------------------------------ vLLM importance-sampling correction (analysis)
VLLM_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def vllm_is_ratio(old_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor,
                  mode: str = "sequence_mask", clip_min: float | None = None,
                  clip_max: float | None = 3.0) -> torch.Tensor:
    """TRL 1.16.0's vLLM importance-sampling ratio, replicated for analysis (TRL has no function for it: the lines
    sit inside `GRPOTrainer._generate_and_score_completions`, "Compute the importance sampling ratio when using
    vLLM", trl/trainer/grpo_trainer.py). tests/test_sgrpo_is.py checks it against TRL's output on a real run.

    diff = nan_to_num((old - sampling) * mask, nan=0): a NaN sampling log-prob (S-GRPO's injected exit text)
    contributes 0, i.e. ratio 1. Sequence modes sum diff over the row -> (B, 1); token modes keep (B, T).
    ratio = exp(diff); '*_truncate' clamps it to [clip_min, clip_max]; '*_mask' sets a ratio outside
    [clip_min or -inf, clip_max or +inf] to 0. TRL's defaults: sequence_mask, clip_max 3.0, clip_min None - only
    rows the trainer finds more likely than the sampler did (sum of log-prob differences > log 3) are masked.
    """
    if mode not in VLLM_IS_MODES:
        raise ValueError(f"mode must be one of {VLLM_IS_MODES}, got {mode!r}")
    diff = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    lo = clip_min if clip_min is not None else -math.inf
    hi = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


def is_affected_share(ratio: torch.Tensor, token_mask: torch.Tensor, mode: str, clip_min: float | None = None,
                      clip_max: float | None = 3.0) -> torch.Tensor:
    """Per row, the share of its loss tokens that the IS correction masks ('*_mask': ratio set to 0) or clips
    ('*_truncate': ratio at a bound). Sequence modes give 0 or 1 per row. `ratio` is TRL's
    `importance_sampling_ratio` ((B, 1) or (B, T)); `token_mask` the (B, T) mask TRL used
    (completion_mask * tool_mask)."""
    if mode not in VLLM_IS_MODES:
        raise ValueError(f"mode must be one of {VLLM_IS_MODES}, got {mode!r}")
    if mode.endswith("mask"):
        hit = ratio == 0
    else:
        hit = torch.zeros_like(ratio, dtype=torch.bool)
        if clip_max is not None:
            hit |= ratio >= clip_max
        if clip_min is not None:
            hit |= ratio <= clip_min
    hit = hit.float()
    if hit.shape[-1] == 1:  # sequence level
        return hit[:, 0]
    mask = token_mask.float()
    return (hit * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def is_row_mean_ratio(ratio: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the mean IS weight on its loss tokens (the row's ratio in sequence modes)."""
    if ratio.shape[-1] == 1:
        return ratio[:, 0].float()
    mask = token_mask.float()
    return (ratio.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def is_correction_stats(share: torch.Tensor, mean_ratio: torch.Tensor, is_full: torch.Tensor,
                        exit_frac: torch.Tensor, advantages: torch.Tensor, group_size: int,
                        groups: torch.Tensor | None = None, kind: str = "masked", sequence_level: bool = True,
                        num_bins: int = 4) -> dict[str, float]:
    """What TRL's vLLM IS correction does to serial groups (rows gathered, in serial-group order).

    Args:
        share: per row, the share of loss tokens masked / clipped (`is_affected_share`).
        mean_ratio: per row, the mean IS weight (`is_row_mean_ratio`).
        is_full: per row, True for a full rollout O_0. exit_frac: per row, P_i / n (read for exits only).
        advantages: per row, the S-GRPO advantages A = r - mean(r) (sum to 0 in each group of `group_size`).
        groups: optional bool per group, the groups to average the advantage sums over (e.g. not dropped).
        kind: "masked" ('*_mask' modes) or "clipped" ('*_truncate' modes): names the keys.
        sequence_level: the mode is 'sequence_*' (a share is 0 or 1 per row); token modes have no groups_split.
    Returns (metric name -> value; a quartile with no exit is left out):
        sgrpo/is_{kind}_frac/full, /exits, /exit_q1../exit_qB: mean share over those rows;
        sgrpo/is_{kind}_frac/groups_split (sequence modes): share of groups with some but not all members affected;
        sgrpo/is_kept_adv_sum_abs ('masked' only): mean over groups of |sum_i (1 - share_i) A_i|, the advantage
            mass the mask leaves unbalanced (0 when nothing or the whole group is masked);
        sgrpo/is_weighted_adv_sum_abs: mean over groups of |sum_i mean_ratio_i A_i|, the same with the IS weights.
    """
    share, mean_ratio = share.float(), mean_ratio.float()
    is_full = is_full.bool()
    exits = ~is_full
    pre = f"sgrpo/is_{kind}_frac"
    out: dict[str, float] = {}
    if is_full.any():
        out[f"{pre}/full"] = share[is_full].mean().item()
    if exits.any():
        out[f"{pre}/exits"] = share[exits].mean().item()
        bins = exit_quantile_bins(exit_frac[exits].float(), num_bins)
        for b in range(num_bins):
            sel = bins == b
            if sel.any():
                out[f"{pre}/exit_q{b + 1}"] = share[exits][sel].mean().item()
    s = share.view(-1, group_size)
    adv = advantages.float().view(-1, group_size)
    keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if groups is None else groups.bool()
    if sequence_level:
        hit = s > 0
        out[f"{pre}/groups_split"] = (hit.any(dim=1) & ~hit.all(dim=1)).float().mean().item()
    if keep.any():
        if kind == "masked":
            out["sgrpo/is_kept_adv_sum_abs"] = ((1 - s) * adv).sum(dim=1).abs()[keep].mean().item()
        out["sgrpo/is_weighted_adv_sum_abs"] = (mean_ratio.view(-1, group_size) * adv).sum(dim=1).abs()[keep].mean().item()
    return out
