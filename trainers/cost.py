"""What a run cost to train, logged per optimizer step by every method (so GFPO's larger G can be weighed against
S-GRPO's short exits):

- `cost/sampled_tokens`: completion tokens the policy generated (every call of TRL's `_generate_single_turn`: for
  S-GRPO the full rollouts and then the exit answers; the exit prompts' shared prefixes are not sampled again; GFPO
  early stop: a stopped rollout counts the tokens it sampled, under vLLM without the EOS appended when it stopped);
- `cost/trained_tokens`: completion tokens that went through the policy's forward and backward (the loss's
  micro-batches: GFPO `drop` leaves the rejected rows out, S-GRPO's exit rows carry their rollout prefix). DPO
  (TRL's DPOTrainer, same `_compute_loss` / `completion_mask` names) samples nothing: its trained tokens are the
  chosen and rejected completions of its pairs, after `max_length` truncation.

Both are summed over processes and over the step's micro-batches. TRL averages a metric over the logging window,
so a window's total is its logged value times the steps it covers (`total_cost` does that from the log history).
"""

from __future__ import annotations


class CostAccounting:
    """Mixin placed first in the bases (`with_cost_accounting`). A trainer whose rows are not all sampled (S-GRPO:
    exit rows copy their rollout's prefix) says how many tokens it generated with `sampled_token_count`."""

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        if self.model.training:
            count = getattr(self, "sampled_token_count", None)
            n = count(completion_ids) if count else sum(len(ids) for ids in completion_ids)
            self._cost_sampled = getattr(self, "_cost_sampled", 0) + n
        return completion_ids, logprobs

    def _compute_loss(self, model, inputs, *args, **kwargs):  # DPOTrainer's takes return_outputs too
        self._cost_trained = getattr(self, "_cost_trained", 0) + int(inputs["completion_mask"].sum())
        return super()._compute_loss(model, inputs, *args, **kwargs)

    def training_step(self, *args, **kwargs):
        out = super().training_step(*args, **kwargs)
        # One training_step per micro-batch; the step's totals are logged once, when the optimizer steps.
        self._cost_micro = getattr(self, "_cost_micro", 0) + 1
        if self._cost_micro % self.args.gradient_accumulation_steps == 0:
            import torch

            local = torch.tensor([getattr(self, "_cost_sampled", 0), getattr(self, "_cost_trained", 0)],
                                 dtype=torch.float64, device=self.accelerator.device)
            sampled, trained = self.accelerator.reduce(local, reduction="sum").tolist()
            self._metrics["train"]["cost/sampled_tokens"].append(sampled)
            self._metrics["train"]["cost/trained_tokens"].append(trained)
            self._cost_sampled = self._cost_trained = 0
        return out


def with_cost_accounting(trainer_cls: type) -> type:
    return type(trainer_cls.__name__, (CostAccounting, trainer_cls), {"__module__": trainer_cls.__module__})


def total_cost(log_history: list[dict], key: str) -> float | None:
    """Total of a per-step metric over a run from `trainer_state.json`'s log history (window mean x window steps)."""
    total, prev, seen = 0.0, 0, False
    for entry in log_history:
        if key in entry:
            total += entry[key] * (entry["step"] - prev)
            prev, seen = entry["step"], True
    return total if seen else None
