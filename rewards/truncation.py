"""DLER's truncation length penalty (Liu et al. 2025, "DLER: Doing Length pEnalty Right", arXiv 2510.15110, Sec. 3):
the simplest length penalty there is. A response earns its correctness reward only if it ends within the truncation
length L; a response that reaches L without ending is cut there and earns nothing.

How DLER's own code gets there (NVlabs/DLER, `dler_slurm.sh` and `verl-dler/`): the rollout's maximum response
length IS the truncation length (`max_response_length=4000`), the score is 1 for a correct final answer after
`</think>` and 0 otherwise (`verl/utils/reward_score/deepscaler`), so a cut response, which has no final answer, scores
0; a cut response that still holds a correct boxed answer is multiplied by `stop_properly_penalty.penalty_coef`
(default 0.1 in `recipe/dapo/config/dapo_trainer.yaml`): `truncated_scale` below, 0 by default as the paper states
the penalty.

Here L is `max_length` tokens of TRL's `completion_ids` (the ids include the eos token a finished response ends
with). A response of L tokens or more counts as cut: with `max_completion_length = L` (DLER's set-up, and what
checks/recipe.py fills in when `max_length` is not given) that is exactly the responses TRL stopped at the limit,
except one that happened to end with its eos as its L-th token; with a longer `max_completion_length`, every response
over L is penalised the same way.
"""

from rewards.accuracy import DEFAULT_TIMEOUT_S, grade_completions, report_guarded


def truncation_rewards(lengths: list[int], correct: list[bool], max_length: int,
                       truncated_scale: float = 0.0) -> list[float]:
    """DLER's truncation reward for a batch: 1 for a correct response shorter than `max_length` tokens, 0 for a wrong
    one, and `truncated_scale` x correctness for a response of `max_length` tokens or more (DLER's paper: 0)."""
    rewards = []
    for length, ok in zip(lengths, correct, strict=True):
        value = 1.0 if ok else 0.0
        rewards.append(value * truncated_scale if length >= max_length else value)
    return rewards


class TruncationReward:
    """TRL reward for DLER (`reward_funcs: [truncation]`, in place of `accuracy`): `truncation_rewards` on the
    completions' token lengths and the accuracy reward's grading (the last `\\boxed{}` after `</think>`)."""

    __name__ = "truncation"

    def __init__(self, max_length: int, truncated_scale: float = 0.0, require_thinking: bool = True,
                 timeout_seconds: float = DEFAULT_TIMEOUT_S):
        if not (isinstance(max_length, int) and max_length > 0):
            raise ValueError(f"truncation: max_length must be a positive int (DLER's truncation length L, e.g. 4000), "
                             f"got {max_length!r}")
        if not 0.0 <= truncated_scale <= 1.0:
            raise ValueError(f"truncation: truncated_scale must be in [0, 1] (0: the paper; 0.1: DLER's code's "
                             f"stop_properly_penalty), got {truncated_scale!r}")
        self.max_length = max_length
        self.truncated_scale = float(truncated_scale)
        self.require_thinking = require_thinking
        self.timeout_seconds = timeout_seconds

    def __call__(self, prompts, completions, completion_ids=None, answer=None, log_metric=None, **kwargs):
        if completion_ids is None:
            raise ValueError("truncation: needs TRL's completion_ids (token lengths) to know which responses were cut")
        statuses = grade_completions(completions, answer, self.require_thinking, self.timeout_seconds)
        report_guarded(log_metric, self.__name__, statuses)
        lengths = [len(ids) for ids in completion_ids]
        if log_metric is not None:
            log_metric("rewards/truncation/truncated_fraction",
                       sum(n >= self.max_length for n in lengths) / max(1, len(lengths)))
        return truncation_rewards(lengths, [s == "correct" for s in statuses], self.max_length, self.truncated_scale)
