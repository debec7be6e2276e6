"""Preflight: measure a recipe's worst-case step on the node before the long run, against the dry run's plan.

    accelerate launch --config_file accelerate_configs/zero3.yaml scripts/preflight.py --config recipes/qwen3-8b/sgrpo.yaml

Launched exactly like training (same accelerate config, same recipe, same overrides), it
1. builds the recipe's model from its config.json (a local folder, the hub cache or planning/model_configs/) with
   random weights in the recipe's dtype, under the launch's ZeRO stage and process count, with the recipe's LoRA,
   reference model and gradient checkpointing: the recipe's own trainer class, nothing downloaded (the model's own
   tokenizer when it is cached, else a stand-in; token ids are drawn inside the tokenizer's vocabulary);
2. with vLLM colocate: starts the engine as TRL does with the recipe's gpu_memory_utilization, tensor parallel,
   max_model_len and sleep mode, on dummy weights (`load_format="dummy"`); reads the KV cache it allocated; runs
   TRL's own weight-sync / wake / generate / sleep cycle, decoding `--decode_tokens` tokens for every prompt of the
   step (the planned concurrency) to measure tokens/s;
3. runs `--steps` real optimizer steps of the recipe's trainer on fabricated completions at the worst case the plan
   assumes (every completion at max_completion_length; S-GRPO: every exit answer at max_answer_length, packed or
   padded as the trainer decides), with random 0/1 rewards, over `--micro_batches` micro-batches per step (the
   recipe's accumulation only repeats them: the step time is scaled up to it);
4. measures per phase (model built, weight sync, vLLM generating, training) the device's peak use (total - free,
   sampled every 20 ms), torch's max_memory_allocated / max_memory_reserved, the step time, and the all-reduce
   bandwidth between the processes; prints planned against measured with the relative error and one verdict line,
   writes the same as JSON (`--output_json`), and exits 1 when the measured peak passes the plan's usable line
   (90% of what the GPU reports), naming the key to change.

On a machine without a GPU it runs the same code path and reports CPU process figures (RSS), labelled as such: no
GPU verdict. Server-mode recipes train here without vLLM (the server is another machine's): one line says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from checks.inputs import InputError, run_cli  # noqa: E402

GIB = 2**30
PHASES = ("model built", "weight sync", "vLLM generating", "training")


# ------------------------------------------------------------------------------------------------ measuring
class Meter:
    """Device memory per phase: a thread samples the device's use (GPU: total - free; CPU: this process's RSS) and
    keeps the peak of the phase that is current; torch's own peak counters are read at each phase's end."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.phase = None
        self.peaks: dict[str, float] = {}
        self.torch_peaks: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self._started = None
        self._stop = threading.Event()
        if self.cuda:
            self.total = torch.cuda.mem_get_info()[1]
            self.device_name = torch.cuda.get_device_name()
        else:
            import psutil

            self._proc = psutil.Process()
            self.total = psutil.virtual_memory().total
            self.device_name = "CPU (process RSS, not GPU memory)"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def used(self) -> int:
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            return total - free
        return self._proc.memory_info().rss

    def _run(self):
        if self.cuda:
            import torch

            torch.cuda.set_device(torch.cuda.current_device())
        while not self._stop.is_set():
            phase = self.phase
            if phase is not None:
                self.peaks[phase] = max(self.peaks.get(phase, 0), self.used())
            time.sleep(0.02)

    def enter(self, phase: str | None):
        """End the current phase (its torch peaks and time) and start `phase` (None: between phases)."""
        import torch

        if self.phase is not None:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.used())
            self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + time.perf_counter() - self._started
            if self.cuda:
                t = self.torch_peaks.setdefault(self.phase, {"allocated": 0, "reserved": 0})
                t["allocated"] = max(t["allocated"], torch.cuda.max_memory_allocated())
                t["reserved"] = max(t["reserved"], torch.cuda.max_memory_reserved())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.phase, self._started = phase, time.perf_counter()

    @contextlib.contextmanager
    def during(self, phase: str):
        previous = self.phase
        self.enter(phase)
        try:
            yield
        finally:
            self.enter(previous)

    def close(self):
        self.enter(None)
        self._stop.set()
        self._thread.join(timeout=1)


