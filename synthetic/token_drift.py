"""Which tokens an RL update pushed down: a trained checkpoint against its base, token by token (an analysis).

    python -m synthetic.token_drift --base synthetic/base_v4 --model outputs/sgrpo-probe/ref/checkpoint-240 \\
        --samples outputs/demo-deer/eval/base-s0/heldout/samples.jsonl

Both models score the same completions (by default the base's own samples from an evaluation); each completion token
gets a role from the task's trace grammar (synthetic/task.py) and the table prints, per role, the mean change of its
log-probability (trained - base) and its mean probability under each model, for the samples the base got right and
wrong. The "decision" rows are the token after the first "Total: N": closing the thought there (`</think>`), or
"Wait" (re-checking).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic.task import CHECK_PREFIX, END_THINK, RECHECK_TEXT, TOTAL_PREFIX  # noqa: E402

ROLES = ("pass operands", "pass sums", "first total", "decision: close", "decision: re-check", "re-check",
         "later totals", "answer")


def line_roles(completion: str) -> list[tuple[int, int, str]]:
    """(start, end, role) character spans of a task v4 completion. Inside "a+b=s" lines the part after "=" is the
    model's arithmetic ("pass sums"); the first token after the first total line is the stop / re-check decision."""
    spans, pos, seen_total = [], 0, False
    think_end = completion.find(END_THINK.strip())
    body = completion if think_end < 0 else completion[:think_end]
    for line in body.split("\n"):
        start, end = pos, pos + len(line) + 1
        pos = end
        if line.startswith(TOTAL_PREFIX):
            spans.append((start, end, "later totals" if seen_total else "first total"))
            seen_total = True
        elif line.startswith(RECHECK_TEXT) or line.startswith(CHECK_PREFIX):
            spans.append((start, end, "re-check"))
        elif "=" in line and not seen_total:
            eq = start + line.index("=") + 1
            spans += [(start, eq, "pass operands"), (eq, end, "pass sums")]
        elif line:
            spans.append((start, end, "re-check" if seen_total else "pass operands"))
    if think_end >= 0:
        spans.append((think_end, len(completion), "answer"))
    return spans


def token_roles(tokenizer, completion_ids: list[int]) -> list[str]:
    """The role of every completion token (by the character where it starts); the token right after the first
    total line is the decision: close the thought, or re-check."""
    text, starts = "", []
    for tid in completion_ids:
        starts.append(len(text))
        text += tokenizer.decode([tid])
    spans = line_roles(text)
    roles, decided = [], False
    for i, s in enumerate(starts):
        role = next((r for a, b, r in spans if a <= s < b), "answer")
        if not decided and i and roles[-1] == "first total" and role != "first total":
            role = "decision: close" if role == "answer" else "decision: re-check"
            decided = True
        roles.append(role)
    return roles


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompt: str, completion_ids: list[int]) -> torch.Tensor:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion_ids).unsqueeze(1)).squeeze(1)


def drift(base_dir: str, model_dir: str, samples: list[dict]) -> dict:
    """Per (base correct?, role): mean log-prob change and mean probability under base and trained model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    trained = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    acc = defaultdict(lambda: {"d": [], "p0": [], "p1": []})
    for s in samples:
        ids = s["completion_ids"]
        lp0 = completion_logprobs(base, tok, s["prompt"], ids)
        lp1 = completion_logprobs(trained, tok, s["prompt"], ids)
        for role, a, b in zip(token_roles(tok, ids), lp0.tolist(), lp1.tolist(), strict=True):
            for key in ((bool(s["correct"]), role), ("all", role)):
                acc[key]["d"].append(b - a)
                acc[key]["p0"].append(math.exp(a))
                acc[key]["p1"].append(math.exp(b))
    return {key: {"tokens": len(v["d"]), "dlogp": statistics.fmean(v["d"]), "p_base": statistics.fmean(v["p0"]),
                  "p_trained": statistics.fmean(v["p1"])} for key, v in acc.items()}


def table(result: dict) -> list[str]:
    lines = ["| base sample | role | tokens | mean Δ log p | mean p (base) | mean p (trained) |", "|---|---|---|---|---|---|"]
    for group, name in ((True, "right"), (False, "wrong"), ("all", "all")):
        for role in ROLES:
            r = result.get((group, role))
            if r:
                lines.append(f"| {name} | {role} | {r['tokens']} | {r['dlogp']:+.3f} | {r['p_base']:.3f} | "
                             f"{r['p_trained']:.3f} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(ROOT / "synthetic" / "base_v4"))
    p.add_argument("--model", required=True, help="trained checkpoint")
    p.add_argument("--samples", required=True, help="samples.jsonl of an evaluation (scripts/evaluate.py)")
    p.add_argument("--limit", type=int, default=200, help="samples scored")
    p.add_argument("--output", help="also write the table here (markdown)")
    args = p.parse_args(argv)
    with open(args.samples) as f:
        samples = [json.loads(line) for line in f if line.strip()][: args.limit]
    torch.set_num_threads(1)
    lines = table(drift(args.base, args.model, samples))
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
