"""One GFPO 4/16 generation batch of the miniature's base model with and without early stop (issue 29).

    python bench/gfpo_generation.py                      # transformers and vLLM colocate (if installed), 5 repeats
    python bench/gfpo_generation.py --backends hf --repeats 3

The real code path: a GFPOTrainer (shortest 4/16, rejection_mode drop, the demo's recipe values) on
synthetic/base_v4 and 8 task-v4 questions (the demo's batch: 8 x G = 16 = 128 rollouts of <= 256 tokens, temperature
1.0), timing the trainer's `_generate` (TRL's generation wrapped by GFPO) for the same batch with `gfpo_early_stop`
on and off, alternately, the same seeds in both (transformers: the global torch seed; vLLM: per-request seeds,
`gfpo_request_seeds`). Reports per back-end the median sampled tokens and wall time over the repeats (after one
warm-up pair), and whether the retained responses (the k shortest of each group: their tokens, and on vLLM their
sampling log-probs) are identical. The last three lines: vLLM colocate's ratios when it ran (the path real recipes
use), else transformers'; "identical" is yes only if it held on every back-end and repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TORCHDYNAMO_DISABLE": "1",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_AOT_COMPILE": "0", "TOKENIZERS_PARALLELISM": "false",
                   "TRL_EXPERIMENTAL_SILENCE": "1"}.items():
    os.environ.setdefault(key, value)


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def build_trainer(args, backend: str, out: Path):
    from datasets import Dataset

    from synthetic.task import TaskConfig, build_splits
    from trainers.gfpo import GFPOConfig, GFPOTrainer

    rows = build_splits(args.questions, 1, seed=args.seed, cfg=TaskConfig.v4())["train"][: args.questions]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}]} for r in rows])
    cfg = dict(output_dir=str(out), num_generations=16, num_remains_in_group=4, filter_metric="length",
               rejection_mode="drop", per_device_train_batch_size=args.questions * 16, max_completion_length=256,
               temperature=1.0, top_p=1.0, beta=0.0, loss_type="dapo", bf16=False, report_to="none",
               use_cpu=not args.device.startswith("cuda"), seed=args.seed, max_steps=1, save_strategy="no",
               dataloader_num_workers=0, gfpo_request_seeds=True)
    if backend == "vllm":
        cfg.update(use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False, vllm_max_model_length=512)
    trainer = GFPOTrainer(model=str(args.model), reward_funcs=[zero_reward], args=GFPOConfig(**cfg),
                          train_dataset=data)
    trainer.model.train()
    prompts = [data[i // 16]["prompt"] for i in range(args.questions * 16)]  # G consecutive rows per question
    return trainer, prompts


def one_batch(trainer, prompts, stop: bool, seed: int):
    import torch

    from trainers import selection as sel

    trainer._gfpo_es_active, trainer._gfpo_gen_calls = stop, 0
    trainer.args.seed = seed  # vLLM's request seeds derive from it (and the step and call, the same here)
    trainer._gfpo_capture = {}
    torch.manual_seed(seed)
    t = time.perf_counter()
    result = trainer._generate(prompts)
    seconds = time.perf_counter() - t
    completion_ids, logprobs = result[1], result[4]
    stopped = trainer._gfpo_capture["early_stopped"].tolist()
    lengths = torch.tensor([len(c) for c in completion_ids], dtype=torch.float32)
    retained, _ = sel.topk_retained_mask(-lengths.view(-1, 16), 4)
    keep = retained.reshape(-1).tolist()
    sampled = int(lengths.sum()) - (sum(stopped) if trainer.use_vllm else 0)  # vLLM's forced EOS is not sampled
    kept = [(completion_ids[i], None if logprobs is None else logprobs[i]) for i in range(len(keep)) if keep[i]]
    return {"seconds": seconds, "sampled": sampled, "stopped": sum(stopped), "retained": kept, "keep": keep}


def run_backend(args, backend: str, out: Path) -> dict:
    trainer, prompts = build_trainer(args, backend, out / backend)
    one_batch(trainer, prompts, False, args.seed)  # warm-up (weights to vLLM, allocator, kernels)
    one_batch(trainer, prompts, True, args.seed)
    full, stop, identical = [], [], True
    for r in range(args.repeats):
        seed = args.seed + 1 + r
        a = one_batch(trainer, prompts, False, seed)
        b = one_batch(trainer, prompts, True, seed)
        full.append(a)
        stop.append(b)
        identical &= a["keep"] == b["keep"] and a["retained"] == b["retained"]
    med = lambda runs, key: statistics.median(x[key] for x in runs)  # noqa: E731
    res = {"full_tokens": med(full, "sampled"), "stop_tokens": med(stop, "sampled"),
           "full_seconds": med(full, "seconds"), "stop_seconds": med(stop, "seconds"),
           "stopped": med(stop, "stopped"), "identical": identical,
           "per_repeat": [(a["sampled"], b["sampled"]) for a, b in zip(full, stop, strict=True)]}
    del trainer
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="hf,vllm", help="comma list of hf, vllm")
    p.add_argument("--model", default=str(ROOT / "synthetic" / "base_v4"))
    p.add_argument("--questions", type=int, default=8, help="questions per batch (x G = 16 rollouts)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output_dir", default="/tmp/gfpo-generation-bench")
    args = p.parse_args(argv)

    import importlib.util

    import torch

    from trainers.vllm_cpu import cpu_name

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b]
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: transformers only")
        backends.remove("vllm")
    load0 = os.getloadavg()[0]
    results = {}
    for backend in backends:
        results[backend] = run_backend(args, backend, Path(args.output_dir))
    load1 = os.getloadavg()[0]
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, load average {load0:.2f} -> {load1:.2f} (1 min)")
    print(f"batch: {args.questions} questions x G = 16 of {Path(args.model).name}, k = 4, max 256 tokens, "
          f"temperature 1.0; median of {args.repeats} after a warm-up")
    names = {"hf": "transformers", "vllm": "vLLM colocate"}
    for backend, r in results.items():
        print(f"{names[backend]:14s} full: {r['full_tokens']:.0f} tokens {r['full_seconds']:.2f} s | early stop: "
              f"{r['stop_tokens']:.0f} tokens {r['stop_seconds']:.2f} s, {r['stopped']:.0f} of {args.questions * 16} "
              f"rows stopped | retained identical: {'yes' if r['identical'] else 'no'}")
        print(f"{'':14s} sampled tokens per repeat (full, early stop): {r['per_repeat']}")
    main_backend = "vllm" if "vllm" in results else backends[0]
    r = results[main_backend]
    print(f"(ratios below: {names[main_backend]})")
    print(f"early-stop/full sampled tokens: {r['stop_tokens'] / r['full_tokens']:.3f}")
    print(f"early-stop/full generation time: {r['stop_seconds'] / r['full_seconds']:.3f}")
    print(f"retained responses identical: {'yes' if all(x['identical'] for x in results.values()) else 'no'}")


if __name__ == "__main__":
    main()
