"""Distributed check of GFPO's selection (not collected by pytest: launched by tests/test_gfpo_trainer.py).

    torchrun --nproc_per_node 2 tests/dist_gfpo.py --model M --out DIR --per_device 6
    torchrun --nproc_per_node 1 tests/dist_gfpo.py --model M --out DIR --per_device 12
    python scripts/cpu_launch.py --config_file accelerate_configs/zero3.yaml --num_processes 2 tests/dist_gfpo.py ...

Completions come from a deterministic `rollout_func` (a function of the prompt and of the response's position in
its group, independent of the rank and of the sampling RNG), so a 2-process run and a 1-process run on the same
seed see the same global batch, and their selections must match. Each rank writes `rank{r}.json` per variant.
Also importable: the helpers are shared with the in-process tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TORCHDYNAMO_DISABLE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}.items():
    os.environ.setdefault(key, value)


def make_dataset(n: int = 32):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"Add {i} and {3 * i + 1}."}], "answer": str(4 * i + 1)}
            for i in range(n)
        ]
    )


def _digest(text: str, salt: int) -> int:
    return int(hashlib.sha256(f"{salt}|{text}".encode()).hexdigest(), 16)


def reward_digits(completions, **kwargs):
    """Deterministic reward in [0, 1] from the completion text (its digit sum mod 4, scaled)."""
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else c
        out.append((sum(int(ch) for ch in text if ch.isdigit()) % 4) / 3)
    return out


def deterministic_rollout(prompts, trainer):
    """A `rollout_func` whose completion depends only on (prompt, position in the group): length 2-13 tokens of
    digits then EOS. The global row of local row i is process_index * len(prompts) + i (TRL's layout)."""
    tok = trainer.processing_class
    G = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
    offset = trainer.accelerator.process_index * len(prompts)
    digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    prompt_ids, completion_ids = [], []
    for i, prompt in enumerate(prompts):
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        prompt_ids.append(tok(text, add_special_tokens=False)["input_ids"])
        h = _digest(text, (offset + i) % G)
        n = 2 + h % 12
        ids = [digit_ids[(h >> (4 * j)) % 10] for j in range(n)]
        completion_ids.append(ids + [tok.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def build_trainer(model_path, output_dir, dataset=None, rollout=True, reward_funcs=None, trainer_kwargs=None, **cfg):
    from trainers.gfpo import GFPOConfig, GFPOTrainer

    base = dict(
        output_dir=str(output_dir),
        num_generations=4,
        num_remains_in_group=2,
        per_device_train_batch_size=8,
        max_completion_length=16,
        max_steps=2,
        learning_rate=1e-3,
        beta=0.0,
        loss_type="dapo",
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
    )
    base.update(cfg)
    kwargs = dict(trainer_kwargs or {})
    if rollout:
        kwargs["rollout_func"] = deterministic_rollout
    return GFPOTrainer(
        model=str(model_path),
        reward_funcs=reward_funcs or [reward_digits],
        args=GFPOConfig(**base),
        train_dataset=dataset if dataset is not None else make_dataset(),
        **kwargs,
    )


def record_steps(trainer):
    """Wrap the trainer so each generation batch appends its selection and the rows the loss sees."""
    trainer.gfpo_records = []
    original = trainer._gfpo_postprocess
    original_loss = trainer._compute_loss

    def postprocess(output):
        out = original(output)
        last = trainer._gfpo_last
        trainer.gfpo_records.append(
            {
                "retained": last["retained"].int().tolist(),
                "advantages": [round(x, 6) for x in last["advantages"].reshape(-1).tolist()],
                "k": last["k"].tolist(),
                "local_rows": last["local_rows"],
                "local_active_rows": int((out["completion_mask"].sum(1) > 0).sum()),
                "digest": None if trainer.difficulty_digest is None else trainer.difficulty_digest.state_dict(),
                "loss_rows": [],
            }
        )
        return out

    def compute_loss(model, inputs):
        trainer.gfpo_records[-1]["loss_rows"].append(int(inputs["completion_ids"].size(0)))
        return original_loss(model, inputs)

    trainer._gfpo_postprocess = postprocess
    trainer._compute_loss = compute_loss
    return trainer


VARIANTS = {
    # Adaptive Difficulty, zero mode: the digest must be identical on every rank and equal to 1 process's.
    "adaptive": dict(
        num_remains_in_group=None,
        adaptive_difficulty=True,
        adaptive_ks=[3, 3, 2, 2],
        adaptive_warmup_k=3,
        adaptive_warmup_questions=3,
        max_steps=3,
    ),
    # Drop with groups straddling ranks (6 rows per rank, G = 4) and token efficiency.
    "drop": dict(filter_metric="token_efficiency", rejection_mode="drop", num_remains_in_group=2, max_steps=2),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_device", type=int, required=True)
    args = parser.parse_args()
    for name, cfg in VARIANTS.items():
        trainer = build_trainer(args.model, Path(args.out) / name, per_device_train_batch_size=args.per_device, **cfg)
        record_steps(trainer)
        trainer.train()
        rank = trainer.accelerator.process_index
        path = Path(args.out) / name / f"rank{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = trainer.accelerator.state.deepspeed_plugin
        path.write_text(json.dumps({"world": trainer.accelerator.num_processes, "steps": trainer.gfpo_records,
                                    "distributed": trainer.accelerator.distributed_type.value,
                                    "zero_stage": ds.zero_stage if ds else None}))
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
