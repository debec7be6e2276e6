"""Evaluation loop: prompts, resumable per-sample JSONL, grading, pass@1 and pass@k summaries.

Files under `<output_dir>/<benchmark>/`: `samples*.jsonl` (one line per sample, appended as chunks finish;
data-parallel shards write `samples.shard{i}.jsonl`), `protocol.json` and `summary.json`; the run's
`<output_dir>/summary.json` gathers every benchmark for scripts/report.py.

Overthinking profile (`exit_fractions`): every full sample also gets one record per fraction F (budget `exit=F`),
its forced answer after round(F * n) of the full rollout's own n thought tokens. To keep the files small, an exit
record's `completion` / `completion_ids` hold only what follows the shared thought prefix (the exit text and the
forced answer); `prefix_tokens` says how many of the full record's `completion_ids` come before them, so the
whole exit completion is `full["completion_ids"][:prefix_tokens] + exit["completion_ids"]`. Its token counts
(`num_tokens`, `thinking_tokens`, ...) describe that whole completion. Grading the tail is grading the whole:
the prefix holds no `</think>`, and the answer is read after the last one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from benchmarks.deer import DeerSettings, deer_exits
from benchmarks.generation import (
    EXIT_TEXT,
    Backend,
    Budget,
    Completion,
    fraction_exits,
    generate_completions,
    sample_seed,
)
from benchmarks.registry import Question, options_in_text
from benchmarks.scoring import benchmark_pass_at_k, count_tokens, grade, pass_at_k_ks

DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
# Protocol keys that change what a sample is: resuming with another value would mix two protocols.
_GENERATION_KEYS = ("model", "revision", "temperature", "top_p", "top_k", "max_tokens", "answer_max_tokens",
                    "seed", "prompt_template", "system_prompt", "exit_text", "chat_template_kwargs", "choice_seed")


@dataclass
class Protocol:
    """Everything that defines a result; written with every summary."""

    model: str
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_tokens: int = 32768
    answer_max_tokens: int = 1024
    seed: int = 0
    prompt_template: str = DEFAULT_TEMPLATE
    system_prompt: str | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    exit_text: str = EXIT_TEXT
    require_thinking: bool = True
    deer: dict = field(default_factory=dict)  # DEER's settings (benchmarks/deer.py) when `--early_exit deer`
    choice_seed: int = 0
    revision: str | None = None
    adapter_base: str | None = None
    backend: str = "transformers"
    dtype: str = "auto"


def build_prompt(tokenizer, question: str, template: str = DEFAULT_TEMPLATE, system_prompt: str | None = None,
                 chat_template_kwargs: dict | None = None) -> tuple[str, list[int]]:
    """Chat-templated prompt text and ids. `{question}` is substituted with str.replace (LaTeX braces are safe)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": template.replace("{question}", question)})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    return text, tokenizer.encode(text, add_special_tokens=False)


def record_key(record: dict) -> tuple[str, int, str]:
    return record["question_id"], int(record["sample_index"]), record["budget"]


def read_records_file(path: Path) -> list[dict]:
    """Records of one JSONL file; a torn line (a run killed mid-write) is skipped and regenerated on resume."""
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_records(bench_dir: Path) -> list[dict]:
    """All sample records of a benchmark directory (every shard file)."""
    return [r for path in sorted(bench_dir.glob("samples*.jsonl")) for r in read_records_file(path)]


def _append(path: Path, records: Iterable[dict]) -> None:
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        if torn:
            f.write("\n")
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_protocol(bench_dir: Path, protocol: dict) -> None:
    """Refuse to resume into a directory whose samples were generated under another protocol."""
    path = bench_dir / "protocol.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), protocol.get(k)) for k in _GENERATION_KEYS if old.get(k) != protocol.get(k)}
        if old.get("deer") and protocol.get("deer") and old["deer"] != protocol["deer"]:  # DEER added later is fine
            diff["deer"] = (old["deer"], protocol["deer"])
        if diff:
            raise ValueError(f"{bench_dir} holds samples generated with other settings {diff}: "
                             "use another --output_dir (or --overwrite to discard them)")
    else:
        bench_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(protocol, indent=2))


