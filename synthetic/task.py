"""The synthetic "overthinking" task: sums of a few two-digit numbers, with verifiable answers.

A question is "What is 12 + 34 + 56?". A reasoning trace (the completion, which starts *inside* the thinking,
because the generation prompt already opens `<think>`) computes running sums one line at a time, concludes each
pass with its total, and may re-check:

    12+34=46
    46+56=102
    Total: 102
    Wait, let me check.
    Check 12+34=46
    Check 46+56=102
    Total: 102
    </think>

    \\boxed{102}

The miniature reproduces the three ingredients of the papers' experiment (DESIGN.md, "The synthetic benchmark"):
- the first pass *slips* with probability `slip_prob`: one running sum is off by a small amount and the later
  sums carry the error on, so the answer is wrong;
- optional "Wait, let me check." passes (each with probability `recheck_prob`, at most `max_rechecks`) redo the
  work from the question and slip only with `recheck_slip_prob`; the answer is the last pass's total. So longer
  traces are more often right: the pressure under which GRPO lengthens answers, and the redundancy (most of a
  trace's tokens, as in real reasoning models) that GFPO and S-GRPO remove;
- a share `exit_cut_prob` of traces is cut by the S-GRPO exit text at any token-like position, as S-GRPO cuts
  (P ~ U(1, n), mid-line included), and answers from what was computed so far: the last concluded pass's total,
  or before any "Total:" line the latest complete running sum. So an exit during a re-check answers the first
  pass's total (right unless that pass slipped), and an exit inside the first pass answers a partial sum (wrong).
  They teach the model to answer when S-GRPO forces an early exit.

Version 4 (`TaskConfig.v4()`, `--task_version 4`; version 3 stays the default until a v4 base is trained and
measured) makes the overthinking look like real reasoning models' (PAPERS.md, "Overthinking in real reasoning
traces"):
- a difficulty mix, 2-6 terms, where every first-pass addition may slip (`slip_prob` per addition), so longer sums
  slip more often while most first passes are right;
- verification rounds whose number does not depend on the question: redundant on easy sums, useful on hard ones
  (later rounds rarely change the answer);
- a forced exit answers briefly in the same format as a natural answer: after the last stated "Total:" it copies
  it; inside the first pass it finishes the remaining additions in its answer, each slipping with
  `exit_slip_prob` (less reliable than careful thinking), then boxes the result.

Held-out questions are disjoint from every training question, and both are reproducible from a seed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The exact S-GRPO exit text (S-GRPO, Sec. 3; PAPERS.md): it closes the thinking itself.
EXIT_TEXT = "Time is limited, stop thinking and start answering.\n</think>\n\n"
RECHECK_TEXT = "Wait, let me check."
# Re-check lines are marked: a 2-layer model cannot tell a re-check line from a first-pass one by a "Wait" 30 tokens
# back, so without the mark it slips in both passes alike and re-checking stops paying (measured: 48% right with a
# re-check vs 58% without, base v1). The mark makes "re-checks are careful" learnable, as the design intends.
CHECK_PREFIX = "Check "
# Each pass ends by stating its total, as reasoning models do before "Wait, let me double-check": what a forced
# exit answers is then a copy of the last "Total:" (learnable by a 2-layer model), not a search for a pass's end.
TOTAL_PREFIX = "Total: "
END_THINK = "</think>\n\n"
# The user message is the question alone (recipes and evaluation pass `prompt_template: "{question}"`): the
# default instruction line would double the prompt, and the tiny model's compute, for no information.
PROMPT_TEMPLATE = "{question}"
_SMALL_SLIPS = (-10, -2, -1, 1, 2, 10)  # a dropped/added unit or a wrong carry
# Token-like pieces of the thinking (words, single digits, spaces, punctuation): the cut positions of exit traces.
_PIECES = re.compile(r"[A-Za-z]+|\d|\s|[^A-Za-z\d\s]")


@dataclass(frozen=True)
class TaskConfig:
    """The generator's knobs. Defaults: version 3, the task of the shipped base and the measured tables;
    `TaskConfig.v4()` is the more realistic version 4 (module docstring)."""

    min_terms: int = 3
    max_terms: int = 5
    low: int = 10
    high: int = 99
    slip_prob: float = 0.5  # v3: the first pass slips once with this probability; v4: per first-pass addition
    recheck_prob: float = 0.7
    max_rechecks: int = 2
    recheck_slip_prob: float = 0.0  # per re-check pass (v3) / addition (v4)
    exit_cut_prob: float = 0.2
    exit_slip_prob: float = 0.1  # v4: per addition a forced exit finishes in its answer
    version: int = 3

    @classmethod
    def v4(cls, **overrides) -> TaskConfig:
        """Version 4: 2-6 terms, 6% slips per first-pass addition, exits that finish the sum with 10% slips."""
        return cls(**{**dict(min_terms=2, max_terms=6, slip_prob=0.06, version=4), **overrides})

    @classmethod
    def of_version(cls, version: int, **overrides) -> TaskConfig:
        """The defaults of task `version` (3 or 4, the scripts' `--task_version`), with `overrides`."""
        return cls.v4(**overrides) if version == 4 else cls(**overrides)

    def __post_init__(self):
        if self.version not in (3, 4):
            raise ValueError(f"TaskConfig: `version` must be 3 or 4, got {self.version}.")
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"TaskConfig: need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}.")
        if not 0 <= self.low < self.high:
            raise ValueError(f"TaskConfig: need 0 <= low < high, got low={self.low}, high={self.high}.")
        for name in ("slip_prob", "recheck_prob", "recheck_slip_prob", "exit_cut_prob", "exit_slip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TaskConfig: `{name}` must be a probability in [0, 1], got {getattr(self, name)}.")
        if self.max_rechecks < 0:
            raise ValueError(f"TaskConfig: `max_rechecks` must be >= 0, got {self.max_rechecks}.")

    def to_dict(self) -> dict:
        """The fields that define the task; version 3's are exactly its original ones (its base's hash is kept)."""
        d = asdict(self)
        if self.version == 3:
            d.pop("version"), d.pop("exit_slip_prob")
        return d


