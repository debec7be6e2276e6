"""Text helpers shared by the rewards: completion text, the `</think>` split, the last `\\boxed{...}`.

All functions here are linear in the input length (one regex pass), so they are safe on huge strings.
"""

import re

THINK_END = "</think>"
THINK_START = "<think>"

# One pass over the text: every `\boxed{` opener and every brace.
_BRACE_TOKENS = re.compile(r"\\boxed\s*\{|[{}]")


def completion_text(completion) -> str:
    """The text of one completion, given as a string or as TRL's conversational list of messages.

    TRL may parse a conversational completion with the tokenizer's response schema, which moves the thinking into
    `reasoning_content` (or `thinking`) and drops `</think>`; we put the tag back so every reward sees one format.
    """
    if isinstance(completion, str):
        return completion
    if completion is None:  # a failed generation: scored as an empty (wrong, badly formatted) completion
        return ""
    if isinstance(completion, dict):  # one message instead of a list of them
        completion = [completion]
    parts = []
    for message in completion:
        if not isinstance(message, dict):
            continue
        content = message.get("content") or ""
        if not isinstance(content, str):  # typed content blocks: keep their text parts
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        reasoning = message.get("reasoning_content") or message.get("thinking")
        if reasoning and THINK_END not in content:
            content = f"{reasoning}\n{THINK_END}\n\n{content}"
        parts.append(content)
    return "\n".join(parts)


def split_thinking(text: str) -> tuple[str, str] | None:
    """(thinking, answer) split at the LAST `</think>`, or None when the thinking was never closed."""
    cut = text.rfind(THINK_END)
    if cut < 0:
        return None
    return text[:cut], text[cut + len(THINK_END) :]


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` in `text` (balanced braces, nesting allowed), else None.

    A `\\boxed{` cut off by the length limit (never closed) is skipped, so an earlier complete one still counts.
    """
    stack = []  # for each open brace: start of a boxed content, or None for a plain brace
    last = None
    for match in _BRACE_TOKENS.finditer(text):
        token = match.group()
        if token == "}":
            if stack:
                start = stack.pop()
                if start is not None:
                    last = text[start : match.start()]
        elif token == "{":
            stack.append(None)
        else:  # "\boxed{"
            stack.append(match.end())
    return last


def brace_depth(text: str) -> int:
    """Maximum brace nesting depth of `text`."""
    depth = deepest = 0
    for char in re.findall(r"[{}]", text):
        depth = depth + 1 if char == "{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest



# A LaTeX space (`\,` thin, `\!` negative thin, `\;` `\:` medium, `\ `, `~`) or a braced comma `{,}` between a digit
# and a group of exactly three digits: a thousands separator, as in `1\,000` or `1{,}000\,000`.
_DIGIT_GROUP_SPACE = re.compile(r"(?<=\d)(?:\\[,!;: ]|~|\{,\})(?=\d{3}(?!\d))")


def normalize_number_spacing(text: str) -> str:
    """Digit-group separators inside numbers removed (`\\boxed{1\\,000}` reads as 1000, which math-verify alone grades
    wrong against `1000`); a separator not followed by exactly three digits (`3{,}14`, a decimal comma) is kept."""
    return _DIGIT_GROUP_SPACE.sub("", text)