def all_reduce_bandwidth(accelerator) -> dict | None:
    """Bus bandwidth of an all-reduce between the processes (NCCL on GPUs, gloo on CPUs), GB/s; None alone."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    n = dist.get_world_size()
    size = (256 if torch.cuda.is_available() else 16) * 2**20
    x = torch.ones(size // 2, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float16,
                   device=accelerator.device)
    for _ in range(2):
        dist.all_reduce(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        dist.all_reduce(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / reps
    return {"bytes": size, "processes": n, "seconds": round(seconds, 5),
            "bus_gb_per_s": round(size * 2 * (n - 1) / n / seconds / 1e9, 2)}


# ------------------------------------------------------------------------------------ the model, without weights
def model_folder(model_name_or_path: str, revision, dest: Path) -> tuple[Path, str]:
    """A folder vLLM and the trainer can start from: the model's config.json (no weights) and its tokenizer when it is
    cached, else a stand-in tokenizer (synthetic/tiny_model.py: ChatML, non-special think tags)."""
    from transformers import AutoTokenizer

    from planning.architecture import find_config

    found = find_config(model_name_or_path, revision)
    if found is None:
        raise InputError(f"preflight: no config.json for {model_name_or_path} in a local folder, the hub cache or "
                         "planning/model_configs/: download it (huggingface-cli download <id> config.json).")
    config, source = found
    config = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    try:
        tok = AutoTokenizer.from_pretrained(model_name_or_path, revision=revision, local_files_only=True)
        tokenizer = f"the model's own ({model_name_or_path}, cached)"
    except (OSError, ValueError):
        from synthetic.tiny_model import build_tokenizer

        tok = build_tokenizer()
        tokenizer = "a stand-in (synthetic/tiny_model.py): the model's own is not cached"
    tok.save_pretrained(dest)
    return dest, f"config: {source}; tokenizer: {tokenizer}"


def random_weights(model_id: str, architecture=None, **kwargs):
    """Stands in for TRL's `create_model_from_path` (policy and reference model): the architecture from the folder's
    config.json with freshly initialised weights, on this process's GPU (under ZeRO-3, transformers builds it
    partitioned inside deepspeed.zero.Init, as it loads a real checkpoint)."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    config = AutoConfig.from_pretrained(model_id)
    dtype = kwargs.get("dtype")
    if dtype in (None, "auto"):  # as from_pretrained: the checkpoint's own dtype (transformers takes a name too)
        dtype = config.dtype or torch.float32
    cls = architecture or getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0],
                                  transformers.AutoModelForCausalLM)
    where = contextlib.nullcontext()
    if torch.cuda.is_available() and not is_deepspeed_zero3_enabled():
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    with where:
        attn = {"attn_implementation": kwargs["attn_implementation"]} if kwargs.get("attn_implementation") else {}
        model = cls._from_config(config, dtype=dtype, **attn)
    model.config._name_or_path = model_id
    return model


def fabricated_prompts(tokenizer, n: int, target_tokens: int, system_prompt: str | None, template: str):
    """n conversational prompts whose rendered chat template is about `target_tokens` tokens (the plan's longest)."""
    from datasets import Dataset

    def render(words: int) -> tuple[list, int]:
        user = template.replace("{question}", " ".join(["7 + 8"] * words))
        prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return prompt, len(tokenizer(text, add_special_tokens=False)["input_ids"])

    words = 16
    _, length = render(words)
    for _ in range(3):  # scale the filler to the target, a few corrections
        words = min(max(1, int(words * target_tokens / max(length, 1))), 4 * target_tokens)
        prompt, length = render(words)
    while length > target_tokens and words > 1:
        words -= 1
        prompt, length = render(words)
    return Dataset.from_dict({"prompt": [prompt] * n, "answer": ["15"] * n}), length


