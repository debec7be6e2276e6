#!/usr/bin/env python
"""Multi-node launch plan: which nodes train, which node serves vLLM, every node's command, the batch arithmetic.

    # check a recipe against 4 nodes x 8 GPUs before queueing it (no model is loaded):
    python scripts/multinode.py --config recipes/phi4-reasoning/gfpo-shortest-4of16.yaml --nodes 4 --dry_run
    # 4 trainer nodes + 1 node serving vLLM (a recipe with vllm_mode: server):
    python scripts/multinode.py --config recipes/qwen3-8b/sgrpo-server.yaml --nodes 5 --vllm_nodes 1 --dry_run
    # one node's command (scripts/slurm/train.slurm writes them all with --commands_file and runs each on its node):
    python scripts/multinode.py --config R --nodes 4 --node_rank 2 --main_ip node01 -- --learning_rate 5e-7

Trainer nodes run `$PYTHON -m accelerate.commands.launch` (accelerate launch, from the Python that has this project
installed: `${PYTHON:-python}`) with the accelerate config (default: accelerate_configs/zero3.yaml: the DeepSpeed
settings of one node) and the machine count, total process count, machine rank and rendezvous address on the command
line. Every node's command first exports VLLM_HOST_IP as that node's own address (`--host_ip_command`): TRL's
weight sync to a vLLM server sends vLLM's `get_ip()` as its rendezvous address, which otherwise is the address of the
route to a public IP, or 0.0.0.0 on a cluster without a default route. Placeholders (`$MASTER_ADDR`, `$VLLM_HOST`,
`${PYTHON:-python}`) are printed unquoted, so a pasted command expands them. With `--vllm_nodes 1` the last node runs scripts/vllm_server.py (tensor x data parallel over its
GPUs) and the trainers reach it through `--vllm_server_host`. The batch plan is scripts/train.py's own dry run for
the trainer processes, so a recipe that does not fit the allocation fails here with train.py's message.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


class PlanError(ValueError):
    """An allocation the recipe cannot run on; the message says what to change."""


# Shell words left for the node's shell to expand: `$NAME`, `${NAME}`, `${NAME:-default}` (no spaces, no quotes).
_PLACEHOLDER = re.compile(r"^\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(?::-[A-Za-z0-9_./-]*)?\})$")
PYTHON = "${PYTHON:-python}"  # the environment with this project installed, as train.slurm and the planner name it
# Each node's own address, for vLLM's get_ip(): TRL's weight-sync rendezvous sends it to the server as the master
# address; without VLLM_HOST_IP it is the address of the route to a public IP, or 0.0.0.0 without a default route.
HOST_IP_COMMAND = "hostname -I | awk '{print $1}'"


def shell_join(argv: list[str]) -> str:
    """`shlex.join`, except that a placeholder word stays unquoted, so a pasted command expands it."""
    return " ".join(word if _PLACEHOLDER.match(word) else shlex.quote(word) for word in argv)


def node_command(argv: list[str], host_ip_command: str = HOST_IP_COMMAND) -> str:
    """One node's shell line: VLLM_HOST_IP exported as this node's address, then the command."""
    return f'export VLLM_HOST_IP="$({host_ip_command})"; {shell_join(argv)}'


def plan(config: str, nodes: int, gpus_per_node: int = 8, vllm_nodes: int = 0,
         accelerate_config: str = "accelerate_configs/zero3.yaml", main_ip: str = "$MASTER_ADDR",
         main_port: int = 29500, vllm_host: str = "$VLLM_HOST", vllm_tensor_parallel_size: int = 1,
         train_args: list[str] | None = None, host_ip_command: str = HOST_IP_COMMAND) -> dict:
    """Roles, commands and batch arithmetic for `nodes` nodes of `gpus_per_node` GPUs; node i has machine rank i."""
    import train
    import yaml

    train_args = list(train_args or [])
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError(f"--nodes ({nodes}) and --gpus_per_node ({gpus_per_node}) must be >= 1.")
    if vllm_nodes not in (0, 1) or vllm_nodes >= nodes:
        raise PlanError(f"--vllm_nodes {vllm_nodes}: give 0 (colocate, or a server you start yourself) or 1 "
                        f"(the last node serves; TRL's client talks to one server), with at least one trainer node.")
    recipe = train.load_recipe(config)
    server_mode = bool(recipe.get("use_vllm")) and recipe.get("vllm_mode") == "server"
    if vllm_nodes and not server_mode:
        raise PlanError(f"--vllm_nodes 1 needs a recipe with `use_vllm: true` and `vllm_mode: server` ({config} has "
                        f"use_vllm={recipe.get('use_vllm')!r}, vllm_mode={recipe.get('vllm_mode')!r}); see "
                        f"recipes/*/sgrpo-server.yaml.")
    if vllm_nodes and gpus_per_node % vllm_tensor_parallel_size:
        raise PlanError(f"--vllm_tensor_parallel_size {vllm_tensor_parallel_size} must divide --gpus_per_node "
                        f"{gpus_per_node}.")

    trainer_nodes = nodes - vllm_nodes
    processes = trainer_nodes * gpus_per_node
    script_args, method_args, model_args = train.parse(
        ["--config", config, "--dry_run", "true", "--num_processes", str(processes), *train_args])
    batch, _ = train.validate(script_args, method_args, model_args)

    train_cmd = ["scripts/train.py", "--config", config, *train_args]
    if server_mode and vllm_nodes:
        train_cmd += ["--vllm_server_host", vllm_host]
    roles = [{"node_rank": i, "role": "trainer", "processes": gpus_per_node, "command": node_command(
        [PYTHON, "-m", "accelerate.commands.launch", "--config_file", accelerate_config, "--num_machines",
         str(trainer_nodes), "--num_processes", str(processes), "--machine_rank", str(i), "--main_process_ip", main_ip,
         "--main_process_port", str(main_port), *train_cmd], host_ip_command)} for i in range(trainer_nodes)]
    notes = []
    if vllm_nodes:
        tp = vllm_tensor_parallel_size
        dp = gpus_per_node // tp
        roles.append({"node_rank": nodes - 1, "role": "vllm_server", "gpus": gpus_per_node, "command": node_command(
            [PYTHON, "scripts/vllm_server.py", "--config", config, "--tensor_parallel_size", str(tp),
             "--data_parallel_size", str(dp)], host_ip_command)})
        if dp > 1 and script_args.method == "sgrpo" and recipe.get("serial", True):
            notes.append(f"vLLM server data parallel {dp}: S-GRPO's exit prompts reach the engine that holds their "
                         f"rollout's prefix about 1/{dp} of the time (no prefix sharing across engines; "
                         "docs/training.md); a larger --vllm_tensor_parallel_size (one engine at "
                         f"{gpus_per_node}, where the model's attention heads divide by it) keeps the exits cached "
                         "(logged: sgrpo/exit_prompt_cached_frac)")
    accel_path = Path(accelerate_config) if Path(accelerate_config).exists() else ROOT / accelerate_config
    if not accel_path.is_file():
        raise PlanError(f"--accelerate_config {accelerate_config}: no such file")
    accel = yaml.safe_load(accel_path.read_text()) or {}
    return {
        "recipe": config,
        "method": script_args.method,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "trainer_nodes": trainer_nodes,
        "trainer_processes": processes,
        "vllm": ("server on node %d" % (nodes - 1) if vllm_nodes else
                 "server you started (--vllm_server_host)" if server_mode else
                 "colocate on every trainer GPU" if recipe.get("use_vllm") else "off (transformers generation)"),
        "distributed": {"type": accel.get("distributed_type"),
                        "zero_stage": (accel.get("deepspeed_config") or {}).get("zero_stage")},
        "batch": batch,
        "roles": roles,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training recipe")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation")
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--vllm_nodes", type=int, default=0, help="1: the last node serves vLLM (vllm_mode: server)")
    p.add_argument("--vllm_tensor_parallel_size", type=int, default=1,
                   help="tensor parallel size of the vLLM server; data parallel fills the node's other GPUs")
    p.add_argument("--accelerate_config", default="accelerate_configs/zero3.yaml")
    p.add_argument("--main_ip", default="$MASTER_ADDR", help="address of node 0 (trainer rendezvous)")
    p.add_argument("--main_port", type=int, default=29500)
    p.add_argument("--vllm_host", default="$VLLM_HOST", help="address of the vLLM server node")
    p.add_argument("--host_ip_command", default=HOST_IP_COMMAND,
                   help="shell command that prints a node's own address, exported as VLLM_HOST_IP on every node "
                        "(vLLM's get_ip: the weight-sync rendezvous address); e.g. for an InfiniBand interface: "
                        "\"ip -4 -o addr show ib0 | awk '{print $4}' | cut -d/ -f1\"")
    p.add_argument("--node_rank", type=int, help="print only this node's command, shell-quoted")
    p.add_argument("--dry_run", action="store_true", help="print the whole plan as JSON")
    p.add_argument("--commands_file", help="also write every node's command, one line per node rank, to this file")
    args = p.parse_args(argv)
    try:
        out = plan(args.config, args.nodes, args.gpus_per_node, args.vllm_nodes, args.accelerate_config, args.main_ip,
                   args.main_port, args.vllm_host, args.vllm_tensor_parallel_size, train_args, args.host_ip_command)
    except ValueError as e:  # PlanError and train.py's InputError
        sys.exit(f"multinode.py: error: {e}")
    for note in out["notes"]:
        print(f"multinode.py: note: {note}", file=sys.stderr)
    if args.commands_file:
        Path(args.commands_file).write_text("".join(role["command"] + "\n" for role in out["roles"]))
    if args.node_rank is not None:
        role = next((r for r in out["roles"] if r["node_rank"] == args.node_rank), None)
        if role is None:
            sys.exit(f"multinode.py: error: --node_rank {args.node_rank} is not in 0..{args.nodes - 1}")
        print(role["command"])
    else:
        print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
