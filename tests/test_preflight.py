"""scripts/preflight.py on the CPU: the same code path as on a GPU node (the recipe's trainer on random weights,
fabricated full-length completions, vLLM's own cycle with dummy weights), reporting CPU process figures."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import preflight  # noqa: E402


@pytest.mark.parametrize("recipe, phases", [
    ("sgrpo.yaml", {"model built", "generation (fabricated)", "training"}),
    ("sgrpo-vllm.yaml", {"model built", "weight sync", "vLLM generating", "training"}),
])
def test_preflight_runs_the_recipe_on_the_cpu(recipe, phases, tiny_model_path, tmp_path):
    import trl.generation.vllm_generation as vg_module
    import trl.trainer.grpo_trainer as grpo_module

    real = grpo_module.create_model_from_path, vg_module.LLM
    out_json = tmp_path / "preflight.json"
    out = preflight.main(["--config", str(ROOT / "recipes/tiny" / recipe), "--model_name_or_path",
                          str(tiny_model_path), "--output_json", str(out_json), "--decode_tokens", "16"])
    assert json.loads(out_json.read_text())["verdict"] == out["verdict"]
    # the random-weight builder and vLLM's dummy loading were for this trainer only: later trainers load weights
    assert (grpo_module.create_model_from_path, vg_module.LLM) == real
    assert out["gpu"] is False and out["fits"] is None and out["verdict"].startswith("CPU process figures")
    assert {p["phase"] for p in out["phases"]} == phases
    training = next(p for p in out["phases"] if p["phase"] == "training")
    assert training["planned_gib"] is not None and training["measured_gib"] > 0
    assert len(out["step_seconds"]) == 2 and len(out["training_seconds"]) == 2
    # the worst case ran: every full rollout at max_completion_length (32), every exit answer at its budget (8)
    assert out["logged"]["completions/max_length"] >= 32
    assert "tiny" in out["model"] or "local folder" in out["model"]
    if "vllm" in recipe:
        d = out["decode"][-1]
        assert d["tokens"] == 16 * d["sequences"] and out["decode_tokens_per_s"] > 0  # ignore_eos: all decoded
        assert out["kv_cache"]["tokens"] > 0 and out["kv_cache"]["max_model_len"] == 256


def _meter(peaks, total_gib=80.0):
    gib = 2**30
    return SimpleNamespace(cuda=True, device_name="GPU", total=total_gib * gib, peaks={k: v * gib for k, v in
                                                                                        peaks.items()},
                           torch_peaks={}, seconds={})


def test_verdict_names_the_key_to_change():
    trainer = SimpleNamespace(use_vllm=True, args=SimpleNamespace(vllm_gpu_memory_utilization=0.6,
                                                                   vllm_enable_sleep_mode=True,
                                                                   gradient_checkpointing=True),
                              state=SimpleNamespace(log_history=[]))
    info = {"plan": {"memory": {"usable_gib": 71.7, "generation_phase_gib": 60.0, "training_phase_gib": 50.0,
                                "weight_sync_phase_gib": 40.0, "vllm": {"budget_gib": 48.0}}},
            "source": "x", "prompt_tokens": 10, "micro_batches": 1, "recipe_micro_batches": 16, "processes": 8,
            "notes": [], "step_seconds": [1.0], "train_seconds": [0.5]}
    out = preflight.report(_meter({"vLLM generating": 75.0, "training": 50.0}), info, trainer, None)
    assert out["fits"] is False and "lower vllm_gpu_memory_utilization" in out["verdict"]
    gen = next(p for p in out["phases"] if p["phase"] == "vLLM generating")
    assert gen["relative_error"] == 0.25 and out["training_seconds_at_recipe_batch"] == 8.0
    out = preflight.report(_meter({"vLLM generating": 55.0, "training": 72.0}), info, trainer, None)
    assert out["fits"] is False and "per_device_train_batch_size" in out["verdict"]
    out = preflight.report(_meter({"vLLM generating": 55.0, "training": 60.0}), info, trainer, None)
    assert out["fits"] is True and out["verdict"].startswith("fits")