def random_rewards(count: int, seed: int):
    """`count` reward functions of random 0/1 rewards: advantages are non-zero, so every row is trained, GFPO filters
    and S-GRPO's decay sees correct exits; nothing is graded (a real grader on random text is slow and all zero)."""
    import random

    rng = random.Random(seed)

    def named(i: int):  # one function per reward of the recipe: TRL logs each by its name
        def reward(completions, **kwargs):
            return [float(rng.random() < 0.5) for _ in completions]

        reward.__name__ = f"preflight_random_{i}"
        return reward

    return [named(i) for i in range(count)]


class Fabricator:
    """Completions at full length, token ids drawn inside the vocabulary (no special tokens, so none ends early)."""

    def __init__(self, tokenizer, vocab: int, seed: int):
        import torch

        special = set(tokenizer.all_special_ids) | {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id)
                                                    if i is not None}
        for tag in ("<think>", "</think>"):
            special.add(tokenizer.convert_tokens_to_ids(tag))
        high = min(vocab, len(tokenizer))
        self.ids = torch.tensor([i for i in range(high) if i not in special])
        self.gen = torch.Generator().manual_seed(seed)

    def rows(self, n: int, length: int):
        import torch

        return self.ids[torch.randint(len(self.ids), (n, length), generator=self.gen)]


# ----------------------------------------------------------------------------------------------- the trainer
def preflight_batch(method_args, processes: int, micro_batches: int | None, whole_groups: bool) -> int:
    """Micro-batches per step for the preflight: the recipe's, or the fewest that keep its batch arithmetic (whole
    groups per generation batch, and per rank when the method needs it) at or above `micro_batches`."""
    from checks.recipe import RecipeError, batch_plan

    if micro_batches is None:
        return method_args.gradient_accumulation_steps
    G = method_args.num_generations
    for a in range(max(1, micro_batches), 10 * G + 1):
        try:
            batch_plan(method_args.per_device_train_batch_size, processes, a, G, whole_groups_per_rank=whole_groups)
            return a
        except RecipeError:
            continue
    return method_args.gradient_accumulation_steps


