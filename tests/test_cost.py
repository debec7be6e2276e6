"""trainers/cost.py: what a run cost to train (sampled and trained completion tokens per optimizer step)."""

import sys
from pathlib import Path

import pytest

from trainers.cost import total_cost

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def test_total_cost_multiplies_window_means_by_their_steps():
    history = [{"step": 5, "cost/sampled_tokens": 100.0}, {"step": 5, "train_loss": 0.1},
               {"step": 10, "cost/sampled_tokens": 80.0}, {"step": 12, "cost/sampled_tokens": 50.0}]
    assert total_cost(history, "cost/sampled_tokens") == 5 * 100 + 5 * 80 + 2 * 50
    assert total_cost(history, "cost/trained_tokens") is None


@pytest.mark.slow
def test_sgrpo_samples_rollouts_and_answers_but_trains_prefixes_too(tmp_path, tiny_model_path):
    import train

    trainer = train.main(["--config", str(ROOT / "recipes/tiny/sgrpo.yaml"), "--model_name_or_path",
                          str(tiny_model_path), "--dataset_name", str(ROOT / "recipes/tiny/data.jsonl"),
                          "--output_dir", str(tmp_path / "out"), "--max_steps", "2"])
    logs = [h for h in trainer.state.log_history if "cost/sampled_tokens" in h]
    assert len(logs) == 2
    b = trainer._sgrpo_batch  # the last step's serial groups: what was generated
    sampled = sum(f if full else a for full, f, a in zip(b["is_full"], b["full_len"], b["answer_len"], strict=True))
    assert logs[-1]["cost/sampled_tokens"] == sampled
    # exit rows carry their rollout's prefix into the loss: more tokens trained than sampled
    assert logs[-1]["cost/trained_tokens"] > logs[-1]["cost/sampled_tokens"]
