"""Multi-node plans (scripts/multinode.py) and the SLURM script that runs them, with SLURM's commands stubbed.

What cannot run here: the nodes themselves (rendezvous across machines, NCCL, a vLLM server on its own node)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import multinode  # noqa: E402

GFPO = "recipes/phi4-reasoning/gfpo-shortest-4of16.yaml"
SERVER = "recipes/qwen3-8b/sgrpo-server.yaml"


def flag(command: str, name: str) -> str:
    argv = shlex.split(command)
    return argv[argv.index(name) + 1]


def test_four_nodes_of_eight(monkeypatch):
    monkeypatch.chdir(ROOT)
    out = multinode.plan(GFPO, nodes=4, gpus_per_node=8, main_ip="node01")
    recipe = yaml.safe_load((ROOT / GFPO).read_text())
    assert out["trainer_processes"] == 32 and out["trainer_nodes"] == 4
    assert out["distributed"] == {"type": "DEEPSPEED", "zero_stage": 3}
    per_step = recipe["per_device_train_batch_size"] * 32 * recipe["gradient_accumulation_steps"]
    assert out["batch"]["completions_per_optimizer_step"] == per_step
    assert out["batch"]["questions_per_optimizer_step"] == per_step / recipe["num_generations"]
    assert [r["role"] for r in out["roles"]] == ["trainer"] * 4
    for rank, role in enumerate(out["roles"]):
        cmd = role["command"]
        assert cmd.startswith("accelerate launch --config_file accelerate_configs/zero3.yaml ")
        assert (flag(cmd, "--num_machines"), flag(cmd, "--num_processes"), flag(cmd, "--machine_rank"),
                flag(cmd, "--main_process_ip")) == ("4", "32", str(rank), "node01")
        assert cmd.endswith(f"scripts/train.py --config {GFPO}")


def test_trainer_nodes_and_a_vllm_server_node(monkeypatch):
    monkeypatch.chdir(ROOT)
    out = multinode.plan(SERVER, nodes=5, gpus_per_node=8, vllm_nodes=1, vllm_host="node05",
                         vllm_tensor_parallel_size=2, train_args=["--gradient_accumulation_steps", "4"])
    assert out["trainer_processes"] == 32 and out["vllm"] == "server on node 4"
    # 9 per device x 32 processes x 4 = 1152 = the paper's 128 questions x 9 per step, whole groups per process
    assert out["batch"]["completions_per_optimizer_step"] == 1152
    assert out["batch"]["groups_whole_on_each_process"]
    server = out["roles"][-1]
    assert server["node_rank"] == 4 and server["role"] == "vllm_server"
    assert (flag(server["command"], "--tensor_parallel_size"), flag(server["command"], "--data_parallel_size")) == (
        "2", "4")
    for role in out["roles"][:-1]:
        assert flag(role["command"], "--vllm_server_host") == "node05"
        assert flag(role["command"], "--gradient_accumulation_steps") == "4"


@pytest.mark.parametrize("kwargs, message", [
    (dict(config=GFPO, nodes=4, vllm_nodes=1), "needs a recipe with `use_vllm: true` and `vllm_mode: server`"),
    (dict(config=SERVER, nodes=1, vllm_nodes=1), "at least one trainer node"),
    (dict(config=SERVER, nodes=3, vllm_nodes=2), "TRL's client talks to one server"),
    (dict(config=SERVER, nodes=2, vllm_nodes=1, vllm_tensor_parallel_size=3), "must divide --gpus_per_node"),
    (dict(config=GFPO, nodes=0), "must be >= 1"),
    # 3 nodes x 1 GPU x 1 completion = 3: a group of 4 would be cut
    (dict(config="recipes/tiny/grpo.yaml", nodes=3, gpus_per_node=1,
          train_args=["--per_device_train_batch_size", "1"]), "not a multiple of num_generations"),
])
def test_plans_that_cannot_run_say_what_to_change(monkeypatch, kwargs, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match=message):
        multinode.plan(**kwargs)


def slurm_stubs(tmp_path, hosts: list[str], srun_body: str) -> dict:
    """An environment where `scontrol show hostnames` lists `hosts` and `srun` runs `srun_body` instead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf '%s\\n' " + " ".join(hosts) + "\n")
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{srun_body}\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "stubbed",
            "PYTHON": sys.executable, "GPUS_PER_NODE": "8"}


def test_slurm_script_runs_every_node_command(tmp_path):
    """scripts/slurm/train.slurm with `scontrol` and `srun` stubbed: one srun per node, each on its own host."""
    # one file per srun call: the calls run in the background at the same time
    env = slurm_stubs(tmp_path, ["gpu-a", "gpu-b", "gpu-c"], f"printf '%s\\t' \"$@\" > {tmp_path}/srun-$$.log")
    proc = subprocess.run(["bash", "scripts/slurm/train.slurm", SERVER, "--vllm_nodes", "1", "--",
                           "--gradient_accumulation_steps", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert plan["trainer_processes"] == 16 and plan["batch"]["completions_per_optimizer_step"] == 1152
    calls = sorted((f.read_text().rstrip("\t").split("\t") for f in tmp_path.glob("srun-*.log")), key=lambda c: c[2])
    assert [c[2] for c in calls] == ["--nodelist=gpu-a", "--nodelist=gpu-b", "--nodelist=gpu-c"]
    trainers, server = [c[-1] for c in calls[:2]], calls[2][-1]
    for rank, cmd in enumerate(trainers):
        assert (flag(cmd, "--machine_rank"), flag(cmd, "--main_process_ip"), flag(cmd, "--vllm_server_host"),
                flag(cmd, "--num_processes")) == (str(rank), "gpu-a", "gpu-c", "16")
    assert server.startswith("python scripts/vllm_server.py --config " + SERVER)


def test_slurm_script_stops_before_any_node_when_the_recipe_does_not_fit(tmp_path):
    env = slurm_stubs(tmp_path, ["gpu-a", "gpu-b"], f"touch {tmp_path}/srun-called")
    proc = subprocess.run(["bash", "scripts/slurm/train.slurm", GFPO, "--vllm_nodes", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "vllm_mode: server" in proc.stderr
    assert not (tmp_path / "srun-called").exists()
