#!/usr/bin/env python
"""Evaluate a checkpoint (full model or LoRA adapter) on the papers' benchmarks or a local JSONL.

    python scripts/evaluate.py --model Qwen/Qwen3-8B --benchmarks gsm8k,math500,aime24 --backend vllm \
        --tensor_parallel_size 2 --data_parallel_size 4
    python scripts/evaluate.py --config recipes/eval/sgrpo.yaml --model outputs/qwen3-8b-sgrpo
    python scripts/evaluate.py --model M --benchmarks aime24 --thinking_budgets 4096,8192 --no_full
    python scripts/evaluate.py --model M --benchmarks gsm8k --exit_fractions 0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9
    python scripts/evaluate.py --output_dir outputs/eval/M --regrade        # grade stored samples again

Outputs under --output_dir: `<benchmark>/samples*.jsonl` (one line per sample), `<benchmark>/summary.json`
and the run's `summary.json` (read by scripts/report.py). Re-running the same command resumes: samples already
written (question id, sample index, budget) are kept and only the missing ones are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.evaluation import (  # noqa: E402
    DEFAULT_TEMPLATE,
    Protocol,
    regrade_dir,
    run_benchmark,
    write_run_summary,
    write_summary,
)
from benchmarks.generation import EXIT_TEXT, Budget  # noqa: E402
from benchmarks.registry import (  # noqa: E402
    PROTOCOL_SAMPLES,
    is_local_source,
    load_benchmark,
    read_local_rows,
    resolve_benchmark,
)
from checks.inputs import (  # noqa: E402
    RANGE_RULES,
    InputError,
    check_argparse_values,
    check_data_source,
    check_model_path,
    load_yaml_mapping,
    looks_like_path,
    quiet_argument_parser,
    run_cli,
)

# Evaluation may sample greedily; every other range rule is the training one.
EVAL_RANGE_RULES = [(r"^temperature$", lambda v: v >= 0, ">= 0 (0 = greedy)"), *RANGE_RULES]


def build_parser() -> argparse.ArgumentParser:
    p = quiet_argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="YAML file whose keys are these options (flag names without dashes); flags override it")
    a("--model", help="hub name or local dir; a dir with adapter_config.json is a LoRA adapter on its base")
    a("--base_model", help="base model of a LoRA adapter (default: base_model_name_or_path in adapter_config.json)")
    a("--tokenizer", help="tokenizer path (default: the model's, or the adapter dir's when it has one)")
    a("--eos_token", help="the token that ends a completion, replacing the tokenizer's eos (e.g. '<|im_end|>'); by "
                          "default the tokenizer's eos and the generation config's, printed at start with the chat "
                          "template's end of turn, and a warning when they disagree")
    a("--revision", help="model revision (hub branch, tag or commit), recorded in the protocol")
    a("--benchmarks", default="gsm8k",
      help="comma list of registry names (gsm8k, math500, amc23, aime24, aime25, gpqa_diamond) or local .jsonl paths")
    a("--benchmark_files", default="",
      help="name=path,... : load a registry benchmark from a local file shaped like its hub rows")
    a("--question_column", default="question", help="question column of a local JSONL benchmark")
    a("--answer_column", default="answer", help="answer column of a local JSONL benchmark")
    a("--limit", type=int, help="evaluate only the first N questions of each benchmark")
    a("--output_dir", help="default: outputs/eval/<model name>")
    a("--run_name", help="label of this run in reports (default: the output dir's name)")
    a("--protocol", default="sgrpo", choices=sorted(PROTOCOL_SAMPLES),
      help="default samples per question: sgrpo = S-GRPO's 16 AIME24/AMC23, 8 MATH-500/GPQA-D, 4 GSM8K; "
           "gfpo = GFPO's 32 AIME, 5 GPQA")
    a("--num_samples", type=int, help="samples per question for every benchmark (overrides --protocol)")
    a("--samples", default="", help="per-benchmark samples, name=n,... (overrides --num_samples for those)")
    a("--temperature", type=float, default=0.6)
    a("--top_p", type=float, default=0.95)
    a("--top_k", type=int, default=None,
      help="0 = off; default: the model's own recommendation for its thinking mode (Qwen3: 20, Phi-4-reasoning: 50, "
           "others off; recommended_top_k), recorded in the protocol")
    a("--max_tokens", type=int, default=32768, help="max generated tokens (the 'full' budget)")
    a("--answer_max_tokens", type=int, default=1024,
      help="max answer tokens after `</think>` under a thinking budget (S-GRPO does not give its value)")
    a("--seed", type=int, default=0, help="run seed; each sample's seed is derived from it and its (question, index)")
    a("--choice_seed", type=int, default=0, help="seed of GPQA's option shuffle (fixed across runs)")
    a("--prompt_template", default=DEFAULT_TEMPLATE, help="`{question}` is replaced by the question")
    a("--system_prompt", default=None)
    a("--chat_template_kwargs", default="{}", help='JSON, e.g. {"enable_thinking": true}')
    a("--exit_text", default=EXIT_TEXT, help="text injected at a forced exit (S-GRPO's, verbatim)")
    a("--no_require_thinking", action="store_true",
      help="grade the whole completion when `</think>` is missing (non-thinking models)")
    a("--thinking_budgets", default="", help="comma list of B: stop thinking at B tokens, inject the exit text")
    a("--max_tokens_budgets", default="", help="comma list of N: plain generation budgets (cut at N tokens)")
    a("--no_full", action="store_true", help="skip the unbudgeted run (max_tokens) when sweeping budgets")
    a("--exit_fractions", default="",
      help="overthinking profile: comma list of F in (0, 1]; each full sample is also cut after round(F * n) of its "
           "own n thought tokens, the exit text injected and the answer forced (<= answer_max_tokens), and graded "
           "(records `exit=F`; docs/overthinking-profile.md)")
    a("--early_exit", default="none", choices=["none", "deer"],
      help="deer: DEER's training-free early exit (Yang et al., arXiv 2504.15895; benchmarks/deer.py), replayed on each "
           "full sample: a trial answer at every transition marker, exit at the first above the threshold; its trial "
           "tokens are counted (records `deer=T`)")
    a("--deer_thresholds", default="0.95", help="comma list of confidence thresholds T (DEER's --threshold, 0.95); one "
                                                "sweep shares the trials")
    a("--deer_marker", default="Wait", help="transition marker (DEER's --points 1: 'Wait'; 0: 'Alternatively')")
    a("--deer_inducer", default=None,
      help="answer inducer appended at a transition (default DEER's answer_prompt_str, a newline, **Final Answer**, a "
           "newline and \\boxed; its GPQA wording on gpqa_diamond)")
    a("--deer_exit_text", default="\n</think>\n\n", help="text that closes the thought at an exit (DEER's)")
    a("--deer_trial_tokens", type=int, default=20, help="trial answer token limit (DEER's prob_check_max_tokens)")
    a("--deer_confidence", default="mean", choices=["mean", "geometric", "min"],
      help="trial confidence from its token probabilities after the first (DEER's policy avg1 / avg2 / min)")
    a("--deer_max_trials", type=int, default=10, help="trials per sample, then the thought runs on (max_judge_steps)")
    a("--deer_think_ratio", type=float, default=0.9, help="a thought is closed at this share of max_tokens (think_ratio)")
    a("--backend", default="transformers", choices=["transformers", "vllm"])
    a("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    a("--batch_size", type=int, help="samples per generate call and per resume chunk (16 transformers, 2048 vLLM)")
    a("--tensor_parallel_size", type=int, default=1, help="vLLM tensor parallel GPUs per engine")
    a("--data_parallel_size", type=int, default=1,
      help="engines in parallel, each on tensor_parallel_size GPUs and a shard of the questions")
    a("--gpu_memory_utilization", type=float, default=0.9)
    a("--max_model_len", type=int,
      help="vLLM context (default: the longest prompt + max tokens, + the exit text and answer_max_tokens when exits "
           "are forced), capped at the model's window (max_position_embeddings); each request's max_tokens is capped at "
           "it minus the request's prompt, on both back-ends")
    a("--enforce_eager", action="store_true", help="vLLM eager mode (CPU tests)")
    a("--regrade", action="store_true", help="grade the stored samples again; no model is loaded")
    a("--overwrite", action="store_true", help="discard samples already in --output_dir")
    a("--no_progress", action="store_true")
    a("--shard_index", type=int, default=0, help=argparse.SUPPRESS)
    a("--num_shards", type=int, default=1, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    defaults = {action.dest: action.default for action in parser._actions}
    cfg_parser = quiet_argument_parser(add_help=False)
    cfg_parser.add_argument("--config")
    known, _ = cfg_parser.parse_known_args(argv)
    source, config = "", {}
    if known.config:
        source = known.config
        config = load_yaml_mapping(known.config, "--config")  # missing file, bad YAML, a key given twice
        dests = {action.dest for action in parser._actions}
        unknown = sorted(set(config) - dests)
        if unknown:
            import difflib

            close = [m for k in unknown for m in difflib.get_close_matches(k, dests, n=1)]
            hint = f" (did you mean {close}?)" if close else ""
            raise InputError(f"{known.config}: unknown keys {unknown}{hint}; valid keys are the flags of "
                             "scripts/evaluate.py")
        for key, value in config.items():
            if isinstance(value, dict) and key == "samples":
                config[key] = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                config[key] = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                config[key] = json.dumps(value)
        parser.set_defaults(**config)
    args = parser.parse_args(argv)
    for key in config:  # a YAML null where the option has a value by default
        if getattr(args, key, None) is None and defaults.get(key) is not None:
            raise InputError(f"{source}: `{key}` is empty; give a value or remove the key")
    check_argparse_values(parser, args, EVAL_RANGE_RULES, source)
    try:
        validate(args)
    except InputError:
        raise
    except ValueError as err:  # validate's checks: every ValueError there is about an input
        raise InputError(str(err)) from None
    return args


def _int_list(value: str, key: str) -> list[int]:
    try:
        values = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{key}: expected comma-separated integers, got {value!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"--{key}: budgets must be >= 1, got {values}")
    return values


def _fraction_list(value: str, key: str) -> list[float]:
    try:
        values = sorted({float(v) for v in str(value).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--{key}: expected comma-separated fractions, got {value!r}") from None
    if any(not 0 < v <= 1 for v in values):
        raise ValueError(f"--{key}: fractions must be in (0, 1], got {values}")
    return values


def _pairs(value: str, key: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in str(value).split(","))):
        if "=" not in item:
            raise ValueError(f"--{key}: expected name=value items, got {item!r}")
        name, val = item.split("=", 1)
        out[name.strip()] = val.strip()
    return out


def validate(args: argparse.Namespace) -> None:
    """Fail before any model loads, naming the option and the fix."""
    if not args.regrade and not args.model:
        raise ValueError("--model is required (a hub name, a local checkpoint or a LoRA adapter dir)")
    if args.regrade and not args.output_dir:
        raise ValueError("--regrade needs --output_dir (the directory of the run to grade again)")
    if args.regrade and not any((p / "protocol.json").exists() for p in Path(args.output_dir).glob("*")):
        raise ValueError(f"--regrade --output_dir {args.output_dir}: holds no benchmark folder with protocol.json; "
                         "give the output folder of an earlier run")
    # Types and ranges (temperature, top_p, token limits, parallel sizes, counts) were checked by
    # check_argparse_values with EVAL_RANGE_RULES before this.
    if "{question}" not in args.prompt_template:
        raise ValueError("--prompt_template must contain `{question}`")
    try:
        args.chat_template_kwargs = json.loads(args.chat_template_kwargs) if isinstance(
            args.chat_template_kwargs, str) else dict(args.chat_template_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--chat_template_kwargs must be a JSON object: {err}") from None
    args.budgets = ([] if args.no_full else [Budget("full")]) + \
        [Budget("thinking", b) for b in _int_list(args.thinking_budgets, "thinking_budgets")] + \
        [Budget("max_tokens", b) for b in _int_list(args.max_tokens_budgets, "max_tokens_budgets")]
    if not args.budgets:
        raise ValueError("--no_full needs --thinking_budgets or --max_tokens_budgets (nothing to evaluate)")
    args.exit_fraction_list = _fraction_list(args.exit_fractions, "exit_fractions")
    if args.exit_fraction_list and args.no_full:
        raise ValueError("--exit_fractions cut each full sample's own thought: drop --no_full")
    args.deer_threshold_list = _fraction_list(args.deer_thresholds, "deer_thresholds") \
        if args.early_exit == "deer" else []
    if args.deer_threshold_list and args.no_full:
        raise ValueError("--early_exit deer replays each full sample's own thought: drop --no_full")
    for text in ("deer_exit_text", "deer_inducer"):  # on a command line, a backslash-n means a newline
        if isinstance(getattr(args, text), str):
            setattr(args, text, getattr(args, text).replace("\\n", "\n"))
    args.benchmark_list = [b.strip() for b in str(args.benchmarks).split(",") if b.strip()]
    if not args.benchmark_list and not args.regrade:
        raise ValueError("--benchmarks is empty: name at least one (gsm8k, math500, ...) or a local .jsonl file")
    for name in args.benchmark_list:
        if not is_local_source(name) and not looks_like_path(name):
            resolve_benchmark(name)  # raises with the list of valid names
    args.benchmark_file_map = {resolve_benchmark(k).name: v for k, v in _pairs(args.benchmark_files, "benchmark_files").items()}
    args.sample_map = _sample_counts(args.samples)
    if args.chat_template_kwargs.get("enable_thinking") is False and not args.no_require_thinking:
        # Qwen3's non-thinking mode writes no thought: grade the whole completion instead of scoring everything 0
        args.no_require_thinking = True
        print("evaluate.py: enable_thinking is false: answers are graded without a thought (--no_require_thinking)",
              file=sys.stderr, flush=True)
    if args.regrade and args.top_k is None:
        args.top_k = 0  # nothing is sampled: the stored protocol.json says what was
    if not args.regrade:
        check_inputs(args)
        if args.top_k is None:
            args.top_k, why = recommended_top_k(args.base_model or args.model, args.revision)
            print(f"evaluate.py: top_k {args.top_k} ({why}; --top_k sets another)", file=sys.stderr, flush=True)
    if args.backend == "transformers" and args.tensor_parallel_size > 1:
        raise ValueError("--tensor_parallel_size > 1 needs --backend vllm")
    if args.output_dir is None:
        args.output_dir = str(Path("outputs/eval") / Path(str(args.model).rstrip("/")).name)
    args.run_name = args.run_name or Path(args.output_dir).name
    if args.batch_size is None:
        args.batch_size = 2048 if args.backend == "vllm" else 16


# The sampling each model's card recommends for its thinking mode; only top_k differs from the protocols' own values.
# A family is known by its name or, for a fine-tuned checkpoint in a local folder, by its config: the model type and
# the family's vocabulary size (the project's tiny and synthetic Qwen3s have their own small vocabularies).
MODEL_TOP_K = (("qwen3", "qwen3", 151_936, 20, "Qwen3's card: temperature 0.6, top_p 0.95, top_k 20 in thinking mode"),
               ("phi-4-reasoning", "phi3", 100_352, 50, "Phi-4-reasoning's card: temperature 0.8, top_k 50, top_p 0.95"))


def recommended_top_k(model: str, revision: str | None = None) -> tuple[int, str]:
    """(top_k, why) for a model: by its name, or its config's model type and vocabulary size (a fine-tuned Qwen3
    checkpoint is still Qwen3); 0 (off) for the rest, e.g. R1-Distill, whose card gives temperature and top_p only."""
    from planning.architecture import find_config

    base = model
    adapter = Path(str(model)).expanduser() / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or model
    found = find_config(str(base), revision)
    config = found[0] if found else {}
    hub_name = "" if Path(str(base)).expanduser().exists() else str(base).lower()  # a local folder: its config
    for name, model_type, vocab, k, why in MODEL_TOP_K:
        if name in hub_name or (config.get("model_type") == model_type and config.get("vocab_size") == vocab):
            return k, why
    return 0, f"no top_k recommendation known for {base}: off"


def _sample_counts(value) -> dict[str, int]:
    counts = {}
    for name, count in _pairs(value, "samples").items():
        try:
            n = int(count)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--samples {name}={count}: the count must be an integer >= 1")
        counts[bench_key(name)] = n
    return counts


def check_inputs(args: argparse.Namespace) -> None:
    """Models and data without loading them: local folders and files exist and parse, hub ids have their shape."""
    args.model_source = check_model_path(args.model, "--model", revision=args.revision, allow_adapter=True)
    if args.base_model:
        check_model_path(args.base_model, "--base_model", revision=args.revision)
    if args.tokenizer and looks_like_path(args.tokenizer) and not Path(args.tokenizer).expanduser().is_dir():
        raise InputError(f"--tokenizer {args.tokenizer}: no such folder; give the folder that holds tokenizer.json")
    for name in args.benchmark_list:
        if is_local_source(name) or looks_like_path(name):
            check_data_source(name, "--benchmarks", {"--question_column": args.question_column,
                                                    "--answer_column": args.answer_column})
    for name, path in args.benchmark_file_map.items():
        spec = resolve_benchmark(name)
        columns = ["Question", "Correct Answer"] if spec.row_fn else [spec.question_column, spec.answer_column]
        columns += [spec.id_column] if spec.id_column else []
        check_data_source(path, f"--benchmark_files {name}=", {})
        missing = [c for c in columns if c not in read_local_rows(path, max_rows=1)[0]]
        if missing:
            raise InputError(f"--benchmark_files {name}={path}: no column {missing}; the file must be shaped like "
                             f"the hub rows of {spec.hub_name} (columns {columns})")


def bench_key(name: str) -> str:
    return Path(name).stem if is_local_source(name) else resolve_benchmark(name).name


def samples_for(args, name: str) -> int:
    key = bench_key(name)
    if key in args.sample_map:
        return args.sample_map[key]
    if args.num_samples is not None:
        return args.num_samples
    return PROTOCOL_SAMPLES[args.protocol].get(key, 1)


def source_of(args, name: str) -> dict:
    if is_local_source(name):
        return {"path": name, "question_column": args.question_column, "answer_column": args.answer_column}
    spec = resolve_benchmark(name)
    if spec.name in args.benchmark_file_map:
        return {"path": args.benchmark_file_map[spec.name], "shaped_like": spec.hub_name}
    return {"hub_name": spec.hub_name, "config": spec.config, "split": spec.split}


def resolve_model(args) -> tuple[str, str | None, str]:
    """(model path to load, adapter dir or None, tokenizer path)."""
    adapter_cfg = Path(args.model) / "adapter_config.json"
    if adapter_cfg.exists():
        base = args.base_model or json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        has_tok = any((Path(args.model) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        return base, args.model, args.tokenizer or (args.model if has_tok else base)
    return args.model, None, args.tokenizer or args.model


def load_transformers(model_path: str, adapter: str | None, revision: str | None, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=torch_dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: plain generate speed
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def merged_adapter_dir(args, model_path: str, adapter: str, tokenizer) -> str:
    """vLLM loads one directory: merge the LoRA adapter into its base once, under the output dir."""
    out = Path(args.output_dir) / "_merged_model"
    if not (out / "config.json").exists():
        model = load_transformers(model_path, adapter, args.revision, args.dtype).to("cpu")
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return str(out)


def spawn_shards(args, argv: list[str]) -> None:
    """Data parallel: one child process per shard of the questions, each on its own GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(args.data_parallel_size * args.tensor_parallel_size)]
    procs = []
    for i in range(args.data_parallel_size):
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * args.tensor_parallel_size : (i + 1) * args.tensor_parallel_size])
        cmd = [sys.executable, __file__, *argv, "--data_parallel_size", "1", "--shard_index", str(i),
               "--num_shards", str(args.data_parallel_size)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"data-parallel shards failed with exit codes {codes}; rerun to resume")


