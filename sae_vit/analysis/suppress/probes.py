"""Logistic-regression probes: the target probe on image embeddings and the spurious-attribute probe whose
direction the projection baseline removes."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class LinearProbe(NamedTuple):
    """Multinomial logistic regression on standardised inputs."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    """[C, d] in standardised units."""
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def direction(self) -> Tensor:
        """Unit direction in the input space that separates class 1 from class 0 (binary probes)."""
        w = self.weight[1] - self.weight[0]
        return F.normalize(w / self.std, dim=0)


def fit_logistic(x: Tensor, y: Tensor, sample_weight: Tensor | None = None, l2: float = 1e-3,
                 max_iter: int = 200) -> LinearProbe:
    """Fit a logistic regression (L-BFGS) on ``x`` [n, d] with integer labels ``y`` [n]."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    n_classes = max(int(y.max()) + 1, 2)
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    sw = torch.ones(len(y)) if sample_weight is None else sample_weight.float()
    sw = sw / sw.sum()
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(z @ w.T + b, y, reduction="none") * sw).sum() + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(mean, std, w.detach(), b.detach())


def balanced_weights(group: Tensor) -> Tensor:
    """Per-sample weights that give every present group the same total weight."""
    counts = torch.bincount(group)
    return 1.0 / counts[group].float()
