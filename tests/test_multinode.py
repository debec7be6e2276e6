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
        assert cmd.startswith(f"export VLLM_HOST_IP=\"$({multinode.HOST_IP_COMMAND})\"; ${{PYTHON:-python}} -m "
                              "accelerate.commands.launch --config_file accelerate_configs/zero3.yaml ")
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


def test_printed_commands_expand_when_pasted(monkeypatch, tmp_path):
    """issue 28, items 7-8: the default placeholders are printed unquoted, so a shell pasting the command expands them;
    the command runs `$PYTHON -m accelerate.commands.launch` (or python from PATH without $PYTHON) after exporting
    VLLM_HOST_IP as the node's own address."""
    monkeypatch.chdir(ROOT)
    out = multinode.plan(SERVER, nodes=3, gpus_per_node=8, vllm_nodes=1, vllm_tensor_parallel_size=8,
                         train_args=["--gradient_accumulation_steps", "8"])
    trainer, server = out["roles"][0]["command"], out["roles"][-1]["command"]
    assert "--main_process_ip $MASTER_ADDR " in trainer and trainer.endswith("--vllm_server_host $VLLM_HOST")
    assert out["notes"] == []  # tensor parallel 8: one engine, the exits share their rollouts' prefix cache
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text("#!/bin/bash\n[ \"$1\" = -I ] && echo '10.1.2.3 172.17.0.1'\n")
    (bin_dir / "fakepython").write_text("#!/bin/bash\necho \"VLLM_HOST_IP=$VLLM_HOST_IP\"; printf '%s\\n' \"$@\"\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MASTER_ADDR": "node01", "VLLM_HOST": "node03",
           "PYTHON": "fakepython"}
    for cmd in (trainer, server):
        lines = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, check=True).stdout.split(
            "\n")
        assert lines[0] == "VLLM_HOST_IP=10.1.2.3"
        if cmd is trainer:
            assert lines[1:3] == ["-m", "accelerate.commands.launch"]
            assert lines[lines.index("--main_process_ip") + 1] == "node01"
            assert lines[lines.index("--vllm_server_host") + 1] == "node03"
        else:
            assert lines[1] == "scripts/vllm_server.py"
    quoted = multinode.plan(GFPO, nodes=2, main_ip="a b")["roles"][0]["command"]
    assert "--main_process_ip 'a b'" in quoted  # anything that is not a bare placeholder is still quoted


def test_sgrpo_server_with_data_parallel_is_noted(monkeypatch):
    monkeypatch.chdir(ROOT)
    out = multinode.plan(SERVER, nodes=2, gpus_per_node=8, vllm_nodes=1, vllm_tensor_parallel_size=2)
    assert len(out["notes"]) == 1 and "about 1/4 of the time" in out["notes"][0]


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
    had_logs = (ROOT / "logs").exists()
    proc = subprocess.run(["bash", "scripts/slurm/train.slurm", SERVER, "--vllm_nodes", "1", "--",
                           "--gradient_accumulation_steps", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (ROOT / "logs").is_dir()  # mkdir -p logs
    if not had_logs:
        (ROOT / "logs").rmdir()
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])[0]
    assert plan["trainer_processes"] == 16 and plan["batch"]["completions_per_optimizer_step"] == 1152
    calls = sorted((f.read_text().rstrip("\t").split("\t") for f in tmp_path.glob("srun-*.log")), key=lambda c: c[2])
    assert [c[2] for c in calls] == ["--nodelist=gpu-a", "--nodelist=gpu-b", "--nodelist=gpu-c"]
    trainers, server = [c[-1] for c in calls[:2]], calls[2][-1]
    for rank, cmd in enumerate(trainers):
        assert (flag(cmd, "--machine_rank"), flag(cmd, "--main_process_ip"), flag(cmd, "--vllm_server_host"),
                flag(cmd, "--num_processes")) == (str(rank), "gpu-a", "gpu-c", "16")
    assert "; ${PYTHON:-python} scripts/vllm_server.py --config " + SERVER in server
    assert all(c[-1].startswith("export VLLM_HOST_IP=") for c in calls)
    assert "about 1/8 of the time" in proc.stderr  # S-GRPO on a data-parallel server: said before anything starts


def test_slurm_script_makes_logs_and_exports_python():
    """`mkdir -p logs` before anything writes there, PYTHON exported to the nodes' shells, and the header says logs/
    must exist before sbatch (Slurm opens --output before the script runs)."""
    text = (ROOT / "scripts/slurm/train.slurm").read_text()
    assert "#SBATCH --output=logs/" in text and "logs/ must exist BEFORE sbatch" in text
    body = text.split("set -euo pipefail", 1)[1]
    assert body.lstrip().startswith("mkdir -p logs") and "export PYTHON=" in body


def test_slurm_script_stops_before_any_node_when_the_recipe_does_not_fit(tmp_path):
    env = slurm_stubs(tmp_path, ["gpu-a", "gpu-b"], f"touch {tmp_path}/srun-called")
    proc = subprocess.run(["bash", "scripts/slurm/train.slurm", GFPO, "--vllm_nodes", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "vllm_mode: server" in proc.stderr
    assert not (tmp_path / "srun-called").exists()
