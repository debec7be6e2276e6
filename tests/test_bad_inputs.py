"""Bad inputs to scripts/train.py and scripts/evaluate.py: each is refused with a short message that names the key,
value or file, before any model loads (issue 14). The tables run in this process (train.main / evaluate.main,
dry runs where there is one); a few cases run the real scripts to check the exit status and that no traceback is
printed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402

from checks.inputs import InputError, run_cli  # noqa: E402

MODEL = str(ROOT / "synthetic" / "base")  # a shipped local checkpoint: a model path that exists, no fixture needed
DATA = str(ROOT / "recipes" / "tiny" / "data.jsonl")
BASE_RECIPE = {**yaml.safe_load((ROOT / "recipes/tiny/grpo.yaml").read_text()), "model_name_or_path": MODEL,
               "dataset_name": DATA}
DROP = object()  # a recipe change that removes the key


def load_evaluate():
    """scripts/evaluate.py under the module name tests/test_evaluate.py uses, so one copy is loaded."""
    name = "_script_evaluate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "evaluate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def files(tmp_path):
    """Malformed files, written on demand: files(name, text) -> path."""

    def write(name: str, text: str | bytes = "") -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    return write


def assert_short(message: str, *named: str) -> None:
    assert "Traceback" not in message
    assert len(message.splitlines()) <= 3, message
    for text in named:
        assert text in message, f"{text!r} not named in: {message}"


# (id, recipe changes, extra command line, texts the message must name). Values that are callables get the
# `files` fixture and return the value (a path to a malformed file).
TRAIN_CASES = [
    # -- paths reported as what they are
    ("model-missing-relative", {"model_name_or_path": "./no/such/model"}, [], ["model_name_or_path", "./no/such/model"]),
    ("model-missing-absolute", {"model_name_or_path": "/no/such/model"}, [], ["model_name_or_path", "/no/such/model"]),
    ("model-missing-home", {"model_name_or_path": "~/no-such-model-xyz"}, [], ["model_name_or_path", "no such folder"]),
    ("model-missing-under-existing-dir", {"model_name_or_path": "recipes/no-such-model"}, [],
     ["model_name_or_path", "recipes/no-such-model"]),
    ("model-folder-without-config", {"model_name_or_path": "recipes/tiny"}, [], ["model_name_or_path", "config.json"]),
    ("model-is-a-file", {"model_name_or_path": DATA}, [], ["model_name_or_path", "is a file"]),
    ("model-bad-hub-id", {"model_name_or_path": "not a model!"}, [], ["model_name_or_path", "namespace/name"]),
    ("model-adapter-only", {"model_name_or_path": lambda f: str(Path(f("adapter/adapter_config.json", "{}")).parent)},
     [], ["model_name_or_path", "LoRA adapter"]),
    ("data-missing", {"dataset_name": "data/none.jsonl"}, [], ["dataset_name", "data/none.jsonl", "no such file"]),
    ("data-folder", {"dataset_name": "recipes/tiny/"}, [], ["dataset_name", "is a folder"]),
    ("accelerate-config-missing", {}, ["--accelerate_config", "nowhere.yaml"], ["--accelerate_config", "nowhere.yaml"]),
    ("accelerate-config-bad-yaml", {}, ["--accelerate_config", lambda f: f("a.yaml", "num_processes: [1\n")],
     ["--accelerate_config", "not valid YAML"]),
    ("accelerate-config-zero-processes", {}, ["--accelerate_config", lambda f: f("a.yaml", "num_processes: 0\n")],
     ["num_processes", "a.yaml"]),
    ("deepspeed-config-missing", {"deepspeed": "ds_none.json"}, [], ["deepspeed", "ds_none.json"]),
    # -- data files the dry run reads
    ("data-empty", {"dataset_name": lambda f: f("empty.jsonl")}, [], ["dataset_name", "empty.jsonl", "empty"]),
    ("data-blank-lines", {"dataset_name": lambda f: f("blank.jsonl", "\n \n")}, [], ["dataset_name", "no rows"]),
    ("data-malformed-line", {"dataset_name": lambda f: f("bad.jsonl", '{"question": "q", "answer": "1"}\n{"question": '
                                                                     '"q2", "answer": 2,}\n')},
     [], ["dataset_name", "bad.jsonl", "line 2"]),
    ("data-line-not-object", {"dataset_name": lambda f: f("list.jsonl", "[1, 2]\n")}, [], ["dataset_name", "line 1"]),
    ("data-not-utf8", {"dataset_name": lambda f: f("latin.jsonl", b'{"question": "\xe9"}\n')}, [], ["UTF-8"]),
    ("data-unsupported-suffix", {"dataset_name": lambda f: f("data.txt", "question,answer\n")}, [],
     ["dataset_name", "unsupported file type", ".txt"]),
    ("data-no-question-column", {"question_column": "problem"}, [], ["question_column='problem'", "data.jsonl"]),
    ("data-no-answer-column", {"answer_column": "solution"}, [], ["answer_column='solution'"]),
    ("data-csv-no-column", {"dataset_name": lambda f: f("d.csv", "q,a\nx,1\n")}, [], ["question_column", "d.csv"]),
    ("data-json-list-of-scalars", {"dataset_name": lambda f: f("d.json", "[1, 2]")}, [], ["d.json", "not an object"]),
    ("data-bad-hub-name", {"dataset_name": "bad name!"}, [], ["dataset_name", "bad name!"]),
    # -- runs that would silently do nothing, or something else
    ("max-steps-zero", {"max_steps": 0}, [], ["max_steps", ">= 1"]),
    ("max-steps-negative", {"max_steps": -5}, [], ["max_steps", "-1"]),
    ("learning-rate-zero", {"learning_rate": 0}, [], ["learning_rate", "> 0"]),
    ("max-train-samples-negative", {"max_train_samples": -4}, [], ["max_train_samples", ">= 1"]),
    ("max-train-samples-zero", {"max_train_samples": 0}, [], ["max_train_samples"]),
    ("epochs-zero", {"max_steps": DROP, "num_train_epochs": 0}, [], ["num_train_epochs", "> 0"]),
    # -- types and ranges, from the dataclass field types and the rules by name
    ("int-given-list", {"max_steps": [1, 2]}, [], ["max_steps", "an integer"]),
    ("int-given-empty", {"max_steps": None}, [], ["max_steps", "empty"]),
    ("int-given-float", {"max_steps": 2.5}, [], ["max_steps", "an integer"]),
    ("int-given-word", {"per_device_train_batch_size": "eight"}, [], ["per_device_train_batch_size", "eight"]),
    ("float-given-word-cli", {}, ["--learning_rate", "fast"], ["learning_rate", "fast"]),
    ("int-given-word-cli", {}, ["--max_steps", "many"], ["max_steps", "many"]),
    ("learning-rate-negative", {"learning_rate": -1.0e-5}, [], ["learning_rate"]),
    ("completion-length-zero", {"max_completion_length": 0}, [], ["max_completion_length", ">= 1"]),
    ("temperature-negative", {"temperature": -0.7}, [], ["temperature", "> 0"]),
    ("batch-size-zero", {"per_device_train_batch_size": 0}, [], ["per_device_train_batch_size", ">= 1"]),
    ("grad-accum-zero", {}, ["--gradient_accumulation_steps", "0"], ["gradient_accumulation_steps"]),
    ("num-generations-zero", {"num_generations": 0}, [], ["num_generations", ">= 1"]),
    ("lora-r-zero", {"use_peft": True, "lora_r": 0}, [], ["lora_r", ">= 1"]),
    ("lora-dropout-above-one", {"lora_dropout": 1.5}, [], ["lora_dropout", "[0, 1]"]),
    ("reward-weight-word", {"reward_weights": [1.0, "x"]}, [], ["reward_weights[1]", "'x'"]),
    ("reward-weight-yaml-text", {"reward_weights": [1.0, "1e-3"]}, [], ["reward_weights[1]", "1.0e-3"]),
    ("reward-weights-scalar", {"reward_weights": 1.0}, [], ["reward_weights", "a list"]),
    ("num-processes-negative", {}, ["--num_processes", "-3"], ["num_processes", ">= 1"]),
    ("vllm-mode-unknown", {"vllm_mode": "remote"}, [], ["vllm_mode", "remote", "colocate"]),
    ("vllm-length-below-completion", {"vllm_max_model_length": 16}, [], ["vllm_max_model_length", "32"]),
    ("vllm-memory-zero", {"vllm_gpu_memory_utilization": 0}, [], ["vllm_gpu_memory_utilization", "(0, 1]"]),
    ("top-p-above-one", {"top_p": 1.5}, [], ["top_p"]),
    ("bool-given-word", {"use_vllm": "maybe"}, [], ["use_vllm", "true or false"]),
    ("str-given-number", {"dataset_config": 2023}, [], ["dataset_config", "quote it"]),
    ("choice-from-metadata", {"dtype": "float8"}, [], ["dtype", "float8"]),
    ("seed-negative", {"seed": -1}, [], ["seed", ">= 0"]),
    ("save-steps-zero", {"save_steps": 0}, [], ["save_steps", "> 0"]),
    ("unknown-key-cli", {}, ["--lerning_rate", "1e-5"], ["lerning_rate", "learning_rate"]),
    ("config-without-value", None, ["--config"], ["--config"]),
    ("method-unknown-cli", {}, ["--method", "ppo"], ["ppo"]),
]


def _resolve(value, files):
    return value(files) if callable(value) else value


def _train_argv(tmp_path, files, changes, extra, dry_run=True) -> list[str]:
    extra = [_resolve(v, files) for v in extra]
    if changes is None:
        return [*extra]
    recipe = dict(BASE_RECIPE)
    for key, value in changes.items():
        if value is DROP:
            recipe.pop(key, None)
        else:
            recipe[key] = _resolve(value, files)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path), *(["--dry_run"] if dry_run else []), *extra]


def test_base_recipe_is_valid(tmp_path, files, capsys):
    """The table's starting point passes, so every case below fails for its own change only."""
    assert train.main(_train_argv(tmp_path, files, {}, [])) is None
    plan = json.loads(capsys.readouterr().out)
    assert plan["model_source"].startswith("local folder") and plan["dataset_source"].startswith("local file")


