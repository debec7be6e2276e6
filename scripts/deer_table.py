"""The miniature's trained methods beside DEER on their base: one table and one accuracy-vs-tokens plot.

    python scripts/demo.py --methods grpo,grpo-lp,sgrpo,gfpo-shortest-4/16 --output_dir outputs/demo-deer
    for s in 0 1 2; do python scripts/evaluate.py --config recipes/synthetic/deer_eval.yaml --model synthetic/base_v4 \\
        --benchmarks outputs/demo-deer/data/heldout.jsonl --seed $s --output_dir outputs/deer-base/s$s; done
    python scripts/deer_table.py outputs/demo-deer/report/results.json outputs/deer-base/s0 outputs/deer-base/s1 \\
        outputs/deer-base/s2 --plot docs/deer-miniature-cpu.png

Rows: the demo's (mean ± std over its seeds), then the base under DEER at each threshold (mean ± std over the
evaluation seeds), with DEER's trial tokens beside the completion's: what it wrote to decide, which a fair comparison
counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.generation import Budget  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def deer_rows(run_dirs: list[Path]) -> list[dict]:
    """Per budget of the DEER runs: accuracy (%), tokens, trial tokens, exit rate (%), each mean and std over runs."""
    by_key: dict[str, list[dict]] = {}
    for d in run_dirs:
        summaries = [json.loads(p.read_text()) for p in sorted(d.glob("*/summary.json"))]
        if len(summaries) != 1:
            raise SystemExit(f"{d}: expected one benchmark folder with a summary.json, found {len(summaries)}")
        for key, b in summaries[0]["budgets"].items():
            by_key.setdefault(key, []).append(b)
    rows = []
    for key in sorted(by_key, key=Budget.order):
        bs = by_key[key]
        rows.append({"key": key, "accuracy": mean_std([100 * b["accuracy"] for b in bs]),
                     "tokens": mean_std([b["mean_tokens"] for b in bs]),
                     "trial": mean_std([b.get("mean_trial_tokens", 0.0) for b in bs]),
                     "exits": mean_std([100 * b.get("exit_rate", 0.0) for b in bs]), "runs": len(bs)})
    return rows


def table(demo: dict, deer: list[dict]) -> str:
    fmt = lambda ms, d=1: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"  # noqa: E731
    lines = ["| row | accuracy (%) | mean tokens | DEER trial tokens | DEER exits (%) | tokens trained |",
             "|---|---|---|---|---|---|"]
    for r in demo["rows"]:
        trained = f"{r['trained_tokens'] / 1000:.0f}k" if r.get("trained_tokens") else "-"
        lines.append(f"| {r['method']} | {r['accuracy']:.1f} ± {r['accuracy_std']:.1f} | "
                     f"{r['tokens']:.1f} ± {r['tokens_std']:.1f} | - | - | {trained} |")
    for r in deer:
        if Budget.parse(r["key"]).kind != "deer":
            continue
        lines.append(f"| base + DEER, threshold {r['key'].split('=', 1)[1]} | {fmt(r['accuracy'])} | {fmt(r['tokens'])} | "
                     f"{fmt(r['trial'])} | {fmt(r['exits'], 0)} | - |")
    return "\n".join(lines)


def plot(demo: dict, deer: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(demo["rows"]):
        ax.errorbar(r["tokens"], r["accuracy"], xerr=r["tokens_std"], yerr=r["accuracy_std"], fmt="o", color=f"C{i}",
                    label=r["method"], capsize=3)
    pts = [(r["tokens"][0] + r["trial"][0], r["accuracy"][0], r["key"].split("=", 1)[1]) for r in deer
           if Budget.parse(r["key"]).kind == "deer"]
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="black", label="base + DEER (tokens + trials)")
    for x, y, t in pts:
        ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean tokens per sample (DEER: + its trial tokens)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Miniature (task v4): trained methods and DEER on the base")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo_results", help="the demo's report/results.json")
    p.add_argument("deer_runs", nargs="+", help="evaluation output folders of the base with --early_exit deer")
    p.add_argument("--plot", help="write the accuracy-vs-tokens plot here")
    args = p.parse_args(argv)
    demo = json.loads(Path(args.demo_results).read_text())
    deer = deer_rows([Path(d) for d in args.deer_runs])
    text = table(demo, deer)
    print(text)
    if args.plot:
        plot(demo, deer, Path(args.plot))
    return text


if __name__ == "__main__":
    main()
