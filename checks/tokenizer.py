"""Tokenizer checks that train.py and evaluate.py run before any model loads.

- `check_think_tags`: the think tags survive decoding with `skip_special_tokens=True` (how TRL and the evaluator
  decode); a special `</think>` would hide every answer from the rewards. It prints first what the loaded tokenizer
  makes of each tag (`describe_think_tags`: ids, one added token or not, its special flag), so a model whose tags
  nobody has checked (Phi-4-reasoning) shows them at start.
- `completion_end_tokens`: which token ids end a completion. TRL 1.16 stops at the tokenizer's eos and every eos of
  the model's generation config (transformers' Trainer adds the tokenizer's to the latter); vLLM does the same from the
  checkpoint's files. The chat template's end-of-turn marker should be among them, and when the three sources
  disagree the run says so, with what was chosen and how to override it (`eos_token`).
"""

from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"
_PROBE = "\u2063ANSWER\u2063"  # text no template rewrites, to find what the template writes after an assistant turn


def describe_think_tags(tokenizer, tags=(THINK_START, THINK_END)) -> str:
    """One line on how this tokenizer holds each think tag: its ids, whether it is one added token, and that token's
    `special` flag, e.g. `'<think>' = [151667] (one added token, special=False)`. Printed at start by the tag check,
    so a run on a tokenizer nobody has inspected (Phi-4-reasoning's) shows what it found."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special_ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    parts = []
    for tag in tags:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        if len(ids) == 1 and ids[0] in added:
            token = added[ids[0]]
            special = bool(getattr(token, "special", False)) or ids[0] in special_ids
            how = f"one added token, special={special}"
        elif len(ids) == 1:
            how = f"one vocabulary token, special={ids[0] in special_ids}"
        else:
            how = f"{len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}: plain text, not one token"
        parts.append(f"{tag!r} = {ids} ({how})")
    return "; ".join(parts)


def check_think_tags(tokenizer, tags=(THINK_START, THINK_END), announce: bool = True) -> str:
    """Raise ValueError when a think tag does not survive decoding with `skip_special_tokens=True`. A tokenizer that
    does not know a tag at all (a model that does not think) passes: the tag is then plain text. Returns
    `describe_think_tags`, printed to stderr first when `announce` (train.py and evaluate.py run this at start)."""
    description = describe_think_tags(tokenizer, tags)
    if announce:
        import sys

        print(f"[concise-rl] think tags: {description}", file=sys.stderr, flush=True)
    for tag in tags:
        ids = tokenizer.encode(f"a {tag} b", add_special_tokens=False)
        if tag not in tokenizer.decode(ids, skip_special_tokens=True):
            raise ValueError(
                f"The tokenizer drops {tag!r} when decoding with skip_special_tokens=True ({description}: it is a special "
                f"token), so TRL never shows it to the rewards and every answer scores 0. Register it as a normal added "
                f"token: in tokenizer.json set \"special\": false for {tag!r} and remove it from "
                f"additional_special_tokens in tokenizer_config.json (in code: tokenizer.add_tokens([{tag!r}], "
                f"special_tokens=False) on a tokenizer that does not have it yet), as Qwen3 and R1-Distill do.")
    return description


def template_end_of_turn(tokenizer) -> str | None:
    """The token the chat template writes right after an assistant message (`<|im_end|>` for ChatML, the eos of
    R1-Distill), or None without a template or when it writes no single token there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    except Exception:  # a template that needs other roles or fields: nothing to compare
        return None
    after = text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False)[:1] if after.strip() else []
    if not ids:
        return None
    token = tokenizer.convert_ids_to_tokens(ids[0])
    # a marker the tokenizer knows as one added token (a BPE piece such as "<" of an unknown marker is not one)
    return token if token in tokenizer.get_added_vocab() and after.lstrip().startswith(token) else None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def completion_end_tokens(tokenizer, generation_config=None, override: list[str] | None = None) -> dict:
    """The ids that end a completion, where each comes from, and a `warning` when the sources disagree.

    `override` (the `eos_token` recipe key / evaluate flag): token strings that replace the tokenizer's eos; every
    one must be a single token. Raises ValueError when one is not."""
    name = tokenizer.convert_ids_to_tokens
    tok_eos = _ids(tokenizer.eos_token_id)
    gen_eos = _ids(getattr(generation_config, "eos_token_id", None))
    end = template_end_of_turn(tokenizer)
    end_ids = _ids(tokenizer.convert_tokens_to_ids(end)) if end else []
    if override:
        ids = []
        for token in override:
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(f"eos_token {token!r} is {len(encoded)} tokens for this tokenizer; give a token that "
                                 f"encodes as one id (the chat template ends a turn with {end!r}).")
            ids.append(encoded[0])
        chosen = list(dict.fromkeys(ids + gen_eos))
    else:
        chosen = list(dict.fromkeys(tok_eos + gen_eos))
    info = {
        "tokenizer_eos": [f"{name(i)}={i}" for i in tok_eos],
        "generation_config_eos": [f"{name(i)}={i}" for i in gen_eos],
        "template_end_of_turn": f"{end}={end_ids[0]}" if end_ids else None,
        "chosen": [f"{name(i)}={i}" for i in chosen],
        "chosen_ids": chosen,
        "warning": None,
    }
    problems = []
    if end_ids and end_ids[0] not in chosen:
        problems.append(f"the chat template ends a turn with {end!r} but no eos is that token, so generation runs on "
                        "past the answer until max_completion_length")
    if tok_eos and gen_eos and tok_eos[0] not in gen_eos and not override:
        problems.append(f"the tokenizer's eos {name(tok_eos[0])!r} is not among the generation config's "
                        f"{[name(i) for i in gen_eos]}")
    if end_ids and tok_eos and end_ids[0] != tok_eos[0] and not override:
        problems.append(f"the tokenizer's eos {name(tok_eos[0])!r} is not the template's end of turn {end!r}")
    if problems:
        fix = f"set eos_token: {end!r}" if end else "set eos_token to the token that ends the model's turn"
        info["warning"] = (f"{'; '.join(problems)}. A completion ends at any of {info['chosen']}; if that is not the "
                           f"model's end of turn, {fix} (train.py recipe key, evaluate.py --eos_token).")
    return info
