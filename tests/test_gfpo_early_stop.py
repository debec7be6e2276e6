"""GFPO early stop of rejected rollouts (issue 29): the stop rule by hand, its exactness against the selection, the
transformers path bit for bit on the tiny model, the fallback reasons, and the planner's length model."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainers import early_stop as es
from trainers import selection as sel

HERE = Path(__file__).resolve().parent


def rule(lengths, finished, running, k):
    t = lambda x, d: torch.tensor([x], dtype=d)  # noqa: E731
    return sel.early_stop_mask(t(lengths, torch.long), t(finished, torch.bool), t(running, torch.bool), k)[0].tolist()


# ------------------------------------------------------------------------------------------------- the rule by hand
@pytest.mark.parametrize(
    "lengths, finished, running, k, expect",
    [
        # k-th finisher early: two finished at 3 and 4 (k = 2); running rows at 4 tokens end at >= 5 > 4: stopped.
        ([3, 4, 4, 4], [1, 1, 0, 0], [0, 0, 1, 1], 2, [0, 0, 1, 1]),
        # only one finished (k = 2): nobody is certain yet.
        ([3, 4, 4, 4], [1, 0, 0, 0], [0, 1, 1, 1], 2, [0, 0, 0, 0]),
        # k-th finisher late (length 9): rows at 7 tokens may still end at 8 or 9 and be kept.
        ([2, 9, 7, 7], [1, 1, 0, 0], [0, 0, 1, 1], 2, [0, 0, 0, 0]),
        # tie at the k-th length, finished rows EARLIER in the group: a row at 4 tokens ends at >= 5 = L_1; if it
        # ended at 5 the earlier row 1 wins the tie, so it is rejected either way.
        ([3, 5, 4, 4], [1, 1, 0, 0], [0, 0, 1, 1], 2, [0, 0, 1, 1]),
        # the same tie with the finished rows LATER in the group: rows 0-1 at 4 tokens could end at 5 and be kept
        # before rows 2-3 (ties to the earlier position): not stopped.
        ([4, 4, 3, 5], [0, 0, 1, 1], [1, 1, 0, 0], 2, [0, 0, 0, 0]),
        # one row later and one earlier: row 1 is beaten by row 0 (3 < 5) and row 2's tie (5, later): row 2 does not
        # beat it, so 1 beater < k = 2; row 3 is beaten by both.
        ([3, 4, 5, 4], [1, 0, 1, 0], [0, 1, 0, 1], 2, [0, 0, 0, 1]),
        # rows that hit max_completion_length (16) are finished with their final length: they beat nobody running.
        ([16, 16, 3, 12], [1, 1, 1, 0], [0, 0, 0, 1], 2, [0, 0, 0, 0]),
        # rows neither finished nor running (already stopped, or on another rank) are ignored.
        ([3, 4, 6, 6], [1, 1, 0, 0], [0, 0, 0, 1], 2, [0, 0, 0, 1]),
    ],
)
def test_rule_by_hand(lengths, finished, running, k, expect):
    assert rule(lengths, finished, running, k) == [bool(x) for x in expect]


def simulate(final, k, visible=None):
    """Step-by-step generation of a (B, G) batch whose rows end at `final` (or at max length): the rule is applied
    after every step, a stopped row is recorded with n + 1 tokens. Returns (recorded lengths, stopped)."""
    B, G = final.shape
    visible = torch.ones_like(final, dtype=torch.bool) if visible is None else visible
    lengths = torch.zeros_like(final)
    finished = torch.zeros_like(final, dtype=torch.bool)
    stopped = torch.zeros_like(finished)
    for n in range(int(final.max()) + 1):
        finished |= (final == n) & ~stopped
        running = ~finished & ~stopped
        lengths = torch.where(running, torch.full_like(lengths, n), torch.where(finished, final, lengths))
        stop = sel.early_stop_mask(lengths, finished & visible, running & visible, k)
        stopped |= stop
        lengths = torch.where(stop, torch.full_like(lengths, n + 1), lengths)
    return lengths, stopped


@pytest.mark.parametrize("G, k", [(4, 2), (16, 4), (24, 4), (8, 7)])
def test_rule_never_changes_the_retained_set(G, k):
    g = torch.Generator().manual_seed(G * 100 + k)
    for trial in range(30):
        # few distinct lengths, so ties at the k-th length are common; some rows capped at max length 12
        final = torch.randint(1, 13, (16, G), generator=g).clamp(max=12)
        visible = torch.rand(16, G, generator=g) > (0.3 if trial % 2 else 0.0)  # partly visible groups (ranks)
        lengths, stopped = simulate(final, k, visible)
        full, _ = sel.topk_retained_mask(-final.float(), k)
        kept, _ = sel.topk_retained_mask(-lengths.float(), k)
        assert torch.equal(full, kept) and not (kept & stopped).any()
        assert (lengths[~stopped] == final[~stopped]).all() and (lengths[stopped] <= final[stopped]).all()
        if trial == 0:
            assert stopped.any()


def test_group_layout_straddling_rows():
    # 6 local rows from global row 6 with G = 4: rows 6-7 are positions 2-3 of group 1, rows 8-11 group 2.
    layout = es.GroupLayout(offset=6, n_rows=6, G=4, k=2)
    assert layout.group.tolist() == [0, 0, 1, 1, 1, 1] and layout.pos.tolist() == [2, 3, 0, 1, 2, 3]
    lengths = torch.tensor([3, 9, 2, 2, 5, 5])
    finished = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    # group 1 sees one finished member (row 6): not enough for k = 2; group 2 has two finished at 2
    assert layout.stop(lengths, finished, ~finished).tolist() == [False, False, False, False, True, True]


# ------------------------------------------------------------------------------------------------- fallbacks
def _args(**kw):
    base = dict(gfpo_early_stop=True, filter_metric="length", adaptive_difficulty=False, rejection_mode="drop",
                pairs_output_file=None, use_vllm=False, vllm_mode="colocate", use_transformers_continuous_batching=False)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    "kw, extra, key",
    [
        (dict(), {}, None),
        (dict(use_vllm=True), {}, None),
        (dict(gfpo_early_stop=False), {}, "gfpo_early_stop: false"),
        (dict(filter_metric="token_efficiency"), {}, "token efficiency R/|o| can retain a long wrong response"),
        (dict(filter_metric='{"length": 1.0, "token_efficiency": 0.5}'), {}, "only 'length'"),
        (dict(adaptive_difficulty=True), {}, "mean reward of all G"),
        (dict(rejection_mode="zero"), {}, "1/sum_{i<=G}|o_i|"),
        (dict(rejection_mode="penalty"), {}, "A = -rejection_penalty"),
        (dict(rejection_mode="stratified"), {}, "mean_G"),
        (dict(use_vllm=True, vllm_mode="server"), {}, "vllm_mode='server'"),
        (dict(use_transformers_continuous_batching=True), {}, "generate_batch"),
        (dict(pairs_output_file="p.jsonl"), {}, "pairs_output_file"),
        (dict(), dict(rollout_func=print), "rollout_func"),
        (dict(), dict(tools=[print]), "tools"),
        (dict(), dict(group_filter_func=print), "group_filter_func"),
    ],
)
def test_fallback_reasons(kw, extra, key):
    reason = es.support_reason(_args(**kw), **extra)
    assert (reason is None) if key is None else (key in reason and "\n" not in reason)


# ------------------------------------------------------------------------------------------------- transformers
def _dist():
    spec = importlib.util.spec_from_file_location("dist_gfpo", HERE / "dist_gfpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def es_trainer(tiny_model_path, tmp_path_factory):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tiny_model_path).convert_tokens_to_ids("<|im_end|>")
    trainer = _dist().build_trainer(
        tiny_model_path, tmp_path_factory.mktemp("es"), rollout=False, num_generations=8, num_remains_in_group=2,
        per_device_train_batch_size=16, max_completion_length=24, rejection_mode="drop", beta=0.0,
        # a random model rarely samples EOS: raise it so lengths spread over 1-24 tokens
        generation_kwargs={"sequence_bias": [[[eos], 4.0]]},
    )
    trainer.model.train()
    return trainer


def _generation_batch(trainer, active: bool, seed: int = 3):
    trainer._gfpo_es_active = active
    torch.manual_seed(seed)
    batch = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(batch)
    after = torch.rand(1).item()  # the global stream after the batch
    return out, dict(trainer._gfpo_last), after


@pytest.mark.slow
def test_transformers_retained_identical_bit_for_bit(es_trainer):
    trainer = es_trainer
    full, full_last, full_after = _generation_batch(trainer, active=False)
    stop, stop_last, stop_after = _generation_batch(trainer, active=True)
    assert full_last["early_stopped"].sum() == 0 and stop_last["early_stopped"].sum() > 0
    assert torch.equal(full_last["retained"], stop_last["retained"])
    assert not (stop_last["retained"] & stop_last["early_stopped"]).any()
    # stopped rows: recorded shorter than (or as long as) in the full rollout, ending in EOS, not clipped
    L, Ls, S = full_last["lengths"], stop_last["lengths"], stop_last["early_stopped"]
    assert (Ls[S] <= L[S]).all() and torch.equal(Ls[~S], L[~S])
    # the loss batch (retained rows, trimmed to their width) is the same tensor, and so are its log-probs
    for key in ("completion_ids", "completion_mask", "prompt_ids", "advantages"):
        assert torch.equal(full[key], stop[key]), key
    ids = torch.cat([stop["prompt_ids"], stop["completion_ids"]], dim=1)
    mask = torch.cat([stop["prompt_mask"], stop["completion_mask"]], dim=1)
    with torch.no_grad():
        lp = [trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, stop["completion_ids"].size(1),
                                                         batch_size=8)[0] for _ in range(2)]
    assert torch.equal(lp[0], lp[1])
    assert full_after == stop_after  # the global RNG stream continues the same: later steps match too
    # the 'group' normaliser counts the stopped rows' sampled tokens: smaller than the full rollout's
    assert stop["num_items_in_batch"] < full["num_items_in_batch"]
    log = trainer._metrics["train"]
    assert log["gfpo/early_stopped"][-1] == float(S.sum()) and log["gfpo/tokens_saved_max"][-1] > 0
    # reward statistics exclude the stopped rows (TRL's unscorable rows)
    assert torch.isnan(stop_last["rewards"][S]).all() and not torch.isnan(stop_last["rewards"][~S]).any()
    # 'max_length': a stopped row enters the normaliser as max_completion_length (an upper bound of the paper's)
    trainer.args.gfpo_early_stop_normalizer = "max_length"
    try:
        upper, _, _ = _generation_batch(trainer, active=True)
    finally:
        trainer.args.gfpo_early_stop_normalizer = "sampled"
    assert upper["num_items_in_batch"] == stop["num_items_in_batch"] + int((24 - Ls[S]).sum()) >= full[
        "num_items_in_batch"]


# ------------------------------------------------------------------------------------------------- the planner
@pytest.mark.parametrize("G, k, expect", [(16, 4, 0.61), (24, 4, 0.54)])
def test_planner_length_model_matches_the_rule(G, k, expect):
    from planning import early_stop as model

    frac = model.expected_sampled_fraction(G, k)
    assert abs(frac - expect) < 0.01
    if G != 16:
        return
    # Monte Carlo of the same length model through the stop rule itself (cap 100 tokens, 200 groups)
    cap, mean, cv = 100, model.MEAN_FRACTION * 100, model.CV
    sigma = (torch.log1p(torch.tensor(cv * cv))).sqrt()
    mu = torch.log(torch.tensor(mean)) - sigma**2 / 2
    g = torch.Generator().manual_seed(0)
    final = torch.exp(mu + sigma * torch.randn(200, G, generator=g)).round().clamp(1, cap).long()
    lengths, _ = simulate(final, k)
    assert abs(float(lengths.sum() / final.sum()) - frac) < 0.03


def test_volume_plan_states_early_stop():
    from planning.volume import gfpo_expected_sampling

    on = gfpo_expected_sampling(_args(num_generations=16, num_remains_in_group=4, max_completion_length=1000), 64)
    assert on["early_stop_sampled_fraction"] == 0.61
    assert "log-normal" in on["length_model"] and on["expected_tokens_sampled_per_step_with_early_stop"] < on[
        "expected_tokens_sampled_per_step"]
    off = gfpo_expected_sampling(_args(rejection_mode="zero", num_generations=16, num_remains_in_group=4), 64)
    assert off == {"gfpo_early_stop": "off: " + es.support_reason(_args(rejection_mode="zero"))}
