"""Which way S-GRPO pushes the stop / re-check decision on the synthetic task (an analysis, not a test).

    python -m synthetic.sgrpo_credit                      # the task as the shipped base was trained on
    python -m synthetic.sgrpo_credit --slip_prob 0.1      # a task whose first pass is mostly right
    python -m synthetic.sgrpo_credit --task_version 4     # exits that finish the sum in their answer (task v4)

After its first pass ("... Total: N") a trace either closes the thinking or writes "Wait, let me check.". S-GRPO
trains that next token with the advantages of every serial-group member that contains it
(`trainers.serial_group.prefix_token_credit`). For traces drawn from the task's generator, with m exits at
P_i ~ U(1, n) answered as the SFT data teaches (`synthetic.task.exit_answer`) and the paper's decaying reward,
this prints the mean credit of that token by what the first pass did (sound / slipped) and what came next.

The policy gradient on the decision's logit is p(1 - p) * (E[credit | stop] - E[credit | re-check]) (the model
cannot see whether its pass slipped), so the sign of the last line says whether S-GRPO shortens this task.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic.task import (  # noqa: E402
    END_THINK,
    EXIT_TEXT,
    TOTAL_PREFIX,
    TaskConfig,
    answer_if_cut,
    answer_text,
    exit_answer,
    make_trace,
    sample_numbers,
)
from trainers.serial_group import (  # noqa: E402
    prefix_token_credit,
    sample_exit_positions,
    serial_advantages,
    sgrpo_rewards,
    thinking_span,
)


@dataclass
class DecisionCredit:
    slipped: bool
    rechecked: bool
    credit_seq: float  # loss_type 'grpo' (per-sequence token mean)
    credit_tok: float  # token-level loss ('dapo')


def decision_credit(thinking: str, first_number: int, gold: str, predicted: int, tokenizer, cuts=None,
                    num_exits: int = 8, generator: torch.Generator | None = None,
                    reward: str = "decay", answer_at=None) -> tuple[float, float]:
    """Credit (per-sequence mean, token-level) of the first token after the first pass's "Total:" line of one
    full rollout whose thinking is `thinking` and whose answer is `predicted`. `cuts` (thought-token positions)
    default to the paper's draw."""
    completion = thinking + END_THINK + answer_text(predicted)
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in enc["offset_mapping"]]
    n = thinking_span(enc["input_ids"], tokenizer.convert_tokens_to_ids(END_THINK.strip())).length  # T_1..T_n
    first_pass_end = thinking.index("\n", thinking.index(TOTAL_PREFIX)) + 1
    decision = next(i for i, (start, _) in enumerate(enc["offset_mapping"]) if start >= first_pass_end)
    if cuts is None:
        cuts = sample_exit_positions(n, num_exits, generator)
    if answer_at is None:  # task v3: the exit copies what was computed (answer_if_cut)
        def answer_at(prefix):
            value = answer_if_cut(prefix, first_number)
            return answer_text(value), value
    exits = [answer_at(thinking[: ends[p - 1]] if p else "") for p in cuts]  # (answer text, boxed number)
    correct = torch.tensor([[str(v) == gold for _, v in exits] + [str(predicted) == gold]])
    adv = serial_advantages(sgrpo_rewards(correct, reward))[0].tolist()
    n_tail = lambda text: len(tokenizer(EXIT_TEXT + text, add_special_tokens=False)["input_ids"])  # noqa: E731
    lengths = [p + n_tail(text) for p, (text, _) in zip(cuts, exits, strict=True)] + [len(ends)]
    return prefix_token_credit(cuts, adv, decision, lengths), prefix_token_credit(cuts, adv, decision)


def sample_credits(cfg: TaskConfig, tokenizer, n: int = 2000, num_exits: int = 8, seed: int = 0) -> list[DecisionCredit]:
    rng, gen = random.Random(f"sgrpo-credit:{seed}"), torch.Generator().manual_seed(seed)
    cfg = replace(cfg, exit_cut_prob=0.0)  # full rollouts: the base never writes the exit text itself
    out = []
    for _ in range(n):
        numbers = sample_numbers(rng, cfg)
        trace = make_trace(numbers, rng, cfg)
        thinking = trace.completion.split(END_THINK)[0]
        seq, tok = decision_credit(thinking, numbers[0], trace.answer, trace.predicted, tokenizer,
                                   num_exits=num_exits, generator=gen,
                                   answer_at=lambda prefix, nums=numbers: exit_answer(prefix, nums, rng, cfg))
        out.append(DecisionCredit(trace.slipped, trace.n_rechecks > 0, seq, tok))
    return out


def summarize(credits: list[DecisionCredit]) -> list[str]:
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    lines = ["| first pass | next | share | credit, grpo loss (sum A_i / |O_i|, x100) | credit, token-level (sum A_i) |",
             "|---|---|---|---|---|"]
    for slipped in (False, True):
        for rechecked in (False, True):
            sel = [c for c in credits if c.slipped == slipped and c.rechecked == rechecked]
            lines.append(f"| {'slipped' if slipped else 'sound'} | {'re-check' if rechecked else 'stop'} | "
                         f"{len(sel) / len(credits):.2f} | {100 * mean([c.credit_seq for c in sel]):+.3f} | "
                         f"{mean([c.credit_tok for c in sel]):+.3f} |")
    stop = [c for c in credits if not c.rechecked]
    chk = [c for c in credits if c.rechecked]
    d_seq = mean([c.credit_seq for c in stop]) - mean([c.credit_seq for c in chk])
    d_tok = mean([c.credit_tok for c in stop]) - mean([c.credit_tok for c in chk])
    verdict = lambda d: "toward stopping" if d > 0 else "toward re-checking"  # noqa: E731
    lines.append(f"E[credit | stop] - E[credit | re-check]: grpo loss {100 * d_seq:+.3f} (x100, {verdict(d_seq)}), "
                 f"token-level {d_tok:+.3f} ({verdict(d_tok)}); first pass right {1 - mean([c.slipped for c in credits]):.2f}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_version", type=int, default=3, choices=[3, 4], help="the task's defaults (3: shipped)")
    for f in fields(TaskConfig):
        if f.name != "version":
            p.add_argument(f"--{f.name}", type=type(f.default), default=None, help="task generator knob")
    p.add_argument("--n", type=int, default=2000, help="full rollouts to draw")
    p.add_argument("--num_exits", type=int, default=8, help="m (paper: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=str(ROOT / "synthetic" / "base"))
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    given = {f.name: getattr(args, f.name) for f in fields(TaskConfig) if getattr(args, f.name, None) is not None}
    cfg = TaskConfig.of_version(args.task_version, **given)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    credits = sample_credits(cfg, tokenizer, args.n, args.num_exits, args.seed)
    print(f"S-GRPO credit at the stop / re-check decision: {len(credits)} full rollouts, m = {args.num_exits}, {cfg}")
    print("\n".join(summarize(credits)))


if __name__ == "__main__":
    main()
