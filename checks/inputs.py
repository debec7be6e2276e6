"""Input checks shared by scripts/train.py and scripts/evaluate.py: everything a user types or points at is checked
here before any model weights or engines load, and a bad input becomes one `InputError` whose message names the
key, value or file and says what to change.

- `run_cli`: the scripts' `__main__` wrapper: an InputError exits non-zero with one line, no traceback
  (`CONCISE_RL_DEBUG=1` shows the traceback instead).
- `load_yaml_mapping`: recipes and evaluation configs; a key given twice is an error, not "the last one wins".
- `check_values` / `check_argparse_values`: types come from the dataclass field types (train.py) or the argparse
  option types (evaluate.py); ranges from RANGE_RULES, a small table of rules by key name where a type cannot say
  (a learning rate must be > 0, a count >= 1).
- `check_model_path`, `check_data_source`, `check_accelerate_config`, `check_json_file`: files and hub ids.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

DEBUG_ENV = "CONCISE_RL_DEBUG"


class InputError(ValueError):
    """A bad input (recipe key, option, file): the message names it and says what to change."""


def run_cli(main, prog: str) -> None:
    """Run `main()`; an InputError ends the process with `<prog>: error: <message>` and exit status 1.
    With CONCISE_RL_DEBUG=1 the error is raised with its traceback instead."""
    try:
        main()
    except InputError as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        sys.exit(f"{prog}: error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)")


# ---------------------------------------------------------------------------------------------------- YAML


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one)."""

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key `{key}` is given twice (lines {first} and {key_node.start_mark.line + 1}); "
                        "keep one", key_node.start_mark)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml_mapping(path: str, what: str) -> dict:
    """A YAML file that must hold a mapping; `what` names the option that gave the path (e.g. `--config`)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        state = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"{what} {path}: {state}; give the path of a YAML file.")
    try:
        data = yaml.load(file.read_text(), Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{what} {path}:{where}: not valid YAML: {problem}.") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path}: not a text file.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: must be a YAML mapping of key: value, got a {type(data).__name__}.")
    return data


def check_json_file(path: str, what: str) -> dict:
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"{what}: {path} does not exist; give the path of a JSON file.")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{what}: {path} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path} must hold a JSON object.")
    return data


def check_accelerate_config(path: str, what: str = "accelerate_config") -> int:
    """An accelerate config file that exists and parses; returns its process count. Accelerate's `num_processes`
    is the total over all machines (`--num_processes` of `accelerate launch`), not a per-machine count. A DeepSpeed
    config file it names must exist and parse too."""
    config = load_yaml_mapping(path, what)
    counts = {}
    for key in ("num_processes", "num_machines"):
        value = config.get(key, 1)
        if value is None:
            value = 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} {path}: `{key}` must be an integer >= 1, got {value!r}.")
        counts[key] = value
    deepspeed = config.get("deepspeed_config") or {}
    if not isinstance(deepspeed, dict):
        raise InputError(f"{what} {path}: `deepspeed_config` must be a mapping, got {deepspeed!r}.")
    if deepspeed.get("deepspeed_config_file"):
        check_json_file(str(deepspeed["deepspeed_config_file"]), f"{what} {path}: deepspeed_config_file")
    if counts["num_processes"] % counts["num_machines"]:
        raise InputError(f"{what} {path}: `num_processes` ({counts['num_processes']}) is the total over all machines "
                         f"and must be a multiple of `num_machines` ({counts['num_machines']}).")
    return counts["num_processes"]


# ----------------------------------------------------------------------------------------- types and ranges

# Rules by key name, where the type alone cannot say: (pattern, test, requirement). The first matching pattern
# decides; keys that match none are only type-checked. Applied to the values a user sets.
_COUNT = (lambda v: v >= 1, ">= 1")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
RANGE_RULES: list[tuple[str, Any, str]] = [
    (r"^max_steps$", lambda v: v == -1 or v >= 1, ">= 1 (or -1: train num_train_epochs epochs)"),
    (r"^local_rank$", lambda v: True, ""),
    (r"(^|_)learning_rate$|^(temperature|num_train_epochs|repetition_penalty|adam_epsilon)$"
     r"|^(logging|save|eval)_steps$|_timeout$|^sapo_temperature_|_gib$", *_POSITIVE),
    (r"(^|_)top_p$|_utilization$", lambda v: 0 < v <= 1, "in (0, 1]"),
    (r"^(min_p|lora_dropout|adam_beta[12]|warmup_ratio|label_smoothing_factor)$|_quantile$",
     lambda v: 0 <= v <= 1, "in [0, 1]"),
    (r"_port$", lambda v: 1 <= v <= 65535, "a port in [1, 65535]"),
    (r"^(seed|data_seed|choice_seed|top_k|warmup_steps|beta|weight_decay|max_grad_norm|delta|eval_delay)$"
     r"|^epsilon|^entropy_|_workers$|_penalty$|_delta$|^anneal_steps$|_index$", *_NON_NEGATIVE),
    (r"^num_|_size$|_length$|_len$|_tokens$|_steps$|_samples$|_iterations$|_limit$|^limit$|^lora_(r|alpha)$"
     r"|^max_|_shards$", *_COUNT),
]

# String keys with a fixed set of values that the dataclass type does not spell out.
CHOICES: dict[str, tuple[str, ...]] = {
    "vllm_mode": ("colocate", "server"),
}

_TRUE = {"true", "yes", "y", "t", "1", "on"}
_FALSE = {"false", "no", "n", "f", "0", "off"}


def range_error(key: str, value, rules=RANGE_RULES) -> str | None:
    """The requirement `value` breaks, or None (also when no rule names `key`)."""
    for pattern, test, requirement in rules:
        if re.search(pattern, key):
            return None if test(value) else requirement
    return None


def _options(hint) -> tuple[list, bool]:
    """The non-None members of a type hint and whether None is allowed."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = list(typing.get_args(hint))
    else:
        members = [hint]
    allows_none = type(None) in members
    return [m for m in members if m is not type(None)], allows_none


