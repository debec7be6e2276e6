"""SFT of a tiny Qwen3 from scratch on the synthetic task's traces: the base model of the synthetic benchmark.

A plain torch loop (one process, CPU or one GPU): every step draws fresh traces from the training stream (never a
held-out question), trains on the completion tokens only, and leaves the S-GRPO exit text out of the loss: the
model must learn to *answer* after that text, which S-GRPO appends itself, but not to *write* it (a real reasoning
model never emits it on its own, and a base that did would cut its own answers short).

The result is a function of `BaseConfig` alone (seeded data, init and order), saved under a directory named by the
config's hash; `synthetic/base/` ships one such checkpoint, trained on CPU by `scripts/build_base_model.py`, with its
command, timing, hardware and measured held-out accuracy in `meta.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synthetic.task import (
    EXIT_TEXT,
    PROMPT_TEMPLATE,
    TaskConfig,
    TrainSampler,
    heldout_numbers,
    prompt_text,
    question_text,
    tokenizer_corpus,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = ROOT / "synthetic" / "base"
SHIPPED_V4_DIR = ROOT / "synthetic" / "base_v4"  # task v4 (TaskConfig.v4()): `scripts/demo.py --task_version 4`
CACHE_ROOT = ROOT / "outputs" / "synthetic-base"
FORMAT_VERSION = 4  # bump when the trace text or the training loop changes meaning (2: marked re-check lines,
# 3: "Total:" lines, token-level exit cuts, bare \boxed answers, 4: task v4, see synthetic/task.py); a base of
# task v3 keeps format 3 so that its hash, and the shipped synthetic/base, still match
BUCKET_POOL = 8


@dataclass
class BaseConfig:
    """Everything the base checkpoint depends on. `size` presets: `cpu` (shipped) and `full` (for a GPU)."""

    seed: int = 0
    data_seed: int = 0  # seeds the held-out split and the training stream
    n_heldout: int = 200
    task: TaskConfig = field(default_factory=TaskConfig)
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 64  # vLLM's CPU attention needs 32/64/80/96/...
    intermediate_size: int = 256
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0

    def __post_init__(self):
        if isinstance(self.task, dict):  # from a meta.json (a task without `version` is version 3)
            self.task = TaskConfig(**self.task)
        for name in ("steps", "batch_size", "hidden_size", "num_layers", "num_heads", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BaseConfig: `{name}` must be > 0, got {getattr(self, name)}.")
        if self.head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise ValueError(f"BaseConfig: `head_dim` {self.head_dim} is not supported by vLLM's CPU attention; use 64.")

    def to_dict(self) -> dict:
        version = FORMAT_VERSION if self.task.version >= 4 else 3
        return {"format_version": version, **asdict(self), "task": self.task.to_dict()}

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


PRESETS = {
    "cpu": {},
    # DESIGN.md's H100 starting point: 3.4M parameters, 2,500 steps of 128 traces.
    "full": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768, steps=2500, batch_size=128,
                 lr=1e-3),
}


def preset(name: str, **overrides) -> BaseConfig:
    if name not in PRESETS:
        raise ValueError(f"Unknown base-model size {name!r}: use one of {sorted(PRESETS)}.")
    return BaseConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation


def build_task_tokenizer(cfg: BaseConfig):
    from synthetic.tiny_model import build_tokenizer

    lines = tokenizer_corpus(seed=cfg.data_seed, cfg=cfg.task) + ["user", "assistant", "system"] * 200
    return build_tokenizer(vocab_size=cfg.vocab_size, seed=cfg.seed, lines=lines)


def chat_prompt(tokenizer, question: str, template: str = PROMPT_TEMPLATE) -> str:
    """The exact prompt string GRPOTrainer builds from a conversational `prompt` column."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt_text(question, template)}], add_generation_prompt=True, tokenize=False
    )


