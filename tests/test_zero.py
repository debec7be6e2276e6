"""DeepSpeed ZeRO-2/3 through the users' own entry point, on 2 CPU processes (gloo).

Every run is `scripts/cpu_launch.py --config_file accelerate_configs/zero{2,3}.yaml --num_processes 2 scripts/train.py
--config recipes/tiny/...`: `accelerate launch` with the shipped accelerate config, only `use_cpu` and
`mixed_precision` changed. Under ZeRO-3 every forward gathers the sharded parameters on all ranks, so a rank that
runs one forward fewer hangs the job: each launch is killed after LAUNCH_TIMEOUT s and the test fails with the
launch's output (a hang reads "cpu_launch: killed after ... s").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT = 240
pytestmark = [pytest.mark.slow, pytest.mark.zero, pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is None, reason="deepspeed is part of `make install`")]

# digit_count gives a tiny random model rewards with variance, hence real gradients.
REWARDS = ["--reward_funcs", "tests.reward_stubs:digit_count", "format", "--reward_weights", "1.0", "0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stage: int, recipe: str, model: Path, out: Path, *args: str, script: str = "scripts/train.py"):
    cmd = [sys.executable, "scripts/cpu_launch.py", "--config_file", f"accelerate_configs/zero{stage}.yaml",
           "--num_processes", "2", "--main_process_port", str(_free_port()), "--timeout", str(LAUNCH_TIMEOUT), script]
    if script == "scripts/train.py":
        cmd += ["--config", f"recipes/tiny/{recipe}.yaml", "--model_name_or_path", str(model),
                "--output_dir", str(out), *REWARDS]
    cmd += list(args)
    dist_vars = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT + 60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def plan_line(proc) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("[concise-rl]"))


def logged(out: Path, step_dir: str, key: str) -> list:
    state = json.loads((out / step_dir / "trainer_state.json").read_text())
    return [h[key] for h in state["log_history"] if key in h]


def load_weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def assert_same(a, b, path="state"):
    """Recursive equality of (nested) optimizer / model states."""
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif hasattr(a, "__dict__"):  # e.g. DeepSpeed's loss scaler
        assert type(a) is type(b), path
        assert_same(vars(a), vars(b), path)
    else:
        assert a == b, path


@pytest.mark.parametrize("stage, lora", [(2, False), (3, True)], ids=["zero2-grpo", "zero3-grpo-lora"])
def test_zero_grpo(tiny_model_path, tmp_path, stage, lora):
    out = tmp_path / "out"
    extra = ["--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "all-linear"] if lora else []
    proc = launch(stage, "grpo", tiny_model_path, out, "--max_steps", "2", "--save_strategy", "steps",
                  "--save_steps", "2", "--learning_rate", "1e-2", *extra)
    assert f"processes=2 distributed=DEEPSPEED zero_stage={stage}" in plan_line(proc)
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").iterdir())
    assert [s for s in shards if "optim_states" in s] == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)], shards  # optimizer state sharded in 2
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    if lora:
        adapter = load_weights(out, "adapter_model.safetensors")
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at 0: training must move it"
        assert not (out / "model.safetensors").exists()
    else:
        init, final = load_weights(tiny_model_path), load_weights(out)
        assert any(not torch.equal(init[k], final[k]) for k in init)


def test_zero3_gfpo_resume_matches_uninterrupted(tiny_model_path, tmp_path):
    """Adaptive difficulty + drop with groups straddling ranks (uneven retained rows, padded), saved at step 2 and
    resumed: the resumed run ends with the same weights, optimizer shards and difficulty digest as the
    uninterrupted one."""
    args = ["--rejection_mode", "drop", "--per_device_train_batch_size", "12", "--learning_rate", "1e-2",
            "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    launch(3, "gfpo-adaptive", tiny_model_path, full, *args)
    assert max(logged(full, "checkpoint-4", "gfpo/drop_padding_rows")) > 0, "ranks must have had uneven rows"
    assert logged(full, "checkpoint-4", "gfpo/digest_questions") == [3.0, 6.0, 9.0, 12.0]

    resumed.mkdir()
    subprocess.run(["cp", "-r", str(full / "checkpoint-2"), str(resumed)], check=True)
    proc = launch(3, "gfpo-adaptive", tiny_model_path, resumed, *args, "--resume_from_checkpoint", "last")
    assert f"resume={resumed / 'checkpoint-2'}" in plan_line(proc)
    # the digest came back from the checkpoint (6 questions), not empty
    assert logged(resumed, "checkpoint-4", "gfpo/digest_questions") == [3.0, 6.0, 9.0, 12.0]
    steps = [h["step"] for h in json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())[
        "log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's history, then 3 and 4, not a restart

    assert_same(load_weights(full), load_weights(resumed), "weights")
    assert (json.loads((full / "checkpoint-4" / "gfpo_state.json").read_text())
            == json.loads((resumed / "checkpoint-4" / "gfpo_state.json").read_text()))
    for rank in (0, 1):
        name = f"global_step4/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        a, b = (torch.load(d / "checkpoint-4" / name, weights_only=False)["optimizer_state_dict"]
                for d in (full, resumed))
        assert_same(a, b, f"rank{rank}.optimizer")


def test_zero3_gfpo_drop_skips_logprob_rows(tiny_model_path, tmp_path):
    """Shortest k (selection known before rewards) in drop mode with a reference model (beta > 0): the no-grad
    reference pass skips rejected rows, and with groups straddling ranks and 2 chunks per rank the ranks must still
    run equal numbers of forwards."""
    out = tmp_path / "out"
    launch(3, "gfpo-drop", tiny_model_path, out, "--num_generations", "4", "--num_remains_in_group", "2",
           "--per_device_train_batch_size", "5", "--gradient_accumulation_steps", "2", "--beta", "0.01",
           "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    skipped = logged(out, "checkpoint-2", "gfpo/skipped_logprob_rows")
    assert len(skipped) == 2 and min(skipped) > 0


def test_zero3_sgrpo_serial_groups_and_dropped_groups(tiny_model_path, tmp_path):
    """S-GRPO's two generation calls (full rollouts, then exit answers) and drop_unsolved_groups under ZeRO-3."""
    out = tmp_path / "out"
    launch(3, "sgrpo", tiny_model_path, out, "--max_steps", "2", "--drop_unsolved_groups", "true",
           "--correct_threshold", "0.3", "--save_strategy", "steps", "--save_steps", "2")
    dropped = logged(out, "checkpoint-2", "sgrpo/frac_groups_dropped")
    assert len(dropped) == 2 and max(dropped) > 0
    assert (out / "checkpoint-2" / "global_step2").is_dir()