def _kind(member) -> str:
    """'bool', 'int', 'float', 'str', 'list', 'dict' or 'other' for one member of a type hint."""
    origin = typing.get_origin(member) or member
    if origin is typing.Literal:
        return "other"
    if isinstance(origin, type):
        for name, cls in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list),
                          ("dict", dict)):
            if issubclass(origin, cls):
                return name
    return "other"


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "list": "a list", "dict": "a mapping"}


def _parse_scalar(kind: str, value) -> tuple[bool, Any]:
    """(ok, converted) for a scalar from YAML or the command line against 'int' / 'float' / 'bool' / 'str'."""
    if kind == "bool":
        if isinstance(value, bool):
            return True, value
        if isinstance(value, int) and value in (0, 1):
            return True, bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return True, value.lower() in _TRUE
        return False, None
    if kind == "int":
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, str):
            try:
                return True, int(value.strip())
            except ValueError:
                return False, None
        return False, None
    if kind == "float":
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int | float):
            return (not math.isnan(value)), float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                return False, None
            return (not math.isnan(number)), number
        return False, None
    if kind == "str":
        return isinstance(value, str), value
    return True, value


def check_value(key: str, value, hint, source: str, from_text: bool, rules=RANGE_RULES):
    """Check one user-set value against its field's type hint and the range rules; returns the converted value.

    `from_text`: the value is one command-line token (or a list of them), not a YAML value."""
    members, allows_none = _options(hint)
    kinds = {_kind(m) for m in members}
    where = f"{source}: `{key}`"
    if value is None or (from_text and value in ("None", "null") and allows_none):
        if allows_none or "other" in kinds:
            return None
        raise InputError(f"{where} is empty; give {_TYPE_WORDS.get(min(kinds), 'a value')}.")
    if "other" in kinds or not kinds:
        return value
    if "str" in kinds and len(kinds) > 1 and "list" not in kinds:  # e.g. `int | str`, `dict | str`: free-form
        return value
    if "list" in kinds and (isinstance(value, list | tuple) or from_text or kinds == {"list"}):
        list_hint = next(m for m in members if _kind(m) == "list")
        element_args = typing.get_args(list_hint)
        element_kind = _kind(element_args[0]) if element_args else "other"
        if not isinstance(value, list | tuple):
            if element_kind == "str" and isinstance(value, str):
                return value  # a single name where a list of names goes (e.g. lora_target_modules: all-linear)
            if not from_text:
                raise InputError(f"{where} must be a list, e.g. [{value!r}]; got {value!r}.")
            value = [value]  # `--reward_weights 1.0`: one token is a one-item list (nargs="+")
        out = []
        for i, item in enumerate(value):
            ok, converted = _parse_scalar(element_kind, item)
            if element_kind in ("float", "int") and not from_text and isinstance(item, str):
                ok = False  # a YAML string inside a list reaches the trainer as a string (no conversion)
            if not ok:
                hint_text = (" (YAML reads 1e-3 as text: write 1.0e-3)"
                             if element_kind == "float" and not from_text and isinstance(item, str) else "")
                raise InputError(f"{source}: `{key}[{i}]` = {item!r} is not {_TYPE_WORDS.get(element_kind, 'valid')}"
                                 f"{hint_text}; fix that entry.")
            out.append(converted)
        return out
    for kind in ("bool", "int", "float", "str", "dict"):
        if kind not in kinds:
            continue
        if kind == "dict":
            if isinstance(value, dict) or (from_text and isinstance(value, str)):
                return value
            continue
        ok, converted = _parse_scalar(kind, value)
        if ok:
            if kind in ("int", "float"):
                requirement = range_error(key, converted, rules)
                if requirement:
                    raise InputError(f"{where} = {value!r}: must be {requirement}; change it.")
            if key in CHOICES and converted not in CHOICES[key]:
                raise InputError(f"{where} = {value!r}: must be one of {list(CHOICES[key])}.")
            return converted
    wanted = " or ".join(_TYPE_WORDS[k] for k in ("bool", "int", "float", "str", "list", "dict") if k in kinds)
    got = f"{type(value).__name__} {value!r}" if not from_text else repr(value)
    extra = ""
    if kinds & {"int"} and isinstance(value, float):
        extra = " (a whole number, no decimal point)"
    if kinds == {"str"} and isinstance(value, int | float | bool):
        extra = f" (quote it: {key}: '{value}')"
    raise InputError(f"{where} must be {wanted}{extra}; got {got}.")


