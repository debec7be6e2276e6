"""GFPOTrainer on the tiny local model: config validation, every variant, gradients, drop, resume, LoRA, vLLM, 2 ranks.

Most runs use a deterministic `rollout_func` (tests/dist_gfpo.py) so completion lengths vary and do not depend on
the sampling RNG; one variant and the vLLM test use real generation.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("dist_gfpo", HERE / "dist_gfpo.py")
dist_gfpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dist_gfpo)
build_trainer, record_steps = dist_gfpo.build_trainer, dist_gfpo.record_steps


@pytest.fixture(scope="module")
def gfpo():
    import trainers.gfpo as gfpo_module

    return gfpo_module


def cfg(gfpo, **kw):
    base = dict(
        output_dir="/tmp/unused", num_generations=4, per_device_train_batch_size=8, report_to="none", use_cpu=True
    )
    base.update(kw)
    return gfpo.GFPOConfig(**base)


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_remains_in_group=4), "num_remains_in_group=4 must satisfy 2 <= k < num_generations=4"),
        (dict(num_remains_in_group=1), "k = 1 leaves a one-member retained set"),
        (dict(), "num_remains_in_group \\(k\\) is required"),
        (dict(num_remains_in_group=2, filter_metric="shortest"), "filter_metric: unknown metric 'shortest'"),
        (dict(num_remains_in_group=2, rejection_mode="soft"), "rejection_mode='soft' is unknown"),
        (dict(adaptive_difficulty=True, adaptive_ks=[2, 2, 2, 5]), "adaptive_ks contains 5"),
        (dict(adaptive_difficulty=True, adaptive_ks=[2, 2]), "adaptive_ks=\\[2, 2\\] needs"),
        (dict(adaptive_difficulty=True, adaptive_quantiles=[0.5, 0.25]), "adaptive_quantiles"),
        (dict(num_remains_in_group=2, anneal="penalty", anneal_steps=3), "set rejection_mode: penalty"),
        (dict(num_remains_in_group=2, anneal="k"), "anneal_steps >= 1"),
        (dict(num_remains_in_group=2, scale_rewards="batch"), "scale_rewards='batch'"),
        (dict(num_remains_in_group=2, drop_loss_normalizer="all"), "drop_loss_normalizer"),
        (dict(num_remains_in_group=2, gfpo_early_stop_normalizer="full"), "gfpo_early_stop_normalizer='full'"),
    ],
)
def test_config_validation_names_key_and_fix(gfpo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(gfpo, **kwargs)


def test_config_defaults(gfpo):
    c = cfg(gfpo, num_generations=16, per_device_train_batch_size=16, adaptive_difficulty=True)
    assert c.adaptive_ks == [8, 8, 6, 4] and c.adaptive_warmup_k == 8
    c = cfg(
        gfpo, num_remains_in_group=1, rejection_mode="penalty", filter_metric={"length": 1.0, "token_efficiency": 2}
    )
    assert json.loads(c.filter_metric) == {"length": 1.0, "token_efficiency": 2}


def test_wrapped_hooks_exist_in_trl(gfpo):
    from trl import GRPOTrainer

    for name in gfpo.WRAPPED_TRL_HOOKS:
        assert callable(getattr(GRPOTrainer, name, None)), name


# ------------------------------------------------------------------------------------------------- variants
def last_log(trainer):
    return [h for h in trainer.state.log_history if "gfpo/k_mean" in h][-1]


def legacy_filter(group_completions, group_rewards):
    # TRL's removed trl.experimental.gfpo signature: keep the top-k scores (here the longest completions).
    return [[len(c[0]["content"]) for c in group] for group in group_completions]


VARIANTS = {
    "shortest-generate": dict(num_remains_in_group=2, rollout=False),
    "token_efficiency": dict(num_remains_in_group=2, filter_metric="token_efficiency"),
    "penalty-annealed": dict(
        num_remains_in_group=2, rejection_mode="penalty", rejection_penalty=0.4, anneal="penalty", anneal_steps=2
    ),
    "stratified": dict(num_remains_in_group=2, rejection_mode="stratified", stratified_delta=0.2),
    "anneal-k": dict(num_remains_in_group=2, anneal="k", anneal_steps=2, max_steps=3),
    "composite": dict(num_remains_in_group=2, filter_metric='{"length": 1.0, "token_efficiency": 0.5}'),
    "adaptive": dict(
        adaptive_difficulty=True, adaptive_ks=[3, 3, 2, 2], adaptive_warmup_k=3, adaptive_warmup_questions=2
    ),
    "drop-retained-normaliser": dict(num_remains_in_group=2, rejection_mode="drop", drop_loss_normalizer="retained"),
    "legacy-filter": dict(num_remains_in_group=2, trainer_kwargs={"group_filter_func": legacy_filter}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains(tiny_model_path, tmp_path, name):
    kw = dict(VARIANTS[name])
    trainer = record_steps(build_trainer(tiny_model_path, tmp_path / name, **kw))
    trainer.train()
    assert trainer.state.global_step == kw.get("max_steps", 2)
    log = last_log(trainer)
    for key in ("gfpo/completion_length_all", "gfpo/completion_length_retained", "gfpo/retained_fraction"):
        assert key in log
    last = trainer._gfpo_last
    R, S, A, L = last["rewards"], last["retained"], last["advantages"], last["lengths"]
    if name == "penalty-annealed":  # lambda_t = 0.4 * step / 2: 0.0 at step 0, 0.2 at step 1
        assert [h["gfpo/rejection_penalty"] for h in trainer.state.log_history if "gfpo/k_mean" in h] == [0.0, 0.2]
        assert torch.allclose(A[~S], torch.tensor(-0.2))
    if name == "anneal-k":  # k from G=4 to 2 over 2 steps: 4, 3, 2
        assert [h["gfpo/k_mean"] for h in trainer.state.log_history if "gfpo/k_mean" in h] == [4.0, 3.0, 2.0]
    if name == "stratified":
        mean_g = R.mean(1, keepdim=True)
        std_g = R.std(1, unbiased=False, keepdim=True)
        expect = torch.where(std_g > 1e-6, (R - mean_g) / std_g.clamp(min=1e-12), torch.zeros_like(R)) - 0.2
        assert torch.allclose(A[~S], expect[~S], atol=1e-5)
    if name == "legacy-filter":  # the k LONGEST were kept (highest scores), ties to the earlier
        expected = torch.sort(L, dim=1, descending=True, stable=True).indices[:, :2]
        assert torch.equal(S, torch.zeros_like(S).scatter(1, expected, True))
    if name == "adaptive":
        assert trainer.difficulty_digest.count == 4  # 2 questions per step x 2 steps
        assert "gfpo/frac_bucket0" in log
    if name in ("shortest-generate", "composite", "token_efficiency", "stratified"):
        assert S.sum(1).tolist() == [2] * S.shape[0]
    if name == "shortest-generate":  # the retained are never longer than the rejected
        assert all(L[b][S[b]].max() <= L[b][~S[b]].min() for b in range(L.shape[0]))


@pytest.mark.slow
def test_pairs_export_dpo_format(tiny_model_path, tmp_path):
    path = tmp_path / "pairs.jsonl"
    trainer = build_trainer(tiny_model_path, tmp_path / "run", num_remains_in_group=2, pairs_output_file=str(path))
    trainer.train()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert all(r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in rows)


# ------------------------------------------------------------------------------------------------- gradients
def flat_grad(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    trainer._compute_loss(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]).clone()


@pytest.fixture(scope="module")
def scored_batch(tiny_model_path, tmp_path_factory):
    trainer = build_trainer(tiny_model_path, tmp_path_factory.mktemp("grad"), num_remains_in_group=2, beta=0.0)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(batch)
    return trainer, out


def _perturb(out, rows, vocab=200):
    new = dict(out)
    ids = out["completion_ids"].clone()
    g = torch.Generator().manual_seed(1)
    ids[rows] = torch.randint(10, vocab, ids[rows].shape, generator=g)
    new["completion_ids"] = ids
    return new


@pytest.mark.slow
def test_zero_mode_rejected_rows_carry_no_policy_gradient(scored_batch):
    trainer, out = scored_batch
    retained = trainer._gfpo_last["retained"].reshape(-1)
    rejected = ~retained
    assert rejected.any() and (out["advantages"][rejected] == 0).all()
    base = flat_grad(trainer, out)
    # Replacing the rejected responses' tokens leaves the gradient unchanged: they contribute nothing.
    assert torch.allclose(flat_grad(trainer, _perturb(out, rejected)), base, atol=1e-7, rtol=0)
    # Control: the same perturbation does change it when rejected rows carry advantage (a leak), and perturbing a
    # retained row with non-zero advantage changes it too - so the comparison above can fail.
    leaky = dict(out, advantages=out["advantages"] + 0.5 * rejected.float())
    assert not torch.allclose(flat_grad(trainer, _perturb(leaky, rejected)), flat_grad(trainer, leaky), atol=1e-6)
    moving = retained & (out["advantages"] != 0)
    assert not torch.allclose(flat_grad(trainer, _perturb(out, moving)), base, atol=1e-6)


@pytest.mark.slow
def test_drop_gives_zero_mode_gradient_with_fewer_rows(scored_batch):
    trainer, out = scored_batch
    keep = trainer._gfpo_last["retained"].reshape(-1)
    trainer.args.drop_loss_normalizer = "group"
    dropped = trainer._gfpo_drop_rows(dict(out), keep)
    assert dropped["completion_ids"].size(0) == int(keep.sum()) < out["completion_ids"].size(0)
    width = dropped["completion_ids"].size(1)  # trimmed to the kept rows' width: the cut columns are padding
    assert torch.equal(dropped["completion_ids"], out["completion_ids"][keep][:, :width])
    assert not out["completion_mask"][keep][:, width:].any()
    assert torch.allclose(flat_grad(trainer, dropped), flat_grad(trainer, out), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_drop_rows_gone_from_loss_batch_and_logprobs_skipped(tiny_model_path, tmp_path):
    # beta > 0 makes TRL compute reference log-probs before the rewards: with the length metric the dropped rows are
    # known by then and skipped.
    trainer = record_steps(
        build_trainer(tiny_model_path, tmp_path, num_remains_in_group=2, rejection_mode="drop", beta=0.01)
    )
    trainer.train()
    for rec in trainer.gfpo_records:
        kept = sum(map(sum, rec["retained"]))
        assert rec["loss_rows"] == [kept] == [rec["local_rows"]] and kept == 4  # 2 questions x k = 2, of 8 rows
    skipped = [h["gfpo/skipped_logprob_rows"] for h in trainer.state.log_history if "gfpo/skipped_logprob_rows" in h]
    assert skipped == [4.0, 4.0]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_restores_difficulty_digest(tiny_model_path, tmp_path):
    from transformers import TrainerCallback

    adaptive = dict(
        adaptive_difficulty=True, adaptive_ks=[3, 3, 2, 2], adaptive_warmup_k=3, adaptive_warmup_questions=2
    )
    run = tmp_path / "run"
    first = build_trainer(tiny_model_path, run, max_steps=2, save_strategy="steps", save_steps=2, **adaptive)
    first.train()
    saved = json.loads((run / "checkpoint-2" / "gfpo_state.json").read_text())["difficulty_digest"]
    assert saved == first.difficulty_digest.state_dict() and saved["digest"]["n_values"] == 4

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["digest"] = holder["trainer"].difficulty_digest.state_dict()

    holder = {}
    second = build_trainer(
        tiny_model_path, run, max_steps=3, save_strategy="no", trainer_kwargs={"callbacks": [Capture()]}, **adaptive
    )
    holder["trainer"] = second
    second.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert seen["digest"] == saved  # restored before the first resumed step
    assert second.difficulty_digest.count == 6  # and kept streaming: 4 + 2 questions


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.slow
def test_lora(tiny_model_path, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = build_trainer(
        tiny_model_path,
        tmp_path,
        num_remains_in_group=2,
        rejection_mode="drop",
        beta=0.01,
        learning_rate=1e-2,
        trainer_kwargs={"peft_config": lora},
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all("lora_" in n for n in changed)


# ------------------------------------------------------------------------------------------------- vLLM
@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_colocate(tiny_model_path, tiny_tokenizer, tmp_path):
    """Drop + length trains through the early-stop engine loop (add_request / step / abort_request); with request
    seeds a generation batch with and without early stop keeps the same retained responses."""
    pytest.importorskip("vllm")
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    trainer = build_trainer(
        tiny_model_path,
        tmp_path,
        rollout=False,
        num_remains_in_group=2,
        rejection_mode="drop",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_enable_sleep_mode=False,
        vllm_max_model_length=256,
        max_steps=2,
        gfpo_request_seeds=True,
        generation_kwargs={"logit_bias": {eos: 2.0}},  # a random model rarely ends: spread the lengths
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer._gfpo_last["local_rows"] == 4
    log = last_log(trainer)
    assert "gfpo/completion_length_retained" in log and "gfpo/early_stopped" in log

    batch = next(iter(trainer.get_train_dataloader()))
    runs = {}
    for active in (False, True):
        trainer._gfpo_es_active, trainer._gfpo_gen_calls = active, 0
        out = trainer._generate_and_score_completions(batch)
        runs[active] = (out["completion_ids"], dict(trainer._gfpo_last))
    (ids_full, full), (ids_stop, stop) = runs[False], runs[True]
    assert full["early_stopped"].sum() == 0 and stop["early_stopped"].sum() > 0
    assert torch.equal(full["retained"], stop["retained"]) and torch.equal(ids_full, ids_stop)


# ------------------------------------------------------------------------------------------------- 2 ranks
@pytest.fixture(scope="module")
def one_process_selections(tiny_model_path, tmp_path_factory):
    """The reference: each dist_gfpo variant in this process, with the 2-rank global batch on one rank."""
    out = tmp_path_factory.mktemp("one")
    refs = {}
    for name, variant in dist_gfpo.VARIANTS.items():
        one = record_steps(build_trainer(tiny_model_path, out / name, per_device_train_batch_size=12, **variant))
        one.train()
        refs[name] = one.gfpo_records
    return refs


LAUNCHERS = {
    "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
    # The users' zero3.yaml on CPU processes (tests/test_zero.py runs the rest of the ZeRO suite).
    "zero3": [sys.executable, str(HERE.parent / "scripts" / "cpu_launch.py"), "--config_file",
              str(HERE.parent / "accelerate_configs" / "zero3.yaml"), "--num_processes", "2",
              "--main_process_port", "29534", "--timeout", "240"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_process_selection_matches_one_process(tiny_model_path, tmp_path, one_process_selections, launcher):
    """torchrun --nproc_per_node 2 (gloo DDP) and DeepSpeed ZeRO-3 vs the same seed in one process: identical
    selections, advantages and difficulty digests on every rank; with groups straddling ranks in drop mode, every
    rank gets an equal batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = LAUNCHERS[launcher] + [
        str(HERE / "dist_gfpo.py"),
        "--model",
        str(tiny_model_path),
        "--out",
        str(tmp_path / "two"),
        "--per_device",
        "6",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    for name, variant in dist_gfpo.VARIANTS.items():
        ref_steps = one_process_selections[name]
        r0, r1 = (json.loads((tmp_path / "two" / name / f"rank{r}.json").read_text()) for r in (0, 1))
        assert r0["world"] == r1["world"] == 2
        assert r0["zero_stage"] == (3 if launcher == "zero3" else None)
        assert len(r0["steps"]) == len(ref_steps) == variant["max_steps"]
        for ref, a, b in zip(ref_steps, r0["steps"], r1["steps"], strict=True):
            for key in ("retained", "advantages", "k", "digest"):
                assert ref[key] == a[key] == b[key], (name, key)
            assert a["local_rows"] == b["local_rows"] and a["loss_rows"] == b["loss_rows"]
            if name == "drop":
                kept = sum(map(sum, ref["retained"]))
                assert a["local_active_rows"] + b["local_active_rows"] == kept == ref["local_active_rows"]
                assert a["local_rows"] == max(a["local_active_rows"], b["local_active_rows"])
