"""checks/tokenizer.py: the think-tag guard and which tokens end a completion, on the tiny BPE with its own template
and with TRL's copies of the real Qwen3 and R1-Distill templates."""

from pathlib import Path

import pytest

from checks.tokenizer import check_think_tags, completion_end_tokens, template_end_of_turn


@pytest.fixture
def tok(tiny_tokenizer):
    import copy

    return copy.deepcopy(tiny_tokenizer)


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def test_tiny_tokenizer_agrees_with_itself(tok):
    from transformers import GenerationConfig

    end = completion_end_tokens(tok, GenerationConfig(eos_token_id=tok.eos_token_id))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end["chosen_ids"] == [im_end] and end["template_end_of_turn"] == f"<|im_end|>={im_end}"
    assert end["warning"] is None
    check_think_tags(tok)  # non-special tags survive decoding


def test_gguf_like_eos_quirk_is_reported_with_the_fix(tok):
    """SmolLM2's GGUF: tokenizer eos <|im_start|>, generation config eos <|im_end|>: both end a completion (TRL's
    union), and the run says so and how to make them agree."""
    from transformers import GenerationConfig

    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    tok.eos_token = "<|im_start|>"
    end = completion_end_tokens(tok, GenerationConfig(eos_token_id=im_end))
    assert end["chosen_ids"] == [im_start, im_end]
    assert "is not among the generation config's ['<|im_end|>']" in end["warning"]
    assert "set eos_token: '<|im_end|>'" in end["warning"]
    fixed = completion_end_tokens(tok, GenerationConfig(eos_token_id=im_end), override=["<|im_end|>"])
    assert fixed["chosen_ids"] == [im_end] and fixed["warning"] is None


def test_template_end_missing_from_eos_is_a_warning(tok):
    tok.eos_token = "<|im_start|>"
    end = completion_end_tokens(tok, None)
    assert "generation runs on past the answer" in end["warning"]


def test_override_must_be_one_token(tok):
    with pytest.raises(ValueError, match="encodes as one id"):
        completion_end_tokens(tok, None, override=["two words"])


@pytest.mark.parametrize("template, marker", [("qwen3.jinja", "<|im_end|>"), ("deepseek_r1_distill.jinja", None)])
def test_real_templates_end_of_turn(tok, template, marker):
    """Qwen3's template ends a turn with <|im_end|>; R1-Distill's with its own eos, which the tiny vocabulary does not
    hold as one token: no marker is claimed rather than a BPE piece of it."""
    tok.chat_template = trl_template(template)
    assert template_end_of_turn(tok) == marker


def test_think_tag_description_names_ids_and_flags(tok):
    """What the start-up line says for a tag that is several tokens (a tag the tokenizer does not hold) and for one
    registered as special."""
    from checks.tokenizer import describe_think_tags

    bare_line = describe_think_tags(tok, ("<maybe>",))
    assert bare_line.startswith("'<maybe>' = [") and "plain text, not one token" in bare_line
    tok.add_special_tokens({"additional_special_tokens": ["<seal>"]}, replace_extra_special_tokens=False)
    seal = tok.convert_tokens_to_ids("<seal>")
    assert describe_think_tags(tok, ("<seal>",)) == f"'<seal>' = [{seal}] (one added token, special=True)"


def test_special_think_tag_is_refused(tok):
    tok.add_special_tokens({"additional_special_tokens": ["</think>"]}, replace_extra_special_tokens=False)
    if "</think>" in tok.decode(tok.encode("a </think> b", add_special_tokens=False), skip_special_tokens=True):
        pytest.skip("this transformers version keeps a re-registered added token when decoding")
    with pytest.raises(ValueError, match="drops '</think>'"):
        check_think_tags(tok)
