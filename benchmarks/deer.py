"""DEER, "Dynamic Early Exit in Reasoning Models" (Yang et al., arXiv 2504.15895; code: the iie-ycx/DEER repository,
vllm-deer.py): a training-free early exit, evaluated here beside the trained methods on the same rollouts.

DEER lets the model think; at each reasoning transition point (a "Wait" the model writes) it appends an answer
inducer ("\\n**Final Answer**\\n\\\\boxed"), lets the model write a short trial answer (at most 20 tokens, up to the
brace that closes the box), and scores it by the mean probability of the trial's tokens after the first (the "{").
Above a threshold (0.95) the thinking stops there: "\\n</think>\\n\\n" is appended and the final answer written.
Otherwise the trial is discarded and the thought goes on from before it. At most 10 trials a sample (then the thought
runs to its own end), and a thought longer than 90% of the token budget is closed there.

How it runs here: on the full rollout the evaluator has already sampled (the `full` budget), DEER's decisions are
replayed transition by transition: the trial prompts are `prompt + rollout[:cut] + inducer`, one batch call per
round of trials (with vLLM they reuse the rollout's prefix from the cache), and a sample that exits gets its answer
from `prompt + rollout[:cut] + exit text`. What DEER would have generated after a rejected trial is the rollout's own
continuation, which is what DEER's loop samples too (it restarts generation from the same text), so the thought tokens,
trial tokens and answers are DEER's; the wall time is this replay's, not DEER's loop's. One sweep of thresholds shares
the trials: a threshold exits at the first trial whose confidence is above it, and only the trials up to that one
count as its cost.

Departures from the code, stated: the trial answer is decoded greedily (vllm-deer.py leaves its temperature at vLLM's
default of 1.0, while its comment says greedy); the trial stops where the box's braces balance rather than at a list
of closing-brace strings; a transition's cut is the token boundary before the marker (DEER stops on the marker string).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from benchmarks.generation import Backend, Completion, answer_phase

PAPER_INDUCER = "\n**Final Answer**\n\\boxed"
GPQA_INDUCER = "\n**Final Answer**\nI believe the final answer, rather than the option, is \\boxed"
CONFIDENCE_POLICIES = ("mean", "geometric", "min")


@dataclass(frozen=True)
class DeerSettings:
    """DEER's knobs, named as in its code (vllm-deer.py): `points` -> marker, `answer_prompt_str` -> inducer,
    `prob_check_max_tokens` -> trial_tokens, `policy` avg1 / avg2 / min -> confidence, `max_judge_steps` ->
    max_trials, `think_ratio`; the threshold is the budget's value (`deer=T`)."""

    marker: str = "Wait"
    inducer: str = PAPER_INDUCER
    exit_text: str = "\n</think>\n\n"
    trial_tokens: int = 20
    confidence: str = "mean"
    max_trials: int = 10
    think_ratio: float = 0.9


def trial_confidence(logprobs: list[float], policy: str = "mean") -> float:
    """DEER's confidence of a trial answer from its tokens' log-probs, skipping the first token (the box's "{"):
    the arithmetic mean of the probabilities (`mean`, the code's avg1), their geometric mean (`geometric`, avg2) or
    the smallest (`min`). A trial of one token or none scores 0."""
    probs = [math.exp(lp) for lp in logprobs[1:]]
    if not probs:
        return 0.0
    if policy == "mean":
        return sum(probs) / len(probs)
    if policy == "geometric":
        return math.exp(sum(math.log(max(p, 1e-10)) for p in probs) / len(probs))
    if policy == "min":
        return min(probs)
    raise ValueError(f"DEER confidence policy must be one of {CONFIDENCE_POLICIES}, got {policy!r}")


def boxed_trial_length(pieces: list[str]) -> int:
    """Tokens of a trial answer up to and including the one that closes the box's brace (the inducer ends with
    "\\boxed", so the trial opens with "{"); all of them when the brace never closes."""
    depth, opened = 0, False
    for i, piece in enumerate(pieces):
        for ch in piece:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}" and opened:
                depth -= 1
                if depth == 0:
                    return i + 1
    return len(pieces)


def transition_cuts(pieces: list[str], marker: str) -> list[int]:
    """Token indices (into the thought's tokens, given as their decoded pieces) where a transition starts: the first
    token whose text reaches an occurrence of `marker` as a word. The cut keeps the tokens before it."""
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    text = "".join(pieces)
    cuts = []
    for m in re.finditer(rf"(?<![A-Za-z]){re.escape(marker)}(?![a-z])", text):
        token = max(i for i, s in enumerate(starts) if s <= m.start())
        if token > 0 and (not cuts or token > cuts[-1]):
            cuts.append(token)
    return cuts


