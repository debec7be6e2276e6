"""Train the synthetic benchmark's base model (SFT from scratch on the task's traces) and save it.

    python scripts/build_base_model.py --output_dir synthetic/base            # the shipped CPU checkpoint
    python scripts/build_base_model.py --task_version 4 --output_dir synthetic/base_v4   # the task-v4 one
    python scripts/build_base_model.py --size full --output_dir outputs/base-full   # DESIGN.md's GPU size
    python scripts/build_base_model.py --steps 20 --output_dir /tmp/b --eval_samples 0   # smoke run

Without --output_dir the checkpoint goes to the cache, outputs/synthetic-base/<config hash>/, and an existing one
(shipped or cached) with the same config is reused instead of retraining (--force retrains).
The exact command, the config and its hash, steps/s, time, hardware and the held-out accuracy / mean tokens are
written to <output_dir>/meta.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="cpu", help="Preset: cpu (shipped) or full (for a GPU).")
    p.add_argument("--output_dir", default=None, help="Where to save; default: the cache by config hash.")
    p.add_argument("--seed", type=int, default=None, help="Init/order seed (default: the preset's, 0).")
    p.add_argument("--data_seed", type=int, default=None, help="Seed of the held-out split and training stream.")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval_samples", type=int, default=None, help="Held-out questions to evaluate (0: none).")
    p.add_argument("--eval_every", type=int, default=0, help="Also evaluate 100 held-out questions every N steps.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--force", action="store_true", help="Retrain even if a matching checkpoint exists.")
    p.add_argument("--task_version", type=int, default=3, choices=[3, 4], help="synthetic task version (4: v4)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from synthetic.sft import find_checkpoint, preset, train_base

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in ("seed", "data_seed", "steps", "batch_size", "lr")
                 if getattr(args, k) is not None}
    if args.task_version == 4:
        from synthetic.task import TaskConfig

        overrides["task"] = TaskConfig.v4()
    cfg = preset(args.size, **overrides)
    print(f"[build_base_model] config {cfg.config_hash()}: {json.dumps(cfg.to_dict())}", flush=True)
    if args.output_dir is None and not args.force and (found := find_checkpoint(cfg)) is not None:
        print(f"[build_base_model] a checkpoint for this config exists: {found}")
        return found
    out = Path(args.output_dir) if args.output_dir else ROOT / "outputs" / "synthetic-base" / cfg.config_hash()
    command = "python scripts/build_base_model.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import synthetic.sft as sft

    meta = train_base(cfg, output_dir=None, eval_samples=args.eval_samples, eval_every=args.eval_every)
    meta["command"] = command.strip()
    sft.save_checkpoint(meta["_model"], meta["_tokenizer"], meta, out)
    sft.write_readme(out, meta)
    print(f"[build_base_model] saved {out} in {meta['train_seconds']} s of training")
    return out


if __name__ == "__main__":
    main()