def protocol_of(args, model_path: str, adapter: str | None) -> Protocol:
    return Protocol(model=args.model, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_tokens=args.max_tokens, answer_max_tokens=args.answer_max_tokens, seed=args.seed,
                    prompt_template=args.prompt_template, system_prompt=args.system_prompt,
                    chat_template_kwargs=args.chat_template_kwargs, exit_text=args.exit_text,
                    require_thinking=not args.no_require_thinking, choice_seed=args.choice_seed,
                    revision=args.revision, adapter_base=model_path if adapter else None, backend=args.backend,
                    dtype=args.dtype, deer=asdict(deer_settings(args, None)) if args.deer_threshold_list else {})


def deer_settings(args, benchmark: str | None):
    """DEER's knobs from the flags; the inducer defaults to the paper's, and to its GPQA wording on gpqa_diamond."""
    from benchmarks.deer import GPQA_INDUCER, PAPER_INDUCER, DeerSettings

    inducer = args.deer_inducer or (GPQA_INDUCER if benchmark == "gpqa_diamond" else PAPER_INDUCER)
    return DeerSettings(marker=args.deer_marker, inducer=inducer, exit_text=args.deer_exit_text,
                        trial_tokens=args.deer_trial_tokens, confidence=args.deer_confidence,
                        max_trials=args.deer_max_trials, think_ratio=args.deer_think_ratio)