def field_hints(dataclass_types) -> dict[str, Any]:
    """name -> type hint for every field of the dataclasses (the first one that has the name wins)."""
    from dataclasses import fields

    hints: dict[str, Any] = {}
    for cls in dataclass_types:
        resolved = typing.get_type_hints(cls)
        for f in fields(cls):
            hints.setdefault(f.name, resolved.get(f.name, f.type))
    return hints


def field_choices(dataclass_types) -> dict[str, tuple]:
    """Fields whose metadata lists `choices` (argparse checks those only on the command line, not in a YAML)."""
    from dataclasses import fields

    out: dict[str, tuple] = {}
    for cls in dataclass_types:
        for f in fields(cls):
            if "choices" in f.metadata:
                out.setdefault(f.name, tuple(f.metadata["choices"]))
    return out


def field_defaults(dataclass_types) -> dict[str, Any]:
    """name -> default value of every field that has one (a default_factory is called)."""
    from dataclasses import MISSING, fields

    out: dict[str, Any] = {}
    for cls in dataclass_types:
        for f in fields(cls):
            if f.default is not MISSING:
                out.setdefault(f.name, f.default)
            elif f.default_factory is not MISSING:
                out.setdefault(f.name, f.default_factory())
    return out


def check_values(values: dict, dataclass_types, source: str, from_text: bool = False, rules=RANGE_RULES) -> dict:
    """Check user-set values (recipe keys, or command-line tokens with `from_text`) against the dataclasses' field
    types, the range rules and the choices. Unknown keys are left to the caller. Returns the converted values.
    A key left empty (`num_generations:` in YAML is null) whose field has a real default is an error: it would
    replace the default with None and fail far from the recipe."""
    hints = field_hints(dataclass_types)
    choices = field_choices(dataclass_types)
    defaults = field_defaults(dataclass_types)
    out = {}
    for key, value in values.items():
        if key not in hints:
            continue
        empty = value is None or (from_text and value in ("None", "null"))
        if empty and defaults.get(key) is not None:
            raise InputError(f"{source}: `{key}` is empty; give it a value, or remove it to keep the default "
                             f"({defaults[key]!r}).")
        out[key] = converted = check_value(key, value, hints[key], source, from_text, rules)
        if key in choices and converted is not None and isinstance(converted, str) and converted not in choices[key]:
            raise InputError(f"{source}: `{key}` = {value!r}: must be one of {list(choices[key])}.")
    return out


def cli_values(argv: list[str]) -> dict[str, Any]:
    """`--key v1 v2 --flag --k=v` -> {key: 'v1' or ['v1', 'v2'] or True}; tokens are kept as text."""
    out: dict[str, Any] = {}
    key = None
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            key, eq, value = token[2:].partition("=")
            out[key] = [value] if eq else []
            if eq:
                key = None
        elif key is not None:
            out[key].append(token)
    return {k: (True if not v else v[0] if len(v) == 1 else v) for k, v in out.items()}


