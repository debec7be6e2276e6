"""A training recipe, checked in one pass before anything loads: `check_recipe(argv)` runs every check in the order
a recipe must satisfy them, and returns what train.py needs (or raises one InputError / RecipeError whose message
names the key and what to change).

1. the recipe file parses, with no key twice (`load_recipe`); the method is known (`method_classes`)
2. every key is known (`check_keys`); every value has its field's type and range (`checks.inputs.check_values`; an
   empty key that would replace a default is refused)
3. the batch arithmetic holds for the process count (`precheck_batch`, `batch_plan`)
4. a DeepSpeed file exists and parses (`precheck_deepspeed`); the config classes accept the values (`parse`)
5. the recipe's own logic: data, model, prompt template, rewards, vLLM window, steps (`validate`)
6. a checkpoint to resume from exists and is one (`resolve_checkpoint`)
7. the model folder or hub id and the data file or dataset (`check_files`)
8. the memory, time and volume plan (`resource_plan`, planning/)
9. at launch, the model can be had (a hub id offline must be cached)
10. the tokenizer: think tags survive decoding, the tokens that end a completion, the method's own check
    (`check_tokenizer_early`)
11. the plan fits the GPU (`check_plan`); a dry run prints the plan first

`method: dpo` (TRL's DPOTrainer on preference pairs, e.g. GFPO's `pairs_output_file`) has no groups, rewards or
prompt template: steps 3 and 5 are `validate_dpo` (a preference dataset, loss names, the batch of pairs), and step 8
says why it is not planned (`NOT_PLANNED`).
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass, field, fields

from checks.inputs import (
    InputError,
    check_accelerate_config,
    check_data_source,
    check_json_file,
    check_model_path,
    check_preference_data,
    check_values,
    cli_values,
    load_yaml_mapping,
    quiet_parser_class,
)

DEFAULT_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."

# method -> (module, config class, trainer class)
METHODS = {
    "grpo": ("trl", "GRPOConfig", "GRPOTrainer"),
    "gfpo": ("trainers.gfpo", "GFPOConfig", "GFPOTrainer"),
    "sgrpo": ("trainers.sgrpo", "SGRPOConfig", "SGRPOTrainer"),
    "dler": ("trainers.dler", "DLERConfig", "DLERTrainer"),  # arXiv 2510.15110: truncation + dynamic sampling
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),  # offline, on preference pairs (e.g. GFPO's pairs_output_file)
}
# Methods that sample groups of completions and score them with rewards (GRPOConfig subclasses); the others train on
# a fixed dataset, and the recipe keys that build GRPO's prompts and rewards mean nothing to them.
SAMPLING_METHODS = ("grpo", "gfpo", "sgrpo", "dler")
SAMPLING_ONLY_KEYS = ("question_column", "answer_column", "system_prompt", "prompt_template", "reward_funcs",
                      "reward_kwargs")
# Why the memory, time and volume plan (planning/) is not computed for a method.
NOT_PLANNED = {
    "dpo": "not planned for dpo: planning/ models GRPO's steps (vLLM rollouts, G completions per prompt); a DPO step "
           "is 2 x per_device_train_batch_size sequences of at most max_length tokens through the policy and a "
           "frozen reference copy (none with LoRA: the base with the adapter off)",
}


@dataclass
class RecipeArguments:
    """The recipe's own keys: method, data, prompt and rewards. The rest belongs to the method config or ModelConfig."""

    method: str = field(default="grpo", metadata={"help": f"Training method: one of {sorted(METHODS)}."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name, or a local .jsonl/.json/.parquet/.csv file or folder."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    question_column: str = field(default="question", metadata={"help": "Column holding the question text."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold final answer."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "User message; '{question}' is replaced by the question (the papers' evaluation prompt)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Reward names from the rewards registry, or 'module:function'."},
    )
    reward_kwargs: dict = field(
        default_factory=dict, metadata={"help": "Per-reward keyword arguments, e.g. {length_penalty: {alpha: 0.2}}."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    dry_run: bool = field(
        default=False, metadata={"help": "Validate the recipe and print the resolved plan without loading a model."}
    )
    accelerate_config: str | None = field(
        default=None, metadata={"help": "Accelerate config whose num_processes the dry-run plan is computed for."}
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "Process count for the dry-run plan (overrides accelerate_config)."}
    )
    eos_token: str | None = field(
        default=None,
        metadata={"help": "The token that ends a completion, replacing the tokenizer's eos (e.g. '<|im_end|>'). Default: "
                          "TRL's rule, the tokenizer's eos and every eos of the generation config; the run prints "
                          "them with the chat template's end of turn and warns when they disagree."},
    )
    gpu_memory_gib: float = field(
        default=80.0,
        metadata={"help": "GPU memory (GiB) the dry run's memory plan is checked against: 80 for H100/A100 80GB, 141 "
                          "for H200. A real launch reads it from the GPU."},
    )
    check_memory: bool = field(
        default=True,
        metadata={"help": "Refuse a recipe whose memory plan does not fit the GPU (planning/memory.py). false: print "
                          "the plan's verdict as a warning and go on (the plan is an estimate, +-25%)."},
    )


class RecipeError(InputError):
    """A recipe that cannot run; the message says what to change."""


def load_recipe(path: str) -> dict:
    """The recipe's mapping; a missing file, bad YAML or a key given twice is an InputError."""
    return load_yaml_mapping(path, "--config")


def method_classes(method: str, load_trainer: bool = True):
    if method not in METHODS:
        raise RecipeError(f"Unknown method {method!r}: set `method:` to one of {sorted(METHODS)}.")
    module_name, config_name, trainer_name = METHODS[method]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), (getattr(module, trainer_name) if load_trainer else None)


