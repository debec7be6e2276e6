"""TRL's GRPOTrainer contract that the GFPO and S-GRPO trainers wrap (hook names, signatures, dict keys).

When TRL is upgraded and this file fails, the wrappers in trainers/ need a look before anything else runs.
"""

import importlib
import inspect
from importlib.metadata import version

import pytest

PINNED_TRL = "1.16.0"

# hook -> the parameters our overrides rely on, in order (after self)
HOOKS = {
    "_generate_and_score_completions": ["inputs"],
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],
    "_generate": ["prompts"],
    "_generate_single_turn": ["prompt_ids", "images", "multimodal_fields", "num_generations"],
    "_compute_loss": ["model", "inputs"],
    "_prepare_inputs": ["generation_batch"],
    "_save_checkpoint": ["model", "trial"],
    "_get_per_token_logps_and_entropies": ["model", "input_ids", "attention_mask", "logits_to_keep"],
    "_load_optimizer_and_scheduler": ["checkpoint"],
    "_get_output_dir": ["trial"],
}
TRAINER_MODULES = ["trainers.gfpo", "trainers.sgrpo"]
OUTPUT_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch"}


def test_trl_version_is_the_pinned_one():
    assert version("trl") == PINNED_TRL, "trainers/ were written against TRL 1.16.0; re-check the hooks below"


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_grpo_trainer_hooks(hook):
    from trl import GRPOTrainer

    assert hasattr(GRPOTrainer, hook), f"GRPOTrainer.{hook} is gone"
    params = list(inspect.signature(getattr(GRPOTrainer, hook)).parameters)[1:]
    assert params[: len(HOOKS[hook])] == HOOKS[hook], f"GRPOTrainer.{hook} signature changed: {params}"


@pytest.mark.parametrize("module_name", TRAINER_MODULES)
def test_trainers_wrap_only_known_hooks(module_name):
    """Every private GRPOTrainer method a trainer overrides or calls is listed, exists, and its signature is pinned."""
    module = importlib.import_module(module_name)
    from trl import GRPOTrainer

    for hook in module.WRAPPED_TRL_HOOKS:
        assert hasattr(GRPOTrainer, hook), f"{module_name} wraps GRPOTrainer.{hook}, which TRL no longer has"
        assert hook in HOOKS, f"{module_name} wraps {hook}: pin its signature in HOOKS above"
    assert set(module.REQUIRED_OUTPUT_KEYS) <= OUTPUT_KEYS | {
        "old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps", "importance_sampling_ratio",
        "tool_mask",
    }


@pytest.mark.slow
def test_generate_and_score_output_keys(tiny_model_path, tmp_path):
    """One real generation batch of the tiny model: the dict the wrappers post-process has the keys they expect."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward_len(completions, **kwargs):
        return [float(len(c)) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=4,
                      max_completion_length=8, report_to="none", max_steps=1, bf16=False)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "1 + 1?"}]}] * 4)
    trainer = GRPOTrainer(model=str(tiny_model_path), reward_funcs=reward_len, args=args, train_dataset=data)
    batch = [data[0]] * 4
    output = trainer._generate_and_score_completions(batch)
    assert OUTPUT_KEYS <= set(output)
    assert output["advantages"].shape == (4,)
    assert output["completion_ids"].shape[0] == output["completion_mask"].shape[0] == 4
    for module_name in TRAINER_MODULES:
        for attribute in importlib.import_module(module_name).WRAPPED_TRL_ATTRIBUTES:
            if attribute == "vllm_generation":  # exists with use_vllm only; its field is checked below
                continue
            assert hasattr(trainer, attribute), f"{module_name} relies on GRPOTrainer.{attribute}, which is gone"


def test_vllm_generation_budget_field():
    """S-GRPO sets the exits' answer budget through VLLMGeneration.max_completion_length."""
    from trl.generation.vllm_generation import VLLMGeneration

    assert "self.max_completion_length" in inspect.getsource(VLLMGeneration.generate)
