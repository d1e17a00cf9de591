"""AuxK's dense (few dead latents) and k-sparse (many) paths against a plain autograd reference."""

import pytest
import torch

from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.train import AUXK_DENSE_FRACTION, auxk_loss

D_IN, D_SAE = 16, 128


def reference_auxk(sae: SAE, x: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """The obvious computation: all pre-activations, the top ``aux_k`` among the dead, a dense decode."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    k_aux = min(aux_k, int(dead.sum()))
    top, idx = torch.where(dead, pre, -torch.inf).topk(k_aux, dim=-1)
    acts = torch.zeros_like(pre).scatter(1, idx, top.relu())
    e_hat = acts @ sae.W_dec
    err = (e_hat - residual).pow(2).sum() / (residual - residual.mean(dim=0)).pow(2).sum()
    return err * min(1.0, int(dead.sum()) / aux_k)


def random_sae(seed: int) -> SAE:
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    g = torch.Generator().manual_seed(seed)
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.b_dec.normal_(0, 0.5, generator=g)
    return sae


@pytest.mark.parametrize("n_dead, aux_k", [
    (5, 8),  # fewer dead than aux_k: dense, every dead latent
    (12, 8),  # dense, top aux_k of the dead
    (int(AUXK_DENSE_FRACTION * D_SAE) + 20, 8),  # many dead: the k-sparse kernels
])
def test_auxk_loss_and_gradients_match_reference(n_dead, aux_k):
    g = torch.Generator().manual_seed(n_dead)
    x = torch.randn(64, D_IN, generator=g)
    residual = torch.randn(64, D_IN, generator=g)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=g)[:n_dead]] = True
    results = []
    for fast in (True, False):
        sae = random_sae(0)
        loss = auxk_loss(sae, x, residual, None, dead, aux_k) if fast else reference_auxk(sae, x, residual, dead, aux_k)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (loss_fast, grads_fast), (loss_ref, grads_ref) = results
    assert loss_ref > 0
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        if name in ("W_dec", "b_enc"):  # only dead latents get gradient
            rows = grad if name == "b_enc" else grad.abs().sum(dim=1)
            assert not rows[~dead].any()