def test_zero3_sgrpo_packed_matches_unpacked(tiny_model_path, tmp_path):
    """Packed serial groups (pack_serial_groups, the default; issue 20) under ZeRO-3 on 2 processes, with the old-policy
    (steps_per_generation 2) and reference (beta > 0) passes packed too: the first step's loss and gradient norm equal
    an unpacked run's (same seed, same generations) and the packed token share is logged."""
    common = ["--max_steps", "1", "--beta", "0.01", "--steps_per_generation", "2", "--correct_threshold", "0.3",
              "--save_strategy", "steps", "--save_steps", "1"]
    packed, rows = tmp_path / "packed", tmp_path / "rows"
    launch(3, "sgrpo", tiny_model_path, packed, *common)
    launch(3, "sgrpo", tiny_model_path, rows, *common, "--pack_serial_groups", "false")
    frac = logged(packed, "checkpoint-1", "sgrpo/packed_token_frac")
    assert len(frac) == 1 and 0 < frac[0] < 1, frac
    assert not logged(rows, "checkpoint-1", "sgrpo/packed_token_frac")
    # on-policy, the first step's loss is -mean(advantages) + 0 = 0 in both: the gradient norm is the real check
    for key, nonzero in (("loss", False), ("grad_norm", True)):
        a, b = logged(packed, "checkpoint-1", key), logged(rows, "checkpoint-1", key)
        assert len(a) == len(b) == 1 and (b[0] != 0 or not nonzero), (key, a, b)
        assert a[0] == pytest.approx(b[0], rel=1e-4, abs=1e-6), (key, a, b)
        print(f"zero3 {key}: packed {a[0]!r} unpacked {b[0]!r}")


def test_zero3_vllm_colocate(tiny_model_path, tmp_path):
    """vLLM colocate under ZeRO-3: TRL gathers the sharded weights for every sync. After a large step the engine's
    sampling log-probs still match the trainer's (a stale engine would be far off)."""
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    launch(3, "grpo", tiny_model_path, out, "--max_steps", "2", "--learning_rate", "5e-2", "--use_vllm", "true",
           "--vllm_mode", "colocate", "--vllm_max_model_length", "256", "--vllm_enable_sleep_mode", "false",
           "--save_strategy", "steps", "--save_steps", "2")
    diffs = logged(out, "checkpoint-2", "sampling/sampling_logp_difference/mean")
    assert len(diffs) == 2 and max(diffs) < 0.05, diffs


def test_preflight_under_zero3_on_two_processes(tiny_model_path, tmp_path):
    """The preflight as users launch it (accelerate config, two processes): the model built partitioned under
    zero.Init, the plan for ZeRO-3 x 2 (planning/ counts the architecture with ZeRO-3's registration set aside),
    the all-reduce measured between the processes."""
    out = tmp_path / "preflight.json"
    launch(3, "grpo", tiny_model_path, tmp_path, "--config", "recipes/tiny/grpo.yaml", "--model_name_or_path",
           str(tiny_model_path), "--output_json", str(out), "--gradient_accumulation_steps", "4",
           script="scripts/preflight.py")
    report = json.loads(out.read_text())
    # the recipe's 4 micro-batches are run as 1, and DeepSpeed's engine accumulates over that 1, not the recipe's 4
    assert (report["micro_batches_run"], report["recipe_micro_batches"], report["deepspeed_accumulation"]) == (1, 4, 1)
    assert report["processes"] == 2 and report["planned_for"]["zero_stage"] == 3
    assert report["planned_for"]["processes"] == 2
    assert report["all_reduce"]["processes"] == 2 and report["all_reduce"]["bus_gb_per_s"] > 0
    assert len(report["step_seconds"]) == 2 and report["verdict"].startswith("CPU process figures")