def _pass_at_n(s: dict) -> str:
    """pass@k at the largest k (= the samples per question) as "87.5 (n=8)"; "-" with one sample (= pass@1)."""
    k = max((int(k) for k in s.get("pass_at_k") or {}), default=1)
    return f"{100 * s['pass_at_k'][str(k)]:.1f} (n={k})" if k > 1 else "-"


def print_summaries(summaries: dict[str, dict]) -> None:
    with_n = any(_pass_at_n(s) != "-" for summary in summaries.values() for s in summary["budgets"].values())
    print(f"{'benchmark':<16}{'budget':<18}{'pass@1 (%)':>16}" + (f"{'pass@n (%)':>14}" if with_n else "")
          + f"{'tokens':>10}{'think':>9}{'answer':>8}{'truncated':>11}{'forced':>8}{'samples/s':>11}")
    for bench, summary in summaries.items():
        tput = (summary.get("throughput") or {}).get("samples_per_second")
        for key, s in summary["budgets"].items():
            se = f" ± {100 * s['accuracy_stderr']:.1f}" if s["accuracy_stderr"] is not None else ""
            print(f"{bench:<16}{key:<18}{100 * s['accuracy']:>10.1f}{se:<6}"
                  + (f"{_pass_at_n(s):>14}" if with_n else "") + f"{s['mean_tokens']:>10.1f}"
                  f"{s['mean_thinking_tokens']:>9.1f}{s['mean_answer_tokens']:>8.1f}"
                  f"{s['truncated']:>6}/{s['n_samples']:<4}{s['forced_exits']:>8}"
                  f"{(f'{tput:.2f}' if tput else '-'):>11}"
                  + (f"   DEER: {s['mean_trial_tokens']:.1f} trial tokens, {s['mean_trials']:.1f} trials, exits "
                     f"{100 * s['exit_rate']:.0f}%" if "mean_trial_tokens" in s else ""))
    if any("exit_profile" in summary for summary in summaries.values()):
        from benchmarks.report import earliest_exit_table, profile_table

        run = {"run": "this run", "benchmarks": summaries}
        print("\noverthinking profile: pass@1 (%) of the answers forced at each fraction of the own thought\n"
              + profile_table([run], list(summaries)) + "\nearliest correct exit at or before each fraction (%)\n"
              + earliest_exit_table([run], list(summaries)))


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out_dir = Path(args.output_dir)

    if args.regrade:
        summaries = {}
        for bench_dir in sorted(p for p in out_dir.iterdir() if (p / "protocol.json").exists()):
            protocol = json.loads((bench_dir / "protocol.json").read_text())
            regrade_dir(bench_dir, protocol.get("require_thinking", True))
            old = json.loads((bench_dir / "summary.json").read_text()) if (bench_dir / "summary.json").exists() else {}
            n = old.get("protocol", {}).get("samples_per_question")
            summaries[bench_dir.name] = write_summary(bench_dir, bench_dir.name, protocol, n, old.get("source", {}))
        print_summaries(summaries)
        return write_run_summary(out_dir, args.run_name, summaries)

    # A hub id that cannot be fetched (HF_HUB_OFFLINE=1 and not cached): say so before anything loads.
    check_model_path(args.model, "--model", revision=args.revision, allow_adapter=True, require_available=True)
    if args.overwrite and out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model_path, adapter, tokenizer_path = resolve_model(args)
    protocol = protocol_of(args, model_path, adapter)
    gen_stats: dict[str, dict] = {}
    if args.data_parallel_size > 1 and args.num_shards == 1:
        spawn_shards(args, argv)
    else:
        gen_stats = generate(args, out_dir, model_path, adapter, tokenizer_path, protocol)
        if args.num_shards > 1:
            return {}  # the parent process writes the summaries

    summaries = {}
    for name in args.benchmark_list:
        key = bench_key(name)
        tput = gen_stats.get(key)
        summaries[key] = write_summary(out_dir / key, key, asdict(protocol), samples_for(args, name),
                                       source_of(args, name), tput if tput and tput["samples_generated"] else None)
    print_summaries(summaries)
    return write_run_summary(out_dir, args.run_name, summaries)


