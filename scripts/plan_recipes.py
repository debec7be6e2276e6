"""The memory, time and volume plan of every real recipe, as the table in recipes/README.md.

    python scripts/plan_recipes.py                       # every recipe under recipes/<model>/, on the launch it names
    python scripts/plan_recipes.py recipes/qwen3-8b/sgrpo.yaml --accelerate_config accelerate_configs/zero2.yaml

Each recipe goes through train.py's own checks and dry-run plan (no model is loaded) for an 80 GiB and a 141 GiB GPU;
a recipe that does not fit is listed with the plan's fix rather than stopping the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402

TINY = ("tiny", "synthetic", "eval")


def real_recipes() -> list[Path]:
    return sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name not in TINY)


def plan_for(recipe: Path, accelerate_config: str | None, gpu_gib: float) -> dict:
    # The launch the recipe names (its accelerate_config key: one GPU for recipes/qwen3-1.7b/ and the like), unless
    # --accelerate_config overrides it; ZeRO-3 on 8 GPUs for a recipe that names none.
    if accelerate_config is None and not yaml.safe_load(recipe.read_text()).get("accelerate_config"):
        accelerate_config = str(ROOT / "accelerate_configs" / "zero3.yaml")
    argv = ["--config", str(recipe), "--dry_run", "--gpu_memory_gib", str(gpu_gib)]
    if accelerate_config is not None:
        argv += ["--accelerate_config", accelerate_config]
    with contextlib.redirect_stderr(io.StringIO()):
        script_args, method_args, model_args = train.parse(argv)
        batch, _ = train.validate(script_args, method_args, model_args)
        out = train.resource_plan(script_args, method_args, model_args, batch, dry_run=True)
    return {"batch": batch, **out}


def shape(micro_batch: dict) -> str:
    """"rows x tokens", or S-GRPO's packed serial groups: "rows as N packed x tokens"."""
    if "packed_sequences" in micro_batch:
        return (f"{micro_batch['rows']} as {micro_batch['packed_sequences']} packed x "
                f"{micro_batch['tokens_per_packed_sequence']}")
    return f"{micro_batch['rows']} x {micro_batch['tokens_per_row']}"


def row(recipe: Path, plans: dict[float, dict]) -> str:
    p80, p141 = plans[80.0], plans[141.0]
    m, v = p80["memory"], p80["time_and_volume"]
    vllm = m["vllm"] or {}
    waves = "/".join(str(w) for w in v.get("vllm_waves_per_generation_call", [])) or "-"
    mark = lambda mem: f"{mem['peak_gib']:.0f}" + ("" if mem["fits"] else " (does not fit)")  # noqa: E731
    batch = p80["batch"]
    return (f"| `{recipe.parent.name}/{recipe.name}` | {batch['questions_per_optimizer_step']:g} x "
            f"{batch['group_size_G']} | {shape(m['micro_batch'])} | "
            f"{mark(m)} | {vllm.get('concurrent_max_length_sequences', '-')} | {waves} | "
            f"{v['worst_case_tokens_sampled_per_step'] / 1e6:.1f}M | {v.get('worst_case_generation_seconds', '-')} | "
            f"{v.get('ddp_timeout', '-')} | {v['checkpoint_gib']:.0f} x {(v['save_total_limit'] or 0) + 1} | "
            f"{mark(p141['memory'])} | {p141['memory']['vllm']['concurrent_max_length_sequences'] if p141['memory']['vllm'] else '-'} |")


HEADER = ("| recipe | questions x G per step | micro-batch rows x tokens | peak GiB / 80 | KV: max-length rollouts at once "
          "(80) | vLLM waves per call (80) | tokens sampled per step (worst) | worst generation step s (H100) | "
          "ddp_timeout | checkpoint GiB x kept | peak GiB / 141 (H200) | KV rollouts at once (141) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe files (default: every real recipe)")
    parser.add_argument("--accelerate_config", default=None,
                        help="plan every recipe for this launch (default: the one each recipe names, else ZeRO-3 x 8)")
    args = parser.parse_args(argv)
    recipes = [Path(r) for r in args.recipes] or real_recipes()
    print(HEADER)
    failures = 0
    for recipe in recipes:
        try:
            plans = {gpu: plan_for(recipe, args.accelerate_config, gpu) for gpu in (80.0, 141.0)}
        except train.InputError as err:
            failures += 1
            print(f"| `{recipe}` | refused: {err} |")
            continue
        print(row(recipe, plans))
        for gpu, plan in plans.items():
            if not plan["memory"]["fits"]:
                failures += 1
                print(f"<!-- {recipe} on {gpu:g} GiB: {plan['memory']['fix']} -->")
            for warning in plan["time_and_volume"]["warnings"]:
                print(f"<!-- {recipe} on {gpu:g} GiB: warning: {warning} -->")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
