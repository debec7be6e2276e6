"""DLER (arXiv 2510.15110): the truncation reward and dynamic sampling against hand-computed batches, the config's
checks, the trainer on the tiny model (all-equal groups filtered, the batch refilled to its size, the filtered count
logged), and the one-GPU recipes' dry-run plans."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("dist_gfpo", HERE / "dist_gfpo.py")
dist_gfpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dist_gfpo)

from rewards.truncation import TruncationReward, truncation_rewards  # noqa: E402
from trainers import dler  # noqa: E402

ONE_GPU = sorted(p for d in ("r1-distill-qwen-1.5b", "qwen3-1.7b", "qwen3-4b")
                 for p in (ROOT / "recipes" / d).glob("*.yaml"))


# ------------------------------------------------------------------------------------------------- pure functions
def test_truncation_reward_by_hand():
    # L = 10: correct and short -> 1; correct but cut (10 or more tokens) -> 0 (paper) / 0.1 (DLER's code); wrong -> 0
    lengths, correct = [3, 9, 10, 12, 4], [True, True, True, True, False]
    assert truncation_rewards(lengths, correct, 10) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert truncation_rewards(lengths, correct, 10, truncated_scale=0.1) == [1.0, 1.0, 0.1, 0.1, 0.0]
    reward = TruncationReward(max_length=6)
    texts = ["a</think>\\boxed{3}", "b</think>\\boxed{3}", "c</think>\\boxed{4}", "no answer"]
    got = reward(prompts=["q"] * 4, completions=texts, completion_ids=[[1] * 5, [1] * 6, [1] * 2, [1] * 6],
                 answer=["3"] * 4)
    assert got == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        TruncationReward(max_length=0)


def test_filter_groups_and_refill_by_hand():
    # G = 4, three groups: all 0 (filtered), mixed (kept), all 1 (filtered)
    r = torch.tensor([0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.float)
    assert dler.filter_groups(r, 4).tolist() == [False, True, False]
    # the batch wants 3 groups: round 1 keeps 1, round 2 keeps 2 of 3, round 3 keeps 3 -> take round 3's first 0
    keeps = [torch.tensor([False, True, False]), torch.tensor([True, False, True]), torch.tensor([True, True, True])]
    chosen, padded = dler.select_groups(keeps, 3)
    assert [c.tolist() for c in chosen] == [[False, True, False], [True, False, True], [False, False, False]]
    assert padded == 0
    # rounds ran out (max_num_gen_batches) with 2 kept groups: the earliest filtered group completes the batch
    chosen, padded = dler.select_groups(keeps[:2], 4)
    assert [c.tolist() for c in chosen] == [[True, True, False], [True, False, True]] and padded == 1


def test_batch_advantages_by_hand():
    # two groups of 2: rewards (1, 0) and (1, 1). Centred: (0.5, -0.5), (0, 0); batch std of the centred values
    # = sqrt((0.25 + 0.25 + 0 + 0) / 4) = 0.35355 -> A = +-1.41421, 0, 0. Group-wise std: (1, -1), (0, 0).
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.allclose(dler.dler_advantages(r, 2, "batch"), torch.tensor([2 ** 0.5, -(2 ** 0.5), 0, 0]), atol=1e-4)
    assert torch.allclose(dler.dler_advantages(r, 2, "group"), torch.tensor([1.0, -1.0, 0, 0]), atol=1e-4)
    assert dler.dler_advantages(r, 2, "none").tolist() == [0.5, -0.5, 0.0, 0.0]


def test_merge_outputs_pads_each_side():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([0.5]), "num_items_in_batch": torch.tensor(1)}
    b = {"prompt_ids": torch.tensor([[4, 5, 6], [9, 9, 9]]), "prompt_mask": torch.tensor([[1, 1, 1], [1, 1, 1]]),
         "completion_ids": torch.tensor([[7, 8], [1, 1]]), "completion_mask": torch.tensor([[1, 1], [1, 1]]),
         "advantages": torch.tensor([1.0, 2.0]), "num_items_in_batch": torch.tensor(4)}
    out = dler.merge_outputs([a, b], [torch.tensor([0]), torch.tensor([0])], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [4, 5, 6]] and out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[7, 0], [7, 8]] and out["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["advantages"].tolist() == [0.5, 1.0] and "num_items_in_batch" not in out


# ------------------------------------------------------------------------------------------------- config
def config(**kw):
    base = dict(output_dir="/tmp/unused", per_device_train_batch_size=16, report_to="none", use_cpu=True)
    base.update(kw)
    return dler.DLERConfig(**base)


def test_config_defaults_are_dlers():
    c = config()
    assert (c.num_generations, c.learning_rate, c.beta, c.epsilon, c.epsilon_high, c.scale_rewards, c.loss_type,
            c.dynamic_sampling) == (16, 1e-6, 0.0005, 0.2, 0.28, "batch", "dapo", True)
    with pytest.raises(ValueError, match="mask_truncated_completions"):
        config(mask_truncated_completions=True)
    with pytest.raises(ValueError, match="max_num_gen_batches must be >= 0"):
        config(max_num_gen_batches=-1)


# ------------------------------------------------------------------------------------------------- trainer
def half_constant(prompts, completions, **kwargs):
    """Even questions score 0 whatever the answer (their groups are all equal: filtered); odd ones vary."""
    varied = dist_gfpo.reward_digits(completions)
    return [0.0 if int(p[-1]["content"].split()[1]) % 2 == 0 else v for p, v in zip(prompts, varied, strict=True)]


def test_trainer_filters_refills_and_logs(tiny_model_path, tmp_path):
    from trl import GRPOTrainer

    for name in dler.WRAPPED_TRL_HOOKS:
        assert callable(getattr(GRPOTrainer, name, None)), name
    args = dler.DLERConfig(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=8,
                           max_completion_length=16, max_steps=2, learning_rate=1e-3, beta=0.0, bf16=False,
                           report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0)
    trainer = dler.DLERTrainer(model=str(tiny_model_path), reward_funcs=[half_constant], args=args,
                               train_dataset=dist_gfpo.make_dataset(), rollout_func=dist_gfpo.deterministic_rollout)
    trainer.train()
    last = trainer.dler_last
    assert last["rounds"] >= 2  # the first round's even question was filtered: the batch was refilled
    assert sum(int(c.sum()) for c in last["chosen"]) == 2  # refilled to its size: 2 groups of 4
    kept = last["rewards"].reshape(-1, 4)
    assert (kept.std(dim=1) > 0).all()  # every group in the batch carries a signal
    logs = [h for h in trainer.state.log_history if "dler/filtered_groups" in h]
    assert len(logs) == 2 and all(h["dler/filtered_groups"] >= 1 for h in logs)


# ------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("recipe", ONE_GPU + [ROOT / "recipes/r1-distill-qwen-7b/dler.yaml"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_dry_run_fits_its_gpu(recipe, capsys):
    import train

    keys = yaml.safe_load(recipe.read_text())
    assert keys.get("accelerate_config"), "a recipe names the launch it is written for"
    train.main(["--config", str(recipe), "--dry_run"])
    plan = json.loads(capsys.readouterr().out)
    memory = plan["memory"]
    assert memory["fits"], memory.get("fix")
    nominal = keys.get("gpu_memory_gib", 80.0)  # the card the recipe is written for; the plan uses what it reports
    assert 0.9 * nominal <= memory["gpu_memory_gib"] <= nominal


# ------------------------------------------------------------------------------------------------- model configs
@pytest.mark.parametrize("name, card, non_embedding", [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.78e9, None),  # untied: embeddings and LM head both count
    ("Qwen/Qwen3-1.7B", 1.7e9, 1.4e9),  # model card: 1.7B, 1.4B non-embedding; tied (2.03B if the head were counted)
    ("Qwen/Qwen3-4B", 4.0e9, 3.6e9),  # model card: 4.0B, 3.6B non-embedding; tied
])
def test_new_model_configs_count_the_cards_parameters(name, card, non_embedding):
    from transformers import AutoConfig, AutoModelForCausalLM

    from planning import load_architecture

    arch = load_architecture(name)
    assert "shipped copy" in arch.source
    cfg = AutoConfig.from_pretrained(ROOT / "planning" / "model_configs" / name)
    with torch.device("meta"):  # built from the config alone, no weights (DESIGN.md)
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once
    assert total == arch.parameters
    assert abs(total - card) < 0.03 * card
    if non_embedding is not None:
        assert abs(total - model.get_input_embeddings().weight.numel() - non_embedding) < 0.05 * non_embedding
