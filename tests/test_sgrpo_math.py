"""S-GRPO math (trainers/serial_group.py): hand-computed cases and the paper's worked example."""

import pytest
import torch

from trainers.serial_group import (
    DEFAULT_EXIT_TEXT,
    exit_completion,
    exit_logprobs,
    exit_position_bounds,
    exit_prompt_ids,
    exit_quantile_bins,
    exit_text_mask,
    prefix_token_credit,
    sample_exit_positions,
    serial_advantages,
    serial_group_order,
    serial_rewards_for_questions,
    sgrpo_rewards,
    thinking_span,
)
from trainers.sgrpo import decaying_rewards  # the public re-export

T, F = True, False


def test_paper_worked_example():
    # S-GRPO Sec. 3.2: first exit wrong, every later one right -> 0, 1, 1/2, ..., 1/64 and the full path 1/128.
    r = decaying_rewards(torch.tensor([[F, T, T, T, T, T, T, T, T]]))
    assert r.tolist() == [[0.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125]]
    assert r.dtype == torch.float32


def test_all_wrong_all_right_alternating():
    r = decaying_rewards(torch.tensor([[F] * 9, [T] * 9, [T, F] * 4 + [T], [F, T] * 4 + [F]]))
    assert r[0].tolist() == [0.0] * 9
    assert r[1].tolist() == [2.0 ** -i for i in range(9)]
    assert r[2].tolist() == [1, 0, 0.5, 0, 0.25, 0, 0.125, 0, 0.0625]
    assert r[3].tolist() == [0, 1, 0, 0.5, 0, 0.25, 0, 0.125, 0]


def test_ablations():
    c = torch.tensor([[F, T, F, T, T], [F, F, F, F, F], [T, T, T, T, T]])
    assert sgrpo_rewards(c, "all_one").tolist() == [[0, 1, 0, 1, 1], [0] * 5, [1] * 5]
    assert sgrpo_rewards(c, "shortest_one").tolist() == [[0, 1, 0, 0, 0], [0] * 5, [1, 0, 0, 0, 0]]
    assert sgrpo_rewards(c, "decay").tolist() == [[0, 1, 0, 0.5, 0.25], [0] * 5, [1, 0.5, 0.25, 0.125, 0.0625]]
    with pytest.raises(ValueError, match="sgrpo_reward"):
        sgrpo_rewards(c, "linear")


def test_advantage_is_centred_not_scaled():
    r = decaying_rewards(torch.tensor([[F, T, T, F]]))  # 0, 1, 0.5, 0 -> mean 0.375
    a = serial_advantages(r)
    assert torch.allclose(a, torch.tensor([[-0.375, 0.625, 0.125, -0.375]]))
    assert serial_advantages(torch.zeros(2, 9)).abs().sum() == 0  # all wrong: no signal


