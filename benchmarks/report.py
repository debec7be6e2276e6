"""Tables and plots from evaluation summaries, in the papers' format.

A run is the `summary.json` that scripts/evaluate.py writes: {"run": label, "benchmarks": {name: {"protocol":
..., "budgets": {"full": {"accuracy": fraction, "mean_tokens": ..., ...}, "thinking=B": ...}}}}.

- Main table (S-GRPO Table 1): cells "accuracy / tokens", accuracy in percent, tokens the mean over samples;
  the overall column is the unweighted mean over the table's benchmarks of both (this reproduces S-GRPO's
  overall column, e.g. R1-Distill-7B S-GRPO 76.10 / 3,556).
- pass@k (`pass_at_k` in a summary, evaluate.py with n > 1 samples per question): the main and budget tables
  add a column "<benchmark> pass@K" per benchmark, K the largest k every run (budget) reports there; a summary
  written before pass@k (no key) shows "-". The accuracy cells are pass@1.
- Change against a baseline run: accuracy in points, tokens in percent.
- ELR (GFPO): (L_GRPO - L_X) / (L_GRPO - L_SFT), the share of GRPO's length growth over SFT that X removes.
- Overthinking profile (`evaluate.py --exit_fractions`): pass@1 of the answers forced after a fraction F of each
  sample's own thought, beside the full answer's; the share of samples whose earliest correct exit is at or
  before F; the redundant share of the solved samples' thought tokens. `load_run` recomputes it from the saved
  per-sample records (benchmarks.evaluation.exit_profile); overall = unweighted mean over the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.generation import Budget
from benchmarks.registry import display_name

CANONICAL_ORDER = ["gsm8k", "aime24", "amc23", "math500", "gpqa_diamond", "aime25"]  # S-GRPO's, then AIME25


def load_run(path: str | Path, label: str | None = None) -> dict:
    """A run summary from its `summary.json` or the evaluation output dir holding it. A benchmark with exit
    fractions gets its `exit_profile` recomputed from the per-sample records beside the summary (when present),
    so a regraded or resumed run reports what its records say."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    run = json.loads(path.read_text())
    if label:
        run["run"] = label
    run.setdefault("run", path.parent.name)
    for name, bench in run.get("benchmarks", {}).items():
        bench_dir = path.parent / name
        has_exits = any(Budget.parse(k).kind == "exit" for k in bench.get("budgets", {}))
        if has_exits and any(bench_dir.glob("samples*.jsonl")):
            from benchmarks.evaluation import exit_profile, read_records

            profile = exit_profile(read_records(bench_dir))
            if profile:
                bench["exit_profile"] = profile
    return run


def cell(run: dict, bench: str, budget: str = "full") -> dict | None:
    return run.get("benchmarks", {}).get(bench, {}).get("budgets", {}).get(budget)


def benchmark_order(runs: list[dict]) -> list[str]:
    seen = list(dict.fromkeys(b for r in runs for b in r.get("benchmarks", {})))
    known = [b for b in CANONICAL_ORDER if b in seen]
    return known + [b for b in seen if b not in known]


def overall(run: dict, benchmarks: list[str], budget: str = "full") -> tuple[float, float] | None:
    """(accuracy fraction, mean tokens), unweighted means over `benchmarks`; None if one is missing."""
    cells = [cell(run, b, budget) for b in benchmarks]
    if not cells or any(c is None for c in cells):
        return None
    return (sum(c["accuracy"] for c in cells) / len(cells), sum(c["mean_tokens"] for c in cells) / len(cells))


def elr(length_x: float, length_grpo: float, length_sft: float) -> float | None:
    """Excess length reduction (GFPO): (L_GRPO - L_X) / (L_GRPO - L_SFT); None when GRPO did not lengthen."""
    if length_grpo == length_sft:
        return None
    return (length_grpo - length_x) / (length_grpo - length_sft)


def _fmt_acc(acc: float, digits: int = 1) -> str:
    return f"{100 * acc:.{digits}f}"


