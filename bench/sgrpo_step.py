"""One S-GRPO policy update, packed serial groups vs unpacked rows (issue 20; not a test).

    python bench/sgrpo_step.py                      # CPU, 1 torch thread (or the GPU when one is visible)
    python bench/sgrpo_step.py --thought 1024 --answer 64 --exits 8 --groups 2 --steps 5 --threads 2

A random Qwen3 of ~20M parameters (hidden 512, 6 layers, 8 heads of 64, MLP 1536; the tiny local tokenizer) and a
fixed, seeded serial-group batch in TRL's layout: per group a chat prompt, a full rollout O_0 of `--thought` thought
tokens + `</think>` + an answer of `--answer` tokens, and m = `--exits` early exits O_0[:P_i] + the exit text + an
answer of `--answer` tokens, decaying-reward advantages from seeded correctness. The exits sit at P_i = i n / (m + 1),
the expected positions of m sorted U(1, n) draws (S-GRPO's exit distribution), so the token ratio is the typical
group's; `--random_exits` draws them instead (one seeded draw). The micro-batch is the whole batch (whole serial groups, as with per_device_train_batch_size a multiple
of m + 1).

The update is the trainer's own loss pass: `SGRPOTrainer._compute_loss` (TRL's loss through the packed or unpacked
log-prob hook) + backward, on the same weights; the optimizer step is left out (identical in both). Prints the
hardware, the shapes, per mode the trained tokens (completion tokens through the policy: the rows' for unpacked, the
packed sequences' after the prompt for packed; trainers/cost.py's cost/trained_tokens) and the median step time over
`--steps` timed steps after one warm-up, then, last:
    packed/unpacked trained tokens: R1
    packed/unpacked step time: R2
    max relative gradient difference: D     (max over parameter tensors of max|g_packed - g_unpacked| / max|g_unpacked|)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TRL_EXPERIMENTAL_SILENCE": "1",
                   "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)


def build(tmp: str, args):
    """Save a random ~20M-parameter Qwen3 with the tiny tokenizer; return its path."""
    from synthetic.tiny_model import save_tiny_model

    return str(save_tiny_model(Path(tmp) / "qwen3-20m", seed=0, hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=args.hidden // 64, head_dim=64, intermediate_size=3 * args.hidden,
                               max_position_embeddings=4096))


def serial_batch(trainer, args, device):
    """A fixed, seeded batch of `--groups` serial groups in TRL's layout, with the packing descriptor."""
    import torch
    from trl.trainer.utils import pad

    from trainers.packing import member_descriptor
    from trainers.serial_group import exit_completion, sample_exit_positions, serial_advantages, sgrpo_rewards

    tok = trainer.processing_class
    g = torch.Generator().manual_seed(1234)
    vocab = [i for i in range(len(tok)) if i not in set(tok.all_special_ids) | {trainer._think_end_id}]

    def rand_tokens(n):
        return [vocab[i] for i in torch.randint(0, len(vocab), (n,), generator=g).tolist()]

    prompts, completions, is_full, cuts = [], [], [], []
    for q in range(args.groups):
        text = tok.apply_chat_template([{"role": "user", "content": f"What is {12 + q} + {34 + q}?"}], tokenize=False,
                                       add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        full = rand_tokens(args.thought) + [trainer._think_end_id] + rand_tokens(args.answer - 1) + [tok.eos_token_id]
        if args.random_exits:
            positions = sample_exit_positions(args.thought, args.exits, g)
        else:  # the expected order statistics of m uniform draws: the typical serial group, not one draw's luck
            positions = [round(i * args.thought / (args.exits + 1)) for i in range(1, args.exits + 1)]
        for p in positions:
            answer = rand_tokens(args.answer - 1) + [tok.eos_token_id]
            prompts.append(prompt)
            completions.append(exit_completion(full, p, trainer._exit_ids, answer))
            is_full.append(False)
            cuts.append(p)
        prompts.append(prompt)
        completions.append(full)
        is_full.append(True)
        cuts.append(len(full))
    correct = torch.rand(args.groups, args.exits + 1, generator=g) < 0.6
    advantages = serial_advantages(sgrpo_rewards(correct, "decay")).flatten()
    prompt_ids = pad([torch.tensor(p) for p in prompts], padding_value=tok.pad_token_id, padding_side="left")
    prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], padding_value=0, padding_side="left")
    completion_ids = pad([torch.tensor(c) for c in completions], padding_value=tok.pad_token_id, padding_side="right")
    completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in completions], padding_value=0,
                          padding_side="right")
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": advantages, "num_items_in_batch": completion_mask.sum(),
        "sgrpo_pack": member_descriptor(is_full, cuts, args.exits + 1),
    }
    return {k: v.to(device) for k, v in batch.items()}, len(prompts[0])


