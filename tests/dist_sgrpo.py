"""2-process S-GRPO check, launched by tests/test_sgrpo_trainer.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_sgrpo.py <tiny_model_dir> <out_dir>

Each rank trains 2 steps (gloo, CPU) and writes rank<r>.json: how many whole serial groups it checked on its own
generated token ids, its local/gathered row counts, and the prompts it generated for.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sgrpo_helpers import CapturingMixin, check_serial_groups, parity_reward, tiny_dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from trainers.sgrpo import SGRPOConfig, SGRPOTrainer  # noqa: E402

M, G = 3, 4


class Capturing(CapturingMixin, SGRPOTrainer):
    def _calculate_rewards(self, *args, **kwargs):
        out = super()._calculate_rewards(*args, **kwargs)
        self.gathered_rows.append(out.size(0))
        return out


def main():
    model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(model_dir)
    end_id = tok.convert_tokens_to_ids("</think>")
    args = SGRPOConfig(
        output_dir=str(out_dir / "run"), num_exits=M, num_generations=G, per_device_train_batch_size=8,
        gradient_accumulation_steps=1, max_completion_length=20, max_answer_length=6, max_steps=2,
        learning_rate=1e-2, bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
        dataloader_num_workers=0, seed=0, generation_kwargs={"sequence_bias": [[[end_id], 3.0]]},
    )
    trainer = Capturing(model=model_dir, reward_funcs=[parity_reward], args=args, train_dataset=tiny_dataset(),
                        processing_class=tok)
    trainer.captured, trainer.gathered_rows = [], []
    trainer.train()
    exit_ids = tok.encode(args.exit_text, add_special_tokens=False)
    groups, prompts = 0, []
    for out in trainer.captured:
        facts = check_serial_groups(out, G, M, exit_ids, end_id, [tok.eos_token_id], args.max_answer_length)
        groups += len(facts) // G
        for i in range(0, out["prompt_ids"].size(0), G):
            prompts.append(out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist())
    rank = trainer.accelerator.process_index
    result = {
        "world_size": trainer.accelerator.num_processes,
        "groups_checked": groups,
        "local_rows": trainer.captured[0]["completion_ids"].size(0),
        "gathered_rows": trainer.gathered_rows[0],
        "prompts": prompts,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