def check_argparse_values(parser, args, rules=RANGE_RULES, source: str = "") -> None:
    """After argparse: every option's value against its declared type (a YAML config sets defaults, which argparse
    does not convert unless they are strings), its choices and the range rules."""
    import argparse

    where = f"{source}: " if source else ""
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or not action.option_strings:
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            if not isinstance(value, bool):
                raise InputError(f"{where}{flag} must be true or false, got {value!r}.")
            continue
        if value is None:
            if action.default is not None and action.type in (int, float):
                raise InputError(f"{where}{flag} is empty; give {_TYPE_WORDS['int' if action.type is int else 'float']}.")
            continue
        if action.type in (int, float):
            ok, converted = _parse_scalar("int" if action.type is int else "float", value)
            if not ok or (action.type is int and not isinstance(value, int)) or isinstance(value, bool):
                raise InputError(f"{where}{flag} must be {_TYPE_WORDS['int' if action.type is int else 'float']}, "
                                 f"got {value!r}.")
            requirement = range_error(action.dest, converted, rules)
            if requirement:
                raise InputError(f"{where}{flag} = {value!r}: must be {requirement}.")
        elif isinstance(value, list | dict) and action.type is None and action.dest != "chat_template_kwargs":
            raise InputError(f"{where}{flag} must be a single value, got {value!r}.")
        if action.choices is not None and value not in action.choices:
            raise InputError(f"{where}{flag} = {value!r}: must be one of {sorted(action.choices)}.")


# ------------------------------------------------------------------------------------------- models and data

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def is_hub_id(value: str) -> bool:
    """`name` or `namespace/name` as the hub spells them (no `--` or `..`)."""
    return bool(_HUB_ID.match(value)) and "--" not in value and ".." not in value


def looks_like_path(value: str) -> bool:
    """A string meant as a local path rather than a hub id (`namespace/name`): it starts with ./ ../ / or ~, ends
    in a path separator, has a backslash or more than one `/`, or its first part exists here."""
    if value.startswith(("./", "../", "/", "~", ".\\")) or value in (".", ".."):
        return True
    if value.endswith(("/", os.sep)) or "\\" in value or value.count("/") > 1:
        return True
    if Path(value).exists():
        return True
    head = value.split("/")[0]
    return "/" in value and Path(head).exists()