def step(trainer, batch, packed: bool, sync):
    trainer.sgrpo_packing = packed
    trainer._sgrpo_pack_counts = None
    trainer.model.zero_grad(set_to_none=True)
    sync()
    t0 = time.perf_counter()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    sync()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thought", type=int, default=512, help="thought tokens n of each full rollout")
    parser.add_argument("--answer", type=int, default=32, help="answer tokens of every member")
    parser.add_argument("--exits", type=int, default=8, help="m, early exits per serial group")
    parser.add_argument("--groups", type=int, default=1, help="serial groups in the micro-batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads (1: stable on a shared machine)")
    parser.add_argument("--random_exits", action="store_true",
                        help="draw the exit positions P_i ~ U(1, n) (seeded) instead of placing them at i n / (m + 1)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flex_attention"])
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.sgrpo import SGRPOConfig, SGRPOTrainer

    if cuda:
        hw = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        hw = f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"hardware: {hw}; torch {torch.__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        path = build(tmp, args)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=args.attn, dtype=torch.float32)
        n_params = sum(p.numel() for p in model.parameters())
        G = args.exits + 1
        cfg = SGRPOConfig(output_dir=str(Path(tmp) / "out"), num_exits=args.exits, num_generations=G,
                          per_device_train_batch_size=G * args.groups, max_completion_length=args.thought + args.answer,
                          max_answer_length=args.answer, bf16=False, report_to="none", use_cpu=not cuda,
                          save_strategy="no", seed=0, disable_tqdm=True)
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": "1 + 1?"}]}] * G)
        trainer = SGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=cfg,
                               train_dataset=data, processing_class=tok)
        if not trainer.sgrpo_packing:
            raise SystemExit(f"packing unavailable: {trainer.sgrpo_pack_reason}")
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        device = next(trainer.model.parameters()).device
        batch, prompt_len = serial_batch(trainer, args, device)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        print(f"random Qwen3 {n_params / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), "
              f"attention {args.attn}, fp32; {args.groups} serial group(s) of m = {args.exits} exits + the full rollout: "
              f"prompt {prompt_len}, thought {args.thought}, exit text {len(trainer._exit_ids)}, answers {args.answer} "
              f"tokens, exits at {'random' if args.random_exits else 'i n / (m + 1)'}; micro-batch {batch['completion_ids'].shape[0]} rows x {batch['completion_ids'].shape[1]} "
              f"completion columns; median of {args.steps} steps after 1 warm-up")

        grads, times, tokens = {}, {}, {}
        for packed in (True, False):
            step(trainer, batch, packed, sync)  # warm-up
            grads[packed] = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                             if p.grad is not None}
            tokens[packed] = (trainer._sgrpo_pack_counts[0] if packed else int(batch["completion_mask"].sum()))
            times[packed] = [step(trainer, batch, packed, sync) for _ in range(args.steps)]
        for packed in (False, True):
            name = "packed" if packed else "unpacked"
            print(f"{name:<9} trained tokens {tokens[packed]:>6}  step time {statistics.median(times[packed]):.3f} s "
                  f"(steps: {', '.join(f'{t:.3f}' for t in times[packed])})")
        diff = max((grads[True][n] - grads[False][n]).abs().max().item() / max(grads[False][n].abs().max().item(), 1e-30)
                   for n in grads[False])
        print(f"packed/unpacked trained tokens: {tokens[True] / tokens[False]:.3f}")
        print(f"packed/unpacked step time: {statistics.median(times[True]) / statistics.median(times[False]):.3f}")
        print(f"max relative gradient difference: {diff:.2e}")


if __name__ == "__main__":
    main()
