"""GFPO's math as pure functions on tensors (arXiv 2508.09726), independent of TRL.

Layout convention: a batch of B questions with G sampled responses each is a (B, G) tensor (row-major, the same
order as TRL's global batch: G consecutive rows per question).

Scores are *goodness*: higher means "keep". Every metric is oriented so that this holds (``length`` scores a
response by ``-|o_i|``, so the top k are the k shortest). Ties are broken deterministically by the response's
position in the group (the earlier one is kept), so every rank makes the identical selection.

Composite metrics (``{"length": 1.0, "my.mod:classifier": 0.5}``): each component's oriented score is
standardised per group, ``z = (x - mean_G) / std_G`` with the population std over the group's valid responses
(a component with zero spread in a group contributes 0 there), and the weighted sum of the z-scores is the
goodness. A negative weight inverts a component. A single metric is used raw (ranking is invariant to scaling).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

REJECTION_MODES = ("zero", "drop", "penalty", "stratified")
ANNEAL_MODES = ("none", "k", "penalty")
# Paper's Adaptive Difficulty GFPO defaults for G = 16: very hard, hard, medium, easy.
PAPER_ADAPTIVE_QUANTILES = (0.25, 0.5, 0.75)
PAPER_ADAPTIVE_KS_G16 = (8, 8, 6, 4)
PAPER_ADAPTIVE_WARMUP_K_G16 = 8
ZERO_STD_ATOL = 1e-6


# --------------------------------------------------------------------------------------------------------------
# Metric registry
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A response-scoring metric. ``fn(completions, rewards, lengths, **kwargs)`` returns one value per response.

    ``rewards`` and ``lengths`` are float tensors of shape (N,), ``completions`` a list of N completions (strings
    or conversational message lists, as TRL passes them; ``None`` when the trainer did not gather them).
    ``higher_is_better`` orients the raw value into a goodness score.
    """

    name: str
    fn: Callable
    higher_is_better: bool = True
    needs_rewards: bool = True
    needs_completions: bool = False


def _length(completions, rewards, lengths, **kwargs):
    return lengths.float()


def _token_efficiency(completions, rewards, lengths, **kwargs):
    # R_i / |o_i| (paper's token-efficiency metric). With rewards in [-1, 1] a long wrong answer scores close to 0,
    # above a short wrong one, so it can be retained and receive the steepest penalty (as the paper notes).
    return rewards.float() / lengths.float().clamp(min=1.0)


METRICS: dict[str, Metric] = {
    "length": Metric("length", _length, higher_is_better=False, needs_rewards=False),
    "token_efficiency": Metric("token_efficiency", _token_efficiency, higher_is_better=True),
}


def register_metric(name: str, higher_is_better: bool = True, needs_rewards: bool = True, needs_completions=True):
    """Decorator registering ``fn(completions, rewards, lengths, **kwargs) -> list[float] | Tensor`` as a metric."""

    def deco(fn):
        METRICS[name] = Metric(name, fn, higher_is_better, needs_rewards, needs_completions)
        return fn

    return deco


def resolve_metric(name: str) -> Metric:
    """A registered metric by name, or ``module:function`` imported (higher is better, unless the function has
    an attribute ``higher_is_better = False``). Raises ValueError with the fix."""
    if name in METRICS:
        return METRICS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"filter_metric: cannot import {name!r} ({err}). Use 'package.module:function' with the module on "
                "the Python path, or one of the registered metrics " + str(sorted(METRICS)) + "."
            ) from err
        return Metric(name, fn, bool(getattr(fn, "higher_is_better", True)), True, True)
    raise ValueError(
        f"filter_metric: unknown metric {name!r}. Use one of {sorted(METRICS)}, a 'module:function' path, or a "
        'weighted composite such as {"length": 1.0, "token_efficiency": 0.5}.'
    )


