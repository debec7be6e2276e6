"""GFPO's pure functions against hand-computed groups (arXiv 2508.09726, sec. 3 and Adaptive Difficulty)."""

import json
import math
import textwrap

import pytest
import torch

from trainers import selection as sel


def close(t, expected):
    assert torch.allclose(
        torch.as_tensor(t, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32), atol=1e-5
    )


def retained_of(lengths=None, rewards=None, k=2, metric="length"):
    lengths = torch.tensor(lengths, dtype=torch.float32)
    rewards = torch.zeros_like(lengths) if rewards is None else torch.tensor(rewards, dtype=torch.float32)
    G = lengths.shape[-1]
    scores = sel.metric_scores(sel.parse_metric_spec(metric), rewards.reshape(-1), lengths.reshape(-1), G)
    retained, rank = sel.topk_retained_mask(scores, k, valid=~torch.isnan(rewards.reshape(-1, G)))
    return retained, rank


# ---------------------------------------------------------------- selection
def test_shortest_k_with_ties_keeps_earliest():
    retained, _ = retained_of([[5, 3, 3, 7], [4, 4, 4, 2]], k=2)
    assert retained.tolist() == [[False, True, True, False], [True, False, False, True]]
    retained, rank = retained_of([[4, 4, 4, 4]], k=3)
    assert retained.tolist() == [[True, True, True, False]]
    assert rank.tolist() == [[0, 1, 2, 3]]


def test_token_efficiency_keeps_long_wrong_over_short_wrong():
    # R/|o| = 0.1, 0.05, -0.025, -0.2: the long wrong answer (-1/40) beats the short wrong one (-1/5), as the paper notes.
    r, _ = retained_of([[10, 20, 40, 5]], [[1, 1, -1, -1]], k=3, metric="token_efficiency")
    assert r.tolist() == [[True, True, True, False]]
    r, _ = retained_of([[10, 20, 40, 5]], [[1, 1, -1, -1]], k=2, metric="token_efficiency")
    assert r.tolist() == [[True, True, False, False]]
    # Equal efficiency (1/10 == 2/20): tie goes to the earlier response.
    r, _ = retained_of([[20, 10, 30]], [[2, 1, 0]], k=1, metric="token_efficiency")
    assert r.tolist() == [[True, False, False]]


def test_variable_k_per_group_and_unscorable_rows():
    scores = torch.tensor([[4.0, 3, 2, 1], [4, 3, 2, 1]])
    r, _ = sel.topk_retained_mask(scores, torch.tensor([1, 3]))
    assert r.tolist() == [[True, False, False, False], [True, True, True, False]]
    # A NaN reward (every reward function returned None) is never retained; the next one takes its place.
    r, _ = retained_of([[1, 2, 3, 4]], [[math.nan, 0, 0, 0]], k=2)
    assert r.tolist() == [[False, True, True, False]]


