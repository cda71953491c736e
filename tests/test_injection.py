"""Norm-matched injection: where it acts, by how much, gradients, and only on the prompt pass."""
from __future__ import annotations

import pytest
import torch

from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.injection import Injector, decoder_blocks, steer
from cocoracle.oracle.questions import prompt
from cocoracle.oracle.train import add_oracle_tokens, decode


@pytest.fixture
def oracle_model(tiny_model):
    """The tiny model (float64) with the oracle's placeholder and question words added."""
    model, tokenizer = tiny_model
    add_oracle_tokens(model, tokenizer)
    return model, tokenizer


def test_steer_adds_alpha_times_norm_at_the_mask_only():
    torch.manual_seed(0)
    hidden, vectors = torch.randn(2, 5, 8), torch.randn(2, 8) * 7
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    out = steer(hidden, vectors, mask, alpha=2.0)
    delta = out - hidden
    assert torch.equal(delta[~mask], torch.zeros_like(delta[~mask]))
    assert torch.allclose(delta[mask].norm(dim=-1), 2.0 * hidden[mask].norm(dim=-1))
    direction = vectors / vectors.norm(dim=-1, keepdim=True)
    assert torch.allclose(delta[0, 1] / delta[0, 1].norm(), direction[0], atol=1e-6)


def test_steering_term_is_detached():
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    mask = torch.tensor([[False, True, False]])
    steer(hidden, torch.randn(1, 4), mask, 1.5).sum().backward()
    assert torch.equal(hidden.grad, torch.ones_like(hidden))  # the added term contributes no gradient


def _block_inputs(model, layer):
    seen = []
    handle = decoder_blocks(model)[layer].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("layer", [0, 1])
def test_injector_changes_the_residual_stream_only_at_placeholders(oracle_model, layer):
    model, tokenizer = oracle_model
    codec = OracleCodec(tokenizer)
    batch = codec.batch([prompt(1, "What digit does this step write ?"), prompt(1, "What is the final answer ?")])
    vectors = torch.randn(2, model.config.n_embd, dtype=torch.float64)
    injector = Injector(model, [layer], alpha=1.0)
    seen, handle = _block_inputs(model, layer)  # registered after the injector: sees the steered input
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    injector.arm(vectors, batch.act_mask)
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    handle.remove()
    injector.remove()
    clean, steered = seen
    delta = steered - clean
    assert batch.act_mask.sum() == 2
    assert torch.equal(delta[~batch.act_mask], torch.zeros_like(delta[~batch.act_mask]))
    assert torch.allclose(delta[batch.act_mask].norm(dim=-1), clean[batch.act_mask].norm(dim=-1))


def test_injector_rejects_layers_outside_the_model(tiny_model):
    from cocoracle.config import InputError
    with pytest.raises(InputError, match="inject layer 2"):
        Injector(tiny_model[0], [2], 1.0)


def _naive_greedy(model, injector, batch, vectors, eos, steps):
    """Full recompute each step; the placeholder mask is extended with False for generated tokens."""
    ids, mask, act = batch.input_ids, batch.attention_mask, batch.act_mask
    out = []
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        injector.arm(vectors, act)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        injector.disarm()
        token = logits[:, -1].argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        act = torch.cat([act, act.new_zeros(act.shape[0], 1)], 1)
    return torch.stack(out, 1).tolist()


def test_decode_injects_on_the_prompt_pass_only(oracle_model):
    model, tokenizer = oracle_model
    codec = OracleCodec(tokenizer)
    batch = codec.batch([prompt(1, "What step was computed here ?"), prompt(0, "What is the final answer ?")])
    torch.manual_seed(1)
    vectors = torch.randn(2, model.config.n_embd, dtype=torch.float64)
    injector = Injector(model, [0, 1], alpha=4.0)
    no_eos = -1  # decode the full length so every cached step is compared
    cached = decode(model, injector, batch, vectors, no_eos, 6)
    assert cached == _naive_greedy(model, injector, batch, vectors, no_eos, 6)
    plain = decode(model, injector, batch, None, no_eos, 6)
    injector.remove()
    assert plain == _naive_greedy(model, Injector(model, [0], 0.0), batch, vectors, no_eos, 6)
