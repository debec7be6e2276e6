"""Step time and tokens/s: GRPO with G vs GFPO zero G->k vs GFPO drop G->k on the tiny model (not a test).

    python bench/gfpo_step.py                       # CPU (or the GPU when one is visible)
    python bench/gfpo_step.py --G 16 --k 4 --max_len 256 --questions 4 --steps 6 --generate

By default the completions come from a fixed, seeded rollout (lengths uniform in [max_len/4, max_len], the same
for every method), so the figures isolate the training compute GFPO changes: old/ref log-probs and the policy
forward/backward. `--generate` uses real sampling instead (identical cost for all three; it dilutes the gap).
Prints the hardware, then per method: median step time over the steps after the first, sampled completion tokens/s
(all G) and trained tokens/s (rows the loss sees).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TRL_EXPERIMENTAL_SILENCE": "1"}.items():
    os.environ.setdefault(key, value)


def fixed_rollout(max_len: int):
    def rollout(prompts, trainer):
        tok = trainer.processing_class
        G = trainer.num_generations
        offset = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            prompt_ids.append(tok(text, add_special_tokens=False)["input_ids"])
            rng = random.Random(f"{text}|{(offset + i) % G}")
            n = rng.randint(max(1, max_len // 4), max_len - 1)
            completion_ids.append([rng.randrange(10, 250) for _ in range(n)] + [tok.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 7) / 6 for c in completions]


def run(method: str, model_path: str, args, out_dir: str):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trainers.gfpo import GFPOConfig, GFPOTrainer

    use_cpu = not torch.cuda.is_available()
    common = dict(
        output_dir=out_dir,
        num_generations=args.G,
        per_device_train_batch_size=args.G * args.questions,
        max_completion_length=args.max_len,
        max_steps=args.steps,
        learning_rate=1e-5,
        beta=0.001,  # the paper's KL: TRL computes reference log-probs for every row
        loss_type="dapo",
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        use_cpu=use_cpu,
        seed=0,
        disable_tqdm=True,
    )
    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Add {i} and {i + 7}."}]} for i in range(args.questions * args.steps)]
    )
    kwargs = {} if args.generate else {"rollout_func": fixed_rollout(args.max_len)}
    if method == "grpo":
        trainer = GRPOTrainer(
            model=model_path, reward_funcs=reward, args=GRPOConfig(**common), train_dataset=ds, **kwargs
        )
    else:
        cfg = GFPOConfig(**common, num_remains_in_group=args.k, rejection_mode=method.split("-")[1])
        trainer = GFPOTrainer(model=model_path, reward_funcs=reward, args=cfg, train_dataset=ds, **kwargs)
    trained = []
    original = trainer._compute_loss

    def counting_loss(model, inputs):
        trained.append(int(inputs["completion_mask"].sum()))
        return original(model, inputs)

    trainer._compute_loss = counting_loss
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    times = [h["step_time"] for h in logs][1:] or [h["step_time"] for h in logs]
    sampled = [h["completions/mean_length"] * args.G * args.questions for h in logs][1:] or [0]
    step = statistics.median(times)
    return {
        "step_s": step,
        "sampled_tok_s": statistics.mean(sampled) / step,
        "trained_tok_s": statistics.mean(trained[1:] or trained) / step,
        "trained_rows": trainer._gfpo_last.get("local_rows") if method != "grpo" else args.G * args.questions,
        "wall_s": wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--G", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--questions", type=int, default=2, help="questions per step")
    parser.add_argument("--max_len", type=int, default=192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--generate", action="store_true", help="sample with model.generate instead of a fixed rollout")
    parser.add_argument("--model", default=None, help="a saved tiny model; default: build one in a temp dir")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU torch threads (1: stable figures on a shared, loaded machine)"
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)

    from synthetic.tiny_model import save_tiny_model

    if torch.cuda.is_available():
        hw = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        hw = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"hardware: {hw}; torch {torch.__version__}")
    print(
        f"tiny Qwen3, G={args.G}, k={args.k}, {args.questions} questions/step, completions <= {args.max_len} tokens, "
        f"{'sampled' if args.generate else 'fixed rollout'}, beta=0.001, loss dapo; median step time of steps 2..{args.steps}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or str(save_tiny_model(Path(tmp) / "tiny", seed=0))
        results = {}
        for method in ("grpo", "gfpo-zero", "gfpo-drop"):
            results[method] = run(method, model_path, args, str(Path(tmp) / method))
    print(f"{'method':<12}{'rows/step':>10}{'step s':>10}{'sampled tok/s':>15}{'trained tok/s':>15}")
    for method, r in results.items():
        label = method if method == "grpo" else f"{method} {args.G}->{args.k}"
        print(
            f"{label:<18}{r['trained_rows']:>4}{r['step_s']:>10.3f}{r['sampled_tok_s']:>15.0f}{r['trained_tok_s']:>15.0f}"
        )
    ratio = results["gfpo-drop"]["step_s"] / results["gfpo-zero"]["step_s"]
    print(f"drop / zero step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