def parse_metric_spec(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"length"`` -> ``{"length": 1.0}``; a mapping or a JSON object string -> ``{name: weight}``. Validated."""
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"filter_metric: {spec!r} is not valid JSON ({err}).") from err
        else:
            spec = {text: 1.0}
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError("filter_metric must be a metric name or a non-empty mapping {metric: weight}.")
    weights = {}
    for name, weight in spec.items():
        resolve_metric(str(name))
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight == 0:
            raise ValueError(f"filter_metric: weight of {name!r} must be a finite non-zero number, got {weight!r}.")
        weights[str(name)] = float(weight)
    return weights


def metric_needs(weights: Mapping[str, float]) -> tuple[bool, bool]:
    """(needs_rewards, needs_completions) of a parsed metric spec."""
    metrics = [resolve_metric(n) for n in weights]
    return any(m.needs_rewards for m in metrics), any(m.needs_completions for m in metrics)


def group_zscore(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row (group) standardisation of a (B, G) tensor with the population std over the valid entries;
    rows with zero spread give 0. Invalid entries give 0."""
    valid = torch.ones_like(x, dtype=torch.bool) if valid is None else valid
    mean, std, _ = masked_population_stats(x, valid)
    z = torch.where(std.unsqueeze(1) > ZERO_STD_ATOL, (x - mean.unsqueeze(1)) / std.unsqueeze(1).clamp(min=1e-30), 0.0)
    return torch.where(valid, z, torch.zeros_like(z))


def metric_scores(
    weights: Mapping[str, float],
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    group_size: int,
    completions: Sequence | None = None,
    **kwargs,
) -> torch.Tensor:
    """Goodness scores, shape (B, G), for flat (N,) rewards and lengths (N = B * G). Higher = retained first."""
    rewards = rewards.float().reshape(-1)
    lengths = lengths.float().reshape(-1)
    valid = ~torch.isnan(rewards).reshape(-1, group_size)
    oriented = []
    for name, weight in weights.items():
        metric = resolve_metric(name)
        raw = metric.fn(completions=completions, rewards=rewards, lengths=lengths, **kwargs)
        raw = torch.as_tensor(raw, dtype=torch.float32, device=rewards.device).reshape(-1, group_size)
        oriented.append((raw if metric.higher_is_better else -raw, weight))
    if len(oriented) == 1:
        return oriented[0][0] * math.copysign(1.0, oriented[0][1])
    return sum(w * group_zscore(x, valid & ~torch.isnan(x)) for x, w in oriented)


# --------------------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------------------
def topk_retained_mask(
    scores: torch.Tensor, k: int | torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Retained set S of every group: the k highest scores, ties to the earlier position.

    Args:
        scores: (B, G) goodness. NaN scores and invalid entries (e.g. unscorable rewards) are never retained.
        k: an int, or a (B,) tensor of per-group k (Adaptive Difficulty); clipped to the number of valid entries.
    Returns:
        (retained bool (B, G), rank long (B, G)) where rank 0 is the best response of its group.
    """
    B, G = scores.shape
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()
    valid = valid & ~torch.isnan(scores)
    s = torch.where(valid, scores.float(), torch.full_like(scores.float(), -math.inf))
    # Stable descending sort: equal scores keep their original order, so the earlier response wins the tie.
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(G, device=scores.device).expand(B, G).contiguous())
    k_t = torch.as_tensor(k, device=scores.device).reshape(-1).expand(B) if not isinstance(k, int) else None
    k_t = torch.full((B,), k, device=scores.device) if k_t is None else k_t
    retained = (rank < k_t.unsqueeze(1)) & valid
    return retained, rank


def masked_population_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row mean, POPULATION std (divide by the count) and count of the masked entries of a (B, G) tensor."""
    m = mask.bool() & ~torch.isnan(x)
    count = m.sum(dim=1)
    xz = torch.where(m, x, torch.zeros_like(x))
    mean = xz.sum(dim=1) / count.clamp(min=1)
    var = torch.where(m, (x - mean.unsqueeze(1)) ** 2, torch.zeros_like(x)).sum(dim=1) / count.clamp(min=1)
    return mean, var.sqrt(), count


def gfpo_advantages(
    rewards: torch.Tensor,
    retained: torch.Tensor,
    rejection_mode: str = "zero",
    rejection_penalty: float = 0.0,
    stratified_delta: float = 0.0,
    scale_rewards: str = "group",
    zero_std_atol: float = ZERO_STD_ATOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of a (B, G) reward tensor given the retained mask.

    Retained (paper eq.): ``A_i = (R_i - mean_S) / std_S`` with the population std over S (``scale_rewards=
    "none"`` drops the division, Dr. GRPO style). A group whose S has zero std (all retained rewards equal, or
    |S| = 1) gets advantage 0 for S: there is no signal to normalise, and the paper leaves the case unspecified.
    Rejected, by ``rejection_mode``: ``zero``/``drop`` -> 0; ``penalty`` -> ``-rejection_penalty``;
    ``stratified`` -> ``(R_i - mean_G) / std_G - stratified_delta`` (population std over all valid G; a zero-std
    group gives ``-delta``). Unscorable rewards (NaN) always get 0.

    Returns (advantages (B, G), zero_std (B,) bool for the retained sets).
    """
    if rejection_mode not in REJECTION_MODES:
        raise ValueError(f"rejection_mode must be one of {REJECTION_MODES}, got {rejection_mode!r}.")
    rewards = rewards.float()
    valid = ~torch.isnan(rewards)
    retained = retained.bool() & valid
    mean_s, std_s, _ = masked_population_stats(rewards, retained)
    zero_std = std_s <= zero_std_atol
    centred = rewards - mean_s.unsqueeze(1)
    if scale_rewards == "group":
        adv_s = torch.where(
            zero_std.unsqueeze(1), torch.zeros_like(centred), centred / std_s.clamp(min=1e-30).unsqueeze(1)
        )
    elif scale_rewards == "none":
        adv_s = torch.where(zero_std.unsqueeze(1), torch.zeros_like(centred), centred)
    else:
        raise ValueError(f"scale_rewards must be 'group' or 'none' for GFPO, got {scale_rewards!r}.")

    if rejection_mode in ("zero", "drop"):
        adv_rej = torch.zeros_like(rewards)
    elif rejection_mode == "penalty":
        adv_rej = torch.full_like(rewards, -float(rejection_penalty))
    else:  # stratified: whole-group baseline minus delta
        mean_g, std_g, _ = masked_population_stats(rewards, valid)
        zero_g = (std_g <= zero_std_atol).unsqueeze(1)
        cen_g = rewards - mean_g.unsqueeze(1)
        z_g = cen_g / std_g.clamp(min=1e-30).unsqueeze(1) if scale_rewards == "group" else cen_g
        adv_rej = torch.where(zero_g, torch.zeros_like(z_g), z_g) - float(stratified_delta)

    adv = torch.where(retained, adv_s, adv_rej)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return adv, zero_std


def signal_stats(
    advantages: torch.Tensor, retained: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, float]:
    """What the filter does to the learning signal (the seed analysis's two worries), over a (B, G) batch:

    - ``retained_correct_negative``: share of retained correct responses whose advantage is < 0 (good by the whole
      group's standard, punished because the retained set's baseline is higher); with a 0/1 reward it is 0 by
      construction (no retained reward exceeds a correct one), so it needs a graded reward;
    - ``correct_negative``: share of all correct responses whose advantage is < 0 (adds the rejected ones that
      ``penalty`` and ``stratified`` push down);
    - ``incorrect_no_signal``: share of incorrect responses whose advantage is exactly 0 (failures nothing learns from);
    - ``rejected_correct``: share of correct responses the filter rejects;
    - ``rejected_advantage_mean``: mean advantage of the rejected responses.
    NaN where the denominator is empty. ``valid`` (default: all) excludes unscorable responses.
    """
    valid = torch.ones_like(retained, dtype=torch.bool) if valid is None else valid.bool()
    kept, good = retained.bool() & valid, correct.bool() & valid
    bad, rejected = ~correct.bool() & valid, ~retained.bool() & valid

    def share(num: torch.Tensor, den: torch.Tensor) -> float:
        return float((num & den).sum() / den.sum()) if den.any() else float("nan")

    return {
        "retained_correct_negative": share(advantages < 0, kept & good),
        "correct_negative": share(advantages < 0, good),
        "incorrect_no_signal": share(advantages == 0, bad),
        "rejected_correct": share(rejected, good),
        "rejected_advantage_mean": float(advantages[rejected].mean()) if rejected.any() else float("nan"),
    }


# --------------------------------------------------------------------------------------------------------------
# Adaptive Difficulty GFPO
# --------------------------------------------------------------------------------------------------------------
def group_difficulty(rewards: torch.Tensor) -> torch.Tensor:
    """Difficulty of each question = mean reward of its G sampled responses (lower = harder); NaN-aware."""
    return torch.nanmean(rewards.float(), dim=1)


def difficulty_buckets(difficulty: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Bucket index per question: 0 if d < t_0 (very hard), 1 if d < t_1, ..., len(t) if d >= t_last (easy).

    This is the paper's rule with strict ``<``; with ties (0/1 rewards), a difficulty equal to a quantile goes to
    the easier bucket. Groups whose rewards are all equal have zero std and get no signal in any bucket anyway.
    """
    t = torch.as_tensor(list(thresholds), dtype=torch.float32, device=difficulty.device)
    return torch.searchsorted(t, difficulty.float().contiguous(), right=True)


def default_adaptive_ks(G: int) -> list[int]:
    """Paper's k per bucket for G = 16 (8, 8, 6, 4), scaled by G / 16 for other G (at least 2, at most G)."""
    return [min(G, max(2, round(k * G / 16))) for k in PAPER_ADAPTIVE_KS_G16]


def default_adaptive_warmup_k(G: int) -> int:
    return min(G, max(2, round(PAPER_ADAPTIVE_WARMUP_K_G16 * G / 16)))


class QuantileDigest:
    """Streaming quantiles of question difficulty: a thin wrapper over ``fastdigest.TDigest`` (a maintained
    t-digest in Rust) that counts questions and serialises to a JSON-safe dict for checkpoints."""

    def __init__(self, max_centroids: int = 1000):
        from fastdigest import TDigest

        self.max_centroids = int(max_centroids)
        self._digest = TDigest(max_centroids=self.max_centroids)

    @property
    def count(self) -> int:
        return int(self._digest.n_values) if not self._digest.is_empty() else 0

    def update(self, values) -> None:
        values = [float(v) for v in torch.as_tensor(values).reshape(-1).tolist() if not math.isnan(float(v))]
        if values:
            self._digest.batch_update(values)

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        return [float(self._digest.quantile(float(q))) for q in qs]

    def state_dict(self) -> dict:
        return {
            "max_centroids": self.max_centroids,
            "digest": None if self._digest.is_empty() else self._digest.to_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        from fastdigest import TDigest

        self.max_centroids = int(state.get("max_centroids", self.max_centroids))
        d = state.get("digest")
        self._digest = TDigest.from_dict(d) if d else TDigest(max_centroids=self.max_centroids)

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantileDigest) and self.state_dict() == other.state_dict()


def adaptive_k(
    difficulty: torch.Tensor,
    digest: QuantileDigest,
    quantiles: Sequence[float],
    ks: Sequence[int],
    warmup_k: int,
    warmup_questions: int,
) -> tuple[torch.Tensor, torch.Tensor | None, list[float] | None]:
    """k per question from its difficulty bucket; ``warmup_k`` for all until the digest has seen
    ``warmup_questions`` questions. Does not update the digest. Returns (k (B,), bucket (B,) or None, thresholds)."""
    if digest.count < max(1, warmup_questions):
        return torch.full_like(difficulty, warmup_k, dtype=torch.long), None, None
    thresholds = digest.quantiles(quantiles)
    bucket = difficulty_buckets(difficulty, thresholds)
    k = torch.as_tensor(list(ks), dtype=torch.long, device=difficulty.device)[bucket]
    return k, bucket, thresholds


# --------------------------------------------------------------------------------------------------------------
# Annealing
# --------------------------------------------------------------------------------------------------------------
def anneal_fraction(step: int, anneal_steps: int) -> float:
    """Linear progress in [0, 1]: 0 at step 0, 1 from ``anneal_steps`` on (1 when annealing is off)."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, step / anneal_steps))


def annealed_k(target_k: int, G: int, step: int, anneal_steps: int) -> int:
    """k moves linearly from G (GRPO-like, nothing filtered) to ``target_k``: ``G - floor((G - k) * frac)``."""
    return int(G - math.floor((G - target_k) * anneal_fraction(step, anneal_steps) + 1e-9))


def annealed_value(target: float, step: int, anneal_steps: int, start: float = 0.0) -> float:
    """A float (the penalty lambda) moving linearly from ``start`` to ``target``."""
    return start + (target - start) * anneal_fraction(step, anneal_steps)


# --------------------------------------------------------------------------------------------------------------
# Preference pairs for DPO
# --------------------------------------------------------------------------------------------------------------
def preference_pairs(rewards: torch.Tensor, rank: torch.Tensor, retained: torch.Tensor) -> list[tuple[int, int, int]]:
    """One (group, chosen, rejected) per group, as positions within the group.

    chosen = the retained response with the highest reward (ties: best filter rank); rejected = among the rejected
    responses whose reward is not above the chosen one (so a correct long answer is never the loser to a wrong
    short one), the worst by filter rank (e.g. the longest). Groups with no such pair are skipped.
    """
    pairs = []
    B, G = rewards.shape
    for b in range(B):
        r, rk, s = rewards[b].tolist(), rank[b].tolist(), retained[b].tolist()
        kept = [i for i in range(G) if s[i] and not math.isnan(r[i])]
        if not kept:
            continue
        chosen = min(kept, key=lambda i: (-r[i], rk[i]))
        losers = [i for i in range(G) if not s[i] and not math.isnan(r[i]) and r[i] <= r[chosen]]
        if losers:
            pairs.append((b, chosen, max(losers, key=lambda i: rk[i])))
    return pairs


def local_scoring_rows(retained: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rows of `rank`'s slice that the no-grad old/ref log-prob passes score in drop mode, as a bool mask.

    `retained` is the global (flattened) retained mask, identical on every rank; each rank holds an equal slice.
    Every rank scores the same number of rows: its retained rows, then its first rejected rows up to the largest
    retained count of any rank (at least 1). TRL scores in chunks of the batch size, and under ZeRO-3 every chunk is
    a forward that gathers the sharded parameters on all ranks: unequal counts would mean unequal chunk counts and
    a rank waiting forever. The extra rows' log-probs are computed but unused.
    """
    slices = retained.reshape(-1).reshape(world, -1)
    target = max(1, int(slices.sum(1).max()))
    keep = slices[rank].clone()
    rejected = (~keep).nonzero().squeeze(1)
    keep[rejected[: target - int(keep.sum())]] = True
    return keep


# --------------------------------------------------------------------------------------------------------------
# Early stop of rejected rollouts (length metric)
# --------------------------------------------------------------------------------------------------------------
def early_stop_mask(
    lengths: torch.Tensor, finished: torch.Tensor, running: torch.Tensor, k: int | torch.Tensor
) -> torch.Tensor:
    """Running responses that the ``length`` metric is certain to reject, whatever they write next: (B, G) bool.

    ``lengths`` (B, G): tokens generated so far (running rows) or the final length (finished rows); ``finished``:
    the response has ended (EOS, or ``max_completion_length``) and its length is final; ``running``: still being
    generated (rows that are neither, e.g. a group member on another rank or a row already stopped, are ignored).
    A running row with n tokens and no end yet will have a final length of at least ``b = n + 1``. A finished row
    j beats it for sure when ``L_j < b``, or ``L_j == b`` and j comes first in the group: ``topk_retained_mask``
    keeps the earlier of equal lengths, so j is ahead whether the row ends at b or later. With k or more such
    finished rows the row can never be among the k retained. Stopping it there and recording it with length b (its
    n tokens and a forced EOS) keeps it behind the same k rows, and every retained row is no longer than the k-th
    of them, so the retained set is the one the full rollout gives: the rule is exact for ``length`` with a fixed k.
    A row tied at b with a LATER finished row is not stopped: if it ended at b it would be kept before that row.
    """
    lengths = lengths.long()
    finished, running = finished.bool(), running.bool() & ~finished.bool()
    B, G = lengths.shape
    bound = (lengths + 1).unsqueeze(1)  # (B, 1, G): the running row i's lower bound
    lj = lengths.unsqueeze(2)  # (B, G, 1): the finished row j's length
    pos = torch.arange(G, device=lengths.device)
    earlier = (pos.view(G, 1) < pos.view(1, G)).unsqueeze(0)  # [j, i]: j before i
    beats = finished.unsqueeze(2) & ((lj < bound) | ((lj == bound) & earlier))
    k_t = torch.as_tensor(k, device=lengths.device).reshape(-1)
    k_t = k_t.expand(B) if k_t.numel() == 1 else k_t
    return running & (beats.sum(dim=1) >= k_t.unsqueeze(1))
