"""S-GRPO trainer on the tiny model: config validation, serial groups on real generated token ids, advantages,
exit-text masking, group dropping, LoRA, resume, vLLM colocate, and a 2-process torchrun run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sgrpo_helpers import CapturingMixin, check_serial_groups, parity_reward, tiny_dataset

from trainers.serial_group import thinking_span
from trainers.sgrpo import SGRPOConfig, SGRPOTrainer, check_tokenizer

M, G = 3, 4  # 3 exits + the full rollout
MAX_COMPLETION, MAX_ANSWER = 24, 8


def base_kwargs(out_dir, **kw):
    args = dict(
        output_dir=str(out_dir), num_exits=M, num_generations=G, per_device_train_batch_size=8,
        gradient_accumulation_steps=1, max_completion_length=MAX_COMPLETION, max_answer_length=MAX_ANSWER,
        max_steps=2, learning_rate=1e-2, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
        dataloader_num_workers=0, seed=0, temperature=1.0,
    )
    args.update(kw)
    return args


class Capturing(CapturingMixin, SGRPOTrainer):
    captured: list


def make_trainer(model_path, args, peft_config=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    trainer = Capturing(model=str(model_path), reward_funcs=[parity_reward], args=args,
                        train_dataset=tiny_dataset(), processing_class=tok, peft_config=peft_config)
    trainer.captured = []
    return trainer


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    end_id = tiny_tokenizer.convert_tokens_to_ids("</think>")
    exit_ids = tiny_tokenizer.encode(SGRPOConfig.__dataclass_fields__["exit_text"].default, add_special_tokens=False)
    return {"end": end_id, "exit": exit_ids, "eos": [tiny_tokenizer.eos_token_id],
            "start": tiny_tokenizer.convert_tokens_to_ids("<think>")}


def hf_bias(ids):  # push `</think>` so the random model closes its thinking in about half the rollouts
    return {"sequence_bias": [[[ids["end"]], 3.0]]}


def expected_advantages(trainer, out, tok, ids, kind="decay"):
    rows = [out["completion_ids"][i][out["completion_mask"][i].bool()].tolist() for i in range(len(out["advantages"]))]
    texts = tok.batch_decode(rows, skip_special_tokens=True)
    correct = torch.tensor(parity_reward(texts)) > 0.5
    for g in range(len(rows) // G):  # a full rollout that never closed its thinking scores 0
        if not thinking_span(rows[g * G + G - 1], ids["end"], None, ids["eos"]).closed:
            correct[g * G + G - 1] = False
    from trainers.serial_group import sgrpo_rewards

    r = sgrpo_rewards(correct.view(-1, G), kind)
    return (r - r.mean(dim=1, keepdim=True)).flatten(), correct.view(-1, G)


# ------------------------------------------------------------------------------------------------ config
def test_config_defaults_are_the_papers(tmp_path):
    c = SGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=9, report_to="none", bf16=False)
    assert (c.num_exits, c.num_generations, c.loss_type, c.beta, c.learning_rate) == (8, 9, "grpo", 0.0, 1e-6)
    assert c.exit_text == "Time is limited, stop thinking and start answering.\n</think>\n\n"
    assert (c.sgrpo_reward, c.serial, c.mask_exit_text, c.correct_threshold) == ("decay", True, False, 0.5)


@pytest.mark.parametrize("kw,match", [
    (dict(num_generations=8), "num_generations \\(8\\) must equal num_full_rollouts"),
    (dict(num_full_rollouts=2), "must equal num_full_rollouts"),
    (dict(per_device_train_batch_size=3, gradient_accumulation_steps=2), "multiple of num_generations"),
    (dict(sgrpo_reward="linear"), "sgrpo_reward"),
    (dict(exit_position_range=[0.6, 0.2]), "exit_position_range"),
    (dict(exit_text="Stop.\n\n"), "exactly once"),
    (dict(max_answer_length=0), "max_answer_length"),
    (dict(use_vllm=True, vllm_max_model_length=100, max_completion_length=90, max_answer_length=20),
     "vllm_max_model_length"),
])
def test_config_rejects_bad_values(tmp_path, kw, match):
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=9, report_to="none", bf16=False)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        SGRPOConfig(**args)


def test_config_serial_false_is_plain_grpo(tmp_path):
    c = SGRPOConfig(output_dir=str(tmp_path), serial=False, num_generations=8, per_device_train_batch_size=8,
                    report_to="none", bf16=False)
    assert c.num_generations == 8  # no G = m + 1 constraint


def test_check_tokenizer(tiny_tokenizer, tmp_path):
    c = SGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=9, report_to="none", bf16=False)
    exit_ids, end_id, start_id = check_tokenizer(tiny_tokenizer, c)
    assert exit_ids.count(end_id) == 1 and start_id == tiny_tokenizer.convert_tokens_to_ids("<think>")
    c2 = SGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=9, report_to="none", bf16=False,
                     think_end_token="<stop-thinking>", exit_text="Answer now <stop-thinking>\n")
    with pytest.raises(ValueError, match="one token"):
        check_tokenizer(tiny_tokenizer, c2)


# ------------------------------------------------------------------------------------- transformers back-end
@pytest.fixture(scope="module")
def hf_run(tiny_model_path, tmp_path_factory, ids):
    args = SGRPOConfig(**base_kwargs(tmp_path_factory.mktemp("sgrpo-hf"), generation_kwargs=hf_bias(ids)))
    trainer = make_trainer(tiny_model_path, args)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_hf_serial_groups_on_token_ids(hf_run, tiny_tokenizer, ids):
    assert len(hf_run.captured) == 2  # one generation per step (on-policy)
    closed = []
    for out in hf_run.captured:
        facts = check_serial_groups(out, G, M, ids["exit"], ids["end"], ids["eos"], MAX_ANSWER)
        closed += [f["closed"] for f in facts if f["is_full"]]
        want, _ = expected_advantages(hf_run, out, tiny_tokenizer, ids)
        assert torch.allclose(out["advantages"].float(), want, atol=1e-6)
        assert "tool_mask" not in out  # mask_exit_text off: the advantage reaches every response token
    assert any(closed) and not all(closed), "want both closed and truncated full rollouts in this run"


@pytest.mark.slow
def test_hf_metrics_logged(hf_run):
    logs = [h for h in hf_run.state.log_history if "sgrpo/reward/mean" in h]
    assert len(logs) == 2
    for key in ("sgrpo/full_length/mean", "sgrpo/exit_position/mean", "sgrpo/exit_position_frac/mean",
                "sgrpo/accuracy/full", "sgrpo/accuracy/exits", "sgrpo/frac_groups_unsolved"):
        assert key in logs[0]
    assert 0.0 <= logs[0]["sgrpo/exit_position_frac/mean"] <= 1.0
    assert any(k.startswith("sgrpo/accuracy/exit_q") for k in logs[0])


@pytest.mark.slow
def test_hf_mask_exit_text_and_drop_unsolved(tiny_model_path, tmp_path, tiny_tokenizer, ids):
    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=1, per_device_train_batch_size=16, mask_exit_text=True,
                                     drop_unsolved_groups=True, generation_kwargs=hf_bias(ids)))
    trainer = make_trainer(tiny_model_path, args)
    trainer.train()
    (out,) = trainer.captured
    facts = check_serial_groups(out, G, M, ids["exit"], ids["end"], ids["eos"], MAX_ANSWER)
    want, correct = expected_advantages(trainer, out, tiny_tokenizer, ids)
    solved = correct.any(dim=1)
    assert solved.any() and not solved.all(), "want solved and unsolved groups in this batch"
    rows_kept = solved.repeat_interleave(G)
    scale = solved.numel() / solved.sum()
    assert torch.allclose(out["advantages"].float(), want * rows_kept * scale, atol=1e-6)
    tm = out["tool_mask"]
    n_exit = len(ids["exit"])
    for i, f in enumerate(facts):
        row = tm[i, :f["len"]]
        if not rows_kept[i]:
            assert row.sum() == 0
        elif f["is_full"]:
            assert row.all()
        else:  # exactly the injected text is masked out
            assert row[f["cut"]:f["cut"] + n_exit].sum() == 0 and row.sum() == f["len"] - n_exit
    logs = [h for h in trainer.state.log_history if "sgrpo/frac_groups_dropped" in h]
    assert logs[0]["sgrpo/frac_groups_dropped"] == pytest.approx(1 - solved.float().mean().item())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shortest_one", "all_one"])
def test_hf_reward_ablations(tiny_model_path, tmp_path, tiny_tokenizer, ids, kind):
    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=1, sgrpo_reward=kind, generation_kwargs=hf_bias(ids)))
    trainer = make_trainer(tiny_model_path, args)
    trainer.train()
    (out,) = trainer.captured
    want, _ = expected_advantages(trainer, out, tiny_tokenizer, ids, kind)
    assert torch.allclose(out["advantages"].float(), want, atol=1e-6)


@pytest.mark.slow
def test_serial_false_is_plain_grpo(tiny_model_path, tmp_path, ids):
    from sgrpo_helpers import find_sub

    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=1, serial=False))
    trainer = make_trainer(tiny_model_path, args)
    trainer.train()
    (out,) = trainer.captured
    for i in range(out["completion_ids"].size(0)):
        row = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
        assert find_sub(row, ids["exit"]) is None
    assert not any("sgrpo/reward/mean" in h for h in trainer.state.log_history)


@pytest.mark.slow
def test_lora(tiny_model_path, tmp_path, ids):
    from peft import LoraConfig

    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=2, generation_kwargs=hf_bias(ids)))
    trainer = make_trainer(tiny_model_path, args, peft_config=LoraConfig(r=4, lora_alpha=8,
                                                                         target_modules=["q_proj", "v_proj"]))
    trainer.train()
    for out in trainer.captured:
        check_serial_groups(out, G, M, ids["exit"], ids["end"], ids["eos"], MAX_ANSWER)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at 0: it trained


@pytest.mark.slow
def test_resume_from_checkpoint(tiny_model_path, tmp_path, ids):
    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                                     generation_kwargs=hf_bias(ids)))
    make_trainer(tiny_model_path, args).train()
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "trainer_state.json").exists()
    args = SGRPOConfig(**base_kwargs(tmp_path, max_steps=3, save_strategy="no", generation_kwargs=hf_bias(ids)))
    trainer = make_trainer(tiny_model_path, args)
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert trainer.state.global_step == 3
    assert len(trainer.captured) == 1  # only the third step generated, with serial groups
    check_serial_groups(trainer.captured[0], G, M, ids["exit"], ids["end"], ids["eos"], MAX_ANSWER)


# ----------------------------------------------------------------------------------------------- vLLM colocate
@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_colocate(tiny_model_path, tmp_path, tiny_tokenizer, ids, monkeypatch):
    pytest.importorskip("vllm")
    # torch 2.13 makes vLLM default to AOT compilation, which fails under TORCHDYNAMO_DISABLE=1 (eager CPU tests).
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "0")
    args = SGRPOConfig(**base_kwargs(
        tmp_path, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=256, vllm_enable_sleep_mode=False,
        vllm_gpu_memory_utilization=0.3, generation_kwargs={"logit_bias": {ids["end"]: 3.0}},
    ))
    trainer = make_trainer(tiny_model_path, args)
    cache_cfg = trainer.vllm_generation.llm.llm_engine.vllm_config.cache_config
    assert cache_cfg.enable_prefix_caching, "TRL's colocate LLM should inherit vLLM's prefix caching default (on)"
    trainer.train()
    assert len(trainer.captured) == 2
    n_exit = len(ids["exit"])
    for out in trainer.captured:
        facts = check_serial_groups(out, G, M, ids["exit"], ids["end"], ids["eos"], MAX_ANSWER)
        want, _ = expected_advantages(trainer, out, tiny_tokenizer, ids)
        assert torch.allclose(out["advantages"].float(), want, atol=1e-6)
        lp = out["sampling_per_token_logps"]
        for i, f in enumerate(facts):  # NaN exactly on the injected text, real logprobs elsewhere
            nan = torch.isnan(lp[i, :f["len"]])
            if f["is_full"]:
                assert not nan.any()
            else:
                assert nan[f["cut"]:f["cut"] + n_exit].all() and nan.sum() == n_exit
        assert torch.isfinite(out["importance_sampling_ratio"]).all()
        # the prefix logprobs are the full rollout's: same tokens, same context
        for g in range(len(facts) // G):
            full_lp = lp[g * G + G - 1]
            for j in range(M):
                cut = facts[g * G + j]["cut"]
                assert torch.equal(lp[g * G + j, :cut], full_lp[:cut])
    assert trainer.vllm_generation.max_completion_length == MAX_COMPLETION  # answer budget restored


# --------------------------------------------------------------------------------------------- 2 processes
@pytest.mark.slow
def test_two_process_torchrun_keeps_groups_whole(tiny_model_path, tmp_path):
    script = Path(__file__).with_name("dist_sgrpo.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(script), str(tiny_model_path), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in res)
    for r in res:
        assert r["groups_checked"] == 2 * 2  # 2 steps x 2 whole groups on each rank
        assert r["gathered_rows"] == 2 * r["local_rows"]
    # the two ranks generated different questions (the sampler shards groups, it does not duplicate them)
    assert not set(map(tuple, res[0]["prompts"])) & set(map(tuple, res[1]["prompts"]))