def test_composite_metric_zscores_per_group(tmp_path, monkeypatch):
    mod = tmp_path / "my_gfpo_metrics.py"
    mod.write_text(
        textwrap.dedent(
            """
            def correct(completions, rewards, lengths, **kwargs):
                return rewards.tolist()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    L, R = [[10, 20, 30, 40]], [[0, 1, 1, 1]]
    # length alone: the two shortest.
    assert retained_of(L, R, k=2)[0].tolist() == [[True, True, False, False]]
    # z(-L) = [1.342, .447, -.447, -1.342]; z(R) = [-1.732, .577, .577, .577]; sum = [-.39, 1.02, .13, -.77].
    r, _ = retained_of(L, R, k=2, metric={"length": 1.0, "my_gfpo_metrics:correct": 1.0})
    assert r.tolist() == [[False, True, True, False]]
    scores = sel.metric_scores(
        {"length": 1.0, "my_gfpo_metrics:correct": 1.0},
        torch.tensor(R[0], dtype=torch.float),
        torch.tensor(L[0], dtype=torch.float),
        4,
    )
    expected = [1.3416 - 1.7321, 0.4472 + 0.5774, -0.4472 + 0.5774, -1.3416 + 0.5774]
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-3)
    # A negative weight inverts a component: keep the longest.
    assert retained_of(L, R, k=1, metric={"length": -1.0})[0].tolist() == [[False, False, False, True]]


def test_metric_spec_errors_name_the_key():
    with pytest.raises(ValueError, match="filter_metric.*unknown metric 'lenght'"):
        sel.parse_metric_spec("lenght")
    with pytest.raises(ValueError, match="filter_metric.*cannot import"):
        sel.parse_metric_spec("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="weight"):
        sel.parse_metric_spec({"length": 0})
    assert sel.parse_metric_spec('{"length": 1, "token_efficiency": 0.5}') == {"length": 1.0, "token_efficiency": 0.5}


def test_registered_metric():
    @sel.register_metric("test_newlines", higher_is_better=False, needs_rewards=False)
    def newlines(completions, rewards, lengths, **kwargs):
        return [c.count("\n") for c in completions]

    scores = sel.metric_scores(
        {"test_newlines": 1.0}, torch.zeros(3), torch.ones(3), 3, completions=["a\n\n", "b", "c\n"]
    )
    assert sel.topk_retained_mask(scores, 1)[0].tolist() == [[False, True, False]]
    assert sel.metric_needs({"test_newlines": 1.0}) == (False, True)
    assert sel.metric_needs({"length": 1.0}) == (False, False)


# ---------------------------------------------------------------- advantages
def test_population_std_inside_retained_set():
    R = torch.tensor([[1.0, 0.0, 0.0, 5.0]])
    S = torch.tensor([[True, True, True, False]])
    adv, zero = sel.gfpo_advantages(R, S)
    # mean_S = 1/3, population var = 2/9, std = sqrt(2)/3: A = (2/3)/(0.4714) = sqrt(2), (-1/3)/0.4714 = -1/sqrt(2).
    assert adv.tolist()[0] == pytest.approx([math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], abs=1e-5)
    assert zero.tolist() == [False]
    # Two members: population std 0.5 gives +-1 (the sample std would give +-0.7071).
    adv, _ = sel.gfpo_advantages(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[True, True, False]]))
    assert adv.tolist() == [[1.0, -1.0, 0.0]]


def test_zero_std_retained_set_gets_zero_and_is_flagged():
    R = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 1.0, 0.0]])
    S = torch.tensor([[True, True, False, False], [True, False, False, False]])  # equal rewards; |S| = 1
    for mode in ("zero", "drop"):
        adv, zero = sel.gfpo_advantages(R, S, rejection_mode=mode)
        assert adv.abs().sum() == 0 and zero.tolist() == [True, True]
    adv, _ = sel.gfpo_advantages(R, S, rejection_mode="penalty", rejection_penalty=0.2)
    close(adv, [[0, 0, -0.2, -0.2], [0, -0.2, -0.2, -0.2]])


def test_each_rejection_mode():
    R = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    S = torch.tensor([[True, True, False, False]])
    for mode in ("zero", "drop"):
        assert sel.gfpo_advantages(R, S, mode)[0].tolist() == [[1.0, -1.0, 0.0, 0.0]]
    close(sel.gfpo_advantages(R, S, "penalty", rejection_penalty=0.3)[0], [[1.0, -1.0, -0.3, -0.3]])
    # Stratified: mean_G = 0.5, population std_G = 0.5 -> z = +1, -1; minus delta 0.25.
    close(sel.gfpo_advantages(R, S, "stratified", stratified_delta=0.25)[0], [[1.0, -1.0, 0.75, -1.25]])
    # Zero-std whole group under stratified: rejected get -delta.
    adv, _ = sel.gfpo_advantages(torch.ones(1, 4), S, "stratified", stratified_delta=0.25)
    close(adv, [[0, 0, -0.25, -0.25]])
    # Dr. GRPO style (no std division).
    assert sel.gfpo_advantages(R, S, scale_rewards="none")[0].tolist() == [[0.5, -0.5, 0.0, 0.0]]
    with pytest.raises(ValueError):
        sel.gfpo_advantages(R, S, "bogus")


def test_unscorable_reward_gets_zero_advantage():
    R = torch.tensor([[1.0, math.nan, 0.0, 1.0]])
    S = torch.tensor([[True, True, True, False]])
    adv, _ = sel.gfpo_advantages(R, S, "penalty", rejection_penalty=1.0)
    assert adv.tolist() == [[1.0, 0.0, -1.0, -1.0]]


# ---------------------------------------------------------------- adaptive difficulty
def test_difficulty_and_buckets():
    R = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]])
    assert sel.group_difficulty(R).tolist() == [0.25, 0.75]
    d = torch.tensor([0.1, 0.25, 0.6, 0.9, 0.75, 0.49])
    b = sel.difficulty_buckets(d, [0.25, 0.5, 0.75])
    assert b.tolist() == [0, 1, 2, 3, 3, 1]
    assert torch.tensor([8, 8, 6, 4])[b].tolist() == [8, 8, 6, 4, 4, 8]


def test_adaptive_k_warmup_then_buckets():
    digest = sel.QuantileDigest()
    d = torch.tensor([0.0, 0.3, 0.6, 0.95])
    k, bucket, thr = sel.adaptive_k(d, digest, [0.25, 0.5, 0.75], [8, 8, 6, 4], 8, warmup_questions=10)
    assert k.tolist() == [8, 8, 8, 8] and bucket is None
    digest.update(torch.arange(101, dtype=torch.float) / 100)  # 0.00 .. 1.00 uniform: q25 .25, q50 .5, q75 .75
    k, bucket, thr = sel.adaptive_k(d, digest, [0.25, 0.5, 0.75], [8, 8, 6, 4], 8, warmup_questions=10)
    assert thr == pytest.approx([0.25, 0.5, 0.75], abs=0.01)
    assert bucket.tolist() == [0, 1, 2, 3] and k.tolist() == [8, 8, 6, 4]
    assert digest.count == 101


def test_digest_state_roundtrip_through_json():
    a = sel.QuantileDigest(max_centroids=50)
    a.update(torch.rand(500, generator=torch.Generator().manual_seed(0)))
    b = sel.QuantileDigest()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert a == b and b.count == 500 and b.max_centroids == 50
    assert b.quantiles([0.25, 0.5, 0.75]) == a.quantiles([0.25, 0.5, 0.75])
    empty = sel.QuantileDigest()
    empty.load_state_dict(json.loads(json.dumps(sel.QuantileDigest().state_dict())))
    assert empty.count == 0


def test_default_adaptive_ks():
    assert sel.default_adaptive_ks(16) == [8, 8, 6, 4]
    assert sel.default_adaptive_ks(24) == [12, 12, 9, 6]
    assert sel.default_adaptive_ks(4) == [2, 2, 2, 2]
    assert sel.default_adaptive_warmup_k(16) == 8


# ---------------------------------------------------------------- annealing
def test_annealing_schedule():
    assert [sel.annealed_k(4, 16, s, 10) for s in (0, 3, 5, 10, 20)] == [16, 13, 10, 4, 4]
    assert sel.annealed_k(6, 16, 7, 0) == 6  # off
    assert sel.annealed_value(0.2, 5, 10) == pytest.approx(0.1)
    assert sel.annealed_value(0.2, 0, 10) == 0.0 and sel.annealed_value(0.2, 99, 10) == pytest.approx(0.2)


# ---------------------------------------------------------------- preference pairs
def test_preference_pairs():
    R = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    rank = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    S = rank < 2
    # g0: chosen 0 (reward 1), losers {2 (r=1), 3 (r=0)} -> worst rank 3. g1: chosen 0 (both 0, rank), losers with
    # reward <= 0: none (2 and 3 are correct) -> skipped. g2: chosen 0, losers {2, 3} -> 3.
    assert sel.preference_pairs(R, rank, S) == [(0, 0, 3), (2, 0, 3)]


def test_scoring_rows_equal_on_every_rank():
    """Drop mode scores the same number of rows on every rank (ZeRO-3: unequal counts hang the job)."""
    t = lambda *xs: torch.tensor(xs, dtype=torch.bool)  # noqa: E731
    retained = torch.cat([t(1, 0, 0, 0, 1, 0, 0, 0), t(1, 1, 1, 0, 0, 0, 0, 0)])  # 2 on rank 0, 3 on rank 1
    assert sel.local_scoring_rows(retained, 0, 2).tolist() == t(1, 1, 0, 0, 1, 0, 0, 0).tolist()
    assert sel.local_scoring_rows(retained, 1, 2).tolist() == t(1, 1, 1, 0, 0, 0, 0, 0).tolist()
    # a rank with nothing retained scores from row 0 (its padding rows copy row 0)
    retained = torch.cat([t(0, 0, 0, 0), t(0, 1, 1, 0)])
    assert sel.local_scoring_rows(retained, 0, 2).tolist() == t(1, 1, 0, 0).tolist()
    assert sel.local_scoring_rows(torch.zeros(8, dtype=torch.bool), 1, 2).tolist() == t(1, 0, 0, 0).tolist()


def test_signal_stats_by_hand():
    # Group 1 (graded rewards): retained {0, 1, 2} with R = 1.0, 0.6, 0.2 -> mean 0.6: response 1 is correct but gets
    # A = 0; response 2 (correct, 0.2) is pushed down. Rejected 3 (wrong) gets 0.
    # Group 2, penalty mode by hand: retained {0, 1} both correct (zero std -> 0), rejected 2 correct (-0.1), 3 wrong (-0.1).
    adv = torch.tensor([[1.22, 0.0, -1.22, 0.0], [0.0, 0.0, -0.1, -0.1]])
    retained = torch.tensor([[True, True, True, False], [True, True, False, False]])
    correct = torch.tensor([[True, True, True, False], [True, True, True, False]])
    s = sel.signal_stats(adv, retained, correct)
    assert s["retained_correct_negative"] == pytest.approx(1 / 5)  # response (0, 2) of 5 retained correct
    assert s["correct_negative"] == pytest.approx(2 / 6)  # plus the rejected correct (1, 2)
    assert s["incorrect_no_signal"] == pytest.approx(1 / 2)  # (0, 3) gets 0; (1, 3) gets -0.1
    assert s["rejected_correct"] == pytest.approx(1 / 6)
    assert s["rejected_advantage_mean"] == pytest.approx((0.0 - 0.1 - 0.1) / 3)
    # An unscorable response is left out; empty denominators give NaN.
    none = sel.signal_stats(torch.zeros(1, 2), torch.tensor([[True, False]]), torch.tensor([[False, False]]),
                            valid=torch.tensor([[True, False]]))
    assert math.isnan(none["retained_correct_negative"]) and math.isnan(none["rejected_advantage_mean"])
    assert none["incorrect_no_signal"] == 1.0