def build(args, rest: list[str]):
    """Parse and check the recipe as train.py does, then build its trainer on random weights and fabricated data."""
    import torch
    import train

    from checks.recipe import SAMPLING_METHODS, check_plan, method_classes, resource_plan
    from planning import deepspeed_settings, plan_run
    from planning.memory import reported_total

    script_args, method_args, model_args = train.parse(["--config", args.config, *rest])
    batch, _ = train.validate(script_args, method_args, model_args)
    if torch.cuda.is_available():  # the plan train.py checks at this launch, on this GPU
        plan = resource_plan(script_args, method_args, model_args, batch, dry_run=False)
        check_plan(script_args, plan)  # a recipe the plan refuses is refused here too (check_memory: false goes on)
    else:  # the same launch's plan for the GPU --gpu_memory_gib names, so the CPU run has a plan to print beside
        plan = plan_run(script_args.method, method_args, model_args, batch,
                        reported_total(script_args.gpu_memory_gib)[0], deepspeed_settings(None, method_args.deepspeed))
    if script_args.method not in SAMPLING_METHODS:
        raise InputError(f"preflight: method {script_args.method} is not a GRPO-family method (nothing to sample).")
    notes = []
    processes = int(os.environ.get("WORLD_SIZE", 1))
    accum = preflight_batch(method_args, processes, args.micro_batches,
                            getattr(method_args, "requires_whole_groups_per_rank", False))
    recipe_accum = method_args.gradient_accumulation_steps
    method_args.gradient_accumulation_steps = accum
    if method_args.steps_per_generation == recipe_accum:
        method_args.steps_per_generation = accum
    method_args.generation_batch_size = method_args.per_device_train_batch_size * processes * \
        method_args.steps_per_generation
    work = Path(tempfile.mkdtemp(prefix="preflight-"))
    method_args.output_dir = str(work / "run")
    method_args.max_steps, method_args.save_strategy, method_args.report_to = args.steps, "no", []
    method_args.logging_steps, method_args.log_completions = 1, False
    method_args.resume_from_checkpoint = None
    if method_args.use_vllm and method_args.vllm_mode == "server":
        method_args.use_vllm = False
        notes.append("vLLM server mode: generation runs on the server, which is not started here; the training "
                     "step is measured with the trainer's own (fabricated) generation")
    # every process writes its own folder (a config.json and a tokenizer: no weights)
    folder, source = model_folder(model_args.model_name_or_path, model_args.model_revision, work / "model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    from planning import prompt_tokens
    from planning.architecture import load_architecture

    arch = load_architecture(model_args.model_name_or_path, model_args.model_revision)
    n_prompts = method_args.per_device_train_batch_size * processes * method_args.steps_per_generation * args.steps
    dataset, prompt_len = fabricated_prompts(tokenizer, n_prompts, prompt_tokens(method_args, arch.max_positions),
                                             script_args.system_prompt, script_args.prompt_template)
    method_args.model_init_kwargs = train.model_init_kwargs(method_args, model_args)
    if method_args.use_vllm:
        from trainers.vllm_cpu import keep_weights_reloadable

        keep_weights_reloadable()
    _, trainer_cls = method_classes(script_args.method)
    from trl import get_peft_config

    from trainers.cost import with_cost_accounting

    meter = Meter()
    meter.enter("model built")
    with no_weights():
        trainer = with_cost_accounting(trainer_cls)(
            model=str(folder), reward_funcs=random_rewards(len(script_args.reward_funcs), method_args.seed),
            args=method_args, train_dataset=dataset, peft_config=get_peft_config(model_args),
            processing_class=tokenizer)
    meter.enter(None)
    return trainer, meter, {"plan": plan, "notes": notes, "source": source, "prompt_tokens": prompt_len,
                            "micro_batches": accum, "recipe_micro_batches": recipe_accum,
                            "processes": processes, "tokenizer": tokenizer, "vocab": arch.vocab}


@contextlib.contextmanager
def no_weights():
    """While the trainer is built from a folder that holds no weights: TRL's `create_model_from_path` (policy and
    reference model) builds random ones (`random_weights`), and vLLM starts with load_format="dummy". Both are
    restored after, so nothing else in the process is affected."""
    import trl.generation.vllm_generation as vg_module
    import trl.trainer.grpo_trainer as grpo_module

    real_create, real_llm = grpo_module.create_model_from_path, getattr(vg_module, "LLM", None)

    def llm(*args, **kwargs):
        kwargs.setdefault("load_format", "dummy")
        return real_llm(*args, **kwargs)

    grpo_module.create_model_from_path = random_weights
    if real_llm is not None:
        vg_module.LLM = llm
    try:
        yield
    finally:
        grpo_module.create_model_from_path = real_create
        if real_llm is not None:
            vg_module.LLM = real_llm


def instrument(trainer, meter: Meter, info: dict, decode_tokens: int):
    """Route generation through fabricated full-length completions; with vLLM colocate, first run TRL's own cycle
    (sync, wake, generate `decode_tokens` tokens for every prompt, sleep) and measure it."""
    import torch

    fab = Fabricator(info["tokenizer"], info["vocab"], seed=trainer.args.seed + trainer.accelerator.process_index)
    decode = info.setdefault("decode", [])
    vg = getattr(trainer, "vllm_generation", None) if trainer.use_vllm else None
    if vg is not None:
        real_generate, real_sync = vg.generate, vg.sync_weights

        def sync_weights(*a, **k):
            with meter.during("weight sync"):
                return real_sync(*a, **k)

        def generate(prompts, images, num_generations, profiler=None):
            full = vg.max_completion_length
            if len(decode) <= trainer.state.global_step:  # once per step: the rollout call (S-GRPO's exits follow)
                saved = (vg.max_completion_length, dict(vg.generation_kwargs or {}))
                vg.max_completion_length = decode_tokens
                vg.generation_kwargs = {**saved[1], "ignore_eos": True, "detokenize": False}
                try:
                    with meter.during("vLLM generating"):
                        t0 = time.perf_counter()
                        _, ids, _, _ = real_generate(prompts, images, num_generations, profiler)
                        seconds = time.perf_counter() - t0
                finally:
                    vg.max_completion_length, vg.generation_kwargs = saved
                decode.append({"sequences": len(ids), "tokens": sum(len(x) for x in ids), "seconds": seconds})
            rows = fab.rows(len(prompts), full).tolist()
            return prompts, rows, [[[-1.0] for _ in r] for r in rows], None

        vg.sync_weights, vg.generate = sync_weights, generate
    else:
        model = trainer.model

        def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
            n = (generation_config or trainer.generation_config).max_new_tokens
            return torch.cat([input_ids, fab.rows(input_ids.size(0), n).to(input_ids.device)], dim=1)

        model.generate = generate
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):  # peft calls the base model's
            model.get_base_model().generate = generate

    from transformers import TrainerCallback

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            meter.enter("training")
            info.setdefault("step_start", []).append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            meter.enter(None)
            info.setdefault("step_seconds", []).append(time.perf_counter() - info["step_start"][-1])
            done = meter.seconds.get("training", 0.0)  # this step's training time, generation excluded
            info.setdefault("train_seconds", []).append(done - sum(info["train_seconds"]))

    trainer.add_callback(Phases())
    if vg is None:  # generation happens inside the step: its phase interrupts "training" and returns to it
        real_gen = trainer._generate

        def timed(*a, **k):
            with meter.during("generation (fabricated)"):
                return real_gen(*a, **k)

        trainer._generate = timed