def check_keys(recipe: dict, dataclass_types, source: str) -> None:
    """Unknown keys are errors, with the closest known key as the suggested fix."""
    known = {f.name for dc in dataclass_types for f in fields(dc)} | {"env"}
    for key in recipe:
        if source == "command line" and (key == "help" or key.removeprefix("no_") in known):
            continue  # argparse's --help and HfArgumentParser's --no_<flag> for true-by-default flags
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise RecipeError(f"{source}: unknown key `{key}`.{hint} Remove it or fix its name.")


def num_processes_for(script_args: RecipeArguments, warn: bool = False) -> int:
    """The process count the batch and memory plans are computed for.

    A dry run plans the launch the recipe names: --num_processes, else its accelerate config's (the recipe's own
    `accelerate_config` key, or --accelerate_config; it must exist and parse), else WORLD_SIZE (1). At launch the
    launcher decides: WORLD_SIZE (1 without one), with a warning when the recipe names another count."""
    from_config = None
    if script_args.accelerate_config:
        from_config = check_accelerate_config(script_args.accelerate_config, "--accelerate_config")
    named = script_args.num_processes or from_config
    if not script_args.dry_run:
        launched = int(os.environ.get("WORLD_SIZE", 1))
        if warn and named and named != launched and int(os.environ.get("RANK", 0)) == 0:
            print(f"train.py: warning: the recipe is written for {named} processes "
                  f"({script_args.accelerate_config or '--num_processes'}) and this launch has {launched}: the batch "
                  f"per optimizer step scales with the process count; scale gradient_accumulation_steps by "
                  f"{named}/{launched} to keep the recipe's batch.", file=sys.stderr, flush=True)
        return launched
    return named or int(os.environ.get("WORLD_SIZE", 1))


def launch_for(script_args: RecipeArguments) -> dict:
    """The launch a plan is computed for, in words, for the dry run's output: which accelerate config, how many
    processes, and where each came from."""
    return {"accelerate_config": script_args.accelerate_config,
            "processes": num_processes_for(script_args),
            "source": ("--num_processes" if script_args.num_processes else
                       "the recipe's / command line's accelerate_config" if script_args.accelerate_config else
                       "none named: one process without DeepSpeed (WORLD_SIZE)") if script_args.dry_run else
                      "the launcher (WORLD_SIZE)"}


