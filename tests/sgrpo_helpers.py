"""Shared by tests/test_sgrpo_trainer.py and the torchrun script tests/dist_sgrpo.py (not a test module)."""

from __future__ import annotations

import torch

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 7), (40, 41), (9, 90), (23, 32), (77, 11), (5, 65), (18, 81)]]


def tiny_dataset(n: int = 16):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}], "answer": str(i)}
            for i in range(n)]
    return Dataset.from_list(rows)


def parity_reward(completions, **kwargs):
    """A stand-in for correctness that a random model hits about half the time: the answer after `</think>`
    has an even number of characters. No `</think>`: no answer, 0."""
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(float(len(text.rsplit("</think>", 1)[1]) % 2 == 0) if "</think>" in text else 0.0)
    return out


class CapturingMixin:
    """Records every training output dict of `_generate_and_score_completions` (before TRL shuffles it)."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.captured.append({k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in out.items()})
        return out


def find_sub(seq: list[int], sub: list[int]) -> int | None:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return None


def check_serial_groups(out: dict, G: int, m: int, exit_ids: list[int], end_id: int, eos_ids, max_answer: int,
                        start_id: int | None = None) -> list[dict]:
    """Assert the serial-group structure on generated token ids; return per-row facts for further checks."""
    from trainers.serial_group import thinking_span

    ids, cmask, pids, pmask = out["completion_ids"], out["completion_mask"], out["prompt_ids"], out["prompt_mask"]
    rows = [ids[i][cmask[i].bool()].tolist() for i in range(ids.size(0))]
    prompts = [pids[i][pmask[i].bool()].tolist() for i in range(pids.size(0))]
    assert len(rows) % G == 0, f"{len(rows)} rows are not whole groups of {G}"
    facts = []
    for g in range(len(rows) // G):
        grp, gp = rows[g * G:(g + 1) * G], prompts[g * G:(g + 1) * G]
        assert all(p == gp[0] for p in gp), "a group mixes prompts"
        full = grp[-1]
        assert find_sub(full, exit_ids) is None, "the full rollout (last member) must not hold the exit text"
        span = thinking_span(full, end_id, start_id, eos_ids)
        cuts = []
        for r in grp[:-1]:
            cut = find_sub(r, exit_ids)
            assert cut is not None, "an exit member lacks the exit text"
            assert r[:cut] == full[:cut], "an exit prefix is not a prefix of the group's full rollout"
            assert span.start + min(1, span.length) <= cut <= span.end, "exit outside the thought tokens"
            answer = r[cut + len(exit_ids):]
            assert find_sub(answer, exit_ids) is None, "exit text inserted more than once"
            assert 1 <= len(answer) <= max_answer
            cuts.append(cut)
            facts.append({"group": g, "is_full": False, "cut": cut, "len": len(r), "closed": span.closed})
        assert cuts == sorted(cuts), "exits not in position order"
        assert len(cuts) == m
        facts.append({"group": g, "is_full": True, "cut": len(full), "len": len(full), "closed": span.closed})
    return facts