def encode_example(tokenizer, question: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask): prompt and exit text masked, completion and eos trained."""
    prompt_ids = tokenizer(chat_prompt(tokenizer, question), add_special_tokens=False).input_ids
    if EXIT_TEXT in completion:
        # Segments as S-GRPO builds them: rollout prefix, then the exit text, then the answer the model writes.
        before, after = completion.split(EXIT_TEXT, 1)
        segs = [(before, 1), (EXIT_TEXT, 0), (after, 1)]
    else:
        segs = [(completion, 1)]
    ids, mask = list(prompt_ids), [0] * len(prompt_ids)
    for text, m in segs:
        seg = tokenizer(text, add_special_tokens=False).input_ids if text else []
        ids += seg
        mask += [m] * len(seg)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return ids, mask


def collate(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.float)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(batch):  # right padding for training
        input_ids[i, : len(ids)] = torch.tensor(ids)
        loss_mask[i, : len(ids)] = torch.tensor(mask, dtype=torch.float)
        attn[i, : len(ids)] = 1
    return input_ids, attn, loss_mask


def lm_loss(model, input_ids, attn, loss_mask):
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attn).logits[:, :-1]
    targets, weights = input_ids[:, 1:], loss_mask[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return (nll * weights.reshape(-1)).sum() / weights.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------------------------
# Training


def _lr_at(step: int, cfg: BaseConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_base(cfg: BaseConfig, output_dir: str | Path | None = None, log_every: int = 50, device: str | None = None,
               eval_samples: int | None = None, eval_every: int = 0, log=print) -> dict:
    """Train the base from scratch; save model + tokenizer + meta.json to `output_dir` when given.

    Returns the metadata (losses, timing, held-out evaluation when `eval_samples` != 0).
    """
    import torch

    from synthetic.tiny_model import build_model

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = build_task_tokenizer(cfg)
    model = build_model(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size, seed=cfg.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    held = heldout_numbers(cfg.n_heldout, cfg.data_seed, cfg.task)
    sampler = TrainSampler(cfg.data_seed, held, cfg.task, stream="sft")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    use_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    order_rng = random.Random(cfg.seed)
    losses, t0 = [], time.time()
    model.train()
    pending: list = []
    for step in range(cfg.steps):
        if not pending:
            # Length buckets: draw BUCKET_POOL batches, sort by length, cut into batches, shuffle their order.
            # Cuts padding (traces run 40-190 tokens) by ~40% on CPU without changing what is learned.
            pool = sorted((encode_example(tokenizer, t.question, t.completion)
                           for t in (sampler.trace() for _ in range(cfg.batch_size * BUCKET_POOL))),
                          key=lambda ex: len(ex[0]))
            pending = [pool[i : i + cfg.batch_size] for i in range(0, len(pool), cfg.batch_size)]
            order_rng.shuffle(pending)
        batch = pending.pop()
        input_ids, attn, loss_mask = (x.to(device) for x in collate(batch, tokenizer.pad_token_id))
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = lm_loss(model, input_ids, attn, loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if log and (step % log_every == 0 or step == cfg.steps - 1):
            el = time.time() - t0
            log(f"[sft] step {step + 1}/{cfg.steps} loss {loss.item():.4f} lr {_lr_at(step, cfg):.2e} "
                f"{(step + 1) / el:.2f} steps/s", flush=True)
        if eval_every and log and (step + 1) % eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            log(f"[sft] step {step + 1} held-out[:100]: "
                f"{json.dumps(evaluate_base(model, tokenizer, held[:100], device=device))}", flush=True)
            model.train()
    train_s = time.time() - t0
    model.eval()
    meta = {
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "n_params": n_params,
        "train_seconds": round(train_s, 1),
        "steps_per_second": round(cfg.steps / train_s, 3),
        "loss_first": round(losses[0], 4),
        "loss_last_50_mean": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "device": device,
        "hardware": hardware_string(device),
        "torch": torch.__version__,
    }
    if eval_samples != 0:
        meta["heldout_eval"] = evaluate_base(model, tokenizer, held[: eval_samples or len(held)], device=device,
                                             max_new_tokens=256 if cfg.task.version >= 4 else 200)  # v4: longer
        if log:
            log(f"[sft] held-out: {json.dumps(meta['heldout_eval'])}", flush=True)
    if output_dir is not None:
        save_checkpoint(model, tokenizer, meta, output_dir)
    meta["_model"], meta["_tokenizer"] = model, tokenizer  # for in-process callers; not saved
    return meta


def hardware_string(device: str) -> str:
    import os

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def save_checkpoint(model, tokenizer, meta: dict, output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    with open(output_dir / "meta.json", "w") as f:
        json.dump({k: v for k, v in meta.items() if not k.startswith("_")}, f, indent=1)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# Held-out evaluation of the base (sampling at temperature 1: the policy GRPO starts from)

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def grade(completion: str, gold: str) -> bool:
    """The project's `accuracy` reward when importable (the same grader as real runs), else a strict local parse."""
    try:
        from rewards.accuracy import is_correct
    except ImportError:
        if "</think>" not in completion:
            return False
        found = _BOXED.findall(completion.split("</think>")[-1])
        return bool(found) and found[-1].strip() == str(gold).strip()
    return bool(is_correct(completion, str(gold)))


