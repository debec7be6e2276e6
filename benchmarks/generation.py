"""Token-level generation back-ends (transformers, vLLM) and the budget logic on top of them.

Both back-ends implement one call, `generate(prompts, max_new_tokens, seeds, stop_token_ids)`, on token ids,
with one seed per sample: the evaluation (budgets, forced exits, token accounting, outputs) is written once
against that call, so the two back-ends produce the same records. Per-sample seeds make a sample independent
of how samples are batched, which is what lets an interrupted run resume and reach the same summary, and
makes the thinking-budget run with seed s share its first B thinking tokens with the full run of seed s
("truncate vanilla CoT at the same budget", S-GRPO's budget study).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Protocol

# S-GRPO (2505.07686) early-exit text, appended verbatim at the exit position.
EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"
_BUDGET_RE = re.compile(r"^(full|thinking=(\d+)|max_tokens=(\d+))$")


@dataclass(frozen=True)
class GenOutput:
    ids: list[int]
    finished: bool  # stopped by eos or a stop token; False = hit the token limit


class Backend(Protocol):
    def generate(self, prompts: list[list[int]], max_new_tokens: int, seeds: list[int],
                 stop_token_ids: list[int]) -> list[GenOutput]: ...


@dataclass(frozen=True)
class Budget:
    """`full` (max_tokens of the protocol), `thinking=B` (forced exit after B thinking tokens) or
    `max_tokens=N` (plain generation budget: the completion is cut at N tokens)."""

    kind: str
    value: int | None = None

    @property
    def key(self) -> str:
        return "full" if self.kind == "full" else f"{self.kind}={self.value}"

    @classmethod
    def parse(cls, key: str) -> Budget:
        m = _BUDGET_RE.match(key)
        if not m:
            raise ValueError(f"Bad budget {key!r}: use 'full', 'thinking=B' or 'max_tokens=N'")
        if m.group(2):
            return cls("thinking", int(m.group(2)))
        if m.group(3):
            return cls("max_tokens", int(m.group(3)))
        return cls("full")


def sample_seed(seed: int, benchmark: str, question_id: str, sample_index: int) -> int:
    """A stable 31-bit seed per (run seed, benchmark, question, sample): independent of batching and budget."""
    return zlib.crc32(f"{seed}|{benchmark}|{question_id}|{sample_index}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Completion:
    ids: list[int]
    truncated: bool  # hit a token limit (max_tokens, or the answer limit after a thinking budget)
    forced_exit: bool = False
    injected_at: int | None = None  # index of the first injected token (= B) when forced_exit
    injected_len: int = 0


def _cut_at_stop(ids: list[int], stop: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[: i + 1], True
    return ids, False


def generate_completions(backend: Backend, prompts: list[list[int]], seeds: list[int], budget: Budget,
                         max_tokens: int, answer_max_tokens: int, eos_ids: list[int], think_end_id: int,
                         exit_ids: list[int]) -> list[Completion]:
    """Completions for one budget. Thinking budget B: generate up to B tokens, stopping early at `</think>`;
    when `</think>` did not come, the thinking is exactly those B tokens, the exit text is injected as token
    ids, and the answer is generated with at most `answer_max_tokens`. When the model closed its thinking
    within B, the answer is generated under the same answer limit (seed + 1, a new sampling stream)."""
    if budget.kind in ("full", "max_tokens"):
        limit = max_tokens if budget.kind == "full" else budget.value
        outs = backend.generate(prompts, limit, seeds, eos_ids)
        return [Completion(o.ids, truncated=not o.finished) for o in outs]

    first = backend.generate(prompts, budget.value, seeds, list(eos_ids) + [think_end_id])
    results: list[Completion | None] = [None] * len(prompts)
    todo: list[tuple[int, list[int], bool]] = []  # (row, prefix ids, forced)
    for row, out in enumerate(first):
        ids = list(out.ids)
        if think_end_id in ids:
            todo.append((row, ids[: ids.index(think_end_id) + 1], False))
        elif out.finished:  # eos inside the thinking: the model stopped without an answer
            results[row] = Completion(ids, truncated=False)
        else:
            if len(ids) != budget.value:
                raise RuntimeError(f"back-end returned {len(ids)} tokens for a thinking budget of {budget.value}")
            todo.append((row, ids + list(exit_ids), True))
    if todo:
        second = backend.generate([prompts[r] + p for r, p, _ in todo], answer_max_tokens,
                                  [(seeds[r] + 1) & 0x7FFFFFFF for r, _, _ in todo], eos_ids)
        for (row, prefix, forced), out in zip(todo, second, strict=True):
            results[row] = Completion(prefix + list(out.ids), truncated=not out.finished, forced_exit=forced,
                                      injected_at=budget.value if forced else None,
                                      injected_len=len(exit_ids) if forced else 0)
    return results  # type: ignore[return-value]


class SeededSampler:
    """Logits processor that samples each row with its own `torch.Generator` and returns a one-hot mask.

    Used with greedy decoding in `generate`, so the pick is the sampled token: temperature, top-k and top-p
    are applied here, per row, and a row's draws do not depend on the other rows of the batch.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float = 1.0, top_k: int = 0):
        import torch

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float().cpu() / self.temperature
        if self.top_k and self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        picks = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks.to(scores.device), 0.0)


class TransformersBackend:
    """`model.generate` on left-padded batches; sampling by `SeededSampler` (greedy when temperature == 0)."""

    def __init__(self, model, pad_token_id: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                 batch_size: int = 16):
        self.model, self.pad_token_id = model, pad_token_id
        self.temperature, self.top_p, self.top_k, self.batch_size = temperature, top_p, top_k, batch_size

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        stop = set(stop_token_ids)
        results: list[GenOutput] = []
        device = self.model.device
        for start in range(0, len(prompts), self.batch_size):
            chunk, chunk_seeds = prompts[start : start + self.batch_size], seeds[start : start + self.batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + list(p) for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(stop),
                                      pad_token_id=self.pad_token_id)
            processors = LogitsProcessorList(
                [SeededSampler(chunk_seeds, self.temperature, self.top_p, self.top_k)] if self.temperature > 0 else []
            )
            with torch.no_grad():
                seqs = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                           logits_processor=processors)
            for row in seqs[:, width:].tolist():
                ids, finished = _cut_at_stop(row, stop)
                results.append(GenOutput(ids, finished))
        return results


class VLLMBackend:
    """vLLM offline engine on token ids (one request per sample, with its own seed), tensor parallel inside."""

    def __init__(self, model: str, tokenizer: str | None = None, revision: str | None = None,
                 tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, seed: int = 0,
                 temperature: float = 0.6, top_p: float = 0.95, top_k: int = 0):
        from vllm import LLM

        self.llm = LLM(model=model, tokenizer=tokenizer or model, revision=revision,
                       tensor_parallel_size=tensor_parallel_size, dtype=dtype, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        extra = {"top_k": self.top_k} if self.top_k and self.top_k > 0 else {}
        params = [SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=max_new_tokens,
                                 seed=int(s), stop_token_ids=list(stop_token_ids), detokenize=False, **extra)
                  for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            c = out.outputs[0]
            ids, finished = list(c.token_ids), c.finish_reason == "stop"
            # Keep the stop token in the ids (as transformers does) whatever the vLLM version does with it.
            if finished and isinstance(c.stop_reason, int) and (not ids or ids[-1] != c.stop_reason):
                ids.append(c.stop_reason)
            results.append(GenOutput(ids, finished))
        return results

    def close(self) -> None:
        """Shut the engine down now rather than at interpreter exit (its atexit logging then hits closed files)."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()