@dataclass
class EvalStats:
    generated: int = 0
    seconds: float = 0.0
    # The overthinking profile's share of the above: its forced exits, their time and their prompt tokens
    # (those served from the back-end's prefix cache: vLLM; transformers has none).
    exits_generated: int = 0
    exit_seconds: float = 0.0
    exit_prompt_tokens: int = 0
    exit_cached_tokens: int = 0

    @property
    def samples_per_second(self) -> float | None:
        return self.generated / self.seconds if self.seconds > 0 else None


def _record(benchmark: str, q: Question, i: int, budget: Budget, seed: int, prompt: str, comp: Completion,
            tokenizer, think_end_id: int, require_thinking: bool, tail_from: int = 0) -> dict:
    """One graded sample; `tail_from` > 0 stores only the ids from there on (an exit's shared prefix left out)."""
    ids = comp.ids[tail_from:]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    extracted, correct = grade(text, q.answer, q.kind, require_thinking, q.choices)
    counts = count_tokens(comp.ids, think_end_id, comp.injected_at, comp.injected_len)
    return {"benchmark": benchmark, "question_id": q.id, "sample_index": i, "budget": budget.key, "seed": seed,
            "kind": q.kind, "prompt": prompt, "completion": text, "completion_ids": ids, "extracted": extracted,
            "gold": q.answer, "correct": correct, **asdict(counts), "truncated": comp.truncated,
            "forced_exit": comp.forced_exit, **({"choices": list(q.choices)} if q.choices else {})}


