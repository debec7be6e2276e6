"""A tiny Qwen3 policy and a locally trained BPE tokenizer: no download, reproducible from a seed.

Used by the tests, the CPU recipes and the synthetic benchmark. The tokenizer mirrors what matters of
Qwen3's: ChatML turns, `<think>`/`</think>` as *added but not special* tokens (TRL decodes completions
with `skip_special_tokens=True`, so special think tags would vanish before the rewards see them), single
digits as tokens, and a chat template whose generation prompt opens `<think>` (as R1-Distill's does).
"""

from __future__ import annotations

import random
from pathlib import Path

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = [PAD, "<|im_start|>", EOS]
THINK_TOKENS = ["<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
)

# Text the BPE merges are learned from: the prompt template, the reasoning vocabulary of the synthetic
# task, the S-GRPO exit text and LaTeX answers. Digits stay single tokens whatever the corpus says.
_CORPUS_LINES = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "What is the sum of 12, 34 and 56?",
    "Compute 3 + 4 + 5. Let me add the numbers one at a time.",
    "Running sum: 12 + 34 = 46. 46 + 56 = 102.",
    "Wait, let me check that again. Re-adding from the start.",
    "So the answer is 102. The final answer is \\boxed{102}.",
    "Time is limited, stop thinking and start answering.",
    "\\frac{1}{2} \\sqrt{3} x^2 + y = z, \\pi, \\cdot, \\times, (A) (B) (C) (D)",
    "system user assistant The question asks for a number.",
]


def corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """A small deterministic training corpus for the BPE merges."""
    rng = random.Random(seed)
    lines = list(_CORPUS_LINES)
    for _ in range(n_lines):
        nums = [rng.randint(10, 99) for _ in range(rng.randint(3, 6))]
        lines.append(f"Add {', '.join(map(str, nums))}. Running sum: {sum(nums)}. \\boxed{{{sum(nums)}}}")
        lines.append(rng.choice(_CORPUS_LINES))
    return lines


def build_tokenizer(vocab_size: int = 320, seed: int = 0, lines: list[str] | None = None):
    """Train a byte-level BPE locally and wrap it as a `PreTrainedTokenizerFast` with Qwen3-style tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines or corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[SPECIAL_TOKENS[1]],
    )
    fast.add_tokens(THINK_TOKENS, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 2,
                head_dim: int = 64, intermediate_size: int = 256, max_position_embeddings: int = 2048,
                seed: int = 0):
    """A randomly initialised Qwen3 causal LM. head_dim 64: vLLM's CPU attention needs 32/64/80/96/..."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        torch_dtype="float32",
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def save_tiny_model(output_dir: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Build and save tokenizer + model to `output_dir` (a local path usable as `model_name_or_path`)."""
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(seed=seed)
    model = build_model(tokenizer, seed=seed, **model_kwargs)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    model.save_pretrained(output_dir)
    return output_dir