@dataclass
class Trace:
    """One question with one sampled reasoning trace and what the generator decided for it."""

    numbers: tuple[int, ...]
    question: str
    answer: str  # gold answer
    completion: str  # starts inside the thinking, ends with the boxed answer (no eos)
    predicted: int  # the number the trace boxes
    slipped: bool  # the first pass slipped
    n_rechecks: int
    cut: bool  # cut by the S-GRPO exit text
    cut_at_char: int | None = None  # the thinking's length kept before the exit text
    pass_sums: list[int] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return str(self.predicted) == self.answer


def question_text(numbers) -> str:
    return "What is " + " + ".join(str(n) for n in numbers) + "?"


def prompt_text(question: str, template: str = PROMPT_TEMPLATE) -> str:
    return template.replace("{question}", question)


def sample_numbers(rng: random.Random, cfg: TaskConfig) -> tuple[int, ...]:
    n = rng.randint(cfg.min_terms, cfg.max_terms)
    return tuple(rng.randint(cfg.low, cfg.high) for _ in range(n))


def running_sum_lines(numbers, slip_at: int | None = None, slip: int = 0) -> tuple[list[str], int]:
    """One pass: "a+b=s" lines. A slip adds `slip` to the running sum of line `slip_at`; later lines build on it."""
    lines, acc = [], numbers[0]
    for i, x in enumerate(numbers[1:]):
        new = acc + x + (slip if i == slip_at else 0)
        if new < 0:  # never happens for two-digit terms; keeps the text well formed for any config
            new = acc + x
        lines.append(f"{acc}+{x}={new}")
        acc = new
    return lines, acc


def _one_pass(numbers, rng: random.Random, slip_prob: float, version: int = 3) -> tuple[list[str], int, bool]:
    if version >= 4:  # every addition may slip
        return _finish(numbers[0], numbers[1:], rng, slip_prob)
    if rng.random() < slip_prob:
        lines, total = running_sum_lines(numbers, rng.randrange(len(numbers) - 1), rng.choice(_SMALL_SLIPS))
        return lines, total, True
    lines, total = running_sum_lines(numbers)
    return lines, total, False


def _finish(acc: int, rest, rng: random.Random, slip_per_addition: float) -> tuple[list[str], int, bool]:
    """Running-sum lines from `acc` over `rest`, each addition slipping with `slip_per_addition`."""
    lines, slipped = [], False
    for x in rest:
        new = acc + x
        if rng.random() < slip_per_addition:
            new, slipped = max(0, new + rng.choice(_SMALL_SLIPS)), True
        lines.append(f"{acc}+{x}={new}")
        acc = new
    return lines, acc, slipped


def answer_text(value) -> str:
    return f"\\boxed{{{value}}}"


def answer_if_cut(thinking: str, first_number: int) -> int:
    """What a trace cut after `thinking` answers: the last complete "Total: N" line, else the latest complete
    running-sum line's result, else the question's first number (nothing computed yet). A line counts once its
    newline is written: "46+56=10" may be a cut "102"."""
    answer, total = first_number, None
    for line in thinking.split("\n")[:-1]:  # the part after the last newline is an unfinished line
        if line.startswith(TOTAL_PREFIX):
            total = int(line[len(TOTAL_PREFIX):])
        elif "=" in line:
            answer = int(line.rsplit("=", 1)[1])
    return total if total is not None else answer


