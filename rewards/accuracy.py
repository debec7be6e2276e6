"""Accuracy reward: the last `\\boxed{...}` after `</think>`, graded against the gold `answer` with math-verify.

Why not `trl.rewards.accuracy_reward` / `reasoning_accuracy_reward`: they read a `solution` column (our datasets
give `answer`), accept only conversational completions, hand math-verify the whole completion (it then picks a
boxed answer by its own priority, not necessarily the last one after `</think>`; `accuracy_reward` also reads
answers inside the thinking), and switch their timeouts off outside the main thread, which leaves a pathological
answer free to hang a training step. Here:

- the answer is the content of the LAST complete `\\boxed{...}` after the last `</think>` (parsing.py); with
  `require_thinking=True` (default) a completion that never closes its thinking scores 0;
- gold answers that are one multiple-choice letter (GPQA: "C" or "(C)") are compared by a small explicit rule:
  the boxed content, with `\\text{}`-like wrappers, parentheses, spaces, `$` and a final period removed, must be
  that same capital letter (so `\\boxed{C}`, `\\boxed{(C)}`, `\\boxed{\\text{C}}` match "C"; `\\boxed{c}` does not);
- everything else goes to math-verify (LaTeX then plain-expression extraction on `\\boxed{<answer>}`), in a child
  process with a hard time limit (math_verify_worker.py), after digit-group separators inside numbers are removed
  (`1\\,000`, `1{,}000` -> `1000`: parsing.normalize_number_spacing);
- cheap guards first: an answer longer than MAX_ANSWER_CHARS, nested deeper than MAX_BRACE_DEPTH, or holding an
  invisible character (see has_invisible_chars) is not sent to math-verify. A guarded or timed-out answer scores as wrong, adds to GUARD_COUNTS, logs a warning, and, when TRL
  passes `log_metric`, is reported per call as `rewards/<name>/guarded`.
"""

import logging
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from rewards.math_verify_worker import grade
from rewards.parsing import brace_depth, completion_text, last_boxed, normalize_number_spacing, split_thinking

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000  # a boxed final answer longer than this is not an answer (real ones are < 200 chars)
MAX_BRACE_DEPTH = 50  # deeper nesting only comes from degenerate text (and can blow the LaTeX parser's recursion)
DEFAULT_TIMEOUT_S = 5.0  # per answer, hard (the grading worker is killed past it)

# Why answers were scored 0 without a full grading: "too_long", "too_deep", "invisible_chars", "timeout".
# Process-wide, never reset.
GUARD_COUNTS: Counter = Counter()
GUARDED = ("too_long", "too_deep", "invisible_chars", "timeout")
_ORDINARY_WHITESPACE = frozenset("\t\n\r")


def has_invisible_chars(text: str) -> bool:
    """True when `text` holds a control character other than tab / newline / carriage return, a lone surrogate,
    or another character of Unicode category C (format, private use, unassigned).

    Such an answer is void (scored wrong): no reader sees these characters, and math-verify quietly drops them, so
    `\\boxed{\\ud800 4 \\x00}` would grade as 4. A policy optimises against whatever the grader forgives; an
    answer must be exactly what a reader would read, so nothing invisible is forgiven."""
    return any(unicodedata.category(ch)[0] == "C" and ch not in _ORDINARY_WHITESPACE for ch in text)


