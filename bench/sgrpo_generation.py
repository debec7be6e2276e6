"""Generation cost of one S-GRPO serial group vs one full rollout vs a GRPO group of the same size.

    python bench/sgrpo_generation.py                        # tiny random Qwen3, transformers + vLLM (if installed)
    python bench/sgrpo_generation.py --backends hf --hidden_size 1024 --layers 8 --device cuda   # on a GPU

What is timed (wall clock, median of --repeats after a warm-up), with lengths forced so that runs compare:
- full:   one full rollout of L = --full_tokens tokens (EOS ignored);
- serial: the S-GRPO serial group = that full rollout, then m = --num_exits exit prompts
          (prompt + O_0[:P_i] + exit text, P_i drawn as in training) each answered with A = --answer_tokens tokens,
          in one batched call (as SGRPOTrainer does);
- grpo:   G = m + 1 parallel samples of L tokens (one batched call), the GRPO group of the same size.
vLLM runs twice, with prefix caching on (vLLM's default, what TRL's colocate engine gets) and off, each in a fresh
process; with caching on it also reports how many exit-prompt tokens were served from the cache.
The model is a random Qwen3 built locally (no download); sizes are flags. Times are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainers.serial_group import DEFAULT_EXIT_TEXT, exit_prompt_ids, sample_exit_positions  # noqa: E402


def hardware(device: str) -> str:
    import torch

    from trainers.vllm_cpu import cpu_name

    cpu = cpu_name()
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} threads={torch.get_num_threads()}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text


def build_model(args) -> Path:
    from synthetic.tiny_model import build_model as build
    from synthetic.tiny_model import build_tokenizer

    out = Path(args.model_dir or tempfile.mkdtemp(prefix="sgrpo-bench-"))
    if not (out / "config.json").exists():
        tok = build_tokenizer(seed=0)
        model = build(tok, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.hidden_size // 64,
                      head_dim=64, intermediate_size=args.hidden_size * 3,
                      max_position_embeddings=max(2048, args.full_tokens * 2), seed=0)
        tok.save_pretrained(out)
        model.save_pretrained(out)
    return out


def prompt_ids(tok) -> list[int]:
    msgs = [{"role": "user", "content": "What is 12 + 34 + 56?\nPlease reason step by step, and put your final "
                                        "answer within \\boxed{}."}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def exit_prompts(tok, prompt, full, m, seed):
    import torch

    exit_ids = tok.encode(DEFAULT_EXIT_TEXT, add_special_tokens=False)
    ps = sample_exit_positions(len(full), m, torch.Generator().manual_seed(seed))  # the whole rollout is thinking
    return [exit_prompt_ids(prompt, full, p, exit_ids) for p in ps], ps


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------ transformers
def run_hf(args, model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    prompt = prompt_ids(tok)
    L, A, m = args.full_tokens, args.answer_tokens, args.num_exits
    common = dict(do_sample=True, temperature=1.0, pad_token_id=tok.pad_token_id, eos_token_id=None)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def gen(prompts, n_new, n_ret=1):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=args.device)
        att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=args.device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=n_new, min_new_tokens=n_new,
                                 num_return_sequences=n_ret, **common)
        sync()
        return out[:, width:].tolist()

    res = {"full": [], "serial": [], "exits": [], "grpo": []}
    for rep in range(args.repeats + 1):  # repetition 0 warms up
        t_full, full = timed(lambda: gen([prompt], L)[0])
        prompts, _ = exit_prompts(tok, prompt, full, m, rep)
        t_exit, _ = timed(lambda ps=prompts: gen(ps, A))
        t_grpo, _ = timed(lambda: gen([prompt], L, m + 1))
        if rep:
            res["full"].append(t_full)
            res["exits"].append(t_exit)
            res["serial"].append(t_full + t_exit)
            res["grpo"].append(t_grpo)
    return {k: statistics.median(v) for k, v in res.items()}


# ------------------------------------------------------------------------------------------------- vLLM
def run_vllm(args, model_dir: Path, prefix_caching: bool) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = LLM(model=str(model_dir), enable_prefix_caching=prefix_caching, max_model_len=args.full_tokens + args.answer_tokens + 128,
              gpu_memory_utilization=0.5, seed=0, enforce_eager=True, max_num_seqs=max(16, args.num_exits + 1))
    prompt = prompt_ids(tok)
    L, A, m = args.full_tokens, args.answer_tokens, args.num_exits
    sp_full = SamplingParams(temperature=1.0, max_tokens=L, ignore_eos=True)
    sp_ans = SamplingParams(temperature=1.0, max_tokens=A, ignore_eos=True)
    sp_grpo = SamplingParams(temperature=1.0, max_tokens=L, ignore_eos=True, n=m + 1)
    res = {"full": [], "serial": [], "exits": [], "grpo": [], "cached_frac": []}
    for rep in range(args.repeats + 1):
        llm.reset_prefix_cache()
        t_full, out = timed(lambda: llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp_full, use_tqdm=False))
        full = list(out[0].outputs[0].token_ids)
        prompts, _ = exit_prompts(tok, prompt, full, m, rep)
        t_exit, outs = timed(lambda ps=prompts: llm.generate([TokensPrompt(prompt_token_ids=p) for p in ps], sp_ans,
                                                  use_tqdm=False))
        cached = sum(o.num_cached_tokens or 0 for o in outs)
        llm.reset_prefix_cache()
        t_grpo, _ = timed(lambda: llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp_grpo, use_tqdm=False))
        if rep:
            res["full"].append(t_full)
            res["exits"].append(t_exit)
            res["serial"].append(t_full + t_exit)
            res["grpo"].append(t_grpo)
            res["cached_frac"].append(cached / sum(len(p) for p in prompts))
    return {k: statistics.median(v) for k, v in res.items()}


# --------------------------------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="hf,vllm", help="comma list of hf, vllm")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--num_exits", type=int, default=8)
    p.add_argument("--full_tokens", type=int, default=256)
    p.add_argument("--answer_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--model_dir", default=None, help="where the random model is built (or reused)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._worker:  # one measurement in this (fresh) process; print JSON
        model_dir = Path(args.model_dir)
        res = run_hf(args, model_dir) if args._worker == "hf" else run_vllm(args, model_dir, args._worker == "vllm-cache")
        print("RESULT " + json.dumps(res), flush=True)
        return

    model_dir = build_model(args)
    args.model_dir = str(model_dir)
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    n_params = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(model_dir / "model.safetensors")).values())
    print(f"hardware: {hardware(args.device)}")
    print(f"model: random Qwen3, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {n_params / 1e6:.2f}M params; "
          f"device {args.device}; torch threads {torch.get_num_threads()}")
    print(f"m = {args.num_exits} exits, full rollout L = {args.full_tokens} tokens, answers A = {args.answer_tokens} "
          f"tokens, G = {args.num_exits + 1}; median of {args.repeats} repeats after a warm-up")
    m, L, A = args.num_exits, args.full_tokens, args.answer_tokens
    print(f"tokens generated: full {L}, serial group {L + m * A}, GRPO group {(m + 1) * L}")
    workers = []
    for b in args.backends.split(","):
        workers += ["hf"] if b == "hf" else (["vllm-cache", "vllm-nocache"] if b == "vllm" else [])
    print(f"{'back-end':<26}{'full (s)':>10}{'serial (s)':>12}{'  of which exits':>17}{'GRPO G (s)':>12}"
          f"{'serial/full':>13}{'serial/GRPO':>13}{'exit prompt cached':>20}")
    for w in workers:
        # Workers reuse the model built here: the last --model_dir on the command line wins.
        cmd = [sys.executable, __file__, "--_worker", w, *sys.argv[1:], "--model_dir", str(model_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{w:<26} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            continue
        r = json.loads(line[7:])
        name = {"hf": "transformers generate", "vllm-cache": "vLLM, prefix caching on",
                "vllm-nocache": "vLLM, prefix caching off"}[w]
        cached = f"{100 * r['cached_frac']:.0f}%" if "cached_frac" in r else "-"
        print(f"{name:<26}{r['full']:>10.3f}{r['serial']:>12.3f}{r['exits']:>17.3f}{r['grpo']:>12.3f}"
              f"{r['serial'] / r['full']:>13.2f}{r['serial'] / r['grpo']:>13.2f}{cached:>20}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    main()
