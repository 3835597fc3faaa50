"""Bridges on plain data: a known affine map is recovered, an identity slice gives the identity, composing
equals applying in turn, and what is saved loads back the same."""

from __future__ import annotations

import pytest
import torch

from quality.bridges import Bridge, calibration_states, compose, fit_affine, fit_bridges, load_bridges, save_bridges
from quality.errors import StudyError


def _data(n: int = 3000, h: int = 24, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=generator) * torch.linspace(0.5, 4.0, h)  # unequal scales, as hidden states
    weight = torch.randn(h, h, generator=generator) / h**0.5
    bias = torch.randn(h, generator=generator) * 3
    return x, weight, bias


def test_a_known_affine_map_is_recovered_bias_included():
    x, weight, bias = _data()
    fitted_w, fitted_b = fit_affine(x, x @ weight + bias, ridge=0.0)
    assert torch.allclose(fitted_w, weight, atol=1e-4) and torch.allclose(fitted_b, bias, atol=1e-4)
    ridged_w, ridged_b = fit_affine(x, x @ weight + bias, ridge=1e-3)
    assert torch.allclose(ridged_w, weight, atol=2e-2), "a small ridge barely moves a well-posed fit"
    assert torch.allclose(ridged_b, bias, atol=5e-2), "the bias is not shrunk"


def test_noise_is_averaged_out():
    x, weight, bias = _data(n=20000)
    noisy = x @ weight + bias + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fitted_w, fitted_b = fit_affine(x, noisy, ridge=1e-4)
    assert (fitted_w - weight).abs().max() < 0.01 and (fitted_b - bias).abs().max() < 0.01


def test_a_bridge_over_an_identity_slice_is_the_identity():
    x, _, _ = _data()
    weight, bias = fit_affine(x, x.clone(), ridge=0.0)
    assert torch.allclose(weight, torch.eye(x.shape[1]), atol=1e-5) and bias.abs().max() < 1e-5


def test_composed_bridges_equal_applying_them_in_turn_and_must_be_consecutive():
    x, w1, b1 = _data(seed=2)
    _, w2, b2 = _data(seed=3)
    first, second = Bridge(0, 3, w1, b1), Bridge(3, 6, w2, b2)
    both = compose([first, second])
    assert (both.first, both.end) == (0, 6)
    assert torch.allclose(both.apply(x), second.apply(first.apply(x)), atol=1e-3)
    with pytest.raises(StudyError, match="not consecutive"):
        compose([first, Bridge(4, 6, w2, b2)])


def test_shapes_and_ridge_are_checked():
    x, _, _ = _data(n=10)
    with pytest.raises(StudyError, match=r"\[N, H\]"):
        fit_affine(x, x[:, :5])
    with pytest.raises(StudyError, match="ridge"):
        fit_affine(x, x, ridge=-1)


def test_saved_bridges_load_back_by_key(tmp_path):
    x, weight, bias = _data(n=10, h=8)
    path = save_bridges([Bridge(2, 5, weight, bias)], tmp_path / "bridges.safetensors", meta={"ridge": 1e-3})
    loaded = load_bridges(path)
    assert list(loaded) == ["2-4"]
    assert (loaded["2-4"].first, loaded["2-4"].end) == (2, 5)
    assert torch.equal(loaded["2-4"].weight, weight) and torch.equal(loaded["2-4"].bias, bias)


def test_on_a_real_model_a_bridge_is_closer_to_the_lost_layers_than_skipping(tiny_prepared):
    """Calibration states of a (tiny, random) model: the bridge's error on the lost slice's output is below
    skipping's, on tokens it was not fitted on."""
    from quality.corpus import Window
    from quality.model import SkipModel

    model = SkipModel(tiny_prepared("llama"))
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def texts(count: int):
        return [Window(tuple(torch.randint(3, vocab, (48,), generator=generator).tolist()), ()) for _ in range(count)]

    fit_states, held_out = calibration_states(model, texts(40)), calibration_states(model, texts(10))
    assert len(fit_states) == model.num_layers + 1 and fit_states[0].shape[1] == model.config.hidden_size
    (bridge,) = fit_bridges(fit_states, [(2, 4)])
    skip_error = (held_out[2] - held_out[4]).pow(2).mean()
    bridge_error = (bridge.apply(held_out[2]) - held_out[4]).pow(2).mean()
    assert bridge_error < 0.5 * skip_error
    with pytest.raises(StudyError, match="not within"):
        fit_bridges(fit_states, [(3, model.num_layers + 1)])