def load_questions_or_explain(args, name: str):
    """A benchmark's questions; a hub dataset that cannot be loaded (gated GPQA without accepted terms or a token,
    offline, missing) is one InputError saying how to get it or give a local copy."""
    key = bench_key(name)
    try:
        return load_benchmark(name, path=args.benchmark_file_map.get(key), limit=args.limit,
                              choice_seed=args.choice_seed, question_column=args.question_column,
                              answer_column=args.answer_column)
    except ValueError:
        raise
    except Exception as err:  # datasets' ConnectionError, gated-repo and not-found errors
        if is_local_source(name) or key in args.benchmark_file_map:
            raise
        spec = resolve_benchmark(name)
        gated = " (a gated dataset: accept its terms on its hub page, then `huggingface-cli login`)" if \
            spec.name == "gpqa_diamond" else ""
        raise InputError(f"--benchmarks {name}: {spec.hub_name} could not be loaded{gated}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}; or give a local copy with --benchmark_files "
                         f"{spec.name}=<file>. Nothing was generated.") from None


def context_needed(args, tokenizer, questions, protocol: Protocol) -> tuple[int, int]:
    """(the longest prompt + the longest generation, the longest prompt): the generation is max_tokens (or the largest
    budget), and the exit text and answer_max_tokens when a thinking budget or an exit fraction forces an answer after
    the thought."""
    from benchmarks.evaluation import build_prompt

    longest = max((len(build_prompt(tokenizer, q.question, protocol.prompt_template, protocol.system_prompt,
                                    protocol.chat_template_kwargs)[1]) for q in questions), default=0)
    generated = max([args.max_tokens] + [b.value for b in args.budgets if b.value])
    if args.exit_fraction_list or args.deer_threshold_list or any(b.kind == "thinking" for b in args.budgets):
        exit_texts = [protocol.exit_text] + ([args.deer_exit_text] if args.deer_threshold_list else [])
        generated += max(len(tokenizer.encode(t, add_special_tokens=False)) for t in exit_texts) + args.answer_max_tokens
    return longest + generated, longest