def run_benchmark(backend: Backend, tokenizer, questions: list[Question], benchmark: str, budgets: list[Budget],
                  n_samples: int, protocol: Protocol, bench_dir: Path, batch_size: int = 16,
                  shard_index: int = 0, num_shards: int = 1, progress: bool = True,
                  stop_after: int | None = None, eos_ids: list[int] | None = None,
                  exit_fractions: list[float] = (), deer_thresholds: list[float] = (),
                  deer: DeerSettings | None = None) -> EvalStats:
    """Generate and grade every missing (question, sample, budget) of this shard, appending to the JSONL.

    Work goes in chunks of `batch_size` samples, each chunk appended and fsynced before the next starts, so an
    interruption loses at most one chunk. `stop_after` (tests) stops after that many chunks, like a kill.

    `exit_fractions` (the overthinking profile; needs the full budget): in the chunk that generates a full
    sample, its missing exits are generated right after it (`fraction_exits`) and appended with it; a full sample
    already on disk gets its missing exits from its stored ids, so fractions can be added to a finished run.
    """
    from tqdm.auto import tqdm

    full = Budget("full")
    exit_budgets = [Budget("exit", f) for f in exit_fractions]
    deer_budgets = [Budget("deer", t) for t in deer_thresholds]
    if (exit_budgets or deer_budgets) and full not in budgets:
        raise ValueError("exit fractions and DEER cut the full rollout: the full budget must be evaluated too")
    deer = deer or DeerSettings()
    check_protocol(bench_dir, {**asdict(protocol), "benchmark": benchmark})
    out_path = bench_dir / ("samples.jsonl" if num_shards == 1 else f"samples.shard{shard_index}.jsonl")
    existing = read_records(bench_dir)
    done = {record_key(r) for r in existing}
    stored_full = {(r["question_id"], r["sample_index"]): r for r in existing if r["budget"] == full.key}
    think_end_id = tokenizer.convert_tokens_to_ids("</think>")
    if think_end_id is None or think_end_id == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no `</think>` token: thinking budgets and token splits need one")
    think_start_id = tokenizer.convert_tokens_to_ids("<think>")
    think_start_id = None if think_start_id == tokenizer.unk_token_id else think_start_id
    exit_ids = tokenizer.encode(protocol.exit_text, add_special_tokens=False)
    eos_ids = eos_ids or eos_token_ids(tokenizer)
    prompts = {q.id: build_prompt(tokenizer, q.question, protocol.prompt_template, protocol.system_prompt,
                                  protocol.chat_template_kwargs) for q in questions}

    def missing_exits(q: Question, i: int) -> list[Budget]:
        return [b for b in exit_budgets + deer_budgets if (q.id, i, b.key) not in done]

    # A full item stays pending while its exits are missing (it is then read back, not generated again).
    pending = [(budget, q, i) for budget in budgets for qi, q in enumerate(questions) if qi % num_shards == shard_index
               for i in range(n_samples)
               if (q.id, i, budget.key) not in done or (budget == full and missing_exits(q, i))]
    stats = EvalStats()
    total = sum(1 + len(missing_exits(q, i)) - ((q.id, i, b.key) in done) if b == full else 1 for b, q, i in pending)
    bar = tqdm(total=total, desc=f"{benchmark}", unit="sample", disable=not progress)
    chunks = 0
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        records = []
        t0 = time.perf_counter()
        for budget in dict.fromkeys(b for b, _, _ in chunk):  # one back-end call group per budget
            items = [(q, i) for b, q, i in chunk if b == budget]
            new = [(q, i) for q, i in items if (q.id, i, budget.key) not in done]
            seeds = [sample_seed(protocol.seed, benchmark, q.id, i) for q, i in new]
            outs = generate_completions(backend, [prompts[q.id][1] for q, _ in new], seeds, budget,
                                        protocol.max_tokens, protocol.answer_max_tokens, eos_ids, think_end_id,
                                        exit_ids) if new else []
            for (q, i), seed, comp in zip(new, seeds, outs, strict=True):
                records.append(_record(benchmark, q, i, budget, seed, prompts[q.id][0], comp, tokenizer,
                                       think_end_id, protocol.require_thinking))
            if budget == full and (exit_budgets or deer_budgets):
                t1 = time.perf_counter()
                fulls = {(r["question_id"], r["sample_index"]): r for r in records if r["budget"] == full.key}
                rollouts = {k: r["completion_ids"] for k, r in fulls.items()}
                todo = [(q, i, [b for b in missing if b.kind == "exit"]) for q, i in items
                        if (missing := missing_exits(q, i))]
                todo = [t for t in todo if t[2]]
                seeds = [sample_seed(protocol.seed, benchmark, q.id, i) for q, i, _ in todo]
                exits = fraction_exits(
                    backend, [prompts[q.id][1] for q, _, _ in todo],
                    [rollouts.get((q.id, i)) or stored_full[(q.id, i)]["completion_ids"] for q, i, _ in todo],
                    seeds, [[b.value for b in bs] for _, _, bs in todo], protocol.answer_max_tokens, eos_ids,
                    think_end_id, think_start_id, exit_ids)
                for (q, i, bs), seed, row in zip(todo, seeds, exits, strict=True):
                    for b, ex in zip(bs, row, strict=True):
                        cut = ex.completion.injected_at
                        rec = _record(benchmark, q, i, b, seed, prompts[q.id][0], ex.completion, tokenizer,
                                      think_end_id, protocol.require_thinking, tail_from=cut)
                        records.append({**rec, "prefix_tokens": cut, "exit_fraction": ex.fraction,
                                        "thought_tokens": ex.thought_tokens,
                                        "exit_thought_tokens": ex.exit_thought_tokens,
                                        "thought_closed": ex.thought_closed})
                        stats.exits_generated += 1
                        stats.exit_prompt_tokens += len(prompts[q.id][1]) + cut + ex.completion.injected_len
                        stats.exit_cached_tokens += ex.completion.cached_tokens
                deer_todo = [(q, i, bs) for q, i in items
                             if (bs := [b for b in missing_exits(q, i) if b.kind == "deer"])]
                if deer_todo:
                    full_of = [fulls.get((q.id, i)) or stored_full[(q.id, i)] for q, i, _ in deer_todo]
                    seeds = [sample_seed(protocol.seed, benchmark, q.id, i) for q, i, _ in deer_todo]
                    rows = deer_exits(backend, tokenizer, [prompts[q.id][1] for q, _, _ in deer_todo],
                                      [f["completion_ids"] for f in full_of], seeds, list(deer_thresholds), deer,
                                      protocol.max_tokens, protocol.answer_max_tokens, eos_ids, think_end_id,
                                      think_start_id, truncated=[bool(f["truncated"]) for f in full_of])
                    for (q, i, bs), seed, row in zip(deer_todo, seeds, rows, strict=True):
                        by_t = {res.threshold: res for res in row}
                        for b in bs:
                            res = by_t[b.value]
                            cut = res.cut or 0
                            rec = _record(benchmark, q, i, b, seed, prompts[q.id][0], res.completion, tokenizer,
                                          think_end_id, protocol.require_thinking, tail_from=cut)
                            records.append({**rec, "prefix_tokens": cut, "deer_threshold": res.threshold,
                                            "deer_exit": res.exited, "deer_limit_exit": res.limit_exit,
                                            "deer_trials": res.trials, "deer_trial_tokens": res.trial_tokens,
                                            "deer_confidences": [round(c, 4) for c in res.confidences]})
                stats.exit_seconds += time.perf_counter() - t1
        stats.seconds += time.perf_counter() - t0
        stats.generated += len(records)
        _append(out_path, records)
        done.update(record_key(r) for r in records)
        bar.update(len(records))
        chunks += 1
        if stop_after is not None and chunks >= stop_after:
            break
    bar.close()
    return stats