def grader_name() -> str:
    try:
        from rewards.accuracy import is_correct  # noqa: F401
    except ImportError:
        return "local boxed-match (rewards.accuracy not importable)"
    return "rewards.accuracy.is_correct"


def generate(model, tokenizer, questions: list[str], max_new_tokens: int = 200, temperature: float = 1.0,
             seed: int = 0, batch_size: int = 100, device: str = "cpu") -> list[tuple[str, int]]:
    """Sampled completions (text decoded like TRL: skip_special_tokens) and their token counts (eos included)."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [chat_prompt(tokenizer, q) for q in questions[i : i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=1.0, top_k=0,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row in gen[:, enc.input_ids.shape[1]:].tolist():
            n = len(row)
            if tokenizer.eos_token_id in row:
                n = row.index(tokenizer.eos_token_id) + 1
            elif tokenizer.pad_token_id in row:
                n = row.index(tokenizer.pad_token_id)
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out


def evaluate_base(model, tokenizer, numbers_list, temperature: float = 1.0, seed: int = 0, device: str = "cpu",
                  max_new_tokens: int = 200) -> dict:
    """Accuracy and mean tokens on held-out questions, split by whether the model re-checked."""
    from synthetic.task import RECHECK_TEXT

    questions = [question_text(n) for n in numbers_list]
    golds = [str(sum(n)) for n in numbers_list]
    outs = generate(model, tokenizer, questions, temperature=temperature, seed=seed, device=device,
                    max_new_tokens=max_new_tokens)
    correct = [grade(text, g) for (text, _), g in zip(outs, golds, strict=True)]
    rechecked = [RECHECK_TEXT in text for text, _ in outs]
    exited = ["Time is limited" in text for text, _ in outs]

    def acc(sel):
        sel = [c for c, s in zip(correct, sel, strict=True) if s]
        return round(sum(sel) / len(sel), 4) if sel else None

    return {
        "n": len(outs),
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "accuracy": round(sum(correct) / len(correct), 4),
        "mean_tokens": round(sum(n for _, n in outs) / len(outs), 2),
        "share_rechecked": round(sum(rechecked) / len(outs), 4),
        "accuracy_rechecked": acc(rechecked),
        "accuracy_not_rechecked": acc([not r for r in rechecked]),
        "share_self_exit": round(sum(exited) / len(outs), 4),
        "share_truncated": round(sum("</think>" not in t for t, _ in outs) / len(outs), 4),
        "grader": grader_name(),
    }


def write_readme(output_dir: str | Path, meta: dict) -> Path:
    """A human-readable card next to meta.json: how the checkpoint was made and what it scores."""
    ev = meta.get("heldout_eval") or {}
    cfg = meta["config"]
    task = cfg["task"]
    lines = [
        "# Synthetic-benchmark base model",
        "",
        "A tiny Qwen3 trained from scratch (SFT) on the synthetic task's reasoning traces (synthetic/task.py):",
        f"sums of {task['min_terms']}-{task['max_terms']} numbers in [{task['low']}, {task['high']}], "
        + (f"task v4: every first-pass addition slips with p = {task['slip_prob']}, forced exits finish the sum in "
           f"their answer (p = {task['exit_slip_prob']} per addition)," if task.get("version", 3) >= 4 else
           f"the first pass slips with p = {task['slip_prob']},"),
        f"up to {task['max_rechecks']} re-checks (p = {task['recheck_prob']} each) that fix slips, a share "
        f"{task['exit_cut_prob']} of traces cut by the",
        "S-GRPO exit text (the exit text itself left out of the loss). Produced by:",
        "",
        f"    {meta.get('command', 'scripts/build_base_model.py')}",
        "",
        f"- config hash `{meta['config_hash']}` (scripts/demo.py uses this checkpoint when its config matches)",
        f"- {meta['n_params']:,} parameters: hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, "
        f"{cfg['num_heads']} heads of {cfg['head_dim']}, vocab {cfg['vocab_size']} (BPE on the task's text)",
        f"- {cfg['steps']} steps of {cfg['batch_size']} fresh traces, lr {cfg['lr']} (warmup {cfg['warmup_steps']}, "
        f"cosine to {cfg['min_lr_ratio']}x), seed {cfg['seed']}, data seed {cfg['data_seed']}",
        f"- {meta['train_seconds']} s of training ({meta['steps_per_second']} steps/s) on {meta['hardware']}",
        f"- loss {meta['loss_first']} -> {meta['loss_last_50_mean']} (mean of the last 50 steps)",
    ]
    if ev:
        lines += [
            "",
            f"Held-out ({ev['n']} questions never trained on, one sample each, temperature {ev['temperature']}, at most "
            f"{ev['max_new_tokens']} new tokens, graded by {ev['grader']}):",
            "",
            "| accuracy | mean tokens | re-checked | accuracy when re-checked | accuracy otherwise | truncated |",
            "|---|---|---|---|---|---|",
            f"| {100 * ev['accuracy']:.1f}% | {ev['mean_tokens']} | {100 * ev['share_rechecked']:.1f}% | "
            f"{100 * (ev['accuracy_rechecked'] or 0):.1f}% | {100 * (ev['accuracy_not_rechecked'] or 0):.1f}% | "
            f"{100 * ev['share_truncated']:.1f}% |",
        ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Cache


def read_meta(path: str | Path) -> dict | None:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return None
    with open(meta) as f:
        return json.load(f)


def find_checkpoint(cfg: BaseConfig) -> Path | None:
    """The shipped checkpoint if it was trained from exactly `cfg`, else a cached one, else None."""
    h = cfg.config_hash()
    for path in (SHIPPED_DIR, SHIPPED_V4_DIR, CACHE_ROOT / h):
        meta = read_meta(path)
        if meta and meta.get("config_hash") == h and (path / "model.safetensors").is_file():
            return path
    return None


def load_or_train(cfg: BaseConfig, log=print, **train_kwargs) -> Path:
    found = find_checkpoint(cfg)
    if found is not None:
        if log:
            log(f"[sft] using base checkpoint {found} (config {cfg.config_hash()})")
        return found
    out = CACHE_ROOT / cfg.config_hash()
    if log:
        log(f"[sft] no checkpoint for config {cfg.config_hash()}: training one into {out}")
    train_base(cfg, output_dir=out, log=log, **train_kwargs)
    return out
