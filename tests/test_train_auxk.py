"""AuxK against a plain autograd reference: alone (k-sparse kernels) and fused into the main kernels."""

import pytest
import torch

from sae_vit.core import kernels
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.train import TrainConfig, auxk_loss, resolve, sae_loss

D_IN, D_SAE = 16, 128


def reference_auxk(sae: SAE, xn: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int,
                   ctx=None) -> torch.Tensor:
    """The obvious computation: all pre-activations (``b_dec`` held constant: AuxK leaves it alone), the top
    ``aux_k`` among the dead, a dense decode, mapped back to activation space without offsets."""
    pre = (xn - sae.b_dec.detach()) @ sae.W_enc + sae.b_enc
    k_aux = min(aux_k, int(dead.sum()))
    top, idx = torch.where(dead, pre, -torch.inf).topk(k_aux, dim=-1)
    acts = torch.zeros_like(pre).scatter(1, idx, top.relu())
    e_hat = acts @ sae.W_dec
    if sae.cfg.normalization == "layer_norm":
        e_hat = e_hat * ctx[1]
    elif sae.cfg.normalization == "constant":
        e_hat = e_hat / sae.scale
    err = (e_hat - residual).pow(2).sum() / (residual - residual.mean(dim=0)).pow(2).sum()
    return err * min(1.0, int(dead.sum()) / aux_k)


def random_sae(seed: int, normalization: str = "none") -> SAE:
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, normalization=normalization))
    g = torch.Generator().manual_seed(seed)
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.b_dec.normal_(0, 0.5, generator=g)
        if normalization == "constant":
            sae.scale.fill_(0.7)
    return sae


def dead_mask(n_dead: int, seed: int) -> torch.Tensor:
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(seed))[:n_dead]] = True
    return dead


CASES = [
    (5, 8),  # fewer dead than aux_k: every dead latent
    (12, 8),  # top aux_k of the dead
    (D_SAE // 8 + 20, 8),  # many dead (more than an eighth of the latents)
]


@pytest.mark.parametrize("n_dead, aux_k", CASES)
def test_auxk_loss_and_gradients_match_reference(n_dead, aux_k):
    g = torch.Generator().manual_seed(n_dead)
    x = torch.randn(64, D_IN, generator=g)
    residual = torch.randn(64, D_IN, generator=g)
    dead = dead_mask(n_dead, n_dead)
    results = []
    for fast in (True, False):
        sae = random_sae(0)
        loss = auxk_loss(sae, x, residual, None, dead, aux_k) if fast else reference_auxk(sae, x, residual, dead, aux_k)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in sae.named_parameters()}))
    (loss_fast, grads_fast), (loss_ref, grads_ref) = results
    assert loss_ref > 0
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads_fast["b_dec"] is None and grads_ref["b_dec"] is None  # AuxK leaves the decoder bias alone
    for name, grad in grads_ref.items():
        if grad is None:
            continue
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        if name in ("W_dec", "b_enc"):  # only dead latents get gradient
            rows = grad if name == "b_enc" else grad.abs().sum(dim=1)
            assert not rows[~dead].any()


def dense_topk_loss(sae: SAE, x: torch.Tensor, dead: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """FVU + aux_coef * AuxK by dense autograd: SAE.forward, then :func:`reference_auxk` on its residual."""
    x_hat, _ = sae(x)
    loss = (x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()
    if dead.any():
        xn, ctx = sae.normalize(x)
        loss = loss + cfg.aux_coef * reference_auxk(sae, xn, (x - x_hat).detach(), dead, cfg.aux_k, ctx)
    return loss


@pytest.mark.parametrize("normalization", ["none", "layer_norm", "constant"])
@pytest.mark.parametrize("n_dead, aux_k", CASES + [(0, 8)])
@pytest.mark.parametrize("ragged_density", [0.0, 1.0], ids=["dense-code", "ragged-code"])
def test_trainer_loss_with_auxk_matches_dense_reference(normalization, n_dead, aux_k, ragged_density, monkeypatch):
    """sae_loss (AuxK fused into the main encoder and decoder kernels, as a dense or a ragged code) gives the loss
    and every gradient of the dense computation."""
    monkeypatch.setattr(kernels, "RAGGED_DENSITY", ragged_density)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, D_IN, generator=g) * 2 + 0.5
    dead = dead_mask(n_dead, 3)
    cfg = resolve(TrainConfig(d_sae=D_SAE, k=4, aux_k=aux_k, aux_coef=0.5, normalization=normalization,
                              device="cpu", dtype="fp32"), D_IN)
    results = []
    for fast in (True, False):
        sae = random_sae(1, normalization)
        with torch.no_grad():  # make some dead latents win AuxK's top-k with positive pre-activations
            sae.b_enc[dead] += 1.0
        loss = sae_loss(sae, x, cfg, dead, 0.0).loss if fast else dense_topk_loss(sae, x, dead, cfg)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}))
    (loss_fast, grads_fast), (loss_ref, grads_ref) = results
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads_fast.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    if n_dead:
        assert grads_ref["W_dec"][dead].abs().sum() > 0  # AuxK reached the dead latents' decoder rows