def eos_token_ids(tokenizer, generation_config=None) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids += extra if isinstance(extra, list) else ([extra] if extra is not None else [])
    return list(dict.fromkeys(ids))


def regrade_records(records: list[dict], require_thinking: bool = True) -> list[dict]:
    """Grade stored completions again (new grader, new gold) without generating; an exit record's stored tail
    (exit text + forced answer) grades as its whole completion would. A multiple-choice record's options are its
    `choices`, or, in a record written before they were stored, the lettered lines of its prompt."""
    out = []
    for r in records:
        choices = r.get("choices") or (options_in_text(r.get("prompt", "")) if r.get("kind") == "choice" else ())
        extracted, correct = grade(r["completion"], r["gold"], r.get("kind", "math"), require_thinking, choices)
        out.append({**r, "extracted": extracted, "correct": correct})
    return out


def regrade_dir(bench_dir: Path, require_thinking: bool = True) -> None:
    for path in sorted(bench_dir.glob("samples*.jsonl")):
        records = regrade_records(read_records_file(path), require_thinking)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        tmp.replace(path)


def pass_at_1(per_question: dict[str, list[bool]]) -> tuple[float, float | None]:
    """pass@1 = mean over questions of the per-question mean accuracy over its samples; standard error =
    sample std (ddof 1) of those per-question means / sqrt(#questions) (None with one question)."""
    means = [sum(v) / len(v) for v in per_question.values() if v]
    if not means:
        return float("nan"), None
    acc = sum(means) / len(means)
    if len(means) < 2:
        return acc, None
    var = sum((m - acc) ** 2 for m in means) / (len(means) - 1)
    return acc, math.sqrt(var / len(means))


