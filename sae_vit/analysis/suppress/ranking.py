"""Ranking SAE features by their association with the spurious attribute (train split only).

Each feature's image-level activation (mean over the tokens the SAE reads) is scored with ``mean_diff``
(difference of means between attribute-present and -absent images over their pooled standard deviation),
``auroc`` (|AUROC − ½|·2) or ``text`` (how much adding the feature's decoder direction moves the image embedding
toward query words). By default the score is computed within each target class and averaged, so a feature that
only tracks the target (which the spurious attribute is correlated with in train) does not rank high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import minimize
from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE

RANKINGS = ("mean_diff", "auroc", "text")


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


@dataclass
class LayerStats:
    """Train-split statistics of one SAE's latents, pooled per image (mean over the SAE's tokens)."""

    count: Tensor
    """[n_classes, 2] images per (target class, spurious value)."""
    total: Tensor
    """[n_classes, 2, d_sae] sum of pooled activations."""
    total_sq: Tensor
    """[n_classes, 2, d_sae] sum of squared pooled activations."""
    fired: Tensor
    """[d_sae] images on which the feature fired at some token."""
    max_act: Tensor
    """[d_sae] largest activation at any token."""
    pooled: list = field(default_factory=list)
    """Pooled activations per batch (float16), kept only for AUROC."""
    site_pooled: list = field(default_factory=list)
    """Pooled hook activations per batch [b, d_site] (for the projection baseline's probe)."""
    site_sum: Tensor | None = None
    """[d_site] sum of the hook activations over every token (the projection baseline's mean)."""
    site_tokens: int = 0
    """Tokens summed in ``site_sum``."""

    @classmethod
    def empty(cls, n_classes: int, d_sae: int) -> LayerStats:
        """Zero statistics for ``n_classes`` target classes and ``d_sae`` latents."""
        return cls(torch.zeros(n_classes, 2, dtype=torch.long), torch.zeros(n_classes, 2, d_sae),
                   torch.zeros(n_classes, 2, d_sae), torch.zeros(d_sae), torch.zeros(d_sae))

    def update(self, sae: SAE, acts: Tensor, label: Tensor, spur: Tensor, keep_pooled: bool) -> None:
        """Add a batch: the hook's activations ``acts`` [b, T_sel, d_site] of images with ``label``, ``spur`` [b]."""
        f = sae.encode(acts)  # [b, T_sel, d_sae]
        pooled = f.mean(dim=1)
        idx = label * 2 + spur
        n_classes, d_sae = self.count.shape[0], pooled.shape[1]
        self.count += torch.bincount(idx, minlength=2 * n_classes).view(n_classes, 2)
        self.total += torch.zeros(2 * n_classes, d_sae).index_add_(0, idx, pooled).view(n_classes, 2, -1)
        self.total_sq += torch.zeros(2 * n_classes, d_sae).index_add_(0, idx, pooled**2).view(n_classes, 2, -1)
        self.fired += (f.amax(dim=1) > 0).sum(0)
        self.max_act = torch.maximum(self.max_act, f.amax(dim=(0, 1)))
        if keep_pooled:
            self.pooled.append(pooled.half())
        self.site_pooled.append(acts.mean(dim=1))
        self.site_sum = acts.sum(dim=(0, 1)) if self.site_sum is None else self.site_sum + acts.sum(dim=(0, 1))
        self.site_tokens += acts.shape[0] * acts.shape[1]


def mean_diff_scores(st: LayerStats, within_class: bool = True) -> Tensor:
    """|standardised difference of means| between spurious present and absent, [d_sae]."""
    count, total, total_sq = st.count.float(), st.total, st.total_sq
    if not within_class:
        count, total, total_sq = count.sum(0, keepdim=True), total.sum(0, keepdim=True), total_sq.sum(0, keepdim=True)
    n = count[..., None].clamp_min(1)
    mean = total / n
    var = (total_sq / n - mean**2).clamp_min(0)
    d = (mean[:, 1] - mean[:, 0]) / torch.sqrt((var[:, 1] + var[:, 0]) / 2 + 1e-8)
    usable = (count[:, 0] > 1) & (count[:, 1] > 1)
    if not usable.any():
        raise SaeVitError("No target class of the train split has images both with and without the spurious "
                          "attribute; rank with --pooled.")
    return d[usable].abs().mean(0)


def auroc(values: Tensor, positive: Tensor) -> Tensor:
    """AUROC of each column of ``values`` [n, d] for the boolean ``positive`` [n] (ties count one half)."""
    v = values.float().T.contiguous()  # [d, n]
    s = v.sort(dim=1).values
    left = torch.searchsorted(s, v, right=False).float()
    right = torch.searchsorted(s, v, right=True).float()
    ranks = (left + right + 1) / 2  # 1-based average ranks
    n1 = positive.sum().float()
    n0 = len(positive) - n1
    return (ranks[:, positive].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def auroc_scores(st: LayerStats, label: Tensor, spur: Tensor, within_class: bool = True) -> Tensor:
    """|AUROC − ½| · 2 of the pooled activation for the spurious attribute, [d_sae]."""
    pooled = torch.cat(st.pooled).float()
    subsets = [label == y for y in label.unique()] if within_class else [torch.ones_like(label, dtype=torch.bool)]
    scores = [(auroc(pooled[m], spur[m].bool()) - 0.5).abs() * 2 for m in subsets
              if 0 < int(spur[m].sum()) < int(m.sum())]
    if not scores:
        raise SaeVitError("No target class of the train split has images both with and without the spurious "
                          "attribute; rank with --pooled.")
    return torch.stack(scores).mean(0)


def feature_effects(backbone: Backbone, sae: SAE, layer: int, prev: Tensor, features: Tensor, strengths: Tensor,
                    chunk_rows: int = 512) -> Tensor:
    """Change of the unit image embedding when each feature is raised by its strength at every token the SAE
    reads: ``prev`` [n, T, d] residual before ``layer``; returns Δê averaged over the n images, [m, d_emb]."""
    n = prev.shape[0]
    with torch.no_grad():
        base = F.normalize(backbone.forward_from(layer - 1, prev).float(), dim=-1)
        out = []
        per = max(1, chunk_rows // n)
        for idx, s in zip(features.split(per), strengths.split(per), strict=True):
            add = torch.zeros(len(idx) * n, 1, sae.cfg.d_sae)
            add[torch.arange(len(idx) * n), 0, idx.repeat_interleave(n)] = s.repeat_interleave(n)
            with splice(backbone, layer, edits.add(sae, add), sae.cfg.site, sae.cfg.tokens):
                emb = backbone.forward_from(layer - 1, prev.repeat(len(idx), 1, 1))
            out.append((F.normalize(emb.float(), dim=-1).view(len(idx), n, -1) - base).mean(1))
    return torch.cat(out)


def concept_words(effects: Tensor, words: Sequence[str], word_emb: Tensor, k: int) -> list[str]:
    """Top-``k`` words per effect [m, d] by cosine with the (mean-centred) word embeddings."""
    centred = F.normalize(word_emb - word_emb.mean(0), dim=-1)
    sims = F.normalize(effects, dim=-1) @ centred.T
    top = sims.topk(min(k, len(words)), dim=1).indices
    return [", ".join(words[j] for j in row) for row in top.tolist()]


class LayerRanking(NamedTuple):
    """One layer's features ranked, and the spurious direction the projection baseline removes there."""

    order: Tensor
    """[d_sae] feature indices, best first (dead features last)."""
    scores: Tensor
    """[d_sae] association scores (−inf for dead features)."""
    direction: Tensor
    """[d_site] unit direction of the group-balanced spurious probe on the pooled hook activations."""
    mean: float
    """Mean of the hook activations along ``direction``, over every token of train."""


def rank_layer(backbone: Backbone, sae: SAE, st: LayerStats, prev: Tensor, label: Tensor, spur: Tensor, group: Tensor,
               ranking: str, within_class: bool = True, text_query: Tensor | None = None,
               probe_l2: float = 1e-3) -> LayerRanking:
    """Score the features of ``sae`` (``prev`` [n, T, d]: the residual before its layer for ``text``)."""
    if ranking == "mean_diff":
        sc = mean_diff_scores(st, within_class)
    elif ranking == "auroc":
        sc = auroc_scores(st, label, spur, within_class)
    else:
        alive = (st.fired > 0).nonzero().squeeze(1)
        eff = feature_effects(backbone, sae, sae.cfg.layer, prev.mean(0, keepdim=True), alive, st.max_act[alive]).cpu()
        sc = torch.zeros(sae.cfg.d_sae)
        sc[alive] = (F.normalize(eff, dim=-1) @ text_query.T.cpu()).amax(1)
    sc = torch.where(st.fired > 0, sc, torch.full_like(sc, -math.inf))  # never pick dead features
    balanced = 1.0 / torch.bincount(group)[group].float()  # every present group weighs the same in total
    w = fit_logistic(torch.cat(st.site_pooled), spur, balanced, probe_l2).direction()
    return LayerRanking(sc.argsort(descending=True, stable=True), sc, w, float((st.site_sum / st.site_tokens) @ w))
