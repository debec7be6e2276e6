"""How much the synthetic task overthinks like a real reasoning model, measured before any RL.

    python -m synthetic.realism                                  # the generator, task v3 (the shipped base's)
    python -m synthetic.realism --task_version 4                 # the generator, task v4
    python -m synthetic.realism --model synthetic/base           # ... and a trained base, sampled on held-out sums

By number of terms (difficulty), from traces and from a model's own samples: how often the first pass is right,
how many rounds (passes ending in "Total:") a trace writes, how often a later round changes the answer, the final
accuracy, and how often a forced exit is right by where it cuts (quartiles of the thought; for a model, its own
answer after the exit text). The facts to imitate (PAPERS.md, Chen et al.): first rounds are usually right, later
rounds rarely change the answer, easy questions get as many rounds as hard ones.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards.parsing import last_boxed  # noqa: E402
from synthetic.task import (  # noqa: E402
    _PIECES,
    END_THINK,
    EXIT_TEXT,
    TOTAL_PREFIX,
    TaskConfig,
    exit_answer,
    heldout_numbers,
    make_trace,
    sample_numbers,
)

QUARTILES = ("Q1", "Q2", "Q3", "Q4")


def round_totals(thinking: str) -> list[int]:
    """The totals the thought states, one per round ("Total: N" lines)."""
    out = []
    for line in thinking.split("\n"):
        if line.startswith(TOTAL_PREFIX):
            try:
                out.append(int(line[len(TOTAL_PREFIX):]))
            except ValueError:
                pass
    return out


def row_stats(samples: list[dict]) -> dict:
    """samples: {gold, totals, final, exits: {quartile: [bool]}} of one difficulty."""
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    later = [(a != b) for s in samples for a, b in zip(s["totals"], s["totals"][1:], strict=False)]
    out = {
        "n": len(samples),
        "first_round_right": mean([bool(s["totals"]) and str(s["totals"][0]) == s["gold"] for s in samples]),
        "mean_rounds": mean([len(s["totals"]) for s in samples]),
        "later_rounds_changing": mean(later),
        "final_right": mean([s["final"] == s["gold"] for s in samples]),
    }
    for q in QUARTILES:
        out[f"exit_{q}"] = mean([ok for s in samples for ok in s["exits"].get(q, [])])
    return out


def _quartile_cuts(n: int, rng: random.Random) -> dict[str, int]:
    """One cut position (pieces or tokens kept, 1..n) drawn uniformly inside each quarter of the thought."""
    cuts = {}
    for i, q in enumerate(QUARTILES):
        lo, hi = max(1, (i * n) // 4 + 1), max(1, ((i + 1) * n) // 4)
        cuts[q] = rng.randint(lo, max(lo, hi))
    return cuts


def generator_samples(cfg: TaskConfig, n: int = 4000, seed: int = 0) -> list[tuple[int, dict]]:
    rng = random.Random(f"realism:{seed}")
    full = replace(cfg, exit_cut_prob=0.0)
    out = []
    for _ in range(n):
        numbers = sample_numbers(rng, cfg)
        trace = make_trace(numbers, rng, full)
        thinking = trace.completion.split(END_THINK)[0]
        ends = [m.end() for m in _PIECES.finditer(thinking)]
        exits = {q: [str(exit_answer(thinking[: ends[p - 1]], numbers, rng, cfg)[1]) == trace.answer]
                 for q, p in _quartile_cuts(len(ends), rng).items()}
        out.append((len(numbers), {"gold": trace.answer, "totals": trace.pass_sums, "final": str(trace.predicted),
                                   "exits": exits}))
    return out


def model_samples(model_dir: str, cfg: TaskConfig, n: int = 200, seed: int = 0, max_new_tokens: int = 256,
                  answer_tokens: int = 64, data_seed: int = 0) -> list[tuple[int, dict]]:
    """The model's own samples on held-out sums (temperature 1), and its answers when the exit text is forced in
    after a cut in each quarter of its own thought tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synthetic.sft import chat_prompt, generate
    from synthetic.task import question_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    numbers_list = heldout_numbers(n, data_seed, cfg)
    golds = [str(sum(ns)) for ns in numbers_list]
    texts = generate(model, tok, [question_text(ns) for ns in numbers_list], max_new_tokens=max_new_tokens,
                     seed=seed)
    end_id = tok.convert_tokens_to_ids(END_THINK.strip())
    exit_ids = tok(EXIT_TEXT, add_special_tokens=False)["input_ids"]
    rng = random.Random(f"realism-model:{seed}")
    records, exit_rows = [], []
    for k, ((text, _), ns, gold) in enumerate(zip(texts, numbers_list, golds, strict=True)):
        thinking = text.split("</think>")[0]
        records.append((len(ns), {"gold": gold, "totals": round_totals(thinking), "final": last_boxed(text),
                                  "exits": defaultdict(list)}))
        ids = tok(thinking, add_special_tokens=False)["input_ids"]
        ids = ids[: ids.index(end_id)] if end_id in ids else ids
        if not ids:
            continue
        prompt_ids = tok(chat_prompt(tok, question_text(ns)), add_special_tokens=False)["input_ids"]
        for q, p in _quartile_cuts(len(ids), rng).items():
            exit_rows.append((k, q, prompt_ids + ids[:p] + exit_ids))
    torch.manual_seed(seed)
    pad = tok.pad_token_id
    for i in range(0, len(exit_rows), 100):
        chunk = exit_rows[i : i + 100]
        width = max(len(r[2]) for r in chunk)
        input_ids = torch.tensor([[pad] * (width - len(r[2])) + r[2] for r in chunk])
        attn = torch.tensor([[0] * (width - len(r[2])) + [1] * len(r[2]) for r in chunk])
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=answer_tokens,
                                 do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
        for (k, q, _), row in zip(chunk, gen[:, width:].tolist(), strict=True):
            answer = tok.decode(row, skip_special_tokens=True)
            records[k][1]["exits"][q].append(last_boxed(answer) == records[k][1]["gold"])
    return records


