"""Packed scoring of S-GRPO serial groups (issue 20): the pure packing functions on a hand-built 3-member group, entry
by entry; packed vs unpacked log-probs on the tiny model with SDPA, eager and FlexAttention masks; and the trainer's
packed old-policy / reference / loss passes against TRL's own unpacked ones (per-token log-probs and the loss's
gradient within fp32 tolerance) for every sgrpo_reward, exit text masked and not, 2 paths per question, dropped groups,
micro-batches that split serial groups, LoRA, and the fallback."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from sgrpo_helpers import parity_reward, tiny_dataset

from trainers.packing import (
    block_mask,
    dense_mask,
    member_descriptor,
    packing_unsupported_reason,
    plan_serial_packing,
    regroup_micro_batches,
    regroup_order,
    scatter_to_rows,
)
from trainers.sgrpo import PACK_KEY, SGRPOConfig, SGRPOTrainer

ATOL = 2e-5  # fp32: packed and unpacked differ only in the order of the attention sums


# --------------------------------------------------------------------------------- a hand-built 3-member group
# prompt [11, 12] (left-padded by one), O_0 = [21, 22, 23, 24], exit text [31, 32]
# rows: exit at cut 1 (answer [41]), exit at cut 3 (answer [51, 52]), the full rollout.
PAD = 0
ROWS = [
    [PAD, 11, 12, 21, 31, 32, 41, PAD, PAD, PAD],
    [PAD, 11, 12, 21, 22, 23, 31, 32, 51, 52],
    [PAD, 11, 12, 21, 22, 23, 24, PAD, PAD, PAD],
]
COMP_LEN = [4, 7, 4]
C = 7  # completion columns (P = 3 prompt columns)


def hand_batch():
    ids = torch.tensor(ROWS)
    am = (ids != PAD).long()
    desc = member_descriptor([False, False, True], [1, 3, 4], members_per_path=3)
    return ids, am, desc


def test_member_descriptor():
    desc = member_descriptor([False, True, False, True], [2, 9, 1, 5], members_per_path=2)
    assert desc.tolist() == [[0, 0, 2, 0], [0, 1, 9, 1], [1, 0, 1, 2], [1, 1, 5, 3]]
    with pytest.raises(ValueError, match="whole serial paths"):
        member_descriptor([False, True, True], [1, 2, 3], members_per_path=2)


def test_hand_built_group_plan_entry_by_entry():
    ids, am, desc = hand_batch()
    plan = plan_serial_packing(ids, am, C, desc, pad_token_id=PAD)
    # trunk = prompt + O_0 (indices 0-5); branch 1 = copy of O_0[0] + exit + answer (6-9); branch 2 = O_0[2] + ... (10-14)
    assert plan.input_ids.tolist() == [[11, 12, 21, 22, 23, 24, 21, 31, 32, 41, 23, 31, 32, 51, 52]]
    # the positions of the unpacked rows (padded index): the prompt starts at 1 after one pad
    assert plan.position_ids.tolist() == [[1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 5, 6, 7, 8, 9]]
    assert plan.segment.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]]
    assert plan.visible.tolist() == [[0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 4]]
    N = -100  # the token each position's hidden state predicts
    assert plan.shift_labels.tolist() == [[N, 21, 22, 23, 24, N, 31, 32, 41, N, 31, 32, 51, 52, N]]
    # member row token t -> the packed position whose hidden state scores it
    assert plan.gather_index.tolist() == [
        [1, 6, 7, 8, 0, 0, 0],
        [1, 2, 3, 10, 11, 12, 13],
        [1, 2, 3, 4, 0, 0, 0],
    ]
    assert plan.valid.tolist() == [[t < n for t in range(C)] for n in COMP_LEN]
    for r in range(3):  # every scored position predicts exactly the member's token
        for t in range(COMP_LEN[r]):
            assert plan.shift_labels[0, plan.gather_index[r, t]].item() == ROWS[r][3 + t]
    assert plan.packed_tokens == 4 + 4 + 5 and plan.row_tokens == sum(COMP_LEN)


def test_hand_built_group_mask_entry_by_entry():
    ids, am, desc = hand_batch()
    plan = plan_serial_packing(ids, am, C, desc, pad_token_id=PAD)
    visible_keys = {  # query index -> the key indices it attends to
        0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {0, 1, 2, 3}, 4: {0, 1, 2, 3, 4}, 5: {0, 1, 2, 3, 4, 5},
        # branch 1 (exit after O_0[:1]): the prompt, then itself causally (its copy of O_0[0] stands for index 2)
        6: {0, 1, 6}, 7: {0, 1, 6, 7}, 8: {0, 1, 6, 7, 8}, 9: {0, 1, 6, 7, 8, 9},
        # branch 2 (exit after O_0[:3]): prompt + O_0[:2], then itself (its copy of O_0[2] stands for index 4)
        10: {0, 1, 2, 3, 10}, 11: {0, 1, 2, 3, 10, 11}, 12: {0, 1, 2, 3, 10, 11, 12},
        13: {0, 1, 2, 3, 10, 11, 12, 13}, 14: {0, 1, 2, 3, 10, 11, 12, 13, 14},
    }
    mask = dense_mask(plan, "bool")
    assert mask.shape == (1, 1, 15, 15) and mask.dtype == torch.bool
    for q in range(15):
        for k in range(15):
            assert mask[0, 0, q, k].item() == (k in visible_keys[q]), (q, k)
    additive = dense_mask(plan, "additive", torch.float32)
    assert torch.equal(additive[0, 0] == 0, mask[0, 0])
    assert (additive[0, 0][~mask[0, 0]] == torch.finfo(torch.float32).min).all()


def test_padding_order_and_truncated_rows():
    """Two serial paths of different lengths in one batch (padding attends to itself only), rows given out of order,
    and a row whose completion mask TRL zeroed (mask_truncated_completions) left out with log-probs 0."""
    ids, am, desc = hand_batch()
    ids2 = torch.tensor([[PAD, PAD, 13, 25, 33, 34, 42, PAD, PAD, PAD],  # exit at cut 1 of O_0 = [25, 26]
                         [PAD, PAD, 13, 25, 26, PAD, PAD, PAD, PAD, PAD]])
    all_ids = torch.cat([ids, ids2])
    all_am = (all_ids != PAD).long()
    all_desc = torch.cat([desc, torch.tensor([[7, 0, 1, 3], [7, 1, 2, 4]])])
    all_am[1, 3:] = 0  # the cut-3 exit of the first path: TRL zeroed its completion
    order = torch.tensor([3, 0, 4, 1, 2])
    plan = plan_serial_packing(all_ids[order], all_am[order], C, all_desc[order], pad_token_id=PAD)
    assert plan.input_ids.shape == (2, 10)  # path 7 first (first appearance): [13, 25, 26] + [25, 33, 34, 42]
    assert plan.input_ids[0].tolist() == [13, 25, 26, 25, 33, 34, 42, PAD, PAD, PAD]
    assert plan.input_ids[1].tolist() == [11, 12, 21, 22, 23, 24, 21, 31, 32, 41]  # no branch for the zeroed exit
    assert plan.valid[order.tolist().index(1)].sum() == 0
    assert plan.packed_tokens == (2 + 4) + (4 + 4) and plan.row_tokens == 4 + 2 + 4 + 4
    mask = dense_mask(plan)
    pad = plan.segment == -1
    assert pad.sum() == 3
    for s, q in pad.nonzero().tolist():
        assert mask[s, 0, q].nonzero().flatten().tolist() == [q]
    for r in range(5):  # every scored position predicts the member's own token
        for t in plan.valid[r].nonzero().flatten().tolist():
            assert plan.shift_labels.flatten()[plan.gather_index[r, t]].item() == all_ids[order][r, 3 + t].item()


def test_exit_at_position_zero_branches_from_the_last_prompt_token():
    ids = torch.tensor([[11, 12, 31, 32, 41], [11, 12, 21, 22, PAD]])
    am = (ids != PAD).long()
    plan = plan_serial_packing(ids, am, 3, torch.tensor([[0, 0, 0, 0], [0, 1, 2, 1]]), pad_token_id=PAD)
    assert plan.input_ids.tolist() == [[11, 12, 21, 22, 12, 31, 32, 41]]
    assert plan.position_ids.tolist() == [[0, 1, 2, 3, 1, 2, 3, 4]]
    assert plan.visible[0, 4:].tolist() == [1, 1, 1, 1]  # only the first prompt token precedes the copy
    assert plan.gather_index[0].tolist() == [4, 5, 6]


def test_wrong_descriptor_is_refused():
    ids, am, desc = hand_batch()
    bad = ids.clone()
    bad[1, 4] = 99  # the cut-3 exit no longer repeats O_0[1]
    with pytest.raises(ValueError, match="does not share"):
        plan_serial_packing(bad, am, C, desc)


def test_regroup_order_and_micro_batches():
    desc = member_descriptor([False, True] * 4, [1, 0] * 4, members_per_path=2)  # 4 paths of 2 members
    shuffled = torch.tensor([5, 0, 3, 6, 1, 7, 2, 4])
    order = regroup_order(desc[shuffled])
    assert desc[shuffled][order][:, 3].tolist() == [4, 5, 0, 1, 2, 3, 6, 7]  # paths by first appearance: 2, 0, 1, 3
    batches = [{"x": torch.arange(8)[shuffled][i * 4:(i + 1) * 4], "d": desc[shuffled][i * 4:(i + 1) * 4],
                "names": [f"r{j}" for j in shuffled[i * 4:(i + 1) * 4].tolist()], "n": torch.tensor(8), "none": None}
               for i in range(2)]
    out = regroup_micro_batches(batches, "d")
    assert [b["x"].tolist() for b in out] == [[4, 5, 0, 1], [2, 3, 6, 7]]
    assert out[1]["names"] == ["r2", "r3", "r6", "r7"] and out[0]["n"].item() == 8 and out[0]["none"] is None


def test_unsupported_reasons():
    ok = SimpleNamespace(model_type="qwen3", layer_types=["full_attention"] * 2)
    assert packing_unsupported_reason(ok, "sdpa") is None
    assert packing_unsupported_reason(ok, "eager") is None
    assert "flash_attention_2" in packing_unsupported_reason(ok, "flash_attention_2")
    assert "gpt2" in packing_unsupported_reason(SimpleNamespace(model_type="gpt2"), "sdpa")
    sliding = SimpleNamespace(model_type="qwen2", layer_types=["sliding_attention", "full_attention"])
    assert "sliding" in packing_unsupported_reason(sliding, "sdpa")
    assert "sliding" in packing_unsupported_reason(SimpleNamespace(model_type="mistral", sliding_window=4096), "sdpa")


# ------------------------------------------------------------------------------- the tiny model, raw forward
def random_batch(n_paths=2, m=3, seed=1):
    """TRL-layout rows (left-padded prompts of different lengths, right-padded completions) of serial paths."""
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randint(5, 300, (n,), generator=g).tolist()

    prompts, comps, is_full, cuts = [], [], [], []
    for path in range(n_paths):
        prompt, full, exit_text = rnd(4 + 2 * path), rnd(14), rnd(3)
        for cut in sorted(torch.randperm(13, generator=g)[:m].tolist()):
            prompts.append(prompt)
            comps.append(full[:cut] + exit_text + rnd(1 + cut % 4))
            is_full.append(False)
            cuts.append(cut)
        prompts.append(prompt)
        comps.append(full)
        is_full.append(True)
        cuts.append(len(full))
    P, Cm = max(map(len, prompts)), max(map(len, comps))
    ids = torch.zeros(len(prompts), P + Cm, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
        ids[i, P - len(p):P], am[i, P - len(p):P] = torch.tensor(p), 1
        ids[i, P:P + len(c)], am[i, P:P + len(c)] = torch.tensor(c), 1
    return ids, am, Cm, member_descriptor(is_full, cuts, m + 1)


def raw_model(attn):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, tie_word_embeddings=True, pad_token_id=0)
    cfg._attn_implementation = attn
    model = Qwen3ForCausalLM(cfg)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_forward_matches_rows(attn):
    model = raw_model(attn)
    ids, am, Cm, desc = random_batch()
    labels = ids.masked_fill(am == 0, -100)
    labels[:, :-Cm] = -100
    grad = attn != "flex_attention"  # FlexAttention has no backward on CPU
    with torch.set_grad_enabled(grad):
        ref = model(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True)
        ref_lp, ref_ent = ref.log_probs[:, -Cm:], ref.entropy[:, -Cm:]
        perm = torch.randperm(ids.size(0), generator=torch.Generator().manual_seed(3))
        plan = plan_serial_packing(ids[perm], am[perm], Cm, desc[perm])
        mask = block_mask(plan) if attn == "flex_attention" else dense_mask(plan, "bool" if attn == "sdpa" else "additive")
        out = model(input_ids=plan.input_ids, attention_mask=mask, position_ids=plan.position_ids,
                    shift_labels=plan.shift_labels, fused_lm_head=True)
        lp, ent = scatter_to_rows(out.log_probs, plan), scatter_to_rows(out.entropy, plan)
    assert (ref_lp[perm] != 0).sum() == (lp != 0).sum() == am[:, -Cm:].sum()
    torch.testing.assert_close(lp, ref_lp[perm], atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, ref_ent[perm], atol=ATOL, rtol=0)
    assert plan.packed_tokens < 0.8 * plan.row_tokens
    if grad:
        w = torch.randn_like(lp)
        g_packed = torch.autograd.grad((lp * w).sum(), list(model.parameters()), retain_graph=True)
        g_rows = torch.autograd.grad((ref_lp[perm] * w).sum(), list(model.parameters()))
        for a, b in zip(g_packed, g_rows, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item() + 1e-7, rtol=0)


# ------------------------------------------------------------------------------------------ the trainer
M = 3
END_BIAS = 3.0


def make(tiny_model_path, tmp_path, peft_config=None, model=None, **kw):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    end = tok.convert_tokens_to_ids("</think>")
    R = kw.pop("num_full_rollouts", 2)
    args = dict(output_dir=str(tmp_path), num_exits=M, num_full_rollouts=R, num_generations=R * (M + 1),
                per_device_train_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=2,
                max_completion_length=24, max_answer_length=8, max_steps=1, learning_rate=1e-2, bf16=False,
                report_to="none", logging_steps=1, save_strategy="no", dataloader_num_workers=0, seed=0,
                use_cpu=True, beta=0.04, generation_kwargs={"sequence_bias": [[[end], END_BIAS]]})
    args.update(kw)
    trainer = SGRPOTrainer(model=model or str(tiny_model_path), reward_funcs=[parity_reward],
                           args=SGRPOConfig(**args), train_dataset=tiny_dataset(), processing_class=tok,
                           peft_config=peft_config)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); _compute_loss reads it
    return trainer


def trl_logps(trainer, model, batch, entropy=True):
    """TRL's own unpacked log-prob pass (the base class method, not the wrapper)."""
    from trl import GRPOTrainer

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        lp, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, model, ids, am, batch["completion_ids"].size(1), compute_entropy=entropy)
    return lp, ent


