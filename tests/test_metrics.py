"""Metrics: each checked on hand-made tensors and against a direct one-batch computation."""

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.metrics import (
    dead_fraction,
    dense_fraction,
    evaluate,
    feature_density,
    firing_counts,
    fvu,
    l0,
    mse,
)
from sae_vit.core.sae import SAE, SAEConfig


def _sae(architecture="topk", normalization="none", seed=0) -> SAE:
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=8, d_sae=32, architecture=architecture, k=4 if architecture == "topk" else None,
                    normalization=normalization)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae.eval()


def test_l0_counts_nonzeros_per_token():
    f = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 1.0, 1.0]])
    assert l0(f) == pytest.approx(2.0)  # (2 + 0 + 4) / 3


def test_fvu_of_perfect_mean_and_noisy_reconstructions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 16, generator=g) * 3 + 5
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(dim=0).expand_as(x)) == pytest.approx(1.0, abs=1e-9)
    # Independent noise of std 0.3 on data of std 3: FVU = 0.09 / 9 = 0.01.
    assert fvu(x, x + 0.3 * torch.randn(x.shape, generator=g)) == pytest.approx(0.01, rel=0.05)


def test_mse_is_per_element():
    x = torch.zeros(4, 5)
    assert mse(x, x + 2.0) == pytest.approx(4.0)


def test_firing_dead_and_dense_fractions():
    f = torch.zeros(100, 4)
    f[:50, 0] = 1.0  # fires on 50 % of tokens: dense
    f[:5, 1] = 2.0  # 5 %: neither dead nor dense
    f[0, 2] = 0.1  # 1 %
    counts = firing_counts(f)
    assert counts.tolist() == [50, 5, 1, 0]
    density = counts / 100
    assert dead_fraction(density) == pytest.approx(0.25)
    assert dense_fraction(density) == pytest.approx(0.25)
    assert dense_fraction(density, threshold=0.04) == pytest.approx(0.5)


@pytest.mark.parametrize("architecture,normalization", [("topk", "none"), ("relu", "layer_norm")])
def test_evaluate_streaming_matches_one_batch(architecture, normalization):
    sae = _sae(architecture, normalization)
    x = torch.randn(1000, 8) * 2 + 1
    with torch.no_grad():
        x_hat, f = sae(x)
    streamed = evaluate(sae, x, batch_size=37)
    assert streamed["n_tokens"] == 1000
    assert streamed["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-6)
    assert streamed["explained_variance"] == pytest.approx(1 - fvu(x, x_hat), rel=1e-6)
    assert streamed["mse"] == pytest.approx(mse(x, x_hat), rel=1e-6)
    assert streamed["l0"] == pytest.approx(l0(f), rel=1e-6)
    density = firing_counts(f) / 1000
    assert streamed["dead_fraction"] == pytest.approx(dead_fraction(density))
    assert streamed["dense_fraction"] == pytest.approx(dense_fraction(density))
    # An iterable of batches (as read from a cache) gives the same numbers.
    assert evaluate(sae, iter(x.split(300)), batch_size=64)["fvu"] == pytest.approx(streamed["fvu"], rel=1e-9)
    if architecture == "topk":
        assert streamed["l0"] == pytest.approx(4.0, abs=0.05)  # TopK of ReLU: at most k, rarely fewer


def test_feature_density_matches_counts():
    sae = _sae()
    x = torch.randn(500, 8)
    density = feature_density(sae, x, batch_size=64)
    with torch.no_grad():
        expected = firing_counts(sae.encode(x)).float() / 500
    assert density.shape == (32,)
    torch.testing.assert_close(density, expected)
    assert density.sum().item() == pytest.approx(l0(sae.encode(x).detach()), rel=1e-5)


def test_evaluate_rejects_empty_input():
    with pytest.raises(SaeVitError, match="No activations"):
        evaluate(_sae(), torch.zeros(0, 8))
