"""Linear probes fitted with L-BFGS: suppress's target and spurious-attribute probes, defend-typo's "text
present" probe."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def minimize(params: list[Tensor], loss: Callable[[], Tensor], max_iter: int) -> None:
    """Minimise ``loss()`` over ``params`` (leaf tensors that require grad) in place: one L-BFGS step of up to
    ``max_iter`` iterations with a strong-Wolfe line search."""
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)


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
    minimize([w, b], lambda: (F.cross_entropy(z @ w.T + b, y, reduction="none") * sw).sum() + l2 * (w**2).sum(),
             max_iter)
    return LinearProbe(mean, std, w.detach(), b.detach())