def loss_and_grads(trainer, batch, packed: bool):
    trainer.sgrpo_packing = packed
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    trainer.sgrpo_packing = True
    return loss.detach(), {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def check_trainer_packing(trainer, whole_groups=True):
    """One generation batch through TRL's `_prepare_inputs` (shuffle, split, our regroup), then: the packed old-policy
    and reference log-probs equal TRL's unpacked ones, and each micro-batch's loss and gradient packed == unpacked."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer._step = 0
    trainer._prepare_inputs(batch)
    micro = trainer._buffered_inputs
    m1 = trainer.args.num_exits + 1
    scales = []
    for mb in micro:
        desc = mb[PACK_KEY]
        paths = desc[:, 0].tolist()
        # serial paths are consecutive, members in position order (the full rollout last)
        assert [p for i, p in enumerate(paths) if i == 0 or p != paths[i - 1]] == list(dict.fromkeys(paths))
        for p in set(paths):
            rows = desc[desc[:, 0] == p, 3].tolist()
            assert rows == sorted(rows) and rows == list(range(rows[0], rows[0] + len(rows)))
            if whole_groups:
                assert len(rows) == m1
        mask = mb["completion_mask"].bool()
        lp, _ = trl_logps(trainer, trainer.model, mb)
        assert mb.get("old_per_token_logps") is not None
        torch.testing.assert_close(mb["old_per_token_logps"][mask], lp[mask], atol=ATOL, rtol=0)
        if trainer.beta:
            ref_model = trainer.ref_model
            if ref_model is None:  # LoRA: the reference is the base model with the adapter disabled
                with trainer.model.disable_adapter():
                    ref, _ = trl_logps(trainer, trainer.model, mb)
            else:
                ref, _ = trl_logps(trainer, ref_model, mb, entropy=False)
            torch.testing.assert_close(mb["ref_per_token_logps"][mask], ref[mask], atol=ATOL, rtol=0)
        # the loss pass: the hook's per-token log-probs and entropies ...
        trainer._sgrpo_pack_rows = desc
        ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
        am = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
        with torch.no_grad():
            plp, pent, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, am, mb["completion_ids"].size(1), compute_entropy=True)
        trainer._sgrpo_pack_rows = None
        ulp, uent = trl_logps(trainer, trainer.model, mb)
        torch.testing.assert_close(plp[mask], ulp[mask], atol=ATOL, rtol=0)
        torch.testing.assert_close(pent[mask], uent[mask], atol=ATOL, rtol=0)
        # ... and the loss's gradient
        loss_p, g_p = loss_and_grads(trainer, mb, packed=True)
        loss_u, g_u = loss_and_grads(trainer, mb, packed=False)
        torch.testing.assert_close(loss_p, loss_u, atol=1e-6, rtol=1e-5)
        assert g_p.keys() == g_u.keys() and g_u
        scale = max(g.abs().max().item() for g in g_u.values())
        scales.append(scale)
        for name in g_u:
            diff = (g_p[name] - g_u[name]).abs().max().item()
            assert diff <= 1e-4 * scale + 1e-8, (name, diff, scale)
    assert max(scales) > 0, "no micro-batch had a gradient to compare"
    return micro


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["decay", "all_one", "shortest_one"])
@pytest.mark.parametrize("mask_exit_text", [False, True])
def test_trainer_packed_matches_unpacked(tiny_model_path, tmp_path, reward, mask_exit_text):
    trainer = make(tiny_model_path, tmp_path, sgrpo_reward=reward, mask_exit_text=mask_exit_text)
    assert trainer.sgrpo_packing and trainer.sgrpo_pack_reason is None
    micro = check_trainer_packing(trainer)
    if mask_exit_text:
        assert any((mb["tool_mask"] == 0).any() for mb in micro)


@pytest.mark.slow
def test_trainer_drop_unsolved_groups(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, num_full_rollouts=1, drop_unsolved_groups=True)
    micro = check_trainer_packing(trainer)
    kept = torch.cat([mb["tool_mask"].sum(1) > 0 for mb in micro])
    assert kept.any() and not kept.all(), "want dropped and kept groups"


@pytest.mark.slow
def test_trainer_mask_truncated_completions(tiny_model_path, tmp_path, tiny_tokenizer):
    """Rows whose completion TRL zeroes (no EOS) are left out of the packing; their path's trunk comes from the others."""
    end, eos = tiny_tokenizer.convert_tokens_to_ids("</think>"), tiny_tokenizer.eos_token_id
    trainer = make(tiny_model_path, tmp_path, mask_truncated_completions=True,
                   generation_kwargs={"sequence_bias": [[[end], END_BIAS], [[eos], 4.0]]})
    micro = check_trainer_packing(trainer)
    empty = torch.cat([mb["completion_mask"].sum(1) == 0 for mb in micro])
    assert empty.any() and not empty.all(), "want truncated (masked) and complete rows"


@pytest.mark.slow
def test_trainer_micro_batches_that_split_serial_groups(tiny_model_path, tmp_path, caplog):
    """per_device_train_batch_size 6 with serial paths of 4 members: micro-batches hold consecutive members of up to
    two paths; still exact."""
    with caplog.at_level(logging.WARNING, logger="trainers.sgrpo"):
        trainer = make(tiny_model_path, tmp_path, num_full_rollouts=1, per_device_train_batch_size=6,
                       steps_per_generation=2)
    assert "not a multiple of num_exits + 1" in caplog.text
    check_trainer_packing(trainer, whole_groups=False)


@pytest.mark.slow
def test_trainer_lora(tiny_model_path, tmp_path):
    from peft import LoraConfig

    trainer = make(tiny_model_path, tmp_path, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.sgrpo_packing and trainer.ref_model is None
    check_trainer_packing(trainer)


@pytest.mark.slow
def test_train_reports_packed_tokens(tiny_model_path, tmp_path):
    """A real `train()` (2 steps, whole groups) packs: the packed token share is logged and cost/trained_tokens counts
    the packed tokens, below the unpacked rows' count of the same run."""
    from trainers.cost import with_cost_accounting

    cls = with_cost_accounting(SGRPOTrainer)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    end = tok.convert_tokens_to_ids("</think>")
    logs = {}
    for pack in (True, False):
        args = SGRPOConfig(output_dir=str(tmp_path / str(pack)), num_exits=M, num_generations=M + 1,
                           per_device_train_batch_size=8, max_completion_length=24, max_answer_length=8, max_steps=2,
                           learning_rate=1e-2, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
                           seed=0, use_cpu=True, pack_serial_groups=pack,
                           generation_kwargs={"sequence_bias": [[[end], END_BIAS]]})
        trainer = cls(model=str(tiny_model_path), reward_funcs=[parity_reward], args=args, train_dataset=tiny_dataset(),
                      processing_class=tok)
        trainer.train()
        logs[pack] = [h for h in trainer.state.log_history if "cost/trained_tokens" in h]
    assert len(logs[True]) == 2
    frac = [h["sgrpo/packed_token_frac"] for h in logs[True]]
    assert all(0 < f < 1 for f in frac)
    assert not any("sgrpo/packed_token_frac" in h for h in logs[False])
    # same seed, same first generation batch: step 1's loss agrees, its trained tokens shrink by the packed share
    first_p, first_u = logs[True][0], logs[False][0]
    assert first_p["loss"] == pytest.approx(first_u["loss"], abs=1e-5)
    assert first_p["cost/trained_tokens"] == pytest.approx(frac[0] * first_u["cost/trained_tokens"], rel=1e-6)


@pytest.mark.slow
def test_fallback_logs_the_reason_once(tiny_model_path, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, layer_types=["sliding_attention", "full_attention"],
                                                 sliding_window=4096)
    with caplog.at_level(logging.WARNING, logger="trainers.sgrpo"):
        trainer = make(tiny_model_path, tmp_path, model=model, beta=0.0)
    assert not trainer.sgrpo_packing and "sliding" in trainer.sgrpo_pack_reason
    assert caplog.text.count("pack_serial_groups is off") == 1
    batch = next(iter(trainer.get_train_dataloader()))
    trainer._step = 0
    trainer._prepare_inputs(batch)
    assert PACK_KEY not in trainer._buffered_inputs[0]
    off = make(tiny_model_path, tmp_path / "off", pack_serial_groups=False)
    assert not off.sgrpo_packing and off.sgrpo_pack_reason is None
