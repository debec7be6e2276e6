"""Grading of one completion against its gold, per-sample token accounting and the pass@k estimator (pure functions).

Math answers go through the project's grader (`rewards.accuracy`: last `\\boxed{}` after `</think>`, compared
with math-verify); multiple-choice answers (GPQA) are a letter in the last `\\boxed{}` after `</think>`, or an
option's text or value there, mapped back to its letter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textsf|texttt)\s*\{([^{}]*)\}")
_CHOICE = re.compile(r"^\$?\(?\s*([A-J])\s*\)?(?:[\s.:)$].*)?$", re.DOTALL)


def normalize_choice(content: str | None, letters: str = "ABCD") -> str | None:
    """An option letter from a boxed answer: `C`, `(C)`, `\\text{C}`, `C) 3.2 eV`, `C. text`; else None."""
    if content is None:
        return None
    while _LATEX_WRAPPER.search(content):
        content = _LATEX_WRAPPER.sub(r"\1", content)
    match = _CHOICE.match(content.strip())
    return match.group(1) if match and match.group(1) in letters else None


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _plain(text: str) -> str:
    """An option or boxed text compared loosely: `\\text{}`-like wrappers, `$`, LaTeX spaces, whitespace, a final
    period and case removed."""
    while _LATEX_WRAPPER.search(text):
        text = _LATEX_WRAPPER.sub(r"\1", text)
    return re.sub(r"\\[,;:! ]|[\s$~]", "", text).rstrip(".").lower()


def _leading_value(text: str) -> float | None:
    """The number an option starts with when only a unit or words follow it ("3.2 eV" -> 3.2; "10^{-3} M" -> None)."""
    plain = _plain(text)
    match = _NUMBER.match(plain)
    rest = plain[match.end():] if match else ""
    return float(match.group()) if match and (not rest or rest[0].isalpha() or rest[0] in "%°µ") else None


def choice_letter(content: str | None, choices: tuple[str, ...] | list[str] = (), letters: str = "ABCD") -> str | None:
    """The option a boxed answer names: the text of exactly one option (`\\boxed{Proton}`, wrappers and spacing
    aside), else a letter (`normalize_choice`), else a value equal to exactly one option's leading number
    (`\\boxed{3.2}` for the option "3.2 eV"). `choices` are the option texts in letter order; without them only
    letters count."""
    if content is None:
        return None
    plain = _plain(content)
    by_text = [letters[i] for i, option in enumerate(choices[: len(letters)]) if plain and _plain(option) == plain]
    if len(by_text) == 1:
        return by_text[0]
    letter = normalize_choice(content, letters)
    if letter is not None or not choices:
        return letter
    value = _leading_value(content) if _NUMBER.fullmatch(plain or "x") else None
    by_value = [letters[i] for i, option in enumerate(choices[: len(letters)])
                if value is not None and _leading_value(option) == value]
    return by_value[0] if len(by_value) == 1 else None


def extract_choice(completion: str, require_thinking: bool = True, letters: str = "ABCD",
                   choices: tuple[str, ...] | list[str] = ()) -> str | None:
    """The option letter of the last `\\boxed{}` after `</think>` (extraction shared with rewards.accuracy): a letter,
    or an option's text or value mapped back to its letter (`choice_letter`)."""
    from rewards.accuracy import extract_answer

    return choice_letter(extract_answer(completion, require_thinking), choices, letters)


def grade(completion: str, gold: str, kind: str = "math", require_thinking: bool = True,
          choices: tuple[str, ...] | list[str] = ()) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion. `kind` is "math" or "choice" (gold is a letter; `choices` the
    option texts in letter order).

    Math goes to the project's grader (rewards.accuracy: math-verify with a hard timeout). Letters are graded
    here, more leniently than the training reward (`C) 3.2 eV` counts as C, and so do the option's own text or value
    in the box), since evaluation of multiple choice should not depend on whether the model boxes the letter or
    copies the option.
    """
    if kind == "choice":
        letter = extract_choice(completion, require_thinking, choices=choices)
        return letter, letter is not None and letter == gold.strip().strip("()").upper()
    from rewards.accuracy import extract_answer, is_correct

    return extract_answer(completion, require_thinking), bool(is_correct(completion, gold, require_thinking))


@dataclass(frozen=True)
class TokenCounts:
    """Per-sample token accounting; `num_tokens = thinking_tokens + injected_tokens + answer_tokens`.

    thinking_tokens: model tokens up to and including the first `</think>` the model wrote; for a forced exit,
    exactly the B model tokens before the injected exit text. injected_tokens: the S-GRPO exit text (0 unless
    forced). answer_tokens: model tokens after `</think>` (eos included, as in TRL's completion lengths).
    """

    num_tokens: int
    thinking_tokens: int
    answer_tokens: int
    injected_tokens: int = 0
    closed_thinking: bool = False


def count_tokens(completion_ids: list[int], think_end_id: int | None, injected_at: int | None = None,
                 injected_len: int = 0) -> TokenCounts:
    """Split completion ids into thinking / injected / answer tokens.

    `injected_at` is the index where the forced-exit text starts (= B) and `injected_len` its length.
    Without a `</think>` token the whole completion counts as thinking (the model never answered).
    """
    n = len(completion_ids)
    if injected_at is not None:
        return TokenCounts(n, injected_at, n - injected_at - injected_len, injected_len, True)
    if think_end_id is not None and think_end_id in completion_ids:
        thinking = completion_ids.index(think_end_id) + 1
        return TokenCounts(n, thinking, n - thinking, 0, True)
    return TokenCounts(n, n, 0, 0, False)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with n samples, c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Exact integer binomials and one division (no float products to lose precision; k = 1 gives exactly c / n).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total  # comb(n - c, k) is 0 when n - c < k: pass@k = 1


def pass_at_k_ks(n: int) -> list[int]:
    """The k reported for n samples per question: the powers of two up to n, and n itself (8 -> 1, 2, 4, 8)."""
    return sorted({1 << i for i in range(n.bit_length())} | {n}) if n >= 1 else []


def benchmark_pass_at_k(counts: list[tuple[int, int]], ks: list[int]) -> dict[str, float]:
    """A benchmark's pass@k for each k: the mean of `pass_at_k` over the questions' (n, c) with n >= k; keys are
    str(k) (JSON keys), a k no question reaches is left out."""
    out = {}
    for k in ks:
        values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
        if values:
            out[str(k)] = sum(values) / len(values)
    return out