def _fmt_tokens(tokens: float) -> str:
    return f"{tokens:,.0f}"


def _header(benchmarks: list[str], first: str = "run", extra: list[str] = ()) -> list[str]:
    cols = [first] + [display_name(b) for b in benchmarks] + ["overall", *extra]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def common_k(cells: list[dict | None]) -> int | None:
    """The largest k whose pass@k every cell with a `pass_at_k` reports (older summaries without it are left out);
    None when no cell has one or that k is 1 (pass@1 is the accuracy, already in the table)."""
    sets = [{int(k) for k in c["pass_at_k"]} for c in cells if c and c.get("pass_at_k")]
    k = max(set.intersection(*sets), default=None) if sets else None
    return k if k and k > 1 else None


def _fmt_pass(c: dict | None, k: int) -> str:
    value = (c or {}).get("pass_at_k", {}).get(str(k))
    return "-" if value is None else _fmt_acc(value)


def main_table(runs: list[dict], benchmarks: list[str], budget: str = "full", stderr: bool = False) -> str:
    """Cells "accuracy / tokens" (S-GRPO Table 1); `stderr` adds ± the pass@1 standard error; then a pass@K column
    per benchmark whose runs report pass@k with k > 1."""
    passk = {b: k for b in benchmarks if (k := common_k([cell(r, b, budget) for r in runs]))}
    lines = _header(benchmarks, extra=[f"{display_name(b)} pass@{k}" for b, k in passk.items()])
    for run in runs:
        cells = []
        for b in benchmarks:
            c = cell(run, b, budget)
            if c is None:
                cells.append("-")
                continue
            se = f" ± {100 * c['accuracy_stderr']:.1f}" if stderr and c.get("accuracy_stderr") is not None else ""
            cells.append(f"{_fmt_acc(c['accuracy'])}{se} / {_fmt_tokens(c['mean_tokens'])}")
        ov = overall(run, benchmarks, budget)
        cells.append(f"{_fmt_acc(ov[0], 2)} / {_fmt_tokens(ov[1])}" if ov else "-")
        cells += [_fmt_pass(cell(run, b, budget), k) for b, k in passk.items()]
        lines.append(f"| {run['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def change(acc: float, tokens: float, base_acc: float, base_tokens: float) -> tuple[float, float]:
    """(accuracy change in points, token change in percent) against a baseline."""
    return 100 * (acc - base_acc), 100 * (tokens - base_tokens) / base_tokens


def delta_table(runs: list[dict], baseline: dict, benchmarks: list[str], budget: str = "full") -> str:
    """Cells "+x.x pts / -y.y%": accuracy change in points, token change in percent, against `baseline`."""
    lines = _header(benchmarks, f"vs {baseline['run']}")
    for run in runs:
        if run is baseline:
            continue
        cells = []
        for b in benchmarks:
            c, base = cell(run, b, budget), cell(baseline, b, budget)
            if c is None or base is None:
                cells.append("-")
                continue
            pts, pct = change(c["accuracy"], c["mean_tokens"], base["accuracy"], base["mean_tokens"])
            cells.append(f"{pts:+.1f} pts / {pct:+.1f}%")
        ov, ov_base = overall(run, benchmarks, budget), overall(baseline, benchmarks, budget)
        if ov and ov_base:
            pts, pct = change(*ov, *ov_base)
            cells.append(f"{pts:+.2f} pts / {pct:+.1f}%")
        else:
            cells.append("-")
        lines.append(f"| {run['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def elr_table(runs: list[dict], grpo: dict, sft: dict, benchmarks: list[str], budget: str = "full") -> str:
    """GFPO-style cells "accuracy / tokens / ELR %" with ELR against the GRPO and SFT runs."""
    lines = _header(benchmarks)
    for run in runs:
        cells = []
        for b in benchmarks:
            c, g, s = cell(run, b, budget), cell(grpo, b, budget), cell(sft, b, budget)
            if c is None:
                cells.append("-")
                continue
            value = elr(c["mean_tokens"], g["mean_tokens"], s["mean_tokens"]) if g and s else None
            if run is sft:
                text = "-"
            else:
                text = f"{100 * value:.1f}" if value is not None else "n/a"
            cells.append(f"{_fmt_acc(c['accuracy'])} / {_fmt_tokens(c['mean_tokens'])} / {text}")
        ov, og, os_ = (overall(r, benchmarks, budget) for r in (run, grpo, sft))
        if ov and og and os_:
            value = elr(ov[1], og[1], os_[1])
            text = "-" if run is sft else (f"{100 * value:.1f}" if value is not None else "n/a")
            cells.append(f"{_fmt_acc(ov[0], 2)} / {_fmt_tokens(ov[1])} / {text}")
        else:
            cells.append("-")
        lines.append(f"| {run['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_keys(runs: list[dict]) -> list[str]:
    """The runs' budget keys in order, without the exit fractions (the overthinking profile reports those)."""
    keys = {k for r in runs for b in r.get("benchmarks", {}).values() for k in b.get("budgets", {})
            if Budget.parse(k).kind != "exit"}
    return sorted(keys, key=Budget.order)


def budget_table(run: dict, benchmarks: list[str]) -> str:
    """One row per budget of a run: cells "accuracy / tokens" (DEER's: "+ N trial", its trial answers' tokens), then
    a pass@K column per benchmark as in `main_table`."""
    keys = budget_keys([run])
    passk = {b: k for b in benchmarks if (k := common_k([cell(run, b, key) for key in keys]))}
    lines = _header(benchmarks, f"{run['run']}: budget", [f"{display_name(b)} pass@{k}" for b, k in passk.items()])
    for key in keys:
        cells = []
        for b in benchmarks:
            c = cell(run, b, key)
            # DEER rows: its trial answers' tokens after the completion's, "+ trial" (what DEER spent to decide)
            trials = f" + {_fmt_tokens(c['mean_trial_tokens'])} trial" if c and "mean_trial_tokens" in c else ""
            cells.append("-" if c is None else f"{_fmt_acc(c['accuracy'])} / {_fmt_tokens(c['mean_tokens'])}{trials}")
        ov = overall(run, benchmarks, key)
        cells.append(f"{_fmt_acc(ov[0], 2)} / {_fmt_tokens(ov[1])}" if ov else "-")
        cells += [_fmt_pass(cell(run, b, key), k) for b, k in passk.items()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ overthinking profile
def profile(run: dict, bench: str) -> dict | None:
    return run.get("benchmarks", {}).get(bench, {}).get("exit_profile")


def overall_profile(run: dict, benchmarks: list[str]) -> dict | None:
    """Unweighted mean over `benchmarks` of each profile figure, at the fractions every benchmark has; None when
    a benchmark has no profile (the redundant share is None when one benchmark's is)."""
    profiles = [profile(run, b) for b in benchmarks]
    if not profiles or any(p is None for p in profiles):
        return None
    fractions = sorted(set.intersection(*(set(p["fractions"]) for p in profiles)))

    def mean_at(field: str) -> list[float]:
        return [sum(p[field][p["fractions"].index(f)] for p in profiles) / len(profiles) for f in fractions]

    shares = [p["redundant_share"] for p in profiles]
    return {"fractions": fractions, "accuracy": mean_at("accuracy"),
            "full_accuracy": sum(p["full_accuracy"] for p in profiles) / len(profiles),
            "earliest_correct_share": mean_at("earliest_correct_share"),
            "redundant_share": None if None in shares else sum(shares) / len(shares),
            "mean_thought_tokens": sum(p["mean_thought_tokens"] for p in profiles) / len(profiles),
            "n_samples": sum(p["n_samples"] for p in profiles),
            "unclosed_samples": sum(p["unclosed_samples"] for p in profiles)}


def _profile_rows(runs: list[dict], benchmarks: list[str]) -> list[tuple[str, str, dict]]:
    rows = []
    for run in runs:
        for b in benchmarks:
            if profile(run, b):
                rows.append((run["run"], display_name(b), profile(run, b)))
        ov = overall_profile(run, benchmarks) if len(benchmarks) > 1 else None
        if ov:
            rows.append((run["run"], "overall", ov))
    return rows


def profile_fractions(runs: list[dict], benchmarks: list[str]) -> list[float]:
    return sorted({f for run in runs for b in benchmarks for f in (profile(run, b) or {}).get("fractions", [])})


def _at(p: dict, field: str, f: float) -> str:
    return _fmt_acc(p[field][p["fractions"].index(f)]) if f in p["fractions"] else "-"


def profile_table(runs: list[dict], benchmarks: list[str]) -> str:
    """Rows (run, benchmark | overall): pass@1 (%) of the answers forced at each fraction F of the sample's own
    thought, the full answer's, the redundant share (%) of the solved samples' thought tokens, mean thought
    tokens and the samples profiled (of which never closed their thought)."""
    fractions = profile_fractions(runs, benchmarks)
    cols = ["run", "benchmark"] + [f"{f:g}" for f in fractions] + ["full", "redundant share", "thought tokens",
                                                                  "samples (unclosed)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, bench, p in _profile_rows(runs, benchmarks):
        share = "-" if p["redundant_share"] is None else _fmt_acc(p["redundant_share"])
        cells = [_at(p, "accuracy", f) for f in fractions] + [
            _fmt_acc(p["full_accuracy"]), share, f"{p['mean_thought_tokens']:,.1f}",
            f"{p['n_samples']} ({p['unclosed_samples']})"]
        lines.append(f"| {label} | {bench} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def earliest_exit_table(runs: list[dict], benchmarks: list[str]) -> str:
    """Rows (run, benchmark | overall): share (%) of samples whose earliest correct exit is at or before F."""
    fractions = profile_fractions(runs, benchmarks)
    cols = ["run", "benchmark"] + [f"<= {f:g}" for f in fractions]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, bench, p in _profile_rows(runs, benchmarks):
        lines.append(f"| {label} | {bench} | " + " | ".join(_at(p, "earliest_correct_share", f) for f in fractions)
                     + " |")
    return "\n".join(lines)


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _style_axis(ax, xlabel: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pass@1 (%)")
    ax.grid(alpha=0.3)


def _legend_below(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8,
               frameon=False)
    rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, 0.04 + 0.035 * rows, 1, 1))


def _finish(fig, axes, title: str, path: str | Path) -> Path:
    """Title, shared legend below the panels, save and close: the last steps of every plot here."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    _legend_below(fig, axes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_accuracy_vs_tokens(runs: list[dict], benchmarks: list[str], path: str | Path, budget: str = "full") -> Path:
    """One panel per benchmark (and overall): each run a point at (mean tokens, pass@1 %)."""
    panels = benchmarks + (["overall"] if len(benchmarks) > 1 else [])
    fig, axes = _grid(len(panels))
    for ax, b in zip(axes, panels, strict=True):
        for i, run in enumerate(runs):
            if b == "overall":
                ov = overall(run, benchmarks, budget)
                point = (ov[1], ov[0]) if ov else None
            else:
                c = cell(run, b, budget)
                point = (c["mean_tokens"], c["accuracy"]) if c else None
            if point is None:
                continue
            ax.scatter(point[0], 100 * point[1], color=f"C{i}", s=45, label=run["run"], zorder=3)
            ax.annotate(run["run"], (point[0], 100 * point[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(display_name(b) if b != "overall" else "overall (mean)")
        _style_axis(ax, "mean tokens per sample")
        ax.margins(0.15)
    return _finish(fig, axes, "Accuracy vs response length", path)


def plot_budget_curves(runs: list[dict], benchmarks: list[str], path: str | Path) -> Path:
    """One panel per benchmark: pass@1 against the budget, a line per (run, budget kind); the unbudgeted
    run is a dashed horizontal line."""
    fig, axes = _grid(len(benchmarks))
    styles = {"thinking": ("o-", "thinking budget + forced exit"), "max_tokens": ("s--", "max-token budget")}
    for ax, b in zip(axes, benchmarks, strict=True):
        for i, run in enumerate(runs):
            budgets = run.get("benchmarks", {}).get(b, {}).get("budgets", {})
            for kind, (style, name) in styles.items():
                pts = sorted((Budget.parse(k).value, v["accuracy"]) for k, v in budgets.items()
                             if Budget.parse(k).kind == kind)
                if pts:
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, color=f"C{i}",
                            label=f"{run['run']}: {name}")
            if "full" in budgets:
                full = budgets["full"]
                ax.axhline(100 * full["accuracy"], color=f"C{i}", ls=":", alpha=0.7,
                           label=f"{run['run']}: no budget ({full['mean_tokens']:,.0f} tok)")
        ax.set_title(display_name(b))
        _style_axis(ax, "budget (tokens)")
    return _finish(fig, axes, "Accuracy vs budget", path)


def deer_points(run: dict, bench: str) -> list[tuple[str, float, float]]:
    """(label, tokens including DEER's trial tokens, pass@1) of a run's full budget and each DEER threshold."""
    budgets = run.get("benchmarks", {}).get(bench, {}).get("budgets", {})
    pts = [("full", budgets["full"]["mean_tokens"], budgets["full"]["accuracy"])] if "full" in budgets else []
    for key in sorted((k for k in budgets if Budget.parse(k).kind == "deer"), key=Budget.order):
        c = budgets[key]
        pts.append((key.split("=", 1)[1], c["mean_tokens"] + c.get("mean_trial_tokens", 0.0), c["accuracy"]))
    return pts


def plot_deer_tradeoff(runs: list[dict], benchmarks: list[str], path: str | Path) -> Path:
    """One panel per benchmark: pass@1 against tokens (DEER's trial tokens included) for the full thought and each
    DEER threshold, a line per run, each point labelled with its threshold."""
    fig, axes = _grid(len(benchmarks))
    for ax, b in zip(axes, benchmarks, strict=True):
        for i, run in enumerate(runs):
            pts = sorted(deer_points(run, b), key=lambda p: p[1])  # a line from the shortest to the longest
            if not pts:
                continue
            ax.plot([p[1] for p in pts], [100 * p[2] for p in pts], "o-", color=f"C{i}", label=run["run"])
            for label, x, y in pts:
                ax.annotate(label, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(display_name(b))
        _style_axis(ax, "mean tokens per sample (+ DEER's trial tokens)")
    return _finish(fig, axes, "DEER: accuracy vs tokens over thresholds", path)


def plot_exit_profile(runs: list[dict], benchmarks: list[str], path: str | Path) -> Path:
    """One panel per benchmark (and overall): pass@1 of the forced answers against the fraction of the sample's
    own thought kept, a curve per run; the run's full answer is the hollow marker at 1 (dotted to the curve)."""
    panels = benchmarks + (["overall"] if len(benchmarks) > 1 else [])
    fig, axes = _grid(len(panels))
    for ax, b in zip(axes, panels, strict=True):
        for i, run in enumerate(runs):
            p = overall_profile(run, benchmarks) if b == "overall" else profile(run, b)
            if not p or not p["fractions"]:
                continue
            xs, ys = p["fractions"], [100 * a for a in p["accuracy"]]
            ax.plot(xs, ys, "o-", color=f"C{i}", label=run["run"])
            full = 100 * p["full_accuracy"]
            ax.plot([xs[-1], 1.0], [ys[-1], full], ":", color=f"C{i}")
            ax.plot([1.0], [full], "o", mfc="none", color=f"C{i}", ms=9)
        ax.set_title(display_name(b) if b != "overall" else "overall (mean)")
        _style_axis(ax, "fraction of the sample's own thought")
        ax.set_xlim(0, 1.05)
    return _finish(fig, axes, "Forced exits (hollow: full answer)", path)
