"""Format reward: the think-tag structure of a completion that starts inside the thinking.

Why not `trl.rewards.think_format_reward`: it requires the completion to START with `<think>`, but our prompts
already open `<think>` (the chat template's generation prompt), so the completion starts inside the thinking
and TRL's reward would score every well-formed completion 0. It also does not look for a final answer.
"""

from rewards.parsing import THINK_END, THINK_START, completion_text, last_boxed


def has_valid_format(completion) -> bool:
    """Exactly one `</think>`; non-empty thinking before it (a leading `<think>` is allowed, no other one);
    after it an answer holding a complete, non-empty `\\boxed{...}`."""
    text = completion_text(completion)
    if text.count(THINK_END) != 1:
        return False
    thinking, answer = text.split(THINK_END)
    thinking = thinking.strip().removeprefix(THINK_START)
    if not thinking.strip() or THINK_START in thinking:
        return False
    boxed = last_boxed(answer)
    return boxed is not None and bool(boxed.strip())


class FormatReward:
    """TRL reward: 1.0 for a well-formed completion (see has_valid_format), else 0.0."""

    __name__ = "format"

    def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        return [1.0 if has_valid_format(completion) else 0.0 for completion in completions]