def summarize_records(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per-budget statistics: pass@1 (fraction) with its standard error, unbiased pass@k (`pass_at_k`: str(k) ->
    fraction, k = the powers of two up to the fewest samples of a question, and that count), token means, limit hits."""
    by_budget: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_budget[r["budget"]].append(r)
    out = {}
    for key, rows in sorted(by_budget.items(), key=lambda kv: Budget.order(kv[0])):
        per_q: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            per_q[r["question_id"]].append(bool(r["correct"]))
        acc, se = pass_at_1(per_q)
        n = len(rows)
        counts = [len(v) for v in per_q.values()]
        budget = Budget.parse(key)
        out[key] = {
            "budget_kind": budget.kind, "budget": budget.value,
            "accuracy": acc, "accuracy_stderr": se,
            "pass_at_k": benchmark_pass_at_k([(len(v), sum(v)) for v in per_q.values()], pass_at_k_ks(min(counts))),
            "n_questions": len(per_q), "n_samples": n,
            "samples_per_question": min(counts) if min(counts) == max(counts) else [min(counts), max(counts)],
            "mean_tokens": sum(r["num_tokens"] for r in rows) / n,
            "mean_thinking_tokens": sum(r["thinking_tokens"] for r in rows) / n,
            "mean_answer_tokens": sum(r["answer_tokens"] for r in rows) / n,
            "mean_injected_tokens": sum(r["injected_tokens"] for r in rows) / n,
            "truncated": sum(bool(r["truncated"]) for r in rows),
            "truncated_rate": sum(bool(r["truncated"]) for r in rows) / n,
            "forced_exits": sum(bool(r["forced_exit"]) for r in rows),
            "closed_thinking_rate": sum(bool(r["closed_thinking"]) for r in rows) / n,
            "answered_rate": sum(r["extracted"] is not None for r in rows) / n,
        }
        if budget.kind == "deer":  # DEER's cost beside the thought: the trial answers it wrote, and how often it exited
            out[key].update({"mean_trial_tokens": sum(r["deer_trial_tokens"] for r in rows) / n,
                             "mean_trials": sum(r["deer_trials"] for r in rows) / n,
                             "exit_rate": sum(bool(r["deer_exit"]) for r in rows) / n,
                             "mean_tokens_with_trials": sum(r["num_tokens"] + r["deer_trial_tokens"] for r in rows) / n})
    return out


def exit_profile(records: list[dict]) -> dict[str, Any] | None:
    """The overthinking profile of one benchmark from its records (full samples and their `exit=F` exits).

    Only samples with their full record and every fraction count. Per fraction F (ascending):
    - `accuracy`: pass@1 of the forced answers at F (as `pass_at_1`: per question, then over questions), beside
      `full_accuracy`, the full answers' pass@1 on the same samples;
    - `earliest_correct_share`: the share (pass_at_1-weighted) of samples whose earliest correct exit is at a
      fraction <= F;
    - `redundant_share`: over the samples whose full answer is correct, the thought tokens after the earliest
      correct exit (n - p; 0 when no exit is correct) over all their thought tokens n (token-weighted). The
      fractions form a grid, so this is a lower bound: the first correct cut may lie between two fractions.
    A thought that never closed (`</think>` missing in the full rollout) is cut at fractions of the thought
    tokens it generated; such samples count in the accuracies (`unclosed_samples` says how many) but never in
    `redundant_share` (their full answer is never correct).
    """
    full: dict[tuple[str, int], dict] = {}
    exits: dict[tuple[str, int], dict[float, dict]] = defaultdict(dict)
    for r in records:
        if r["budget"] == "full":
            full[(r["question_id"], r["sample_index"])] = r
        elif r["budget"].startswith("exit="):
            exits[(r["question_id"], r["sample_index"])][float(r["exit_fraction"])] = r
    fractions = sorted({f for by_f in exits.values() for f in by_f})
    samples = [(key, full[key], exits[key]) for key in sorted(full) if set(exits.get(key, ())) >= set(fractions)]
    if not fractions or not samples:
        return None
    acc_at: list[dict[str, list[bool]]] = [defaultdict(list) for _ in fractions]
    early_by: list[dict[str, list[bool]]] = [defaultdict(list) for _ in fractions]
    full_acc: dict[str, list[bool]] = defaultdict(list)
    redundant = thought = solved = unclosed = 0
    for (qid, _), fr, by_f in samples:
        correct = [bool(by_f[f]["correct"]) for f in fractions]
        first = next((k for k, c in enumerate(correct) if c), None)
        for k in range(len(fractions)):
            acc_at[k][qid].append(correct[k])
            early_by[k][qid].append(first is not None and first <= k)
        full_acc[qid].append(bool(fr["correct"]))
        n = int(by_f[fractions[0]]["thought_tokens"])
        unclosed += not by_f[fractions[0]]["thought_closed"]
        if fr["correct"]:
            solved += 1
            thought += n
            redundant += (n - int(by_f[fractions[first]]["exit_thought_tokens"])) if first is not None else 0
    return {
        "fractions": fractions,
        "accuracy": [pass_at_1(a)[0] for a in acc_at],
        "full_accuracy": pass_at_1(full_acc)[0],
        "earliest_correct_share": [pass_at_1(e)[0] for e in early_by],
        "redundant_share": redundant / thought if thought else None,
        "redundant_thought_tokens": redundant, "solved_thought_tokens": thought,
        "mean_thought_tokens": sum(int(e[fractions[0]]["thought_tokens"]) for _, _, e in samples) / len(samples),
        "n_samples": len(samples), "solved_samples": solved, "unclosed_samples": unclosed,
    }


def write_summary(bench_dir: Path, benchmark: str, protocol: dict, n_samples: int, source: dict,
                  throughput: dict | None = None) -> dict:
    records = read_records(bench_dir)
    summary = {"benchmark": benchmark, "source": source, "protocol": {**protocol, "samples_per_question": n_samples},
               "budgets": summarize_records(records)}
    profile = exit_profile(records)
    if profile:
        summary["exit_profile"] = profile
    if throughput:
        summary["throughput"] = throughput
    (bench_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_run_summary(output_dir: Path, run_name: str, summaries: dict[str, dict]) -> dict:
    """Merge with benchmarks summarised by earlier invocations into `<output_dir>/summary.json`."""
    path = output_dir / "summary.json"
    run = json.loads(path.read_text()) if path.exists() else {"run": run_name, "benchmarks": {}}
    run["run"] = run_name
    run["benchmarks"].update(summaries)
    path.write_text(json.dumps(run, indent=2))
    return run
