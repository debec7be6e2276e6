#!/usr/bin/env python
"""Tables (markdown) and plots (PNG) from several evaluation runs, in the papers' format.

    python scripts/report.py vanilla=outputs/eval/r1-7b grpo=outputs/eval/r1-7b-grpo \
        sgrpo=outputs/eval/r1-7b-sgrpo --baseline vanilla --elr_grpo grpo --elr_sft vanilla \
        --output_dir outputs/report

Each run is `[label=]path` where path is an evaluation output dir or its summary.json. Writes report.md,
accuracy_vs_tokens.png, budget_curves.png when a run has budgets and exit_profile.png when a run has exit
fractions (the overthinking profile, recomputed from the per-sample records) under --output_dir, and prints the
tables. Give a base and its S-GRPO / GFPO checkpoints to compare their profiles in one picture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generation import Budget  # noqa: E402
from benchmarks.registry import resolve_benchmark  # noqa: E402
from benchmarks.report import (  # noqa: E402
    benchmark_order,
    budget_keys,
    budget_table,
    delta_table,
    earliest_exit_table,
    elr_table,
    load_run,
    main_table,
    plot_accuracy_vs_tokens,
    plot_budget_curves,
    plot_deer_tradeoff,
    plot_exit_profile,
    profile_fractions,
    profile_table,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="[label=]path of an evaluation output dir or summary.json")
    p.add_argument("--benchmarks", default="", help="comma list and order of columns (default: all, S-GRPO order)")
    p.add_argument("--budget", default="full", help="budget whose results fill the main tables")
    p.add_argument("--baseline", help="label of the run the changes (points, percent) are measured against")
    p.add_argument("--elr_grpo", help="label of the GRPO run for ELR = (L_GRPO - L_X) / (L_GRPO - L_SFT)")
    p.add_argument("--elr_sft", help="label of the SFT (starting) run for ELR")
    p.add_argument("--stderr", action="store_true", help="show ± the pass@1 standard error in the main table")
    p.add_argument("--output_dir", default="outputs/report")
    p.add_argument("--title", default="Evaluation report")
    args = p.parse_args(argv)
    if bool(args.elr_grpo) != bool(args.elr_sft):
        p.error("ELR needs both --elr_grpo and --elr_sft")
    return args


def build_report(args) -> str:
    runs = []
    for spec in args.runs:
        label, _, path = spec.rpartition("=") if "=" in spec else (None, "", spec)
        runs.append(load_run(path, label or None))
    by_label = {r["run"]: r for r in runs}
    if len(by_label) != len(runs):
        raise ValueError(f"run labels must be unique, got {[r['run'] for r in runs]}: name them label=path")
    for key in ("baseline", "elr_grpo", "elr_sft"):
        if getattr(args, key) and getattr(args, key) not in by_label:
            raise ValueError(f"--{key} {getattr(args, key)!r} is not one of the runs {sorted(by_label)}")
    benchmarks = ([b if b in {x for r in runs for x in r["benchmarks"]} else resolve_benchmark(b).name
                   for b in args.benchmarks.split(",") if b] or benchmark_order(runs))

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {args.title}", "", f"Cells: pass@1 (%) / mean tokens per sample; budget `{args.budget}`; "
             "overall = unweighted mean over the benchmarks.", "", main_table(runs, benchmarks, args.budget, args.stderr)]
    if args.baseline:
        parts += ["", f"## Change against {args.baseline} (accuracy in points, tokens in percent)", "",
                  delta_table(runs, by_label[args.baseline], benchmarks, args.budget)]
    if args.elr_grpo:
        parts += ["", f"## Excess length reduction (GRPO = {args.elr_grpo}, SFT = {args.elr_sft}); "
                  "cells: pass@1 / tokens / ELR %", "",
                  elr_table(runs, by_label[args.elr_grpo], by_label[args.elr_sft], benchmarks, args.budget)]
    plot_accuracy_vs_tokens(runs, benchmarks, out / "accuracy_vs_tokens.png", args.budget)
    parts += ["", "![accuracy vs tokens](accuracy_vs_tokens.png)"]
    budget_runs = [r for r in runs if len(budget_keys([r])) > 1]
    if budget_runs:
        parts += ["", "## Budgets", ""]
        for run in budget_runs:
            parts += [budget_table(run, benchmarks), ""]
        curve_runs = [r for r in budget_runs if any(Budget.parse(k).kind in ("thinking", "max_tokens")
                                                    for k in budget_keys([r]))]
        if curve_runs:
            plot_budget_curves(curve_runs, benchmarks, out / "budget_curves.png")
            parts += ["![accuracy vs budget](budget_curves.png)"]
        deer_runs = [r for r in budget_runs if any(Budget.parse(k).kind == "deer" for k in budget_keys([r]))]
        if deer_runs:
            plot_deer_tradeoff(deer_runs, benchmarks, out / "deer_tradeoff.png")
            parts += ["", "DEER rows: \"+ N trial\" are the tokens of the trial answers it wrote to decide.", "",
                      "![DEER: accuracy vs tokens](deer_tradeoff.png)"]
    profile_runs = [r for r in runs if profile_fractions([r], benchmarks)]
    if profile_runs:
        parts += ["", "## Overthinking profile", "",
                  "Each full sample cut after a fraction F of its own thought tokens, the exit text injected and the "
                  "answer forced. Cells: pass@1 (%) of the forced answers at F, the full answers' (`full`), the "
                  "redundant share (%) of the correctly answered samples' thought tokens (after their earliest "
                  "correct exit), mean thought tokens, samples profiled (of which never closed their thought).", "",
                  profile_table(profile_runs, benchmarks), "",
                  "Share (%) of samples whose earliest correct exit is at or before F:", "",
                  earliest_exit_table(profile_runs, benchmarks), ""]
        plot_exit_profile(profile_runs, benchmarks, out / "exit_profile.png")
        parts += ["![accuracy vs thought fraction](exit_profile.png)"]
    protocols = {r["run"]: next(iter(r["benchmarks"].values()), {}).get("protocol", {}) for r in runs}
    parts += ["", "## Protocols", ""]
    for label, proto in protocols.items():
        keys = ("model", "temperature", "top_p", "max_tokens", "seed", "backend")
        samples = {b: r["benchmarks"][b]["protocol"].get("samples_per_question") for r in runs if r["run"] == label
                   for b in r["benchmarks"]}
        parts.append(f"- {label}: " + ", ".join(f"{k}={proto.get(k)}" for k in keys) + f", samples={samples}")
    text = "\n".join(parts) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv=None) -> str:
    text = build_report(parse_args(argv))
    print(text)
    return text


if __name__ == "__main__":
    main()