_GOLD_LETTER = re.compile(r"^\(?([A-J])\)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def extract_answer(completion, require_thinking: bool = True) -> str | None:
    """The final answer of a completion (string or conversational list): the content of the last complete
    `\\boxed{...}` after the last `</think>`. None when there is none, or when `require_thinking` and the
    thinking was never closed. An answer that appears only inside the thinking is not returned."""
    text = completion_text(completion)
    split = split_thinking(text)
    if split is None:
        if require_thinking:
            return None
        answer_part = text
    else:
        answer_part = split[1]
    boxed = last_boxed(answer_part)
    if boxed is None or not boxed.strip():
        return None
    return boxed.strip()


def grade_answer(pred: str | None, gold, timeout_seconds: float = DEFAULT_TIMEOUT_S) -> str:
    """Grade an extracted answer against the gold answer: "correct", "wrong", or a guard reason in GUARDED."""
    if pred is None or gold is None:
        return "wrong"
    if has_invisible_chars(pred):
        return "invisible_chars"
    gold = str(gold).strip().strip("$").strip()
    letter = _GOLD_LETTER.match(gold)
    if letter:
        return "correct" if _normalize_letter(pred) == letter.group(1) else "wrong"
    if len(pred) > MAX_ANSWER_CHARS:
        return "too_long"
    if brace_depth(pred) > MAX_BRACE_DEPTH:
        return "too_deep"
    return _grade_cached(normalize_number_spacing(pred), normalize_number_spacing(gold), timeout_seconds)


# Rewards that need correctness (accuracy, length_penalty, cosine) grade the same answers in one step, and a
# group often repeats an answer: remember recent verdicts, timeouts included (a retry would time out again).
_grade_cached = lru_cache(maxsize=8192)(grade)


def _normalize_letter(pred: str) -> str:
    if len(pred) > 50:
        return ""
    pred = _TEXT_WRAPPER.sub(r"\1", pred)
    return re.sub(r"[\s()$]", "", pred).rstrip(".")


def grade_completions(completions, answers, require_thinking: bool = True, timeout_seconds: float = DEFAULT_TIMEOUT_S):
    """Statuses ("correct", "wrong" or a guard reason) for a batch; counts and logs the guarded ones."""
    if answers is None:
        raise ValueError(
            "this reward needs the gold answers: the dataset must have an `answer` column (train.py maps the "
            "recipe's `answer_column` to it)."
        )
    statuses = []
    for completion, gold in zip(completions, answers, strict=True):
        status = grade_answer(extract_answer(completion, require_thinking), gold, timeout_seconds)
        if status in GUARDED:
            GUARD_COUNTS[status] += 1
            logger.warning(
                "answer scored as wrong without full grading (%s; guarded so far: %s)", status, dict(GUARD_COUNTS)
            )
        statuses.append(status)
    return statuses


def is_correct(completion, gold, require_thinking: bool = True, timeout_seconds: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the completion's final answer (see extract_answer) matches `gold`. For evaluation scripts."""
    return grade_completions([completion], [gold], require_thinking, timeout_seconds)[0] == "correct"


def report_guarded(log_metric, name: str, statuses) -> None:
    """Report how many answers of this call were guarded, through TRL's `log_metric` kwarg when given."""
    if log_metric is not None:
        log_metric(f"rewards/{name}/guarded", float(sum(status in GUARDED for status in statuses)))


class AccuracyReward:
    """TRL reward: 1.0 / 0.0 for a correct / wrong final answer (`scale="01"`), or 1.0 / -1.0 (`scale="pm1"`,
    GFPO's reward range). Guarded answers (see module doc) score as wrong. A callable class rather than a closure
    so TRL can pickle it for its async rollout worker."""

    __name__ = "accuracy"

    def __init__(self, require_thinking: bool = True, scale: str = "01", timeout_seconds: float = DEFAULT_TIMEOUT_S):
        if scale not in ("01", "pm1"):
            raise ValueError(f"accuracy: scale must be '01' (rewards 0/1) or 'pm1' (rewards -1/1), got {scale!r}")
        if not timeout_seconds > 0:
            raise ValueError(f"accuracy: timeout_seconds must be > 0, got {timeout_seconds!r}")
        self.require_thinking = require_thinking
        self.wrong = 0.0 if scale == "01" else -1.0
        self.timeout_seconds = timeout_seconds

    def __call__(self, prompts, completions, completion_ids=None, answer=None, log_metric=None, **kwargs):
        statuses = grade_completions(completions, answer, self.require_thinking, self.timeout_seconds)
        report_guarded(log_metric, self.__name__, statuses)
        return [1.0 if status == "correct" else self.wrong for status in statuses]
