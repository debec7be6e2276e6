"""Reward registry: recipe names -> TRL reward callables.

A recipe's `reward_funcs` lists names; `reward_kwargs` maps a name to keyword arguments.
- A registry name (REWARD_REGISTRY) maps to a factory: `factory(**kwargs)` returns the TRL reward callable.
- `module:function` imports `function` from `module`. Without kwargs it is the reward itself, used as is; with
  kwargs it is a factory, called as `function(**kwargs)` to get the reward.
validate_reward_names checks a recipe's names and kwargs before any model is loaded.
"""

import importlib
import inspect

from rewards.accuracy import AccuracyReward
from rewards.format import FormatReward
from rewards.length import CosineReward, LengthPenaltyReward, soft_overlong
from rewards.truncation import TruncationReward

REWARD_REGISTRY = {
    "accuracy": AccuracyReward,
    "format": FormatReward,
    "length_penalty": LengthPenaltyReward,
    "cosine": CosineReward,
    "soft_overlong": soft_overlong,
    "truncation": TruncationReward,  # DLER (arXiv 2510.15110)
}


def available_rewards() -> list[str]:
    return sorted(REWARD_REGISTRY)


def _unknown(name: str, why: str) -> ValueError:
    return ValueError(
        f"reward_funcs: unknown reward {name!r} ({why}). Use one of {available_rewards()} or an importable "
        "'module:function' (a TRL reward function; with reward_kwargs, a factory returning one)."
    )


def _resolve(name: str):
    """The factory (registry) or function (module:function) that `name` refers to."""
    if name in REWARD_REGISTRY:
        return REWARD_REGISTRY[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise _unknown(name, "not a registry name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise _unknown(name, f"cannot import module {module_name!r}: {err}") from err
    func = getattr(module, attr, None)
    if not callable(func):
        raise _unknown(name, f"module {module_name!r} has no callable {attr!r}")
    return func


def _check_kwargs(name: str, factory, kwargs: dict) -> None:
    """Unknown or missing keyword arguments of the factory -> ValueError naming them."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"reward_kwargs[{name!r}] must be a mapping of keyword arguments, got {kwargs!r}")
    params = inspect.signature(factory).parameters
    accepted = [p for p, param in params.items() if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)]
    takes_any = any(param.kind is param.VAR_KEYWORD for param in params.values())
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"reward_kwargs[{name!r}]: unknown argument(s) {unknown}; {name!r} accepts {accepted}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"reward_kwargs[{name!r}]: {err}; {name!r} accepts {accepted}") from err


def _make(name: str, factory, kwargs: dict):
    _check_kwargs(name, factory, kwargs)
    try:
        return factory(**kwargs)
    except ValueError as err:  # a bad value: say which recipe entry holds it
        raise ValueError(f"reward_kwargs[{name!r}]: {err}") from err


def _check_names(names, reward_kwargs) -> dict:
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValueError(f"reward_funcs must be a list of reward names, got {names!r}")
    if not names:
        raise ValueError(f"reward_funcs is empty: name at least one of {available_rewards()}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"reward_funcs lists {duplicates} more than once; list each reward once")
    reward_kwargs = dict(reward_kwargs or {})
    stray = sorted(set(reward_kwargs) - set(names))
    if stray:
        raise ValueError(f"reward_kwargs has entries {stray} that are not in reward_funcs {list(names)}")
    return reward_kwargs


def validate_reward_names(names, reward_kwargs: dict | None = None) -> None:
    """Raise a ValueError naming the problem if `names` / `reward_kwargs` cannot be built. Builds the registry
    rewards (cheap: they only store settings, which also checks their values) but never calls a
    `module:function` factory."""
    reward_kwargs = _check_names(names, reward_kwargs)
    for name in names:
        factory = _resolve(name)
        kwargs = reward_kwargs.get(name, {})
        if name in REWARD_REGISTRY:
            _make(name, factory, kwargs)
        elif kwargs:
            _check_kwargs(name, factory, kwargs)


def build_reward_funcs(names, reward_kwargs: dict | None = None) -> list:
    """TRL reward callables for `names`, in order; each has a `__name__` (TRL logs rewards as
    `rewards/<__name__>/mean`): the registry name, or the function's own name for `module:function`."""
    reward_kwargs = _check_names(names, reward_kwargs)
    funcs = []
    for name in names:
        factory = _resolve(name)
        kwargs = reward_kwargs.get(name, {})
        if name not in REWARD_REGISTRY and not kwargs:
            func = factory
        else:
            func = _make(name, factory, kwargs)
        if not callable(func):
            raise ValueError(f"reward {name!r}: the factory returned {type(func).__name__}, not a callable")
        if not hasattr(func, "__name__"):
            func.__name__ = name.rpartition(":")[2]
        funcs.append(func)
    return funcs
