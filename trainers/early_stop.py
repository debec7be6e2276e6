"""GFPO early stop: a rollout that can no longer be retained stops as soon as that is certain (issue 29).

With the ``length`` metric and a fixed (or annealed) k, a running response is rejected whatever it writes next once k
FINISHED members of its group are shorter than it can end (ties: the earlier position wins;
``trainers.selection.early_stop_mask`` states the rule and why it never changes the retained set). In ``drop`` mode a
rejected row carries no gradient and is removed before the update, so finishing it buys nothing: stopping it saves
its tokens and, under vLLM, frees its KV cache for the rest of the batch.

A stopped row is recorded as its n sampled tokens plus a forced EOS (length n + 1, the rule's lower bound of its
full length; not "truncated": it ends in EOS). Its reward is not computed into any statistic (NaN: TRL's
unscorable row) and it is marked (``gfpo/early_stopped``, the completions table's ``gfpo_early_stopped`` column).

Back-ends, each wrapping what TRL calls (never TRL's generation code):

- transformers ``generate``: a logits processor (``EarlyStopLogitsProcessor``) that, for a stopped row, puts all
  the probability on EOS. The row stays in the batch, so the sampler's random draws (``torch.multinomial`` draws one
  exponential per row and vocabulary entry each step, whatever the probabilities) land on the other rows exactly as
  without early stop: the retained responses are bit for bit the same.
- vLLM colocate: ``generate_with_early_stop`` replaces the ``llm.generate`` call TRL makes by the engine's public
  API (``LLMEngine.add_request`` / ``step`` / ``abort_request``), checking the rule after every engine step and
  aborting the stopped requests. Exactness of the SELECTION does not depend on when vLLM admits a request. Identical
  retained TOKENS need per-request seeds (``gfpo_request_seeds``: each request samples from its own generator, so
  aborting another request does not shift its random draws) and logits that do not depend on the batch's make-up
  (vLLM's batch-invariant mode on GPUs); without per-request seeds, the engine's shared generator hands the remaining
  requests different draws after the first abort: a different sample from the same distribution.
- vLLM server mode, transformers continuous batching, a ``rollout_func``, tools: not stopped (``support_reason``).
"""

from __future__ import annotations

import hashlib
import itertools
from types import SimpleNamespace

import torch

from trainers import selection as sel

# Why early stop is off for a configuration (one line each, logged once at start).
REASONS = {
    "disabled": "gfpo_early_stop: false",
    "metric": "filter_metric={metric!r}: only 'length' ranks a response by a quantity that only grows while it is "
    "written (token efficiency R/|o| can retain a long wrong response; a custom or composite metric needs the text)",
    "adaptive": "adaptive_difficulty: k comes from the mean reward of all G responses, so every response must finish",
    "mode": "rejection_mode={mode!r}: rejected rows are trained ({why}), so their full length and reward matter",
    "group_filter": "group_filter_func: a custom filter sees every full completion",
    "pairs": "pairs_output_file: the exported pairs' rejected response is the longest, written in full",
    "server": "vllm_mode='server': TRL sends every prompt in one request to the server, which has no per-group stop "
    "(scripts/vllm_server.py); generation samples all G in full",
    "continuous_batching": "use_transformers_continuous_batching: generate_batch takes no logits processor",
    "rollout": "rollout_func: a custom rollout generates the completions",
    "tools": "tools: a completion's length is known only after its tool turns",
}
_MODE_WHY = {
    "zero": "advantage 0, but every row's tokens enter the loss normaliser 1/sum_{i<=G}|o_i| and the forward",
    "penalty": "A = -rejection_penalty",
    "stratified": "A = (R - mean_G)/std_G - delta",
}