def first_exit(confidences: list[float], threshold: float) -> int | None:
    """Index of the first trial whose confidence is above the threshold (DEER: `pred_prob > threshold`)."""
    return next((k for k, c in enumerate(confidences) if c > threshold), None)


@dataclass
class DeerResult:
    """One sample under one threshold."""

    threshold: float
    exited: bool  # a trial passed the threshold (or the thought hit the think_ratio limit: `limit_exit`)
    limit_exit: bool
    trials: int  # trials DEER ran before stopping (each costs its trial tokens)
    trial_tokens: int
    confidences: list[float] = field(default_factory=list)
    cut: int | None = None  # index into the rollout where the exit text was injected
    completion: Completion | None = None


def deer_exits(backend: Backend, tokenizer, prompts: list[list[int]], rollouts: list[list[int]], seeds: list[int],
               thresholds: list[float], settings: DeerSettings, max_tokens: int, answer_max_tokens: int,
               eos_ids: list[int], think_end_id: int, think_start_id: int | None,
               truncated: list[bool] | None = None) -> list[list[DeerResult]]:
    """DEER replayed on finished rollouts, for every threshold (see the module docstring). Returns, per rollout, one
    DeerResult per threshold, in the order given."""
    from trainers.serial_group import thinking_span

    inducer = tokenizer.encode(settings.inducer, add_special_tokens=False)
    exit_ids = tokenizer.encode(settings.exit_text, add_special_tokens=False)
    limit = int(settings.think_ratio * max_tokens)
    spans = [thinking_span(r, think_end_id, think_start_id, eos_ids) for r in rollouts]
    cuts = []
    for r, span in zip(rollouts, spans, strict=True):
        thought = r[span.start: span.start + min(span.length, limit)]
        pieces = [tokenizer.decode([t]) for t in thought]
        cuts.append([span.start + c for c in transition_cuts(pieces, settings.marker)][: settings.max_trials])
    confidences: list[list[float]] = [[] for _ in rollouts]
    trial_lengths: list[list[int]] = [[] for _ in rollouts]
    top = max(thresholds)
    for k in range(settings.max_trials):  # one round of trials: every sample still below the highest threshold
        rows = [i for i, cs in enumerate(cuts) if k < len(cs) and first_exit(confidences[i], top) is None]
        if not rows:
            break
        outs = backend.generate([list(prompts[i]) + list(rollouts[i][: cuts[i][k]]) + inducer for i in rows],
                                settings.trial_tokens, [seeds[i] for i in rows], list(eos_ids), greedy=True,
                                logprobs=True)
        for i, out in zip(rows, outs, strict=True):
            n = boxed_trial_length([tokenizer.decode([t]) for t in out.ids])
            confidences[i].append(trial_confidence((out.logprobs or [])[:n], settings.confidence))
            trial_lengths[i].append(n)
    results: list[list[DeerResult]] = []
    answers: dict[tuple[int, int], None] = {}  # (row, cut) pairs whose answer is needed, in order
    for i, span in enumerate(spans):
        row = []
        for t in thresholds:
            k = first_exit(confidences[i], t)
            if k is not None:
                res = DeerResult(t, True, False, k + 1, sum(trial_lengths[i][: k + 1]), confidences[i][: k + 1],
                                 cut=cuts[i][k])
            elif span.length > limit:  # DEER closes a thought that reaches think_ratio of the budget and answers
                done = min(len(confidences[i]), len(cuts[i]))
                res = DeerResult(t, True, True, done, sum(trial_lengths[i][:done]), confidences[i][:done],
                                 cut=span.start + limit)
            else:
                done = len(confidences[i])
                res = DeerResult(t, False, False, done, sum(trial_lengths[i]), list(confidences[i]))
            if res.cut is not None:
                answers[(i, res.cut)] = None
            row.append(res)
        results.append(row)
    keys = list(answers)
    outs = answer_phase(backend, [prompts[i] for i, _ in keys], [list(rollouts[i][:c]) + exit_ids for i, c in keys],
                        [seeds[i] for i, _ in keys], answer_max_tokens, eos_ids) if keys else []
    by_key = dict(zip(keys, outs, strict=True))
    for i, row in enumerate(results):
        for res in row:
            if res.cut is None:
                res.completion = Completion(list(rollouts[i]), truncated=bool(truncated[i]) if truncated else False)
            else:
                out = by_key[(i, res.cut)]
                res.completion = Completion(list(rollouts[i][: res.cut]) + exit_ids + list(out.ids),
                                            truncated=not out.finished, forced_exit=True, injected_at=res.cut,
                                            injected_len=len(exit_ids), cached_tokens=out.cached_tokens)
    return results