def exit_answer(thinking: str, numbers, rng: random.Random, cfg: TaskConfig) -> tuple[str, int]:
    """(answer text written after the exit text, the boxed number) for a trace cut after `thinking`.

    v3 copies `answer_if_cut`. v4: after a stated "Total:" the answer copies the last one; before it (inside the
    first pass) the answer finishes the remaining additions from the last complete running sum, each slipping with
    `exit_slip_prob`, and boxes the result."""
    copied = answer_if_cut(thinking, numbers[0])
    done = thinking.split("\n")[:-1]
    if cfg.version < 4 or any(line.startswith(TOTAL_PREFIX) for line in done):
        return answer_text(copied), copied
    n_lines = sum("=" in line for line in done)
    lines, total, _ = _finish(copied, numbers[n_lines + 1:], rng, cfg.exit_slip_prob)
    return "".join(line + "\n" for line in lines) + answer_text(total), total


def make_trace(numbers, rng: random.Random, cfg: TaskConfig = TaskConfig()) -> Trace:
    """Sample one reasoning trace for `numbers` (see the module docstring for the three ingredients)."""
    numbers = tuple(numbers)
    gold = sum(numbers)
    lines, total, slipped = _one_pass(numbers, rng, cfg.slip_prob, cfg.version)
    sums = [total]
    text_lines = lines + [f"{TOTAL_PREFIX}{total}"]
    n_rechecks = 0
    while n_rechecks < cfg.max_rechecks and rng.random() < cfg.recheck_prob:
        n_rechecks += 1
        more, total, _ = _one_pass(numbers, rng, cfg.recheck_slip_prob, cfg.version)
        text_lines += [RECHECK_TEXT, *(CHECK_PREFIX + line for line in more), f"{TOTAL_PREFIX}{total}"]
        sums.append(total)
    thinking = "".join(line + "\n" for line in text_lines)

    cut_at = None
    if rng.random() < cfg.exit_cut_prob:
        # P ~ U(1, n) over the thinking's pieces, as S-GRPO draws exit positions over the thought tokens.
        ends = [m.end() for m in _PIECES.finditer(thinking)]
        cut_at = ends[rng.randrange(len(ends))]
    if cut_at is None:
        predicted = total
        completion = thinking + END_THINK + answer_text(predicted)
    else:
        answer, predicted = exit_answer(thinking[:cut_at], numbers, rng, cfg)
        completion = thinking[:cut_at] + EXIT_TEXT + answer
    return Trace(
        numbers=numbers,
        question=question_text(numbers),
        answer=str(gold),
        completion=completion,
        predicted=predicted,
        slipped=slipped,
        n_rechecks=n_rechecks,
        cut=cut_at is not None,
        cut_at_char=cut_at,
        pass_sums=sums,
    )


def clean_trace(numbers) -> str:
    """The shortest correct trace: one slip-free pass, no re-check, no cut."""
    lines, total = running_sum_lines(tuple(numbers))
    return "".join(line + "\n" for line in lines) + f"{TOTAL_PREFIX}{total}\n" + END_THINK + answer_text(total)


# ---------------------------------------------------------------------------------------------------------------
# Splits: held-out questions first, training questions never among them.


def _split_rng(seed: int, which: str) -> random.Random:
    return random.Random(f"synthetic-sums:{seed}:{which}")


