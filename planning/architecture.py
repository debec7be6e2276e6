"""A model's architecture without its weights: the config.json from a local folder, the Hugging Face cache or the copy
shipped in `planning/model_configs/`, and exact parameter counts from the model built on the meta device."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "model_configs"


@dataclass(frozen=True)
class Architecture:
    name: str
    source: str  # where the config came from, in words
    model_class: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    qk_norm: bool  # Qwen3 normalises q and k per head: two more saved activations per layer
    parameters: int  # exact, counted on the meta device
    lm_head_parameters: int
    largest_layer_parameters: int  # one decoder layer: what ZeRO-3 gathers at a time
    max_positions: int | None = None  # the model's context length: vLLM's window when the recipe sets none
    lora_parameters: int = 0  # adapters for the LoRA settings it was built with (0 without LoRA)
    # why S-GRPO's packed serial groups cannot score this model whatever the attention kernel (trainers/packing.py:
    # model type, sliding windows), None when they can
    packing_model_reason: str | None = None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def find_config(name_or_path: str, revision: str | None = None) -> tuple[dict, str] | None:
    """(config dict, source sentence) from a local folder, the hub cache, or the shipped copy; None if none has it."""
    folder = Path(name_or_path).expanduser()
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text()), f"local folder {folder.resolve()}"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    except Exception:  # not a hub id, or no huggingface_hub: fall through to the shipped copy
        cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), f"hub cache {cached}"
    shipped = SHIPPED_CONFIGS / name_or_path / "config.json"
    if ".." not in name_or_path and shipped.is_file():
        return json.loads(shipped.read_text()), f"shipped copy planning/model_configs/{name_or_path}/config.json"
    return None


@contextlib.contextmanager
def _without_zero3():
    """At a ZeRO-3 launch, TrainingArguments has registered its DeepSpeed config, and transformers then builds every
    model inside deepspeed.zero.Init and initialises its weights, which fails on the meta device ("Cannot copy out of
    meta tensor"). The architecture is counted with that registration set aside, and restored after."""
    try:
        import transformers.integrations.deepspeed as ds
    except ImportError:
        yield
        return
    saved = ds._hf_deepspeed_config_weak_ref
    ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        ds._hf_deepspeed_config_weak_ref = saved


def _lora_targets(target_modules, model_type: str) -> re.Pattern | set[str] | None:
    if target_modules is None:  # peft's default for the architecture (q_proj and v_proj for Qwen), else all-linear
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        return set(DEFAULTS[model_type]) if model_type in DEFAULTS else None
    if target_modules in ("all-linear", ["all-linear"]):
        return None  # peft's all-linear: every nn.Linear but the output head
    if isinstance(target_modules, str):
        return re.compile(target_modules)
    return set(target_modules)


def load_architecture(name_or_path: str, revision: str | None = None, lora_r: int | None = None,
                      lora_target_modules=None) -> Architecture | None:
    """The architecture and exact parameter counts (a second or so: the model is built on the meta device, no
    weights). With `lora_r`, also the adapter count for peft's LoRA on `lora_target_modules` (default: peft's
    default for the model type). None when no config.json can be found without a download. Cached per process
    (scripts/plan_recipes.py plans each recipe for two GPUs)."""
    targets = tuple(lora_target_modules) if isinstance(lora_target_modules, list | tuple) else lora_target_modules
    return _load_architecture(name_or_path, revision, lora_r, targets)


@functools.lru_cache(maxsize=32)
def _load_architecture(name_or_path: str, revision: str | None, lora_r: int | None,
                       lora_target_modules) -> Architecture | None:
    if isinstance(lora_target_modules, tuple):
        lora_target_modules = list(lora_target_modules)
    found = find_config(name_or_path, revision)
    if found is None:
        return None
    config_dict, source = found
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainers.packing import packing_unsupported_reason

    config_dict = {k: v for k, v in config_dict.items() if k not in ("quantization_config", "auto_map")}
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"), _without_zero3():
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    head = model.get_output_embeddings()
    layers = model.get_decoder().layers
    targets = _lora_targets(lora_target_modules, config.model_type)
    lora = 0
    if lora_r:
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or module is head:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if targets is None or (isinstance(targets, set) and leaf in targets) or (
                    isinstance(targets, re.Pattern) and targets.fullmatch(name)):
                lora += lora_r * (module.in_features + module.out_features)
    heads = text.num_attention_heads
    return Architecture(
        name=name_or_path,
        source=source,
        model_class=type(model).__name__,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        qk_norm=any(hasattr(layer.self_attn, "q_norm") for layer in layers[:1]),
        parameters=sum(p.numel() for p in model.parameters()),
        lm_head_parameters=sum(p.numel() for p in head.parameters()),
        largest_layer_parameters=max(sum(p.numel() for p in layer.parameters()) for layer in layers),
        max_positions=getattr(text, "max_position_embeddings", None),
        lora_parameters=lora,
        packing_model_reason=packing_unsupported_reason(text, "sdpa"),
    )