def test_parallel_x_serial_rewards_restart_per_path():
    c = torch.tensor([[F, T, T, T, T, F]])  # two paths of (2 exits + full)
    assert serial_rewards_for_questions(c, 2).tolist() == [[0, 1, 0.5, 1, 1 / 2, 0]]
    assert serial_group_order(2, 2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


@pytest.mark.parametrize("n,m,rng", [(100, 8, (0.0, 1.0)), (9, 8, (0.0, 1.0)), (50, 8, (0.2, 0.6)), (1000, 8, (0.9, 1.0))])
def test_exit_positions_bounds_sorted_unique(n, m, rng):
    g = torch.Generator().manual_seed(0)
    lo, hi = exit_position_bounds(n, rng)
    for _ in range(50):
        ps = sample_exit_positions(n, m, g, rng)
        assert len(ps) == m and ps == sorted(ps) and len(set(ps)) == m  # without replacement
        assert all(lo <= p <= hi for p in ps)
        assert all(1 <= p <= n and rng[0] - 1e-9 <= p / n <= rng[1] + 1e-9 for p in ps)


def test_exit_positions_cover_range_uniformly():
    g = torch.Generator().manual_seed(1)
    seen = torch.zeros(21)
    for _ in range(400):
        for p in sample_exit_positions(20, 8, g):
            seen[p] += 1
    assert seen[0] == 0 and (seen[1:] > 0).all()  # U(1, n): 0 never drawn, every thought position reachable
    assert seen[1:].min() > 0.5 * seen[1:].mean()


def test_exit_positions_short_and_empty_thoughts():
    g = torch.Generator().manual_seed(0)
    ps = sample_exit_positions(3, 8, g)  # fewer positions than exits: with replacement, still m, sorted
    assert len(ps) == 8 and ps == sorted(ps) and set(ps) <= {1, 2, 3}
    assert sample_exit_positions(0, 8, g) == [0] * 8
    assert exit_position_bounds(10, (0.95, 1.0)) == (10, 10)
    assert exit_position_bounds(10, (0.41, 0.45)) == (5, 5)  # empty interval falls back to one position


EOS, THINK, ENDTHINK = 99, 7, 8


def test_thinking_span_closed_open_and_truncated():
    s = thinking_span([1, 2, 3, ENDTHINK, 4, EOS], ENDTHINK, THINK, [EOS])
    assert (s.start, s.end, s.closed, s.length) == (0, 3, True, 3)
    s = thinking_span([THINK, 1, 2, ENDTHINK, 4, EOS], ENDTHINK, THINK, [EOS])  # Qwen3: completion opens <think>
    assert (s.start, s.end, s.closed) == (1, 3, True)
    s = thinking_span([1, 2, 3, 4, 5], ENDTHINK, THINK, [EOS])  # truncated at the length limit
    assert (s.start, s.end, s.closed) == (0, 5, False)
    s = thinking_span([1, 2, EOS], ENDTHINK, THINK, [EOS])  # ended without closing: EOS is not a thought token
    assert (s.start, s.end, s.closed) == (0, 2, False)


def test_truncated_rollout_exits_drawn_over_generated_thinking():
    full = [THINK] + list(range(10, 40))  # 30 thought tokens, never closed
    span = thinking_span(full, ENDTHINK, THINK, [EOS])
    ps = sample_exit_positions(span.length, 8, torch.Generator().manual_seed(3))
    assert not span.closed and all(1 <= p <= 30 for p in ps)
    for p in ps:
        assert full[: span.start + p] == [THINK] + list(range(10, 10 + p))


def test_exit_text_inserted_once_at_the_cut(tiny_tokenizer):
    exit_ids = tiny_tokenizer.encode(DEFAULT_EXIT_TEXT, add_special_tokens=False)
    end_id = tiny_tokenizer.convert_tokens_to_ids("</think>")
    assert exit_ids.count(end_id) == 1
    assert tiny_tokenizer.decode(exit_ids) == DEFAULT_EXIT_TEXT
    prompt, full, answer = [1, 2, 3], [40, 41, 42, 43, end_id, 44, EOS], [50, 51, EOS]
    cut = 2
    comp = exit_completion(full, cut, exit_ids, answer)
    assert comp[:cut] == full[:cut] and comp[cut:cut + len(exit_ids)] == exit_ids and comp[cut + len(exit_ids):] == answer
    assert comp.count(end_id) == 1
    assert exit_prompt_ids(prompt, full, cut, exit_ids) == prompt + full[:cut] + exit_ids
    mask = exit_text_mask(len(comp), cut, len(exit_ids))
    assert [t for t, k in zip(comp, mask, strict=True) if not k] == exit_ids and sum(mask) == len(comp) - len(exit_ids)
    with pytest.raises(ValueError):
        exit_text_mask(3, 2, len(exit_ids))


def test_exit_logprobs_alignment():
    lp = exit_logprobs([-0.1, -0.2, -0.3, -0.4], 2, 3, [-1.0, -2.0])
    assert lp[:2] == [-0.1, -0.2] and lp[-2:] == [-1.0, -2.0]
    assert all(x != x for x in lp[2:5]) and len(lp) == 7  # NaN for the injected text
    assert exit_logprobs(None, 2, 3, [-1.0]) is None


def test_exit_quantile_bins():
    assert exit_quantile_bins(torch.tensor([0.0, 0.24, 0.25, 0.5, 0.99, 1.0])).tolist() == [0, 0, 1, 2, 3, 3]


def test_prefix_token_credit_hand_computed():
    # Exits at P = 2, 5, 9 (they keep thought tokens 0..P-1); advantages [A_1, A_2, A_3, A_0], full rollout last.
    cuts, adv = [2, 5, 9], [-0.3, 0.6, 0.1, -0.4]
    assert prefix_token_credit(cuts, adv, 1) == pytest.approx(0.0)  # in every member: the advantages sum to 0
    assert prefix_token_credit(cuts, adv, 4) == pytest.approx(0.6 + 0.1 - 0.4)  # exits 2, 3 and the full rollout
    assert prefix_token_credit(cuts, adv, 5) == pytest.approx(0.1 - 0.4)  # P = 5 keeps tokens 0..4 only
    assert prefix_token_credit(cuts, adv, 9) == pytest.approx(-0.4)  # the full rollout alone
    # loss_type 'grpo': each member's term is divided by its response length.
    assert prefix_token_credit(cuts, adv, 4, lengths=[4, 7, 11, 20]) == pytest.approx(0.6 / 7 + 0.1 / 11 - 0.4 / 20)
    with pytest.raises(ValueError, match="m \\+ 1 advantages"):
        prefix_token_credit(cuts, adv[:3], 4)
    with pytest.raises(ValueError, match="one length per member"):
        prefix_token_credit(cuts, adv, 4, lengths=[1, 2])