_HUGE = 10**8  # transformers' model_max_length when a tokenizer sets none (int(1e30))
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_window(model_path: str, revision: str | None, tokenizer=None) -> tuple[int | None, str]:
    """The model's context window and where it was read: `max_position_embeddings` (or another positions key) of its
    config.json, else the tokenizer's `model_max_length`; (None, "") when neither says."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, revision=revision)
        config = getattr(config, "get_text_config", lambda: config)()
    except (OSError, ValueError):
        config = None
    for key in WINDOW_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value, f"{key} in its config.json"
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _HUGE:
        return limit, "the tokenizer's model_max_length"
    return None, ""


def fit_window(args, needed: int, longest_prompt: int, window: int | None, source: str) -> tuple[int, str | None]:
    """(max_model_len, message): the context the run asks for (`--max_model_len`, or the longest prompt + the longest
    generation), capped at the model's window; the message, one line, says so when the run asks for more. Each
    request's max_tokens is then capped at max_model_len minus its own prompt (benchmarks.generation.request_limits)."""
    asked = args.max_model_len or needed
    if not window or asked <= window:
        return asked, None
    what = f"--max_model_len {asked}" if args.max_model_len else \
        f"the longest prompt ({longest_prompt} tokens) + {needed - longest_prompt} generated tokens = {needed}"
    room = window - needed + args.max_tokens
    hint = f"; --max_tokens {room} fits every prompt" if 0 < room < args.max_tokens else ""
    return window, (f"evaluate.py: {what} exceeds {args.model}'s window of {window} positions ({source}): "
                    f"max_model_len is {window} and each request's max_tokens is capped at {window} minus its prompt, "
                    f"so long samples end there as truncated{hint}")


