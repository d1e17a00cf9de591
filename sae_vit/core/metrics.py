"""Sparsity and reconstruction metrics of an SAE: L0, FVU, MSE, firing density, dead and dense fractions.

Every metric is measured in the activations' own space (the SAE's de-normalised reconstruction against the
input), so numbers are comparable across input normalisations. :func:`evaluate` streams over batches, so a
held-out set larger than memory (an activation cache) can be measured too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from sae_vit.core.errors import SaeVitError

#: A latent firing on more than this fraction of tokens counts as dense (as in Anthropic's and the paper's plots).
DENSE_THRESHOLD = 0.1


def l0(latents: Tensor) -> float:
    """Mean number of non-zero latents per token; ``latents`` [n, d_sae]."""
    return (latents != 0).sum(dim=-1, dtype=torch.float32).mean().item()


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the batch.

    ``x``, ``x_hat`` [n, d_in]; ``mean(x)`` is the batch mean, so predicting it gives FVU = 1.
    """
    x, x_hat = x.double(), x_hat.double()
    return ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-30)).item()


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per element, ``mean((x - x_hat)^2)``; ``x``, ``x_hat`` [n, d_in]."""
    return (x.double() - x_hat.double()).pow(2).mean().item()


def firing_counts(latents: Tensor) -> Tensor:
    """Number of tokens on which each latent is non-zero, [d_sae] (int64); ``latents`` [n, d_sae]."""
    return (latents != 0).sum(dim=0)


def dead_fraction(density: Tensor) -> float:
    """Fraction of latents that never fired; ``density`` [d_sae] firing frequency or counts."""
    return (density == 0).float().mean().item()


def dense_fraction(density: Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of latents firing on more than ``threshold`` of tokens; ``density`` [d_sae] in [0, 1]."""
    return (density > threshold).float().mean().item()


def _batches(acts: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    for batch in [acts] if isinstance(acts, Tensor) else acts:
        yield from batch.reshape(-1, batch.shape[-1]).split(batch_size)


@torch.no_grad()
def evaluate(sae, acts: Tensor | Iterable[Tensor], batch_size: int = 4096, per_token: bool = False) -> dict:
    """Measure ``sae`` on ``acts`` ([n, d_in], or an iterable of such batches), streaming in ``batch_size`` chunks.

    Returns ``n_tokens``, ``l0``, ``fvu``, ``explained_variance`` (1 - FVU), ``mse`` (per element),
    ``dead_fraction`` (never fired on these tokens) and ``dense_fraction`` (fires on > 10 % of them), floats;
    with ``per_token``, also ``token_l0``, the [n] int64 tensor of each token's active latents.
    FVU is taken over the whole set, not averaged per batch, so it does not depend on ``batch_size``.
    """
    device = next(sae.parameters()).device
    n = 0
    sum_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_sq = torch.zeros((), dtype=torch.float64, device=device)
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)
    sum_l0 = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=device)
    token_l0 = []
    for x in _batches(acts, batch_size):
        x = x.to(device=device, dtype=torch.float32)
        x_hat, f = sae(x)
        xd = x.double()
        sum_err += (xd - x_hat.double()).pow(2).sum()
        # Streaming variance: sum ||x - mean||^2 = sum ||x||^2 - ||sum x||^2 / n, accumulated in float64 so
        # the cancellation stays harmless for activations with a large common offset.
        sum_sq += xd.pow(2).sum()
        sum_x += xd.sum(dim=0)
        fired = f != 0
        sum_l0 += fired.sum()
        counts += fired.sum(dim=0)
        if per_token:
            token_l0.append(fired.sum(dim=-1).cpu())
        n += x.shape[0]
    if n == 0:
        raise SaeVitError("No activations to evaluate; pass a non-empty evaluation set (check the cache or --eval-tokens).")
    total_var = (sum_sq - sum_x.pow(2).sum() / n).clamp_min(1e-30)
    fvu_value = (sum_err / total_var).item()
    density = counts.double() / n
    result = {
        "n_tokens": n,
        "l0": (sum_l0 / n).item(),
        "fvu": fvu_value,
        "explained_variance": 1.0 - fvu_value,
        "mse": (sum_err / (n * sae.cfg.d_in)).item(),
        "dead_fraction": dead_fraction(density),
        "dense_fraction": dense_fraction(density),
    }
    if per_token:
        result["token_l0"] = torch.cat(token_l0)
    return result


@torch.no_grad()
def feature_density(sae, acts: Tensor | Iterable[Tensor], batch_size: int = 4096) -> Tensor:
    """Firing frequency of every latent on ``acts`` ([n, d_in] or an iterable of batches): [d_sae] in [0, 1]."""
    device = next(sae.parameters()).device
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=device)
    n = 0
    for x in _batches(acts, batch_size):
        counts += firing_counts(sae.encode(x.to(device=device, dtype=torch.float32)))
        n += x.shape[0]
    if n == 0:
        raise SaeVitError("No activations to measure feature density on; pass a non-empty set of activations.")
    return (counts.double() / n).float().cpu()
