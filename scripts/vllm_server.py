"""Start the vLLM server a recipe with `vllm_mode: server` talks to, on its own GPUs or node.

    # GPUs for generation (here 4-7: tensor parallel 2 x data parallel 2):
    CUDA_VISIBLE_DEVICES=4,5,6,7 python scripts/vllm_server.py --config recipes/qwen3-8b/sgrpo-server.yaml --tensor_parallel_size 2 --data_parallel_size 2
    # trainer on the remaining GPUs (--gradient_accumulation_steps 32 keeps 128 questions per step on 4 processes):
    CUDA_VISIBLE_DEVICES=0,1,2,3 accelerate launch --config_file accelerate_configs/zero3.yaml --num_processes 4 \
        scripts/train.py --config recipes/qwen3-8b/sgrpo-server.yaml --gradient_accumulation_steps 32

The model, revision, dtype, context length, host and port come from the recipe, so trainer and server agree.
The command is TRL's own (`trl.scripts.vllm_serve.build_command`: weight-transfer endpoints, processed logprobs);
this script only fills it from the recipe. `--print_only` prints it without starting anything.
"""

import argparse
import os
import shlex
import sys

import yaml


def server_command(recipe: dict, tensor_parallel_size: int, data_parallel_size: int,
                   gpu_memory_utilization: float, enforce_eager: bool) -> list[str]:
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    if not recipe.get("model_name_or_path"):
        raise SystemExit("the recipe has no model_name_or_path")
    dtype = recipe.get("dtype") or "auto"
    args = ScriptArguments(
        model=recipe["model_name_or_path"],
        revision=recipe.get("model_revision"),
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        host=recipe.get("vllm_server_host", "0.0.0.0"),
        port=int(recipe.get("vllm_server_port", 8000)),
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=dtype,
        max_model_len=recipe.get("vllm_max_model_length"),
        # S-GRPO's exits share the full rollout's prefix; prefix caching makes them cheap.
        enable_prefix_caching=True,
        enforce_eager=enforce_eager,
        trust_remote_code=bool(recipe.get("trust_remote_code", False)),
    )
    return build_command(args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the training recipe (YAML)")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--data_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--enforce_eager", action="store_true")
    parser.add_argument("--print_only", action="store_true", help="print the command and exit")
    args = parser.parse_args()
    with open(args.config) as f:
        recipe = yaml.safe_load(f)
    if recipe.get("vllm_mode") != "server":
        print(f"note: {args.config} has vllm_mode={recipe.get('vllm_mode')!r}; the trainer will not use this server",
              file=sys.stderr)
    command = server_command(recipe, args.tensor_parallel_size, args.data_parallel_size,
                             args.gpu_memory_utilization, args.enforce_eager)
    print(shlex.join(command), flush=True)
    if args.print_only:
        return
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")  # the weight-sync endpoints live behind vLLM's dev mode
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