def batch_plan(per_device: int, num_processes: int, grad_accum: int, num_generations: int,
               steps_per_generation: int | None = None, generation_batch_size: int | None = None,
               whole_groups_per_rank: bool = False) -> dict:
    """The batch arithmetic of GRPOTrainer, computed for any process count, with errors that say what to change."""
    global_step_batch = per_device * num_processes * grad_accum  # completions per optimizer step
    if generation_batch_size is not None and steps_per_generation is not None:
        raise RecipeError("Set only one of `generation_batch_size` and `steps_per_generation`.")
    if generation_batch_size is not None:
        if generation_batch_size % (per_device * num_processes):
            raise RecipeError(
                f"generation_batch_size ({generation_batch_size}) must be a multiple of per_device_train_batch_size x "
                f"processes ({per_device} x {num_processes}); change one of them."
            )
        steps_per_generation = generation_batch_size // (per_device * num_processes)
    steps_per_generation = steps_per_generation or grad_accum
    generation_batch = per_device * num_processes * steps_per_generation
    if generation_batch % num_generations:
        raise RecipeError(
            f"The generation batch per_device_train_batch_size x processes x steps_per_generation = {per_device} x "
            f"{num_processes} x {steps_per_generation} = {generation_batch} is not a multiple of num_generations "
            f"({num_generations}): the group of a question would be cut. Make it a multiple, e.g. "
            f"per_device_train_batch_size={num_generations} or a gradient_accumulation_steps that fits."
        )
    per_rank = per_device * steps_per_generation
    if whole_groups_per_rank and per_rank % num_generations:
        raise RecipeError(
            f"This method needs every process to hold whole groups: per_device_train_batch_size x steps_per_generation "
            f"= {per_device} x {steps_per_generation} = {per_rank} must be a multiple of num_generations "
            f"({num_generations})."
        )
    return {
        "processes": num_processes,
        "group_size_G": num_generations,
        "completions_per_optimizer_step": global_step_batch,
        "questions_per_optimizer_step": global_step_batch / num_generations,
        "generation_batch_completions": generation_batch,
        "questions_per_generation": generation_batch // num_generations,
        "steps_per_generation": steps_per_generation,
        "completions_per_process_per_generation": per_rank,
        "groups_whole_on_each_process": per_rank % num_generations == 0,
    }