def support_reason(args, *, group_filter_func=None, rollout_func=None, tools=None, check_flag=True) -> str | None:
    """None if early stop is exact and available for this configuration, else the one-line reason it is off
    (``check_flag=False``: whether it would be, ignoring ``gfpo_early_stop``)."""
    if check_flag and not args.gfpo_early_stop:
        return REASONS["disabled"]
    weights = sel.parse_metric_spec(args.filter_metric)
    if list(weights) != ["length"] or weights["length"] <= 0:
        return REASONS["metric"].format(metric=args.filter_metric)
    if args.adaptive_difficulty:
        return REASONS["adaptive"]
    if args.rejection_mode != "drop":
        return REASONS["mode"].format(mode=args.rejection_mode, why=_MODE_WHY[args.rejection_mode])
    if group_filter_func is not None:
        return REASONS["group_filter"]
    if args.pairs_output_file:
        return REASONS["pairs"]
    if rollout_func is not None:
        return REASONS["rollout"]
    if tools:
        return REASONS["tools"]
    if args.use_vllm and args.vllm_mode == "server":
        return REASONS["server"]
    if not args.use_vllm and getattr(args, "use_transformers_continuous_batching", False):
        return REASONS["continuous_batching"]
    return None


class GroupLayout:
    """Where a flat run of rows sits in the groups: row r of the run is global row ``offset + r``, group
    ``(offset + r) // G``, position ``(offset + r) % G`` (TRL's layout: G consecutive rows per question). Groups that
    straddle the run's ends are only partly visible: the rule then counts only the visible finished members, which
    can only delay a stop (a subset of the beaters), never make a wrong one."""

    def __init__(self, offset: int, n_rows: int, G: int, k: int, device=None):
        rows = torch.arange(n_rows, device=device) + offset
        self.G, self.k, self.n_rows = G, int(k), n_rows
        first = offset // G
        self.group = rows // G - first
        self.pos = rows % G
        self.n_groups = int(self.group[-1]) + 1 if n_rows else 0

    def _grid(self, flat: torch.Tensor, fill) -> torch.Tensor:
        grid = torch.full((self.n_groups, self.G), fill, dtype=flat.dtype, device=flat.device)
        grid[self.group, self.pos] = flat
        return grid

    def stop(self, lengths: torch.Tensor, finished: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """Flat bool: the running rows to stop now (``trainers.selection.early_stop_mask``)."""
        if not self.n_rows:
            return running.clone()
        mask = sel.early_stop_mask(
            self._grid(lengths.long(), 0), self._grid(finished.bool(), False), self._grid(running.bool(), False), self.k
        )
        return mask[self.group, self.pos]


class EarlyStopLogitsProcessor:
    """A transformers logits processor for one ``generate`` call over the rows of ``layout``: after each step, a
    running row that the rule stops gets all its probability on ``eos_id`` for its next token. ``stopped`` (flat bool)
    and ``lengths`` (the recorded lengths) are read after the call."""

    def __init__(self, layout: GroupLayout, eos_ids: list[int]):
        self.layout, self.eos_ids, self.eos_id = layout, list(eos_ids), int(eos_ids[0])
        self.prompt_width = None
        self.finished = self.stopped = self.lengths = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = input_ids.device
        if self.prompt_width is None:
            self.prompt_width = input_ids.size(1)
            n_rows = input_ids.size(0)
            self.finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
            self.stopped = torch.zeros(n_rows, dtype=torch.bool, device=device)
            self.lengths = torch.zeros(n_rows, dtype=torch.long, device=device)
            self._eos = torch.tensor(self.eos_ids, device=device)
        n = input_ids.size(1) - self.prompt_width  # tokens generated so far by every row
        if n > 0:
            ended = torch.isin(input_ids[:, -1], self._eos) & ~self.finished & ~self.stopped
            self.finished |= ended
            self.lengths[ended] = n
        running = ~self.finished & ~self.stopped
        self.lengths[running] = n
        stop = self.layout.stop(self.lengths, self.finished, running)
        if stop.any():
            self.stopped |= stop
            self.lengths[stop] = n + 1  # the forced EOS
            forced = torch.full_like(scores[0], -float("inf"))
            forced[self.eos_id] = 0.0
            scores = torch.where(stop.unsqueeze(1), forced.unsqueeze(0), scores)
        return scores


_CALLS = itertools.count()


def request_seeds(base_seed: int, step: int, call: int, offset: int, n_rows: int) -> list[int]:
    """Per-request vLLM seeds, a function of (run seed, optimizer step, generation call, global row) only: the same in
    a run with and without early stop, different for every row of a group."""
    head = hashlib.sha256(f"{base_seed}|{step}|{call}".encode()).digest()
    base = int.from_bytes(head[:4], "little")
    return [(base + offset + r) % (2**31 - 1) for r in range(n_rows)]


def generate_with_early_stop(llm, prompts, sampling_params, layout: GroupLayout | None, eos_id: int,
                             seeds: list[int] | None = None):
    """What ``llm.generate(prompts, sampling_params)`` returns (one RequestOutput-like object per prompt, in order:
    ``prompt_token_ids`` and ``outputs[0].token_ids`` / ``.logprobs``), driven through ``llm.llm_engine``'s public
    API so that requests the rule stops are aborted between engine steps. ``layout=None`` stops nothing (the same
    engine loop, for a run without early stop that must sample as one with it: per-request seeds). Returns
    (outputs, stopped flags)."""
    from vllm.logprobs import Logprob
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    call = next(_CALLS)
    ids, index = [], {}
    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list | None] = [[] for _ in range(n)]
    prompt_ids: list = [p.get("prompt_token_ids") if isinstance(p, dict) else None for p in prompts]
    finished = torch.zeros(n, dtype=torch.bool)
    stopped = torch.zeros(n, dtype=torch.bool)
    reasons: list[str | None] = [None] * n
    want_logprobs = sampling_params.logprobs is not None
    for i, prompt in enumerate(prompts):
        params = sampling_params.clone()
        params.output_kind = RequestOutputKind.DELTA
        if seeds is not None:
            params.seed = int(seeds[i])
        rid = f"gfpo-es-{call}-{i}"
        index[rid] = i
        ids.append(rid)
        engine.add_request(rid, prompt, params)
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                i = index.get(out.request_id)
                if i is None or stopped[i]:
                    continue
                if out.prompt_token_ids is not None:
                    prompt_ids[i] = list(out.prompt_token_ids)
                comp = out.outputs[0]
                tokens[i].extend(comp.token_ids)
                if want_logprobs and comp.logprobs is not None:
                    logprobs[i].extend(comp.logprobs)
                if out.finished:
                    finished[i] = True
                    reasons[i] = comp.finish_reason
            if layout is None:
                continue
            running = ~finished & ~stopped
            if not running.any():
                continue
            lengths = torch.tensor([len(t) for t in tokens])
            stop = layout.stop(lengths, finished, running)
            if stop.any():
                rows = stop.nonzero().squeeze(1).tolist()
                engine.abort_request([ids[i] for i in rows])
                for i in rows:
                    stopped[i] = True
                    reasons[i] = "gfpo_early_stop"
                    tokens[i].append(eos_id)
                    if want_logprobs:
                        # The forced EOS was not sampled: no sampling log-prob. NaN, which TRL reads as "unavailable
                        # from vLLM" (importance ratio 1, left out of the divergence metrics); the row is dropped.
                        logprobs[i].append({eos_id: Logprob(logprob=float("nan"), rank=1)})
    except BaseException:
        engine.abort_request([ids[i] for i in range(n) if not finished[i] and not stopped[i]])
        raise
    outputs = [
        SimpleNamespace(
            request_id=ids[i],
            prompt_token_ids=prompt_ids[i],
            finished=True,
            outputs=[SimpleNamespace(index=0, token_ids=tokens[i], logprobs=logprobs[i] if want_logprobs else None,
                                     finish_reason=reasons[i], text="")],
        )
        for i in range(n)
    ]
    return outputs, stopped.tolist()
