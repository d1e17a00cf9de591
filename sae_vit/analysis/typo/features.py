"""Discovery of text features: SAE features ranked by how much more they fire on attacked images than on the
same images without text (paired, so content is controlled), on a discovery split only."""

from __future__ import annotations

import torch
from torch import Tensor

from sae_vit.analysis.typo.sets import TypoSet
from sae_vit.core.backbone import Backbone
from sae_vit.core.sae import SAE


@torch.no_grad()
def latent_means(backbone: Backbone, sae: SAE, images: Tensor, pool: str = "mean", batch_size: int = 256) -> Tensor:
    """Per-image pooled SAE latents [n, d_sae] at the SAE's hook (``mean`` or ``max`` over its tokens)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(backbone.device)
        acts = backbone.capture(x, [sae.cfg.layer], sae.cfg.site, sae.cfg.tokens)[sae.cfg.layer]
        f = sae.encode(acts.float())
        out.append((f.mean(1) if pool == "mean" else f.amax(1)).cpu())
    return torch.cat(out)


def rank_text_features(clean: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Rank features by the standardised paired difference (mean of text − clean over the pooled std).

    ``clean`` and ``text`` are pooled latents [n, d_sae] of the same images; returns ``(indices, scores)``
    sorted by score, highest first (features that never fire score 0)."""
    diff = (text - clean).mean(0)
    pooled = ((clean.var(0) + text.var(0)) / 2).sqrt()
    score = torch.where(pooled > 0, diff / (pooled + 1e-6), torch.zeros_like(diff))
    order = score.argsort(descending=True)
    return order, score[order]


def discover_features(backbone: Backbone, sae: SAE, data: TypoSet, pool: str = "mean", max_features: int = 256) -> list[dict]:
    """Text features of ``sae`` on a discovery :class:`TypoSet`: ``[{"index", "score"}]``, best first."""
    clean = latent_means(backbone, sae, data.clean, pool)
    text = latent_means(backbone, sae, data.attacked, pool)
    order, scores = rank_text_features(clean, text)
    keep = scores > 0
    return [{"index": int(i), "score": round(float(s), 4)} for i, s in zip(order[keep][:max_features],
                                                                             scores[keep][:max_features], strict=True)]