def generate(args, out_dir: Path, model_path: str, adapter: str | None, tokenizer_path: str,
             protocol: Protocol) -> dict[str, dict]:
    """Load the back-end once, then generate and grade every benchmark's missing samples."""
    from transformers import AutoTokenizer, GenerationConfig

    from checks.tokenizer import check_think_tags, completion_end_tokens

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=None if adapter else args.revision)
    try:  # the evaluator decodes with skip_special_tokens=True too: a special `</think>` would hide every answer
        check_think_tags(tokenizer)
    except ValueError as err:
        raise InputError(f"--tokenizer {tokenizer_path}: {err}") from None
    try:
        generation_config = GenerationConfig.from_pretrained(model_path, revision=args.revision)
    except (OSError, ValueError):
        generation_config = None
    try:
        end = completion_end_tokens(tokenizer, generation_config, [args.eos_token] if args.eos_token else None)
    except ValueError as err:
        raise InputError(f"--eos_token: {err}") from None
    eos = end["chosen_ids"]
    print(f"evaluate.py: a completion ends at {end['chosen']} (tokenizer eos {end['tokenizer_eos']}, generation "
          f"config eos {end['generation_config_eos']}, chat template end of turn {end['template_end_of_turn']})",
          file=sys.stderr, flush=True)
    if end["warning"]:
        print(f"evaluate.py: warning: {end['warning']}", file=sys.stderr, flush=True)
    # every benchmark is loaded before the model: a gated or missing dataset (GPQA) fails now, not after the others ran
    questions = {name: load_questions_or_explain(args, name) for name in args.benchmark_list}
    needed, longest = context_needed(args, tokenizer, [q for qs in questions.values() for q in qs], protocol)
    window, source = model_window(model_path, args.revision, tokenizer)
    args.max_model_len, message = fit_window(args, needed, longest, window, source)
    if message:
        print(message, file=sys.stderr, flush=True)
    if args.backend == "vllm":
        from benchmarks.generation import VLLMBackend

        path = merged_adapter_dir(args, model_path, adapter, tokenizer) if adapter else model_path
        backend = VLLMBackend(path, tokenizer=path if adapter else tokenizer_path, revision=args.revision,
                              tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                              max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                              enforce_eager=args.enforce_eager, seed=args.seed, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k)
    else:
        from benchmarks.generation import TransformersBackend

        model = load_transformers(model_path, adapter, args.revision, args.dtype)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        backend = TransformersBackend(model, pad, args.temperature, args.top_p, args.top_k, args.batch_size,
                                      window=args.max_model_len)
    gen_stats = {}
    for name in args.benchmark_list:
        key = bench_key(name)
        stats = run_benchmark(backend, tokenizer, questions[name], key, args.budgets, samples_for(args, name), protocol,
                              out_dir / key, batch_size=args.batch_size, shard_index=args.shard_index,
                              num_shards=args.num_shards, progress=not args.no_progress, eos_ids=eos,
                              exit_fractions=args.exit_fraction_list, deer_thresholds=args.deer_threshold_list,
                              deer=deer_settings(args, key))
        gen_stats[key] = {"samples_generated": stats.generated, "generation_seconds": round(stats.seconds, 3),
                          "samples_per_second": stats.samples_per_second, "backend": args.backend,
                          "batch_size": args.batch_size, "hardware": hardware()}
        if stats.exits_generated:  # the profile's cost, inside the figures above
            gen_stats[key].update({"exits_generated": stats.exits_generated,
                                   "exit_seconds": round(stats.exit_seconds, 3),
                                   "exit_prompt_tokens": stats.exit_prompt_tokens,
                                   "exit_cached_prompt_tokens": stats.exit_cached_tokens})
    if hasattr(backend, "close"):
        backend.close()
    return gen_stats


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    run_cli(main, "evaluate.py")
