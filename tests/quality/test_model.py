"""The study's in-process model is the real model: same logits as transformers, skips as defined."""

import pytest
import torch

IDS = [2, 40, 41, 42, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140]  # 14 tokens: past Gemma's 8-token window


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_nothing_skipped_reproduces_transformers_logits(kind, skip_model, hf_model):
    model = skip_model(kind)
    expected = hf_model(kind)(torch.tensor([IDS])).logits
    torch.testing.assert_close(model.logits(model.final_hidden(IDS)), expected, atol=1e-5, rtol=1e-5)


def test_skipping_a_layer_is_passing_the_hidden_state_on(skip_model, hf_model):
    """Skipping layer 2 equals transformers' model with layer 2 replaced by the identity."""
    model = skip_model("llama")
    reference = hf_model("llama")
    kept = reference.model.layers
    reference.model.layers = torch.nn.ModuleList([layer for i, layer in enumerate(kept) if i != 2])
    try:
        expected = reference(torch.tensor([IDS])).logits
    finally:
        reference.model.layers = kept
    got = model.logits(model.final_hidden(IDS, (2,)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bos_follows_the_harness_rule(skip_model):
    assert skip_model("gemma3").adds_bos and not skip_model("llama").adds_bos