def table(samples: list[tuple[int, dict]]) -> list[str]:
    by_terms = defaultdict(list)
    for terms, s in samples:
        by_terms[terms].append(s)
    lines = ["| terms | n | first round right | mean rounds | later rounds changing the answer | final right | "
             "forced exit right, Q1 / Q2 / Q3 / Q4 |", "|---|---|---|---|---|---|---|"]
    groups = [(str(t), by_terms[t]) for t in sorted(by_terms)] + [("all", [s for _, s in samples])]
    for name, group in groups:
        r = row_stats(group)
        exits = " / ".join(f"{100 * r[f'exit_{q}']:.0f}" for q in QUARTILES)
        lines.append(f"| {name} | {r['n']} | {100 * r['first_round_right']:.0f}% | {r['mean_rounds']:.2f} | "
                     f"{100 * r['later_rounds_changing']:.0f}% | {100 * r['final_right']:.0f}% | {exits} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_version", type=int, default=3, choices=[3, 4])
    p.add_argument("--n", type=int, default=4000, help="generator traces")
    p.add_argument("--model", help="also sample this base on held-out sums of the same task")
    p.add_argument("--model_n", type=int, default=200, help="held-out questions for --model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = TaskConfig.of_version(args.task_version)
    print(f"Task v{cfg.version} generator, {args.n} traces ({cfg}):")
    print("\n".join(table(generator_samples(cfg, args.n, args.seed))))
    if args.model:
        print(f"\n{args.model}: {args.model_n} held-out questions, one sample each at temperature 1, and one forced "
              "exit per quarter of its own thought:")
        print("\n".join(table(model_samples(args.model, cfg, args.model_n, args.seed))))


if __name__ == "__main__":
    main()
