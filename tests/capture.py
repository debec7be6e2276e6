"""Test helpers: record what a trainer's `_generate_and_score_completions` returns, and read its rows back."""

import torch


def capture(monkeypatch, cls) -> list[dict]:
    """Record every training output dict of `_generate_and_score_completions` (before TRL shuffles it)."""
    captured: list[dict] = []
    original = cls._generate_and_score_completions

    def wrapped(self, inputs):
        out = original(self, inputs)
        if self.model.training:
            captured.append({k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in out.items()})
        return out

    monkeypatch.setattr(cls, "_generate_and_score_completions", wrapped)
    return captured


def rows(out: dict, key: str = "completion") -> list[list[int]]:
    """The unpadded ids of every row of `key` (completion or prompt)."""
    ids, mask = out[f"{key}_ids"], out[f"{key}_mask"]
    return [ids[i][mask[i].bool()].tolist() for i in range(ids.size(0))]
