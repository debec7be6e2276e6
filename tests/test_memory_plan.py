"""planning/: the memory, time and volume plan of `train.py --dry_run`, checked against hand arithmetic for two real
architectures, refusals of recipes that cannot fit, and the guards a first real run needs."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402

from planning import load_architecture  # noqa: E402
from planning.memory import GIB, kv_bytes_per_token  # noqa: E402

H100 = 81559 / 1024  # GiB an H100 80GB reports (vLLM's budget and the fit line are shares of it), not 80

ZERO3 = str(ROOT / "accelerate_configs" / "zero3.yaml")
REAL = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name not in ("tiny", "synthetic", "eval"))


def qwen3_8b_parameters() -> int:
    """Qwen3-8B from its config.json, by hand: embeddings and LM head (untied), 36 layers of q/k/v/o (GQA 32/8
    heads of 128), q/k RMSNorms of 128, two RMSNorms, a SwiGLU MLP of 12288, and the final norm."""
    h, v, i, layers, kv = 4096, 151_936, 12_288, 36, 8 * 128
    layer = h * h + 2 * h * kv + h * h + 2 * 128 + 2 * h + 3 * h * i
    return 2 * v * h + layers * layer + h


def r1_distill_7b_parameters() -> int:
    """DeepSeek-R1-Distill-Qwen-7B (Qwen2): as above without q/k norms, with q/k/v biases, 28 heads / 4 KV heads."""
    h, v, i, layers, kv = 3584, 152_064, 18_944, 28, 4 * 128
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 2 * h + 3 * h * i
    return 2 * v * h + layers * layer + h


def dry_run(recipe, *extra, capsys=None):
    train.main(["--config", str(recipe), "--dry_run", "--accelerate_config", ZERO3, *extra])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, hand, kv_per_token", [
    ("Qwen/Qwen3-8B", qwen3_8b_parameters(), 2 * 36 * 8 * 128 * 2),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", r1_distill_7b_parameters(), 2 * 28 * 4 * 128 * 2),
])
def test_architecture_from_shipped_config(name, hand, kv_per_token):
    arch = load_architecture(name)
    assert "shipped copy" in arch.source
    assert arch.parameters == hand
    assert kv_bytes_per_token(arch) == kv_per_token
    assert kv_bytes_per_token(arch, 2) == kv_per_token // 2  # KV heads split over a tensor-parallel pair


def test_shipped_configs_cover_every_recipe_model():
    names = {yaml.safe_load(p.read_text())["model_name_or_path"] for p in REAL}
    assert names == {"Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                     "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "microsoft/Phi-4-reasoning",
                     "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B"}
    published = {"Qwen/Qwen3-14B": 14.77e9, "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": 14.77e9,
                 "microsoft/Phi-4-reasoning": 14.66e9}  # the model cards' counts, to 3 digits
    for name, count in published.items():
        assert abs(load_architecture(name).parameters - count) < 0.005e9, name


def test_plan_matches_hand_arithmetic_qwen3_8b_sgrpo(capsys):
    """recipes/qwen3-8b/sgrpo.yaml on 8 processes under ZeRO-3, every figure of the plan recomputed by hand."""
    plan = dry_run(ROOT / "recipes/qwen3-8b/sgrpo.yaml", capsys=capsys)
    mem, p = plan["memory"], qwen3_8b_parameters()
    g = lambda x: round(x / GIB, 2)  # noqa: E731
    assert mem["policy_weights_gib"] == g(2 * p) == 15.26
    assert mem["weights_gib"] == g(2 * p / 8)  # ZeRO-3 shards the bf16 weights
    assert mem["gradients_gib"] == g(2 * p / 8)
    assert mem["optimizer_gib"] == g(12 * p / 8)  # fp32 master + Adam m, v, sharded
    assert mem["reference_model_gib"] == 0  # beta 0: TRL builds no reference model
    # the micro-batch: one serial group (9 rows), packed into one sequence: 1024 prompt + 16384 thought + 8 exit
    # branches of (1 copied prefix token + 32 exit text + 1024 answer tokens)
    t = 1024 + 16384 + 8 * (1 + 32 + 1024)
    assert mem["micro_batch"] == {"rows": 9, "tokens_per_row": 1024 + 16384 + 32 + 1024, "prompt_tokens_assumed": 1024,
                                  "packed_sequences": 1, "tokens_per_packed_sequence": t}
    h, i, q, kv, layers = 4096, 12288, 4096, 1024, 36
    layer = (4 * h + 3 * q + 3 * kv + 4 * i + q + kv) * 2 * t
    act = layers * h * 2 * t + layer + 3 * i * 2 * t + 4 * t * h
    assert mem["activations_gib"]["layers"] == g(act)
    assert mem["activations_gib"]["attention_mask"] == g(3 * t * t)  # the prefix-sharing mask, bool + bf16 bias
    scored = 16384 + 8 * (1 + 32 + 1024)
    assert mem["activations_gib"]["lm_head"] == g(6 * scored * h + 2 * 4096 * 32768 + 4 * 151_936 * h)
    # vLLM: 0.65 x 79.65 GiB (what an H100 reports), minus the weights and 2 GiB + TRL's 4096-token profile, is the KV cache
    vllm = mem["vllm"]
    budget = 0.65 * H100 * GIB
    kv_pool = budget - 2 * p - 2 * GIB - 4096 * (4 * h + 4 * i) * 2
    assert vllm["budget_gib"] == g(budget) == 51.77 and vllm["kv_cache_gib"] == g(kv_pool)
    assert vllm["concurrent_max_length_sequences"] == int(kv_pool // (147_456 * 18_432))
    # 144 sequences per GPU = 16 serial groups: 16 full rollouts, then their 16 x 8 exits
    assert [c["sequences"] for c in vllm["generation_calls"]] == [16, 16]
    resident = (2 + 2 + 12) * p / 8
    assert mem["generation_phase_gib"] == g(resident + budget + GIB)
    assert mem["fits"] and mem["peak_gib"] <= 0.9 * H100
    tv = plan["time_and_volume"]
    assert tv["worst_case_tokens_sampled_per_step"] == 128 * 16384 + 128 * 8 * 1024
    assert tv["checkpoint_gib"] == round(16 * p / GIB, 1)
    assert tv["checkpoints_on_disk_gib"] == round(16 * p * 4 / GIB, 1)  # 3 kept + the one being written
    assert tv["ddp_timeout"] >= 1.5 * tv["worst_case_generation_seconds"] and not tv["warnings"]


def test_plan_matches_hand_arithmetic_r1_distill_7b_lora(capsys):
    """R1-Distill-Qwen-7B GRPO with LoRA r=16 on q/v under ZeRO-2: frozen bf16 base on every GPU, fp32 adapters."""
    plan = dry_run(ROOT / "recipes/r1-distill-qwen-7b/grpo.yaml", "--use_peft", "true", "--lora_r", "16",
                   "--lora_target_modules", "q_proj", "v_proj", "--accelerate_config",
                   str(ROOT / "accelerate_configs/zero2.yaml"), capsys=capsys)
    mem, p = plan["memory"], r1_distill_7b_parameters()
    lora = 28 * 16 * ((3584 + 3584) + (3584 + 512))  # r x (in + out) for q_proj and v_proj of every layer
    assert mem["zero_stage"] == 2 and mem["trainable_parameters"] == lora
    assert mem["weights_gib"] == round((2 * p + 4 * lora) / GIB, 2)
    assert mem["optimizer_gib"] == round(12 * lora / 8 / GIB, 2)
    # TRL's fused head: completion hidden states (bf16) and their fp32 gradient, one 4096 x 32768 tile; a frozen
    # head keeps no fp32 weight gradient
    scored = 4 * 16384
    assert mem["activations_gib"]["lm_head"] == round((6 * scored * 3584 + 2 * 4096 * 32768) / GIB, 2)
    assert plan["time_and_volume"]["checkpoint_gib"] == round(20 * lora / GIB, 1)


@pytest.mark.parametrize("recipe, changes, key", [
    # the 14B recipes as first shipped: 24 GiB of vLLM for 27.5 GiB of weights
    ("qwen3-14b/sgrpo.yaml", ["--vllm_gpu_memory_utilization", "0.3", "--vllm_tensor_parallel_size", "1"],
     "raise vllm_gpu_memory_utilization"),
    # the GFPO recipes as first shipped: 8 rows of 31.7k tokens in one micro-batch
    ("qwen3-8b/gfpo-shortest-4of16.yaml", ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps",
                                           "16"], "set per_device_train_batch_size: "),
    ("qwen3-8b/sgrpo.yaml", ["--vllm_gpu_memory_utilization", "0.9"], "lower vllm_gpu_memory_utilization"),
    ("qwen3-8b/sgrpo.yaml", ["--gradient_checkpointing", "false"], "set gradient_checkpointing: true"),
])
def test_recipes_that_cannot_fit_are_refused(recipe, changes, key, capsys):
    with pytest.raises(train.RecipeError, match=key) as err:
        train.main(["--config", str(ROOT / "recipes" / recipe), "--dry_run", "--accelerate_config", ZERO3, *changes])
    assert "\n" not in str(err.value)
    printed = json.loads(capsys.readouterr().out)  # the plan is printed before the refusal
    assert printed["memory"]["fits"] is False and key in printed["memory"]["fix"]


def test_check_memory_false_warns_instead(capsys):
    train.main(["--config", str(ROOT / "recipes/qwen3-8b/sgrpo.yaml"), "--dry_run", "--accelerate_config", ZERO3,
                "--gradient_checkpointing", "false", "--check_memory", "false"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["memory"]["fits"] is False
    assert "check_memory: false, going on" in captured.err


def test_h200_fits_what_h100_does_not(capsys):
    args = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "32"]
    with pytest.raises(train.RecipeError):
        dry_run(ROOT / "recipes/qwen3-8b/gfpo-shortest-4of16.yaml", *args, capsys=capsys)
    capsys.readouterr()
    assert dry_run(ROOT / "recipes/qwen3-8b/gfpo-shortest-4of16.yaml", *args, "--gpu_memory_gib", "141",
                   capsys=capsys)["memory"]["fits"]


def test_timeout_and_log_volume_warnings(capsys):
    train.main(["--config", str(ROOT / "recipes/qwen3-8b/grpo.yaml"), "--dry_run", "--accelerate_config", ZERO3,
                "--ddp_timeout", "1800", "--log_completions", "true"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["time_and_volume"]["warnings"]
    err = captured.err
    assert "set ddp_timeout: " in err and "log_completions writes up to" in err


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_real_recipe_fits_the_launch_it_names_without_warnings(recipe, capsys):
    """The first dry run a new user types (no --accelerate_config) plans the launch the recipe names, and fits the
    GPU it names its launch for, as that GPU reports its memory."""
    train.main(["--config", str(recipe), "--dry_run"])
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    named = yaml.safe_load(recipe.read_text())["accelerate_config"]
    procs = yaml.safe_load((ROOT / named).read_text())["num_processes"]
    assert plan["launch"]["accelerate_config"] == named and plan["launch"]["processes"] == procs
    assert plan["batch"]["processes"] == procs
    assert plan["memory"]["fits"], plan["memory"]["fix"]
    assert plan["memory"]["gpu_memory_gib"] in (round(H100, 2), 22.49)  # H100 80GB, or a 24 GB card (L4 / A10)
    assert plan["time_and_volume"]["warnings"] == [] and "warning" not in captured.err


def test_sgrpo_with_a_kernel_packing_cannot_use_plans_padded_rows(capsys):
    """flash_attention_2 ignores the packed groups' mask, so the trainer scores padded rows: the plan plans those,
    refuses, and never proposes flash_attention_2 as the fix (it would be the cause)."""
    with pytest.raises(train.RecipeError, match="set attn_implementation: sdpa"):
        dry_run(ROOT / "recipes/qwen3-8b/sgrpo.yaml", "--attn_implementation", "flash_attention_2", capsys=capsys)
    captured = capsys.readouterr()
    mem = json.loads(captured.out)["memory"]
    assert "packed_sequences" not in mem["micro_batch"] and mem["packing"]["active"] is False
    assert mem["micro_batch"]["rows"] == 9 and mem["training_phase_gib"] > 100 and not mem["fits"]
    assert "flash_attention_2" in mem["packing"]["reason"] and "flash_attention_2 (pip" not in mem["fix"]
    assert "cannot take the packed serial groups' mask" in captured.err
    # the same recipe with sdpa packs (one sequence of the whole group) and fits
    mem = dry_run(ROOT / "recipes/qwen3-8b/sgrpo.yaml", capsys=capsys)["memory"]
    assert mem["micro_batch"]["packed_sequences"] == 1 and mem["packing"] == {"active": True} and mem["fits"]


def test_flex_attention_plans_the_dense_packed_mask(capsys):
    """create_block_mask(..., _compile=False) evaluates the packed rule densely: FLEX_DENSE_MASK_BYTES a pair."""
    from planning.memory import FLEX_DENSE_MASK_BYTES

    train.main(["--config", str(ROOT / "recipes/qwen3-8b/sgrpo.yaml"), "--dry_run", "--attn_implementation",
                "flex_attention", "--check_memory", "false"])
    captured = capsys.readouterr()
    mem = json.loads(captured.out)["memory"]
    t = 1024 + 16384 + 8 * (1 + 32 + 1024)
    assert mem["activations_gib"]["attention_mask"] == round(FLEX_DENSE_MASK_BYTES * t * t / GIB, 2) > 5
    assert "compiles on first use" in captured.err


def test_eager_mask_is_planned_in_the_model_dtype(capsys):
    t = 1024 + 16384 + 8 * (1 + 32 + 1024)
    heads = 32
    for dtype, nbytes in (("bfloat16", 2), ("float32", 4)):
        mem = dry_run(ROOT / "recipes/qwen3-8b/sgrpo.yaml", "--attn_implementation", "eager", "--dtype", dtype,
                      "--check_memory", "false", capsys=capsys)["memory"]
        probs = 2 * heads * t * t  # one layer's attention probabilities (gradient checkpointing)
        assert mem["activations_gib"]["attention_mask"] == round(((1 + nbytes) * t * t + probs) / GIB, 2)


def test_lora_under_zero3_plans_the_gathered_copy(capsys):
    """TRL gathers every parameter at once to merge the adapter before the weight sync: a full 16-bit copy."""
    lora = dry_run(ROOT / "recipes/qwen3-8b/grpo.yaml", "--use_peft", "true", "--lora_r", "16", "--check_memory",
                   "false", capsys=capsys)["memory"]
    p = qwen3_8b_parameters()
    assert lora["lora_zero3_gathered_copy_gib"] == round(2 * p / GIB, 2)
    resident = sum(lora[k] for k in ("weights_gib", "gradients_gib", "optimizer_gib", "reference_model_gib"))
    vllm_weights = 2 * p / GIB  # woken for the sync (sleep mode), tensor parallel 1
    assert abs(lora["weight_sync_phase_gib"] - (resident + 2 * p / GIB + 0.5 + vllm_weights + 1.0)) < 0.05
    full = dry_run(ROOT / "recipes/qwen3-8b/grpo.yaml", capsys=capsys)["memory"]
    assert full["lora_zero3_gathered_copy_gib"] is None  # without LoRA: one parameter at a time
    zero2 = dry_run(ROOT / "recipes/qwen3-8b/grpo.yaml", "--use_peft", "true", "--lora_r", "16", "--accelerate_config",
                    str(ROOT / "accelerate_configs/zero2.yaml"), "--check_memory", "false", capsys=capsys)["memory"]
    assert zero2["lora_zero3_gathered_copy_gib"] is None


@pytest.mark.parametrize("nominal, reported", [(80, 79.65), (141, 140.4), (24, 22.49), (100, 100)])
def test_gpu_total_is_the_reported_one(nominal, reported, capsys):
    mem = dry_run(ROOT / "recipes/qwen3-8b/grpo.yaml", "--gpu_memory_gib", str(nominal), "--check_memory", "false",
                  capsys=capsys)["memory"]
    assert mem["gpu_memory_gib"] == reported and mem["usable_gib"] == round(0.9 * reported, 1)
    util = yaml.safe_load((ROOT / "recipes/qwen3-8b/grpo.yaml").read_text())["vllm_gpu_memory_utilization"]
    assert mem["vllm"]["budget_gib"] == round(util * reported, 2)
    assert ("reports" in mem["gpu"]) if nominal != 100 else ("as given" in mem["gpu"])


def test_a_launch_plans_the_launched_world_not_the_recipes(monkeypatch, capsys):
    """At launch the launcher's WORLD_SIZE decides the batch plan; the recipe's named launch only warns. A dry run
    plans the named launch."""
    from checks.recipe import RecipeArguments, num_processes_for

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert num_processes_for(RecipeArguments(accelerate_config=ZERO3), warn=True) == 4
    assert "written for 8 processes" in capsys.readouterr().err
    assert num_processes_for(RecipeArguments(accelerate_config=ZERO3, dry_run=True)) == 8
    assert num_processes_for(RecipeArguments(accelerate_config=ZERO3, num_processes=2, dry_run=True)) == 2


def test_unknown_model_has_no_plan_but_says_how(tmp_path, capsys):
    recipe = yaml.safe_load((ROOT / "recipes/qwen3-8b/grpo.yaml").read_text())
    recipe["model_name_or_path"] = "someone/unknown-model"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    plan = dry_run(path, capsys=capsys)
    assert plan["memory"]["available"] is False and "huggingface-cli download" in plan["memory"]["reason"]


# ------------------------------------------------------------------------------------- guards at start


def test_empty_recipe_key_is_refused(tmp_path):
    text = (ROOT / "recipes/tiny/grpo.yaml").read_text().replace("num_generations: 4", "num_generations:")
    assert "num_generations:\n" in text
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(train.InputError, match="`num_generations` is empty; give it a value, or remove it"):
        train.main(["--config", str(path), "--dry_run"])


def test_missing_resume_folder_is_refused_in_the_dry_run(tmp_path):
    with pytest.raises(train.RecipeError, match="no such folder"):
        train.main(["--config", str(ROOT / "recipes/qwen3-8b/grpo.yaml"), "--dry_run",
                    "--resume_from_checkpoint", str(tmp_path / "runs/x/checkpoint-50")])
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(train.RecipeError, match="no trainer_state.json"):
        train.main(["--config", str(ROOT / "recipes/qwen3-8b/grpo.yaml"), "--dry_run",
                    "--resume_from_checkpoint", str(tmp_path / "not-a-checkpoint")])


@pytest.mark.parametrize("method_recipe", ["grpo.yaml", "gfpo-shortest.yaml", "sgrpo.yaml"])
def test_special_think_tag_is_refused_for_every_method(method_recipe, tmp_path, tiny_model_path):
    """A tokenizer whose `</think>` is special loses it in TRL's decoding: refused before any model loads."""
    model = tmp_path / "special-think"
    shutil.copytree(tiny_model_path, model)
    tok = json.loads((model / "tokenizer.json").read_text())
    for added in tok["added_tokens"]:
        if added["content"] == "</think>":
            added["special"] = True
    (model / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((model / "tokenizer_config.json").read_text())
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    key = "extra_special_tokens" if "extra_special_tokens" in config else "additional_special_tokens"
    config[key] = [*extra, "</think>"] if isinstance(extra, list) else extra
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    recipe = ROOT / "recipes" / "tiny" / method_recipe
    with pytest.raises(train.RecipeError, match=r"drops '</think>' when decoding with skip_special_tokens=True"):
        train.main(["--config", str(recipe), "--dry_run", "--model_name_or_path", str(model),
                    "--dataset_name", str(ROOT / "recipes/tiny/data.jsonl")])


def test_architecture_is_counted_under_a_zero3_launch():
    """At a ZeRO-3 launch TrainingArguments registers its DeepSpeed config, and transformers would build the meta
    model inside zero.Init ("Cannot copy out of meta tensor"): the count sets that registration aside."""
    pytest.importorskip("deepspeed")
    import transformers.integrations.deepspeed as ds
    from transformers.integrations import HfDeepSpeedConfig

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert ds.is_deepspeed_zero3_enabled()
        arch = load_architecture("Qwen/Qwen3-8B", revision="zero3-launch")  # a new cache key: counted again
        assert arch.parameters == qwen3_8b_parameters() and ds.is_deepspeed_zero3_enabled()
    finally:
        ds.unset_hf_deepspeed_config()
    del config


def test_lora_adapter_counts():
    """r x (in + out) per adapted linear: peft's default for Qwen (q_proj, v_proj) and all-linear."""
    default = load_architecture("Qwen/Qwen3-8B", lora_r=64).lora_parameters
    assert default == 36 * 64 * ((4096 + 4096) + (4096 + 1024))
    every = load_architecture("Qwen/Qwen3-8B", lora_r=64, lora_target_modules="all-linear").lora_parameters
    per_layer = (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 12288) + (12288 + 4096)
    assert every == 36 * 64 * per_layer


def test_non_thinking_mode_grades_whole_completions_and_refuses_sgrpo(tmp_path, capsys):
    recipe = yaml.safe_load((ROOT / "recipes/qwen3-8b/grpo.yaml").read_text())
    recipe["chat_template_kwargs"] = {"enable_thinking": False}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script_args, method_args, model_args = train.parse(["--config", str(path), "--accelerate_config", ZERO3])
    train.validate(script_args, method_args, model_args)
    assert script_args.reward_kwargs["accuracy"]["require_thinking"] is False
    recipe = yaml.safe_load((ROOT / "recipes/qwen3-8b/sgrpo.yaml").read_text())
    recipe["chat_template_kwargs"] = {"enable_thinking": False}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(train.RecipeError, match="S-GRPO cuts the model's thought"):
        train.main(["--config", str(path), "--dry_run", "--accelerate_config", ZERO3])