def heldout_numbers(n: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[tuple[int, ...]]:
    """`n` distinct held-out questions, a pure function of (n, seed, cfg)."""
    rng, out, seen = _split_rng(seed, "heldout"), [], set()
    while len(out) < n:
        nums = sample_numbers(rng, cfg)
        if nums not in seen:
            seen.add(nums)
            out.append(nums)
    return out


class TrainSampler:
    """An endless stream of training questions that never hits a held-out one (rejection sampling)."""

    def __init__(self, seed: int, heldout: list[tuple[int, ...]], cfg: TaskConfig = TaskConfig(),
                 stream: str = "train"):
        self.cfg, self.rng, self.heldout = cfg, _split_rng(seed, stream), set(heldout)

    def numbers(self) -> tuple[int, ...]:
        while True:
            nums = sample_numbers(self.rng, self.cfg)
            if nums not in self.heldout:
                return nums

    def trace(self) -> Trace:
        return make_trace(self.numbers(), self.rng, self.cfg)


def build_splits(n_train: int, n_heldout: int, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> dict[str, list[dict]]:
    """Question/answer rows: `train` (distinct, for RL) and `heldout` (for evaluation), disjoint by construction."""
    held = heldout_numbers(n_heldout, seed, cfg)
    sampler, train, seen = TrainSampler(seed, held, cfg, stream="rl"), [], set()
    while len(train) < n_train:
        nums = sampler.numbers()
        if nums not in seen:
            seen.add(nums)
            train.append(nums)
    row = lambda nums: {"question": question_text(nums), "answer": str(sum(nums))}  # noqa: E731
    return {"train": [row(n) for n in train], "heldout": [row(n) for n in held]}


def hard_split(splits: dict[str, list[dict]], n_hard: int, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> dict:
    """A held-out split harder than anything RL trains on: the `train` rows with the most terms (cfg.max_terms) are
    removed and `heldout_hard` gets `n_hard` new questions of exactly that many terms, disjoint from every split. The
    base saw such sums in its SFT data, so it can solve them (its longest thoughts, where re-checking catches the most
    slips); RL never does. Longer sums than the base saw are no test: the 2-layer base scores 0% on 7-8 terms."""
    terms = lambda row: row["question"].count("+") + 1  # noqa: E731
    taken = {row["question"] for rows in splits.values() for row in rows}
    rng, hard = _split_rng(seed, "heldout-hard"), []
    while len(hard) < n_hard:
        nums = tuple(rng.randint(cfg.low, cfg.high) for _ in range(cfg.max_terms))
        if question_text(nums) not in taken:
            taken.add(question_text(nums))
            hard.append({"question": question_text(nums), "answer": str(sum(nums))})
    return {**splits, "train": [r for r in splits["train"] if terms(r) < cfg.max_terms], "heldout_hard": hard}


def write_jsonl(path: str | Path, rows) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_datasets(output_dir: str | Path, n_train: int = 2000, n_heldout: int = 200, seed: int = 0,
                   cfg: TaskConfig = TaskConfig(), n_sft_examples: int = 0, n_hard: int = 0) -> dict[str, Path]:
    """Write `train.jsonl` and `heldout.jsonl` (question, answer), with `n_hard` the `hard_split` (`train.jsonl`
    without its longest sums, `heldout_hard.jsonl`) and, if asked, `sft.jsonl` (with traces)."""
    output_dir = Path(output_dir)
    splits = build_splits(n_train, n_heldout, seed, cfg)
    if n_hard:
        splits = hard_split(splits, n_hard, seed, cfg)
    paths = {name: write_jsonl(output_dir / f"{name}.jsonl", rows) for name, rows in splits.items()}
    if n_sft_examples:
        held = heldout_numbers(n_heldout, seed, cfg)
        sampler = TrainSampler(seed, held, cfg, stream="sft")
        rows = []
        for _ in range(n_sft_examples):
            t = sampler.trace()
            rows.append({"question": t.question, "answer": t.answer, "completion": t.completion,
                         "slipped": t.slipped, "n_rechecks": t.n_rechecks, "cut": t.cut})
        paths["sft"] = write_jsonl(output_dir / "sft.jsonl", rows)
    with open(output_dir / "task_config.json", "w") as f:
        json.dump({"seed": seed, "n_train": len(splits["train"]), "n_heldout": n_heldout, **cfg.to_dict(),
                   **({"n_heldout_hard": n_hard} if n_hard else {})}, f, indent=1)
    return paths


def tokenizer_corpus(n: int = 3000, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> list[str]:
    """Lines to learn the BPE merges from: prompts and traces of the task (digits stay single tokens anyway)."""
    rng = random.Random(f"synthetic-sums:{seed}:tokenizer")
    lines = []
    for _ in range(n):
        t = make_trace(sample_numbers(rng, cfg), rng, cfg)
        lines.append(prompt_text(t.question))
        lines.append(t.completion)
    lines.append(EXIT_TEXT)
    return lines


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Write the synthetic task's train.jsonl / heldout.jsonl (question, answer).")
    p.add_argument("--output_dir", default="outputs/synthetic/data")
    p.add_argument("--n_train", type=int, default=2000)
    p.add_argument("--n_heldout", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="split seed; the shipped base model was trained with 0")
    p.add_argument("--n_sft_examples", type=int, default=0, help="also write sft.jsonl with this many traces")
    p.add_argument("--task_version", type=int, default=3, choices=[3, 4], help="4: the more realistic task")
    args = p.parse_args(argv)
    cfg = TaskConfig.of_version(args.task_version)
    paths = write_datasets(args.output_dir, args.n_train, args.n_heldout, args.seed, cfg=cfg,
                           n_sft_examples=args.n_sft_examples)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
