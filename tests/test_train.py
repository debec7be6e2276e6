"""scripts/train.py: recipe parsing and its errors, dry runs of every shipped recipe, and real GRPO runs of the tiny
model (plain, LoRA, resume, vLLM colocate, 2 processes under torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402

TINY = ROOT / "recipes" / "tiny" / "grpo.yaml"
ALL_RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
# A training recipe names its method; an evaluation protocol (scripts/evaluate.py --config) names its benchmarks.
TRAIN_RECIPES = [p for p in ALL_RECIPES if "method" in yaml.safe_load(p.read_text())]


def test_every_recipe_is_training_or_evaluation():
    for path in ALL_RECIPES:
        recipe = yaml.safe_load(path.read_text())
        assert ("method" in recipe) != ("benchmarks" in recipe), f"{path}: name a `method` or `benchmarks`, not both"


def accelerate_config_for(recipe: Path) -> str:
    cpu = {"tiny", "synthetic"} & set(recipe.parts)
    return str(ROOT / "accelerate_configs" / ("single.yaml" if cpu else "zero3.yaml"))


def write_recipe(tmp_path, **changes) -> str:
    recipe = yaml.safe_load(TINY.read_text())
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def produced_files(recipe: Path, tiny_model_path, tmp_path) -> list[str]:
    """The dry run checks that local model and data paths exist; the tiny and synthetic recipes point at files an
    earlier step writes under outputs/ (build_tiny_model.py, synthetic.task, a GFPO run's pairs_output_file):
    stand-ins with the same shape."""
    keys = yaml.safe_load(recipe.read_text())
    extra = []
    if str(keys.get("model_name_or_path", "")).startswith("outputs/"):
        extra += ["--model_name_or_path", str(tiny_model_path)]
    if str(keys.get("dataset_name", "")).startswith("outputs/"):
        data = ROOT / "recipes/tiny/data.jsonl"
        if keys.get("method") == "dpo":
            data = tmp_path / "pairs.jsonl"
            data.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 1 + 2?"}],
                                        "chosen": [{"role": "assistant", "content": "1+2=3\n</think>\n\n\\boxed{3}"}],
                                        "rejected": [{"role": "assistant", "content": "1+2=4\n</think>\n\n\\boxed{4}"}]}) + "\n")
        extra += ["--dataset_name", str(data)]
    return extra


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_dry_run_every_recipe(recipe, capsys, tiny_model_path, tmp_path):
    assert train.main(["--config", str(recipe), "--dry_run", "--accelerate_config", accelerate_config_for(recipe),
                       *produced_files(recipe, tiny_model_path, tmp_path)]) is None
    plan = json.loads(capsys.readouterr().out)
    batch = plan["batch"]
    if plan["method"] == "dpo":  # pairs, no groups
        assert batch["sequences_per_optimizer_step"] == 2 * batch["pairs_per_optimizer_step"]
    else:
        assert batch["generation_batch_completions"] % batch["group_size_G"] == 0
    assert plan["method"] == yaml.safe_load(recipe.read_text()).get("method", "grpo")


def test_dry_run_plan_numbers(capsys):
    """Qwen3-8B GRPO on 8 processes: 4 x 8 x 32 = 1024 completions = 128 questions x 8 per optimizer step."""
    recipe = ROOT / "recipes" / "qwen3-8b" / "grpo.yaml"
    train.main(["--config", str(recipe), "--dry_run", "--accelerate_config", str(ROOT / "accelerate_configs/zero3.yaml")])
    batch = json.loads(capsys.readouterr().out)["batch"]
    assert batch["processes"] == 8
    assert batch["completions_per_optimizer_step"] == 1024
    assert batch["questions_per_optimizer_step"] == 128
    assert batch["steps_per_generation"] == 32
    assert batch["completions_per_process_per_generation"] == 128
    assert batch["groups_whole_on_each_process"] is True


def test_batch_plan_arithmetic():
    plan = train.batch_plan(per_device=4, num_processes=2, grad_accum=3, num_generations=6)
    assert plan["completions_per_optimizer_step"] == 24
    assert plan["questions_per_optimizer_step"] == 4
    assert plan["completions_per_process_per_generation"] == 12
    plan = train.batch_plan(per_device=4, num_processes=2, grad_accum=1, num_generations=8, generation_batch_size=32)
    assert plan["steps_per_generation"] == 4 and plan["questions_per_generation"] == 4
    with pytest.raises(train.RecipeError, match="per_device_train_batch_size x processes"):
        train.batch_plan(per_device=4, num_processes=2, grad_accum=1, num_generations=8, generation_batch_size=36)
    with pytest.raises(train.RecipeError, match="whole groups"):
        train.batch_plan(per_device=4, num_processes=2, grad_accum=1, num_generations=8, whole_groups_per_rank=True)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_generation": 4}, "unknown key `num_generation`. Did you mean `num_generations`?"),
        ({"per_device_train_batch_size": 6}, r"not a multiple of num_generations \(4\)"),
        ({"reward_funcs": ["acuracy"]}, "acuracy"),
        ({"method": "ppo"}, "Unknown method 'ppo'"),
        ({"prompt_template": "no placeholder"}, r"\{question\}"),
        ({"reward_weights": [1.0]}, "one weight per reward function"),
    ],
)
def test_recipe_errors(tmp_path, changes, message):
    with pytest.raises(train.RecipeError, match=message):
        train.main(["--config", write_recipe(tmp_path, **changes), "--dry_run"])


def test_recipe_error_exits_with_message(tmp_path):
    """The CLI prints the error and the fix, without a traceback, before anything is loaded."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), "--config", write_recipe(tmp_path, lora_rank=8), "--dry_run"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "unknown key `lora_rank`" in proc.stderr and "lora_r" in proc.stderr
    assert "Traceback" not in proc.stderr


def _train(tmp_path, tiny_model_path, *extra) -> "object":
    return train.main([
        "--config", str(TINY), "--model_name_or_path", str(tiny_model_path),
        "--dataset_name", str(ROOT / "recipes/tiny/data.jsonl"), "--output_dir", str(tmp_path / "out"),
        "--reward_funcs", "accuracy", "tests.reward_stubs:digit_count", "--reward_weights", "1.0", "1.0", *extra,
    ])


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.slow
def test_grpo_trains_tiny_model(tmp_path, tiny_model_path):
    before = {k: v.clone() for k, v in _load_state(tiny_model_path).items()}
    trainer = _train(tmp_path, tiny_model_path, "--max_steps", "3")
    assert trainer.state.global_step == 3
    assert len(_logged(trainer, "rewards/accuracy/mean")) == 3
    assert len(_logged(trainer, "rewards/digit_count/mean")) == 3
    after = _load_state(tmp_path / "out")
    assert any(not (before[k] == after[k]).all() for k in before), "no weight changed after 3 GRPO steps"
    # GRPO samples and trains every completion token: 8 completions per step x their mean length
    sampled, trained = _logged(trainer, "cost/sampled_tokens"), _logged(trainer, "cost/trained_tokens")
    lengths = _logged(trainer, "completions/mean_length")
    assert len(sampled) == 3 and sampled == trained
    assert sampled == pytest.approx([8 * m for m in lengths])


@pytest.mark.slow
def test_grpo_lora(tmp_path, tiny_model_path):
    trainer = _train(tmp_path, tiny_model_path, "--max_steps", "2", "--use_peft", "true", "--lora_r", "4",
                     "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "1e-2")
    assert trainer.state.global_step == 2
    saved = tmp_path / "out"
    assert (saved / "adapter_config.json").exists(), "LoRA run must save an adapter, not a full model"
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "v_proj"}


@pytest.mark.slow
def test_grpo_resume_from_checkpoint(tmp_path, tiny_model_path):
    first = _train(tmp_path, tiny_model_path, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    steps_before = [h["step"] for h in first.state.log_history if "loss" in h]
    resumed = _train(tmp_path, tiny_model_path, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                     "--resume_from_checkpoint", "last")
    assert resumed.state.global_step == 4
    new_steps = [h["step"] for h in resumed.state.log_history if "loss" in h and h["step"] > 2]
    assert steps_before == [1, 2] and new_steps == [3, 4], "resume must continue at step 3, not restart"


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_vllm_colocate(tmp_path, tiny_model_path):
    pytest.importorskip("vllm")
    trainer = _train(tmp_path, tiny_model_path, "--max_steps", "2", "--use_vllm", "true", "--vllm_mode", "colocate",
                     "--vllm_max_model_length", "256", "--vllm_enable_sleep_mode", "false")
    assert trainer.state.global_step == 2
    assert trainer.use_vllm and trainer.vllm_generation.mode == "colocate"
    # Generation went through vLLM, whose sampled logprobs TRL compares with the trainer's.
    assert _logged(trainer, "sampling/sampling_logp_difference/mean")


@pytest.mark.slow
def test_grpo_torchrun_two_processes(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29513", str(ROOT / "scripts/train.py"),
         "--config", str(TINY), "--model_name_or_path", str(tiny_model_path),
         "--dataset_name", str(ROOT / "recipes/tiny/data.jsonl"), "--output_dir", str(out),
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2",
         "--reward_funcs", "accuracy", "tests.reward_stubs:digit_count", "--reward_weights", "1.0", "1.0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert "processes=2" in proc.stdout, "the run must see both processes"
    assert (out / "model.safetensors").exists()


def _load_state(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_sgrpo_tokenizer_checked_before_model_load(tmp_path, tiny_model_path, monkeypatch):
    """S-GRPO needs `</think>` as one token: a tokenizer without it is refused before any model is built."""
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an invalid recipe")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    with pytest.raises(train.RecipeError, match="think_end_token"):
        train.main(["--config", str(ROOT / "recipes/tiny/sgrpo.yaml"), "--model_name_or_path", str(tiny_model_path),
                    "--output_dir", str(tmp_path), "--think_end_token", "</thought>",
                    "--exit_text", "Time is limited.</thought>\n\n"])
