"""The baseline defences, fitted on the discovery split and tuned on validation: attention-head ablation, the
prompt-side defences and a linear probe's "text present" direction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import ModelBundle
from sae_vit.analysis.probes import minimize
from sae_vit.analysis.typo.defences import Defence, HeadDefence, ProbeDefence, PromptDefence
from sae_vit.analysis.typo.evaluation import better, evaluate, predict
from sae_vit.analysis.typo.sets import TypoSet
from sae_vit.core.backbone import Backbone


@torch.no_grad()
def rank_heads(backbone: Backbone, data: TypoSet, class_emb: Tensor, max_images: int = 128) -> list[tuple[int, int, float]]:
    """Every attention head ranked by how much its ablation (at CLS) lowers the ASR on ``data``:
    ``[(layer, head, asr_drop)]``, largest drop first."""
    imgs, written = data.attacked[:max_images], data.written[:max_images]
    base = float((predict(backbone, imgs, class_emb).argmax(-1) == written).float().mean())
    out = []
    for layer in range(backbone.n_layers):
        for h in range(backbone.model.blocks[layer].attn.num_heads):
            pred = predict(backbone, imgs, class_emb, HeadDefence([(layer, h)])).argmax(-1)
            out.append((layer, h, base - float((pred == written).float().mean())))
    return sorted(out, key=lambda t: -t[2])


@torch.no_grad()
def fit_probe(backbone: Backbone, data: TypoSet, layer: int, tokens: str = "all", steps: int = 200) -> ProbeDefence:
    """A logistic-regression probe (text present or not) on token-mean residuals at ``layer``; its unit
    weight vector becomes the direction a :class:`ProbeDefence` removes."""
    def resid(images: Tensor) -> Tensor:  # [n, T, d] at ``layer``, 256 images at a time
        return torch.cat([backbone.capture(images[i : i + 256].to(backbone.device), [layer], "resid_post", tokens)[layer]
                          .float().cpu() for i in range(0, len(images), 256)])

    clean = resid(data.clean)
    xc, xa = clean.mean(1), resid(data.attacked).mean(1)
    x = torch.cat([xc, xa])
    y = torch.cat([torch.zeros(len(xc)), torch.ones(len(xa))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    minimize([w, b], lambda: F.binary_cross_entropy_with_logits(z @ w + b, y) + 1e-3 * w.square().sum(), steps)
    direction = F.normalize((w.detach() / sd), dim=0)  # back to the residual's own coordinates
    # the clean mean of the projection, over every token (the edit acts per token)
    return ProbeDefence(layer, direction, float((clean @ direction).mean()), tokens)


def tune_baselines(bundle: ModelBundle, disc: TypoSet, val: TypoSet, class_emb: Tensor, classes: Sequence[str],
                   layer: int, tokens: str, clean_ref: float, head_counts: Sequence[int],
                   prompt_strengths: Sequence[float], max_clean_drop: float) -> dict[str, Defence]:
    """Each baseline fitted on ``disc``, its setting chosen on ``val``: the best attacked accuracy among the
    settings whose clean accuracy is at most ``max_clean_drop`` below ``clean_ref``."""
    bb = bundle.backbone

    def choose(candidates: Sequence[Defence]) -> Defence:
        best, best_m = candidates[0], None
        for d in candidates:
            m = evaluate(bb, val, class_emb, d, control=False)
            if better(m, best_m, clean_ref, max_clean_drop):
                best, best_m = d, m
        return best

    heads = rank_heads(bb, disc, class_emb)
    word_emb = bundle.head.embed(list(classes), ("the word {}.",))
    bare = bundle.head.embed(list(classes), ("{}",))
    return {
        "heads": choose([HeadDefence([(h[0], h[1]) for h in heads[:k]]) for k in head_counts]),
        "prompt (class)": choose([Defence()] + [PromptDefence("class", s, word_emb) for s in prompt_strengths]),
        "prompt (oracle word)": choose([Defence()] + [PromptDefence("oracle", s, bare) for s in prompt_strengths]),
        "probe": fit_probe(bb, disc, layer, tokens),
    }