def test_one_list_item_on_the_command_line_is_a_list(tmp_path, files, capsys):
    """`--reward_funcs accuracy --reward_weights 1.0`: one token after a list option is a one-item list."""
    argv = _train_argv(tmp_path, files, {}, ["--reward_funcs", "accuracy", "--reward_weights", "1.0"])
    assert train.main(argv) is None
    assert json.loads(capsys.readouterr().out)["rewards"] == ["accuracy"]


@pytest.mark.parametrize("changes, extra, named", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses(tmp_path, files, changes, extra, named):
    with pytest.raises(InputError) as info:
        train.main(_train_argv(tmp_path, files, changes, extra))
    assert_short(str(info.value), *named)


@pytest.mark.parametrize("where", ["recipe", "command line"])
@pytest.mark.parametrize("text", [None, "{not json"], ids=["missing", "not-json"])
def test_bad_deepspeed_file_leaves_no_global_config(tmp_path, files, where, text):
    """TrainingArguments registers its DeepSpeed config in a global weakref before reading the file. A failure there,
    kept alive by the traceback, once made every later in-process model load as if ZeRO-3 were on (a CI machine
    whose garbage collector ran later than ours: 33 failures). The file is checked before the config classes."""
    from transformers.integrations import deepspeed as hf_deepspeed

    path = tmp_path / "ds.json"
    if text is not None:
        path.write_text(text)
    changes, extra = ({"deepspeed": str(path)}, []) if where == "recipe" else ({}, ["--deepspeed", str(path)])
    with pytest.raises(InputError) as info:
        train.main(_train_argv(tmp_path, files, changes, extra))
    assert_short(str(info.value), "deepspeed", "ds.json")
    assert hf_deepspeed.deepspeed_config() is None and not hf_deepspeed.is_deepspeed_zero3_enabled()


YAML_CASES = [
    ("duplicate-key", "learning_rate: 1.0e-6\nlearning_rate: 1.0\n", ["learning_rate", "twice"]),
    ("duplicate-nested-key", "reward_kwargs:\n  accuracy: {}\n  accuracy: {scale: pm1}\n", ["accuracy", "twice"]),
    ("not-yaml", "learning_rate: [1\n", ["not valid YAML"]),
    ("not-a-mapping", "- a\n- b\n", ["mapping"]),
]


@pytest.mark.parametrize("text, named", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_train_refuses_recipe_text(tmp_path, text, named):
    base = "" if text.startswith("-") else yaml.safe_dump({k: v for k, v in BASE_RECIPE.items()
                                                            if k not in ("learning_rate", "reward_kwargs")})
    path = tmp_path / "recipe.yaml"
    path.write_text(base + text)
    with pytest.raises(InputError) as info:
        train.main(["--config", str(path), "--dry_run"])
    assert_short(str(info.value), *named, "recipe.yaml")


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError) as info:
        train.main(["--config", str(tmp_path / "none.yaml"), "--dry_run"])
    assert_short(str(info.value), "--config", "none.yaml", "does not exist")


@pytest.mark.parametrize("changes", [{"dataset_name": lambda f: f("empty.jsonl")},
                                     {"model_name_or_path": "./missing-model"}], ids=["empty-data", "missing-model"])
def test_real_run_refuses_before_loading(tmp_path, files, monkeypatch, changes):
    """Without --dry_run the same checks run, before the tokenizer or the model is loaded."""
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("nothing may load for a bad input")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
    with pytest.raises(InputError):
        train.main(_train_argv(tmp_path, files, {**changes, "output_dir": str(tmp_path / "out")}, [], dry_run=False))


def test_hub_model_not_cached_offline_is_refused_before_loading(tmp_path, files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as info:
        train.main(_train_argv(tmp_path, files, {"model_name_or_path": "no-such-org/no-such-model-xyz",
                                                 "output_dir": str(tmp_path / "out")}, [], dry_run=False))
    assert_short(str(info.value), "no-such-org/no-such-model-xyz", "HF_HUB_OFFLINE")


def test_dry_run_says_hub_ids_are_not_checked(tmp_path, files, capsys):
    train.main(_train_argv(tmp_path, files, {"model_name_or_path": "Qwen/Qwen3-8B", "dataset_name": "zwhe99/x"}, []))
    plan = json.loads(capsys.readouterr().out)
    assert "hub id Qwen/Qwen3-8B" in plan["model_source"] and "hub dataset zwhe99/x" in plan["dataset_source"]


# ------------------------------------------------------------------------------------------ scripts/evaluate.py

EVAL_CASES = [
    ("unknown-benchmark", ["--benchmarks", "mmlu"], ["mmlu"]),
    ("budget-negative", ["--thinking_budgets", "-5"], ["--thinking_budgets"]),
    ("budget-word", ["--thinking_budgets", "many"], ["--thinking_budgets", "many"]),
    ("samples-word", ["--samples", "gsm8k=many"], ["--samples", "gsm8k=many"]),
    ("samples-zero", ["--samples", "gsm8k=0"], ["--samples"]),
    ("samples-no-equals", ["--samples", "gsm8k"], ["--samples"]),
    ("benchmarks-empty", ["--benchmarks", ""], ["--benchmarks", "empty"]),
    ("temperature-negative", ["--temperature", "-1"], ["--temperature"]),
    ("top-p-zero", ["--top_p", "0"], ["--top_p"]),
    ("limit-zero", ["--limit", "0"], ["--limit", ">= 1"]),
    ("limit-word", ["--limit", "ten"], ["--limit", "ten"]),
    ("batch-size-zero", ["--batch_size", "0"], ["--batch_size"]),
    ("max-tokens-zero", ["--max_tokens", "0"], ["--max_tokens"]),
    ("num-samples-zero", ["--num_samples", "0"], ["--num_samples"]),
    ("gpu-memory-above-one", ["--gpu_memory_utilization", "2"], ["--gpu_memory_utilization", "(0, 1]"]),
    ("backend-unknown", ["--backend", "tpu"], ["--backend", "tpu"]),
    ("unknown-flag", ["--temprature", "0.6"], ["--temprature"]),
    ("chat-kwargs-not-json", ["--chat_template_kwargs", "{enable_thinking}"], ["--chat_template_kwargs"]),
    ("model-missing-path", ["--model", "./no/such/ckpt"], ["--model", "./no/such/ckpt"]),
    ("model-folder-without-config", ["--model", "recipes"], ["--model", "config.json"]),
    ("base-model-missing", ["--base_model", "/no/base"], ["--base_model", "/no/base"]),
    ("tokenizer-missing", ["--tokenizer", "./no/tok"], ["--tokenizer", "./no/tok"]),
    ("local-benchmark-missing", ["--benchmarks", "data/none.jsonl"], ["--benchmarks", "data/none.jsonl"]),
    ("local-benchmark-empty", ["--benchmarks", lambda f: f("e.jsonl")], ["--benchmarks", "e.jsonl", "empty"]),
    ("local-benchmark-column", ["--benchmarks", DATA, "--question_column", "problem"], ["--question_column"]),
    ("benchmark-file-missing", ["--benchmarks", "gsm8k", "--benchmark_files", "gsm8k=./none.jsonl"],
     ["--benchmark_files", "none.jsonl"]),
    ("benchmark-file-columns", ["--benchmarks", "aime24", "--benchmark_files", f"aime24={DATA}"],
     ["--benchmark_files", "aime24", "problem"]),
    ("regrade-without-dir", ["--regrade"], ["--output_dir"]),
    ("regrade-empty-dir", ["--regrade", "--output_dir", lambda f: str(Path(f("x/none.txt")).parent)], ["--regrade"]),
    ("config-missing", ["--config", "none.yaml"], ["--config", "none.yaml"]),
    ("config-unknown-key", ["--config", lambda f: f("c.yaml", "samples_per_q: 3\n")], ["samples_per_q"]),
    ("config-duplicate-key", ["--config", lambda f: f("c.yaml", "limit: 2\nlimit: 3\n")], ["limit", "twice"]),
    ("config-null", ["--config", lambda f: f("c.yaml", "temperature:\n")], ["temperature", "empty"]),
    ("config-float-for-int", ["--config", lambda f: f("c.yaml", "limit: 2.5\n")], ["--limit", "2.5"]),
    ("config-word-for-float", ["--config", lambda f: f("c.yaml", "temperature: hot\n")], ["--temperature", "hot"]),
    ("config-bad-choice", ["--config", lambda f: f("c.yaml", "backend: tpu\n")], ["--backend", "tpu"]),
    ("config-flag-not-bool", ["--config", lambda f: f("c.yaml", "no_full: 'yes'\n")], ["--no_full"]),
]


@pytest.mark.parametrize("extra, named", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_evaluate_refuses(tmp_path, files, monkeypatch, extra, named):
    monkeypatch.chdir(ROOT)
    extra = [_resolve(v, files) for v in extra]
    argv = ([] if "--model" in extra or "--regrade" in extra else ["--model", "some/model"]) + extra
    argv += ["--output_dir", str(tmp_path / "out")] if "--output_dir" not in argv and "--regrade" not in argv else []
    with pytest.raises(InputError) as info:
        load_evaluate().main(argv)
    assert_short(str(info.value), *named)
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad input"


# ------------------------------------------------------------------------------------------ the CLI wrapper


def test_run_cli_one_line_or_traceback_with_debug(monkeypatch):
    def bad():
        raise InputError("`max_steps` must be >= 1")

    monkeypatch.delenv("CONCISE_RL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(bad, "train.py")
    assert str(info.value.code).startswith("train.py: error: `max_steps` must be >= 1")
    monkeypatch.setenv("CONCISE_RL_DEBUG", "1")
    with pytest.raises(InputError):
        run_cli(bad, "train.py")

    def bug():
        raise KeyError("a genuine bug keeps its traceback")

    monkeypatch.delenv("CONCISE_RL_DEBUG")
    with pytest.raises(KeyError):
        run_cli(bug, "train.py")


SCRIPT_CASES = [  # the real scripts: exit status, stderr; the first two exit before trl is imported
    ("train-missing-config", ["scripts/train.py", "--config", "none.yaml", "--dry_run"], ["none.yaml"]),
    ("train-duplicate-key", ["scripts/train.py", "--config", "DUP", "--dry_run"], ["learning_rate", "twice"]),
    ("train-word-for-number", ["scripts/train.py", "--config", "recipes/tiny/grpo.yaml", "--dry_run",
                               "--max_steps", "many"], ["max_steps", "many"]),
    ("evaluate-unknown-benchmark", ["scripts/evaluate.py", "--model", "m", "--benchmarks", "mmlu"], ["mmlu"]),
    ("evaluate-samples-word", ["scripts/evaluate.py", "--model", "m", "--samples", "gsm8k=many"], ["--samples"]),
]


@pytest.mark.parametrize("cmd, named", [c[1:] for c in SCRIPT_CASES], ids=[c[0] for c in SCRIPT_CASES])
def test_scripts_exit_with_one_line(tmp_path, cmd, named):
    dup = tmp_path / "dup.yaml"
    dup.write_text("method: grpo\nlearning_rate: 1.0e-6\nlearning_rate: 1.0\n")
    cmd = [str(dup) if c == "DUP" else c for c in cmd]
    env = {k: v for k, v in os.environ.items() if k != "CONCISE_RL_DEBUG"}
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(error) == 1, proc.stderr[-2000:]
    assert_short(error[0], *named)
