"""Reward functions for concise-rl recipes (TRL reward signature), and the name -> reward registry.

Modules: accuracy (last boxed answer after `</think>`, math-verify), format (think-tag structure),
length (Kimi-1.5 length penalty, cosine-scaled, DAPO soft overlong), grading (math-verify in a child process
with a hard time limit), parsing (text helpers), registry (names -> callables).
"""

from rewards.accuracy import GUARD_COUNTS, extract_answer, is_correct
from rewards.registry import REWARD_REGISTRY, available_rewards, build_reward_funcs, validate_reward_names

__all__ = [
    "GUARD_COUNTS",
    "REWARD_REGISTRY",
    "available_rewards",
    "build_reward_funcs",
    "extract_answer",
    "is_correct",
    "validate_reward_names",
]
