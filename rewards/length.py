"""Length-aware rewards used by the papers' baselines: Kimi-1.5 length penalty, cosine-scaled, DAPO overlong.

- `soft_overlong` IS `trl.rewards.get_soft_overlong_punishment` (DAPO Eq. 13), only renamed for logging.
- `cosine` uses the formula of `trl.rewards.get_cosine_scaled_reward` (Yeo et al. 2025, "Demystifying Long
  Chain-of-Thought Reasoning", arXiv 2502.03373, App. C.1), rewritten because TRL's version decides correctness
  with its `accuracy_reward` (a `solution` column, any boxed answer, the thinking included); ours uses
  rewards.accuracy (the last boxed answer after `</think>`).
- `length_penalty` (Kimi k1.5's length reward) is not in TRL.

Lengths are token counts from TRL's `completion_ids` (characters of the text when called without them).
"""

import math

from rewards.accuracy import DEFAULT_TIMEOUT_S, grade_completions, report_guarded
from rewards.parsing import completion_text


def kimi_length_rewards(lengths: list[int], correct: list[bool]) -> list[float]:
    """Kimi k1.5 length reward for the responses of ONE question (Kimi Team 2025, arXiv 2501.12599, Sec. 2.3.3):

        lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)
        len_reward_i = lambda_i if response i is correct else min(0, lambda_i)

    with min_len / max_len over the group; all zeros when every response has the same length.
    So the shortest correct response gets +0.5, the longest -0.5, and wrong responses are never rewarded.
    """
    shortest, longest = min(lengths), max(lengths)
    if shortest == longest:
        return [0.0] * len(lengths)
    rewards = []
    for length, ok in zip(lengths, correct, strict=True):
        lam = 0.5 - (length - shortest) / (longest - shortest)
        rewards.append(lam if ok else min(0.0, lam))
    return rewards


def cosine_scaled_reward(
    length: int,
    correct: bool,
    max_len: int,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
) -> float:
    """Cosine-scaled reward (Yeo et al. 2025, App. C.1; same formula and defaults as TRL's):

        r = v_min + (v_max - v_min) * (1 + cos(pi * min(length / max_len, 1))) / 2

    correct: (v_min, v_max) = (min_value_correct, max_value_correct), so shorter is better;
    wrong: (v_min, v_max) = (max_value_wrong, min_value_wrong), so a short wrong answer is penalized most.
    The length is clamped at max_len, where cos would otherwise climb back up.
    """
    if correct:
        v_min, v_max = min_value_correct, max_value_correct
    else:
        v_min, v_max = max_value_wrong, min_value_wrong
    progress = min(length / max_len, 1.0)
    return v_min + 0.5 * (v_max - v_min) * (1.0 + math.cos(progress * math.pi))


def _lengths(completions, completion_ids) -> list[int]:
    if completion_ids is not None:
        return [len(ids) if ids is not None else 0 for ids in completion_ids]
    return [len(completion_text(completion)) for completion in completions]


def _groups(prompts) -> list[range]:
    """Index ranges of consecutive completions of the same prompt (TRL lays a group's G completions out
    consecutively)."""
    groups, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            groups.append(range(start, i))
            start = i
    return groups


class LengthPenaltyReward:
    """TRL reward for the S-GRPO paper's "RL + length penalty" baseline: `alpha * len_reward_i` with Kimi k1.5's
    len_reward (kimi_length_rewards), to be listed after `accuracy` in `reward_funcs` (TRL sums the rewards, so
    the total is accuracy + alpha * len_reward). Groups are runs of consecutive completions with the same prompt,
    within the completions this process scores: when a group is split across processes (per-process generation
    batch not a multiple of num_generations), min/max length are over the local part only."""

    __name__ = "length_penalty"

    def __init__(self, alpha: float = 1.0, require_thinking: bool = True, timeout_seconds: float = DEFAULT_TIMEOUT_S):
        if not alpha >= 0:
            raise ValueError(f"length_penalty: alpha must be >= 0, got {alpha!r}")
        self.alpha = alpha
        self.require_thinking = require_thinking
        self.timeout_seconds = timeout_seconds

    def __call__(self, prompts, completions, completion_ids=None, answer=None, log_metric=None, **kwargs):
        statuses = grade_completions(completions, answer, self.require_thinking, self.timeout_seconds)
        report_guarded(log_metric, self.__name__, statuses)
        correct = [status == "correct" for status in statuses]
        lengths = _lengths(completions, completion_ids)
        rewards = [0.0] * len(completions)
        for group in _groups(prompts):
            group_rewards = kimi_length_rewards([lengths[i] for i in group], [correct[i] for i in group])
            for i, reward in zip(group, group_rewards, strict=True):
                rewards[i] = self.alpha * reward
        return rewards


class CosineReward:
    """TRL reward: cosine_scaled_reward of each completion (replaces `accuracy`; it already encodes correctness)."""

    __name__ = "cosine"

    def __init__(
        self,
        max_len: int,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
        require_thinking: bool = True,
        timeout_seconds: float = DEFAULT_TIMEOUT_S,
    ):
        if not (isinstance(max_len, int) and max_len > 0):
            raise ValueError(f"cosine: max_len must be a positive int (the max completion length), got {max_len!r}")
        self.max_len = max_len
        self.values = dict(
            min_value_wrong=min_value_wrong,
            max_value_wrong=max_value_wrong,
            min_value_correct=min_value_correct,
            max_value_correct=max_value_correct,
        )
        self.require_thinking = require_thinking
        self.timeout_seconds = timeout_seconds

    def __call__(self, prompts, completions, completion_ids=None, answer=None, log_metric=None, **kwargs):
        statuses = grade_completions(completions, answer, self.require_thinking, self.timeout_seconds)
        report_guarded(log_metric, self.__name__, statuses)
        lengths = _lengths(completions, completion_ids)
        return [
            cosine_scaled_reward(length, status == "correct", self.max_len, **self.values)
            for length, status in zip(lengths, statuses, strict=True)
        ]


def soft_overlong(max_completion_len: int, soft_punish_cache: int):
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, Eq. 13): TRL's
    `get_soft_overlong_punishment`, used as is: 0 up to max_completion_len - soft_punish_cache tokens, then a
    linear ramp down to -1 at max_completion_len, and -1 beyond."""
    if not (isinstance(max_completion_len, int) and max_completion_len > 0):
        raise ValueError(f"soft_overlong: max_completion_len must be a positive int, got {max_completion_len!r}")
    if not (isinstance(soft_punish_cache, int) and 0 <= soft_punish_cache <= max_completion_len):
        raise ValueError(
            f"soft_overlong: soft_punish_cache must be an int in [0, max_completion_len={max_completion_len}], "
            f"got {soft_punish_cache!r}"
        )
    from trl.rewards import get_soft_overlong_punishment  # imported here: trl is heavy, validation needs none of it

    reward = get_soft_overlong_punishment(max_completion_len, soft_punish_cache)
    reward.__name__ = "soft_overlong"  # TRL logs rewards by __name__; match the recipe's name
    return reward