def parse(argv: list[str] | None = None):
    """Parse `--config recipe.yaml [--key value ...]` into (script_args, method_args, model_args)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, source = {}, "command line"
    cli = cli_values(argv)
    for flag in ("config", "method"):
        if flag in cli and not isinstance(cli[flag], str):
            raise RecipeError(f"--{flag} needs one value, got {cli[flag]!r}.")
    if "config" in cli:
        source = cli.pop("config")
        recipe = load_recipe(source)
    method = cli.get("method", recipe.get("method", "grpo"))
    if not isinstance(method, str):
        raise RecipeError(f"{source}: `method` must be one of {sorted(METHODS)}, got {method!r}.")
    from trl import ModelConfig  # after the recipe file's checks: importing trl takes seconds

    config_cls, _ = method_classes(method, load_trainer=False)
    types = (RecipeArguments, config_cls, ModelConfig)
    check_keys(recipe, types, source)
    check_keys(cli, types, "command line")
    if method not in SAMPLING_METHODS:
        for values, where in ((recipe, source), (cli, "command line")):
            for key in SAMPLING_ONLY_KEYS:
                if key in values:
                    raise RecipeError(f"{where}: `{key}` builds GRPO's prompts and rewards and means nothing to "
                                      f"method {method} (it trains on the dataset's own prompts): remove it.")
    # types from the dataclass fields, ranges from checks.inputs.RANGE_RULES, before anything uses a value
    check_values(recipe, types, source)
    check_values(cli, types, "command line", from_text=True)
    if method in SAMPLING_METHODS:
        precheck_batch(recipe, config_cls, argv)
    precheck_deepspeed(cli.get("deepspeed", recipe.get("deepspeed")))
    if not _has_accelerator() and "use_cpu" not in recipe and "--use_cpu" not in argv:
        # Without a GPU: TrainingArguments refuses bf16 unless use_cpu is set (a dry run on a login node must still
        # validate a bf16 recipe), and accelerate forms a multi-process gloo group under torchrun only with it.
        argv += ["--use_cpu", "true"]
    from trl import TrlParser

    parser = quiet_parser_class(TrlParser, "see `python scripts/train.py --help`", "command line: ")(types)
    try:
        script_args, method_args, model_args = parser.parse_args_and_config(argv)
    except InputError:  # the quiet parser's own errors
        raise
    except ValueError as e:  # the config classes' own __post_init__ checks
        forget_deepspeed_config()
        raise RecipeError(f"{source}: {e}") from e
    return script_args, method_args, model_args


def precheck_deepspeed(value) -> None:
    """A `deepspeed` config file must exist and parse before TrainingArguments sees it: its __post_init__ registers
    the DeepSpeed config globally (transformers' weakref) before reading the file, so a failure there leaves a
    half-built config that makes later models in the same process believe ZeRO-3 is on."""
    if isinstance(value, str) and value.strip() and not value.lstrip().startswith("{"):
        check_json_file(value, "`deepspeed`")


def forget_deepspeed_config() -> None:
    """Drop transformers' global DeepSpeed config if a failed TrainingArguments left one behind."""
    if "transformers.integrations.deepspeed" in sys.modules:
        sys.modules["transformers.integrations.deepspeed"].unset_hf_deepspeed_config()


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def precheck_batch(recipe: dict, config_cls, argv: list[str]) -> None:
    """Run the batch arithmetic on the recipe's values before the config classes see them, for a clearer error."""
    defaults = {f.name: f.default for f in fields(config_cls)}

    def value(key):
        if f"--{key}" in argv:
            return argv[argv.index(f"--{key}") + 1]
        return recipe.get(key, defaults.get(key))

    accel = value("accelerate_config") if "accelerate_config" in recipe or "--accelerate_config" in argv else None
    procs = value("num_processes") if "num_processes" in recipe or "--num_processes" in argv else None
    dry_run = cli_values(argv).get("dry_run", recipe.get("dry_run", False))  # a bare --dry_run is True
    dry = dry_run is True or str(dry_run).lower() in ("true", "yes", "1", "on")
    n = num_processes_for(RecipeArguments(accelerate_config=accel, num_processes=int(procs) if procs else None,
                                          dry_run=dry))
    as_int = lambda v: None if v in (None, "None", "null") else int(v)  # noqa: E731
    batch_plan(
        per_device=int(value("per_device_train_batch_size")),
        num_processes=n,
        grad_accum=int(value("gradient_accumulation_steps")),
        num_generations=int(value("num_generations")),
        steps_per_generation=as_int(value("steps_per_generation")),
        generation_batch_size=as_int(value("generation_batch_size")),
        whole_groups_per_rank=getattr(config_cls, "requires_whole_groups_per_rank", False),
    )


def validate(script_args: RecipeArguments, method_args, model_args) -> tuple[dict, dict]:
    """Everything that can be checked before a model loads. Returns the batch plan and check_files' sources."""
    from rewards import validate_reward_names

    if not script_args.dataset_name:
        raise RecipeError("Set `dataset_name` to a hub dataset or a local .jsonl/.json/.parquet file.")
    if not model_args.model_name_or_path:
        raise RecipeError("Set `model_name_or_path` to a hub model id or a local checkpoint folder.")
    if script_args.method == "dpo":
        return validate_dpo(script_args, method_args, model_args)
    if "{question}" not in script_args.prompt_template:
        raise RecipeError("`prompt_template` must contain '{question}', where the question is inserted.")
    fill_length_kwargs(script_args, method_args.max_completion_length)
    check_non_thinking(script_args, method_args)
    check_packing_kernel(script_args, method_args, model_args)
    try:
        validate_reward_names(script_args.reward_funcs, script_args.reward_kwargs)
    except ValueError as e:
        raise RecipeError(str(e)) from e
    weights = getattr(method_args, "reward_weights", None)
    if weights is not None and len(weights) != len(script_args.reward_funcs):
        raise RecipeError(
            f"`reward_weights` has {len(weights)} entries but `reward_funcs` has {len(script_args.reward_funcs)}: "
            "give one weight per reward function."
        )
    vllm_len = getattr(method_args, "vllm_max_model_length", None)
    if vllm_len is not None and vllm_len <= method_args.max_completion_length:
        raise RecipeError(
            f"`vllm_max_model_length` ({vllm_len}) must hold the prompt and max_completion_length "
            f"({method_args.max_completion_length}) tokens: raise it, or leave it unset."
        )
    if method_args.max_steps == -1 and method_args.num_train_epochs <= 0:
        raise RecipeError("Nothing to train: set `max_steps` >= 1 or `num_train_epochs` > 0.")
    plan = batch_plan(
        per_device=method_args.per_device_train_batch_size,
        num_processes=num_processes_for(script_args, warn=True),
        grad_accum=method_args.gradient_accumulation_steps,
        num_generations=method_args.num_generations,
        # GRPOConfig.__post_init__ filled both from one of them; recover which one the recipe meant.
        steps_per_generation=method_args.steps_per_generation,
        whole_groups_per_rank=getattr(method_args, "requires_whole_groups_per_rank", False),
    )
    resolve_checkpoint(method_args)  # a named checkpoint folder must exist, in the dry run too
    return plan, check_files(script_args, model_args)  # files last: the recipe's own logic errors come first


def validate_dpo(script_args: RecipeArguments, method_args, model_args) -> tuple[dict, dict]:
    """`validate` for DPO: loss names, steps, the batch of pairs, a checkpoint to resume from, the model and a
    preference dataset with prompt/chosen/rejected."""
    help_text = next(f.metadata.get("help", "") for f in fields(method_args) if f.name == "loss_type")
    known = re.findall(r"`'(\w+)'`", help_text)  # DPOConfig lists its loss names in the field's help
    unknown = [name for name in method_args.loss_type if known and name not in known]
    if unknown:
        raise RecipeError(f"`loss_type` {unknown[0]!r} is not a DPO loss: use one of {known} (sigmoid is DPO's).")
    if method_args.max_steps == -1 and method_args.num_train_epochs <= 0:
        raise RecipeError("Nothing to train: set `max_steps` >= 1 or `num_train_epochs` > 0.")
    resolve_checkpoint(method_args)
    model = check_model_path(model_args.model_name_or_path, "model_name_or_path", revision=model_args.model_revision)
    dataset, rows = check_preference_data(script_args.dataset_name, "dataset_name")
    if rows is not None and script_args.max_train_samples:
        rows = min(rows, script_args.max_train_samples)
    processes = num_processes_for(script_args)
    pairs = method_args.per_device_train_batch_size * processes * method_args.gradient_accumulation_steps
    plan = {
        "processes": processes,
        "pairs_per_optimizer_step": pairs,
        # each pair is two sequences (prompt + chosen, prompt + rejected) through the policy and the reference
        "sequences_per_optimizer_step": 2 * pairs,
        "pairs_in_dataset": rows,
        "optimizer_steps_per_epoch": None if rows is None else -(-rows // pairs),
    }
    return plan, {"model": model, "dataset": dataset}


def resource_plan(script_args, method_args, model_args, batch: dict, dry_run: bool) -> dict | None:
    """The memory, time and volume plan (planning/) for the GPUs the run is for: in a dry run `gpu_memory_gib` and
    the accelerate config it names; at launch the GPU's own memory and the DeepSpeed settings `accelerate launch`
    exported. None on a machine without a GPU at launch (the CPU tests), when the model's config.json cannot be
    read without a download, or for a method planning/ does not model (`NOT_PLANNED`)."""
    from planning import deepspeed_settings, plan_run

    if script_args.method in NOT_PLANNED:
        return None
    from planning.memory import reported_total

    if dry_run:
        gpu_gib, gpu_source = reported_total(script_args.gpu_memory_gib)
        accel = load_yaml_mapping(script_args.accelerate_config, "--accelerate_config") \
            if script_args.accelerate_config else None
        launch = deepspeed_settings(accel, method_args.deepspeed, env={} if accel is not None else None)
    else:
        import torch

        if not torch.cuda.is_available():
            return None
        gpu_gib = round(torch.cuda.mem_get_info()[1] / 2**30, 2)  # what vLLM takes its share of
        gpu_source = f"{torch.cuda.get_device_name()}: reports {gpu_gib} GiB (torch.cuda.mem_get_info)"
        launch = deepspeed_settings(None, method_args.deepspeed)
    plan = plan_run(script_args.method, method_args, model_args, batch, gpu_gib, launch)
    if plan is not None:
        plan["memory"]["gpu"] = gpu_source
    return plan


def check_plan(script_args, resources: dict | None) -> None:
    """Print the plan's warnings; refuse a recipe that does not fit, with the plan's one-line fix."""
    if resources is None:
        return
    for warning in resources["time_and_volume"]["warnings"]:
        print(f"train.py: warning: {warning}", file=sys.stderr, flush=True)
    memory = resources["memory"]
    if memory["fits"]:
        return
    line = f"the memory plan does not fit a GPU that reports {memory['gpu_memory_gib']:g} GiB: {memory['fix']}."
    if not script_args.check_memory:
        print(f"train.py: warning: {line} (check_memory: false, going on)", file=sys.stderr, flush=True)
        return
    raise RecipeError(f"{line} (The plan is an estimate: set check_memory: false to launch anyway.)")


def check_files(script_args: RecipeArguments, model_args) -> dict:
    """The model (local folder with a config, or a hub id) and the data (a local file that parses, is not empty and
    has the named columns, or a hub dataset name), checked without loading weights (a DeepSpeed config file is
    checked in parse). Returns {"model": ..., "dataset": ...}, sentences saying which source each will use."""
    return {
        "model": check_model_path(model_args.model_name_or_path, "model_name_or_path",
                                  revision=model_args.model_revision),
        "dataset": check_data_source(script_args.dataset_name, "dataset_name",
                                     {"question_column": script_args.question_column,
                                      "answer_column": script_args.answer_column}),
    }


def check_non_thinking(script_args: RecipeArguments, method_args) -> None:
    """Qwen3's non-thinking mode (`chat_template_kwargs: {enable_thinking: false}`) closes the thought in the prompt:
    completions hold no `</think>`. S-GRPO has no thought to cut there, so it is refused; the answer rewards grade
    the whole completion instead of scoring everything 0 (`require_thinking: false`, unless the recipe says)."""
    kwargs = method_args.chat_template_kwargs or {}
    if isinstance(kwargs, str):
        import json

        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as err:
            raise RecipeError(f"`chat_template_kwargs` must be a JSON object: {err}") from None
    if not isinstance(kwargs, dict) or kwargs.get("enable_thinking") is not False:
        return
    if script_args.method == "sgrpo" and getattr(method_args, "serial", False):
        raise RecipeError("S-GRPO cuts the model's thought, and `chat_template_kwargs: {enable_thinking: false}` closes "
                          "the thought in the prompt (the completions hold no `</think>`): remove enable_thinking: "
                          "false, or train GRPO / GFPO in non-thinking mode.")
    for name in ("accuracy", "length_penalty"):
        if name in script_args.reward_funcs:
            script_args.reward_kwargs.setdefault(name, {}).setdefault("require_thinking", False)


def check_packing_kernel(script_args: RecipeArguments, method_args, model_args) -> None:
    """S-GRPO's packed serial groups need an attention kernel that takes the prefix-sharing mask; with another one
    the trainer scores padded rows (several times the activations), and the memory plan plans those: say so."""
    if not (script_args.method == "sgrpo" and getattr(method_args, "serial", False)
            and getattr(method_args, "pack_serial_groups", False)):
        return
    from trainers.packing import attention_unsupported_reason

    attn = model_args.attn_implementation or "sdpa"
    reason = attention_unsupported_reason(attn)
    if reason is not None:
        print(f"train.py: warning: pack_serial_groups is on but the attention kernel cannot take the packed serial groups' mask "
              f"({reason}): the trainer will score padded rows and the memory plan plans those; set "
              "attn_implementation: sdpa to pack, or pack_serial_groups: false to say so.", file=sys.stderr, flush=True)
    elif attn == "flex_attention":
        print("train.py: note: FlexAttention with packed serial groups: the packed mask is evaluated densely when it is "
              "built (create_block_mask with _compile=False; the memory plan counts it as attention_mask), and "
              "transformers' torch.compile'd flex_attention compiles on first use and again when the packed length "
              "changes (automatic dynamic shapes): expect tens of seconds of compilation in the first steps.",
              file=sys.stderr, flush=True)


def fill_length_kwargs(script_args: RecipeArguments, max_completion_length: int) -> None:
    """Length-aware rewards default to the recipe's own completion limit, so the two cannot disagree."""
    kwargs = script_args.reward_kwargs
    if "cosine" in script_args.reward_funcs:
        kwargs.setdefault("cosine", {}).setdefault("max_len", max_completion_length)
    if "truncation" in script_args.reward_funcs:  # DLER: the truncation length is the generation limit
        kwargs.setdefault("truncation", {}).setdefault("max_length", max_completion_length)
    if "soft_overlong" in script_args.reward_funcs:
        overlong = kwargs.setdefault("soft_overlong", {})
        overlong.setdefault("max_completion_len", max_completion_length)
        overlong.setdefault("soft_punish_cache", max(1, max_completion_length // 4))


def check_tokenizer_early(script_args, method_args, model_args, local_only: bool = False):
    """Tokenizer checks before the model loads, for every method: the think tags survive TRL's decoding (the sampling
    methods), which tokens end a completion (checks/tokenizer.py), then the method's own check (e.g. S-GRPO:
    `</think>` must be one token).
    Returns (tokenizer, completion-end info), or None when `local_only` (the dry run) finds a hub tokenizer that is not
    in the local cache: it is never fetched."""
    from transformers import AutoTokenizer, GenerationConfig

    from checks.tokenizer import THINK_END, THINK_START, check_think_tags, completion_end_tokens

    _, trainer_cls = method_classes(script_args.method)
    check_tokenizer = getattr(sys.modules[trainer_cls.__module__], "check_tokenizer", None)
    path = os.path.expanduser(model_args.model_name_or_path)
    cached_only = local_only and not os.path.isdir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision,
                                                  local_files_only=cached_only)
    except (OSError, ValueError):
        if local_only:  # a hub tokenizer not in the cache: checked when the run starts
            return None
        raise
    try:
        generation_config = GenerationConfig.from_pretrained(path, revision=model_args.model_revision,
                                                             local_files_only=cached_only)
    except (OSError, ValueError):
        generation_config = None
    tags = (getattr(method_args, "think_start_token", THINK_START), getattr(method_args, "think_end_token", THINK_END))
    try:
        if script_args.method in SAMPLING_METHODS:  # the rewards read decoded completions; DPO decodes nothing
            check_think_tags(tokenizer, tags)
        end = completion_end_tokens(tokenizer, generation_config,
                                    [script_args.eos_token] if script_args.eos_token else None)
        if check_tokenizer is not None:
            check_tokenizer(tokenizer, method_args)
    except ValueError as e:
        raise RecipeError(str(e)) from e
    if end["warning"]:
        print(f"train.py: warning: {end['warning']}", file=sys.stderr, flush=True)
    return tokenizer, end


def resolve_checkpoint(method_args) -> str | None:
    """`resume_from_checkpoint: true|last` resumes from the newest checkpoint in output_dir, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = method_args.resume_from_checkpoint
    if ckpt in (None, False, "", "false", "False"):
        return None
    if ckpt in (True, "true", "True", "last"):
        return get_last_checkpoint(method_args.output_dir) if os.path.isdir(method_args.output_dir) else None
    if not os.path.isdir(os.path.expanduser(ckpt)):
        raise RecipeError(f"resume_from_checkpoint={ckpt!r}: no such folder; give an existing checkpoint-N folder, "
                          "or 'last' for the newest one in output_dir.")
    if not os.path.isfile(os.path.join(os.path.expanduser(ckpt), "trainer_state.json")):
        raise RecipeError(f"resume_from_checkpoint={ckpt!r} holds no trainer_state.json, so it is not a Trainer "
                          "checkpoint; give a checkpoint-N folder inside a run's output_dir, or 'last'.")
    return os.path.expanduser(ckpt)


@dataclass
class Recipe:
    """A recipe that passed every check: the parsed arguments and what the checks found."""

    script_args: RecipeArguments
    method_args: object
    model_args: object
    batch: dict
    files: dict
    resources: dict | None
    checkpoint: str | None
    tokenizer: object = None
    completion_end: dict | None = None


def check_recipe(argv: list[str] | None = None, show=None) -> Recipe:
    """Every check of the module docstring, in its order. In a dry run `show(recipe)` is called before the memory
    verdict, so the plan is printed even when the recipe is then refused."""
    script_args, method_args, model_args = parse(argv)  # 1-4
    batch, files = validate(script_args, method_args, model_args)  # 5-7
    dry = script_args.dry_run
    resources = resource_plan(script_args, method_args, model_args, batch, dry_run=dry)  # 8
    if not dry:  # 9: a hub id that cannot be fetched (HF_HUB_OFFLINE=1, not cached)
        check_model_path(model_args.model_name_or_path, "model_name_or_path", revision=model_args.model_revision,
                         require_available=True)
    checked = check_tokenizer_early(script_args, method_args, model_args, local_only=dry)  # 10
    recipe = Recipe(script_args, method_args, model_args, batch, files, resources,
                    checkpoint=resolve_checkpoint(method_args),
                    tokenizer=checked[0] if checked else None, completion_end=checked[1] if checked else None)
    if dry and show is not None:
        show(recipe)
    check_plan(script_args, resources)  # 11
    return recipe
