#!/usr/bin/env python
"""Accuracy and length against training: the checkpoints of a few runs, each evaluated, as one table and one plot.

    python scripts/probe_curves.py --base outputs/demo-deer/eval/base-s0 \\
        --run "lr 2.5e-5=outputs/sgrpo-probe/ref" --run "KL 0.04=outputs/sgrpo-probe/kl" --output docs/probes.png

A run is `label=<output_dir>`: its `checkpoint-N` folders, each evaluated into `<parent>/eval-<name>-checkpoint-N`
(scripts/evaluate.py, the first benchmark's full budget), and its `trainer_state.json` for the tokens trained and
sampled up to step N (`cost/*`, trainers/cost.py). The base is step 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainers.cost import total_cost  # noqa: E402


def full_budget(eval_dir: Path) -> dict:
    summary = json.loads((eval_dir / "summary.json").read_text())["benchmarks"]
    return next(iter(summary.values()))["budgets"]["full"]


def run_points(run_dir: Path) -> list[dict]:
    """One point per evaluated checkpoint: step, accuracy (%), mean tokens, tokens trained and sampled so far."""
    state = run_dir / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.is_file() else []
    points = []
    for ckpt in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        ev = run_dir.parent / f"eval-{run_dir.name}-{ckpt.name}"
        if not (ev / "summary.json").is_file():
            continue
        s = full_budget(ev)
        upto = [h for h in history if h.get("step", 0) <= step]
        points.append({"step": step, "accuracy": 100 * s["accuracy"], "tokens": s["mean_tokens"],
                       "trained_tokens": total_cost(upto, "cost/trained_tokens"),
                       "sampled_tokens": total_cost(upto, "cost/sampled_tokens")})
    return points


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base's evaluation folder (step 0)")
    p.add_argument("--run", action="append", required=True, help="label=<output_dir>, repeatable")
    p.add_argument("--output", help="plot (.png); the table goes to stdout")
    args = p.parse_args(argv)
    base = full_budget(Path(args.base))
    start = {"step": 0, "accuracy": 100 * base["accuracy"], "tokens": base["mean_tokens"], "trained_tokens": 0.0,
             "sampled_tokens": 0.0}
    runs = {}
    for spec in args.run:
        label, _, path = spec.partition("=")
        if not path or not Path(path).is_dir():
            p.error(f"--run {spec!r}: give label=<output_dir> of an existing run")
        runs[label] = [start] + run_points(Path(path))
    print("| run | step | accuracy (%) | mean tokens | Δ tokens vs base | tokens trained | tokens sampled |")
    print("|---|---|---|---|---|---|---|")
    for label, points in runs.items():
        for q in points[1:]:
            print(f"| {label} | {q['step']} | {q['accuracy']:.1f} | {q['tokens']:.1f} | "
                  f"{100 * (q['tokens'] / start['tokens'] - 1):+.0f}% | {(q['trained_tokens'] or 0) / 1e3:,.0f}k | "
                  f"{(q['sampled_tokens'] or 0) / 1e3:,.0f}k |")
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for label, points in runs.items():
            x = [(q["trained_tokens"] or 0) / 1e3 for q in points]
            axes[0].plot(x, [q["accuracy"] for q in points], "o-", label=label)
            axes[1].plot(x, [q["tokens"] for q in points], "o-", label=label)
            for q, xi in zip(points[1:], x[1:], strict=True):
                axes[0].annotate(str(q["step"]), (xi, q["accuracy"]), fontsize=7)
        for ax, name in zip(axes, ("held-out accuracy (%)", "mean tokens per answer"), strict=True):
            ax.set_xlabel("completion tokens trained (k; labels: optimizer steps)")
            ax.set_ylabel(name)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.output, dpi=120)
        plt.close(fig)
        print(f"plot: {args.output}")


if __name__ == "__main__":
    main()