def _hub_cached(repo_id: str, filename: str, revision: str | None) -> bool | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # a malformed id or revision: the caller reports the id
        return None
    return isinstance(found, str)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_model_path(value, key: str, revision: str | None = None, allow_adapter: bool = False,
                     require_available: bool = False) -> str:
    """A model given as a local folder (must exist and hold config.json, or adapter_config.json when
    `allow_adapter`) or a hub id (checked for shape; with `require_available` and HF_HUB_OFFLINE it must be in
    the local cache). Returns a sentence saying which it will use."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"`{key}` is empty: give a hub model id (namespace/name) or a local checkpoint folder.")
    if looks_like_path(value):
        folder = Path(value).expanduser()
        if not folder.exists():
            raise InputError(f"`{key}` {value}: no such folder (resolved to {folder.resolve()}); give an existing "
                             "checkpoint folder, or a hub id such as Qwen/Qwen3-8B.")
        if not folder.is_dir():
            raise InputError(f"`{key}` {value}: is a file; give the checkpoint folder that holds config.json.")
        has_config = (folder / "config.json").is_file()
        has_adapter = (folder / "adapter_config.json").is_file()
        if has_adapter and not has_config:
            if not allow_adapter:
                raise InputError(f"`{key}` {value}: holds a LoRA adapter (adapter_config.json) but no config.json; "
                                 "train from a full model (merge the adapter or give its base model).")
            check_json_file(str(folder / "adapter_config.json"), f"`{key}` {value}: adapter_config.json")
            return f"local LoRA adapter {folder.resolve()}"
        if not has_config:
            raise InputError(f"`{key}` {value}: the folder has no config.json; give a saved checkpoint folder "
                             "(save_pretrained writes config.json) or a hub id.")
        check_json_file(str(folder / "config.json"), f"`{key}` {value}: config.json")
        return f"local folder {folder.resolve()}"
    if not is_hub_id(value):
        raise InputError(f"`{key}` {value!r}: neither an existing local folder nor a hub id of the form "
                         "namespace/name; fix the name or the path.")
    cached = _hub_cached(value, "config.json", revision)
    if require_available and hub_offline() and cached is False:
        raise InputError(f"`{key}` {value}: no such local folder, and as a hub id it is not in the local cache "
                         "while HF_HUB_OFFLINE=1; give an existing checkpoint folder or download the model first.")
    state = "in the local hub cache" if cached else "fetched from the hub when the run starts"
    return f"hub id {value} ({state}; not checked offline)"


def check_data_source(value, key: str, columns: dict[str, str | None] | None = None) -> str:
    """A dataset given as a local file (exists, supported suffix, parses, not empty, has `columns` in its first
    rows) or a hub dataset name (checked for shape only). Returns a sentence saying which it will use."""
    from benchmarks.registry import LOCAL_SUFFIXES, inspect_local_file

    if not isinstance(value, str) or not value.strip():
        raise InputError(f"`{key}` is empty: give a hub dataset name or a local "
                         f"{'/'.join(sorted(LOCAL_SUFFIXES))} file.")
    suffix = Path(value).suffix.lower()
    file_like = suffix in LOCAL_SUFFIXES or suffix in (".txt", ".tsv", ".xlsx", ".xls", ".arrow", ".gz", ".zip",
                                                       ".yaml", ".yml", ".pkl", ".pt")
    if looks_like_path(value) or file_like:
        try:
            n_rows, found = inspect_local_file(value, columns or {})
        except ValueError as err:
            raise InputError(f"`{key}` {err}") from None
        return f"local file {Path(value).expanduser().resolve()} ({found})"
    if not is_hub_id(value):
        raise InputError(f"`{key}` {value!r}: neither an existing local file nor a hub dataset name of the form "
                         "namespace/name; fix the name or the path.")
    return f"hub dataset {value} (loaded from the hub or its cache when the run starts; not checked offline)"


def quiet_parser_class(base: type, help_hint: str = "see --help", prefix: str = "") -> type:
    """A subclass of the argparse parser `base` (argparse.ArgumentParser, TRL's TrlParser) whose errors are one
    InputError line instead of the whole usage text (200+ lines for TrlParser) and exit 2."""

    class QuietParser(base):
        def error(self, message):
            raise InputError(f"{prefix}{message}; {help_hint}.")

    return QuietParser


def quiet_argument_parser(**kwargs):
    import argparse

    return quiet_parser_class(argparse.ArgumentParser)(**kwargs)


PAIR_COLUMNS = ("prompt", "chosen", "rejected")
PAIRS_HINT = ("give a preference file with prompt/chosen/rejected columns: run GFPO with `pairs_output_file` first "
              "and name the file it wrote")


def pair_error(row: dict) -> str | None:
    """What is wrong with one preference row, or None. A prompt is text or a list of {role, content} messages; a
    completion is text or one assistant message whose `content` is the whole sampled text (GFPO's pairs), so that
    scripts/train.py can train on exactly that text."""
    for column in PAIR_COLUMNS:
        value = row.get(column)
        if isinstance(value, str):
            continue
        if not (isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)):
            return f"`{column}` must be text or a list of {{role, content}} messages, got {value!r:.80}"
        if column != "prompt":
            extra = sorted(k for k in value[0] if k not in ("role", "content") and value[0][k] is not None)
            if len(value) != 1 or value[0]["role"] != "assistant" or extra:
                return (f"`{column}` must be one assistant message holding the whole completion in `content`, got "
                        f"{len(value)} message(s) with keys {sorted(value[0])}")
    return None


def check_preference_data(value, key: str = "dataset_name") -> tuple[str, int | None]:
    """A preference dataset (DPO): a local file whose every row has prompt/chosen/rejected (`pair_error`) and that
    holds at least one, or a hub dataset name (checked for shape only). Returns (a sentence saying which it will
    use, the local file's row count or None)."""
    from benchmarks.registry import read_local_rows

    try:
        source = check_data_source(value, key)
    except InputError as err:
        raise InputError(f"{err}; {PAIRS_HINT}.") from None
    if not source.startswith("local file"):
        return source, None
    rows = read_local_rows(value, max_rows=None)
    for number, row in enumerate(rows, start=1):
        missing = [c for c in PAIR_COLUMNS if c not in row]
        if missing:
            raise InputError(f"`{key}` {value}: row {number} has no {'/'.join(missing)} column (it has "
                             f"{sorted(row)}); {PAIRS_HINT}.")
        problem = pair_error(row)
        if problem:
            raise InputError(f"`{key}` {value}: row {number}: {problem}; {PAIRS_HINT}.")
    return f"{source.removesuffix(')')}, {len(rows)} pairs)", len(rows)