def kv_cache(trainer) -> dict | None:
    """The KV cache vLLM really allocated: blocks x block size, and how many full-length sequences fit at once."""
    vg = getattr(trainer, "vllm_generation", None) if trainer.use_vllm else None
    if vg is None or getattr(vg, "mode", None) != "colocate":
        return None
    config = vg.llm.llm_engine.vllm_config
    blocks = config.cache_config.num_gpu_blocks or getattr(config.cache_config, "num_cpu_blocks", None)
    if not blocks:
        return None
    tokens = blocks * config.cache_config.block_size
    return {"tokens": tokens, "max_model_len": config.model_config.max_model_len,
            "full_length_sequences": tokens // config.model_config.max_model_len}


# ------------------------------------------------------------------------------------------------- the report
def report(meter: Meter, info: dict, trainer, allreduce) -> dict:
    plan = info["plan"] or {}
    mem, tv = plan.get("memory") or {}, plan.get("time_and_volume") or {}
    planned = {
        "model built": mem.get("model_built_gib"),
        "weight sync": mem.get("weight_sync_phase_gib"),
        "vLLM generating": mem.get("generation_phase_gib") if mem.get("vllm") else None,
        "training": mem.get("training_phase_gib"),
    }
    phases = []
    for name in sorted(meter.peaks, key=lambda p: PHASES.index(p) if p in PHASES else len(PHASES)):
        measured = meter.peaks[name] / GIB
        plan_gib = planned.get(name)
        t = meter.torch_peaks.get(name, {})
        phases.append({"phase": name, "planned_gib": plan_gib, "measured_gib": round(measured, 2),
                       "relative_error": round((measured - plan_gib) / plan_gib, 3) if plan_gib else None,
                       "torch_max_allocated_gib": round(t["allocated"] / GIB, 2) if t else None,
                       "torch_max_reserved_gib": round(t["reserved"] / GIB, 2) if t else None,
                       "seconds": round(meter.seconds.get(name, 0.0), 2)})
    peak = max((p["measured_gib"] for p in phases), default=0.0)
    steps = info.get("step_seconds", [])
    scale = info["recipe_micro_batches"] / info["micro_batches"]
    out = {
        "device": meter.device_name, "device_total_gib": round(meter.total / GIB, 2), "gpu": meter.cuda,
        "processes": info["processes"], "model": info["source"], "prompt_tokens": info["prompt_tokens"],
        "planned_for": {"zero_stage": mem.get("zero_stage"), "processes": mem.get("processes"),
                        "gpu_reported_gib": mem.get("gpu_memory_gib")} if mem else None,
        "micro_batches_run": info["micro_batches"], "recipe_micro_batches": info["recipe_micro_batches"],
        # what DeepSpeed's engine accumulates over (it scales the loss and steps by it): must be micro_batches_run
        "deepspeed_accumulation": info.get("deepspeed_accumulation"),
        "phases": phases, "peak_gib": peak,
        "step_seconds": [round(s, 2) for s in steps],
        "training_seconds": [round(s, 2) for s in info.get("train_seconds", [])],
        # the recipe's accumulation repeats the micro-batches: its training time scales with them
        "training_seconds_at_recipe_batch": round(info["train_seconds"][-1] * scale, 1) if steps else None,
        "kv_cache": kv_cache(trainer), "planned_kv_full_length_sequences":
            (mem.get("vllm") or {}).get("concurrent_max_length_sequences"),
        "decode": info.get("decode"), "planned_decode_step_ms": tv.get("decode_step_ms_estimate"),
        "all_reduce": allreduce, "notes": info["notes"],
        # what the trainer logged of the last step: the fabricated completions' lengths show the worst case ran
        "logged": {k: v for k, v in next((h for h in reversed(getattr(trainer.state, "log_history", None) or [])
                                        if "completions/max_length" in h), {}).items()
                   if k.startswith(("completions/", "sgrpo/packed", "cost/"))},
    }
    if info.get("decode"):
        d = info["decode"][-1]
        out["decode_tokens_per_s"] = round(d["tokens"] / d["seconds"], 1)
        if tv.get("decode_step_ms_estimate"):
            out["planned_tokens_per_s"] = round(d["sequences"] / (tv["decode_step_ms_estimate"] / 1000), 1)
    usable = (mem.get("usable_gib") if mem else None) or round(0.9 * meter.total / GIB, 1)
    if not meter.cuda:
        out["fits"] = None
        out["verdict"] = (f"CPU process figures (RSS {peak:.2f} GiB at the peak), not GPU memory: no GPU verdict; "
                          "run it on the node")
    else:
        out["fits"] = peak <= usable
        worst = max(phases, key=lambda p: p["measured_gib"])
        out["verdict"] = (f"fits: measured peak {peak:.1f} GiB ({worst['phase']}) within the usable {usable:.1f} GiB of "
                          f"{out['device_total_gib']:.1f} GiB" if out["fits"] else
                          f"does not fit: measured peak {peak:.1f} GiB ({worst['phase']}) passes the usable "
                          f"{usable:.1f} GiB of {out['device_total_gib']:.1f} GiB: {fix_for(worst['phase'], trainer)}")
    return out


def fix_for(phase: str, trainer) -> str:
    if phase in ("vLLM generating", "weight sync"):
        return (f"lower vllm_gpu_memory_utilization (now {trainer.args.vllm_gpu_memory_utilization:g})"
                + (", or use accelerate_configs/zero2.yaml (LoRA under ZeRO-3 gathers the whole model to sync)"
                   if phase == "weight sync" else ""))
    if phase == "model built":
        return "shard the policy (accelerate_configs/zero3.yaml) or lower vllm_gpu_memory_utilization"
    if not trainer.args.gradient_checkpointing:
        return "set gradient_checkpointing: true"
    return "lower per_device_train_batch_size (and raise gradient_accumulation_steps to keep the batch)"


def print_table(out: dict) -> None:
    print(f"[preflight] {out['device']} x {out['processes']} process(es); {out['model']}")
    print("| phase | planned GiB | measured GiB | error | torch max allocated / reserved | seconds |")
    print("|---|---|---|---|---|---|")
    for p in out["phases"]:
        err = f"{p['relative_error']:+.0%}" if p["relative_error"] is not None else "-"
        print(f"| {p['phase']} | {p['planned_gib'] if p['planned_gib'] is not None else '-'} | {p['measured_gib']} | "
              f"{err} | {p['torch_max_allocated_gib']} / {p['torch_max_reserved_gib']} | {p['seconds']} |")
    if out.get("kv_cache"):
        print(f"[preflight] KV cache: {out['kv_cache']['tokens']} tokens = {out['kv_cache']['full_length_sequences']} "
              f"sequences of {out['kv_cache']['max_model_len']} at once (planned "
              f"{out['planned_kv_full_length_sequences']})")
    if out.get("decode_tokens_per_s"):
        print(f"[preflight] decode: {out['decode_tokens_per_s']} tokens/s at {out['decode'][-1]['sequences']} "
              f"sequences (planned {out.get('planned_tokens_per_s', '-')})")
    print(f"[preflight] steps: {out['step_seconds']} s, of which training {out['training_seconds']} s for "
          f"{out['micro_batches_run']} micro-batch(es); training ~{out['training_seconds_at_recipe_batch']} s at the "
          f"recipe's {out['recipe_micro_batches']}")
    if out["all_reduce"]:
        print(f"[preflight] all-reduce: {out['all_reduce']['bus_gb_per_s']} GB/s bus bandwidth "
              f"({out['all_reduce']['bytes'] >> 20} MiB, {out['all_reduce']['processes']} processes)")
    for note in out["notes"]:
        print(f"[preflight] note: {note}")
    print(f"[preflight] verdict: {out['verdict']}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the training recipe (any train.py key may follow)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (the second is the steady state: "
                                                             "optimizer state allocated, weights synced once)")
    parser.add_argument("--micro_batches", type=int, default=1,
                        help="micro-batches per step (fewest that keep whole groups); 0: the recipe's own")
    parser.add_argument("--decode_tokens", type=int, default=256, help="tokens vLLM decodes per prompt")
    parser.add_argument("--output_json", default=None, help="default: preflight/<recipe>.json")
    args, rest = parser.parse_known_args(argv)
    args.micro_batches = args.micro_batches or None
    trainer, meter, info = build(args, rest)
    instrument(trainer, meter, info, args.decode_tokens)
    error = None
    try:
        trainer.train()
    except Exception as e:  # an out-of-memory error is a measurement: report it with its phase
        if "out of memory" not in str(e).lower():
            raise
        error = f"{type(e).__name__} in phase {meter.phase}: {str(e).splitlines()[0]}"
        meter.peaks[meter.phase or "training"] = meter.total
    finally:
        phase_at_error = meter.phase
        meter.close()
    ds = trainer.accelerator.state.deepspeed_plugin
    info["deepspeed_accumulation"] = ds.deepspeed_config.get("gradient_accumulation_steps") if ds else None
    allreduce = all_reduce_bandwidth(trainer.accelerator) if error is None else None
    out = report(meter, info, trainer, allreduce)
    if error:
        out["fits"], out["verdict"] = False, f"does not fit: {error}: {fix_for(phase_at_error or 'training', trainer)}"
    if trainer.accelerator.is_main_process:
        print_table(out)
        path = Path(args.output_json or ROOT / "preflight" / f"{Path(args.config).stem}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
        print(f"[preflight] written to {path}")
    if out["fits"] is False:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    run_cli(main, "preflight.py")
