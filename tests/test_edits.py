"""The SAE edits of sae_vit.core.edits on a small random SAE: each does what it says and keeps the error term."""

import pytest
import torch
import torch.nn.functional as F

from sae_vit.core import edits
from sae_vit.core.sae import SAE, SAEConfig


def _sae(normalization: str) -> SAE:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=16, d_sae=40, k=6, normalization=normalization))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.1)
        sae.scale.fill_(0.5)
    return sae


def _change_scale(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Factor [..., 1] that maps a change decoded in the SAE's space back to the input's."""
    if sae.cfg.normalization == "layer_norm":
        return sae.normalize(x)[1][1]
    if sae.cfg.normalization == "constant":
        return torch.full_like(x[..., :1], 2.0)
    return torch.ones_like(x[..., :1])


NORMS = ["none", "layer_norm", "constant"]


@pytest.mark.parametrize("normalization", NORMS)
def test_identity_edits_change_nothing(normalization):
    sae = _sae(normalization)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        f = sae.encode(x)
        same = (edits.latent_edit(sae, lambda f: f), edits.zero(sae, []), edits.add(sae, torch.zeros(40)),
                edits.clamp(sae, 5, f[..., 5]))  # clamping a feature to the value it already has
        for edit in same:
            assert torch.allclose(edit(x), x, atol=1e-5, rtol=0)


def _edit_and_change(name: str, sae: SAE, f: torch.Tensor):
    """The edit ``name`` on latents ``f``, and the change it must add, decoded in the SAE's (normalised) space."""
    if name == "zero":
        idx = f.sum(dim=(0, 1)).topk(3).indices  # features that fire here
        assert float(f[..., idx].abs().sum()) > 0
        return edits.zero(sae, idx.tolist()), -(f[..., idx] @ sae.W_dec[idx])
    if name == "clamp":
        return edits.clamp(sae, 5, 3.0), (3.0 - f[..., 5:6]) * sae.W_dec[5]
    amount = torch.zeros(40)
    amount[[1, 7]] = torch.tensor([2.0, -0.5])
    return edits.add(sae, amount), 2.0 * sae.W_dec[1] - 0.5 * sae.W_dec[7]


@pytest.mark.parametrize("name", ["zero", "clamp", "add"])
@pytest.mark.parametrize("normalization", NORMS)
def test_edit_adds_only_its_decoded_change(name, normalization):
    """zero removes the features' decoded part, clamp sets one feature, add moves along decoder rows: the output
    is the input plus that change, mapped back to the input's space (the SAE's error term is kept)."""
    sae = _sae(normalization)
    x = torch.randn(4, 7, 16)
    with torch.no_grad():
        f = sae.encode(x)
        edit, change = _edit_and_change(name, sae, f)
        got = edit(x)
    assert torch.allclose(got, x + change * _change_scale(sae, x), atol=1e-5)


def test_project_sets_the_component_and_nothing_else():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 16)
    d = F.normalize(torch.randn(16), dim=0)
    got = edits.project(d, 0.7)(x)
    assert torch.allclose(got @ d, torch.full((3, 5), 0.7), atol=1e-5)
    rest = (got - x) - ((got - x) @ d)[..., None] * d  # the change has no part orthogonal to d
    assert float(rest.abs().max()) < 1e-5
    assert torch.allclose(edits.project(d)(x) @ d, torch.zeros(3, 5), atol=1e-5)
