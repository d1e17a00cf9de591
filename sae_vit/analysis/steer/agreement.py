"""Steer–detect agreement: does steering a unit move the output to the concept its top images share?

Detection: a unit's activation per probe image (features: the code averaged over the hooked tokens; neurons:
the residual dimension; random directions: the projection of the SAE's input on the direction); its top-q
images; the detected concept is the one with the largest enrichment (share among the top images − base rate
over the probe set). Labels are the world's ground truth on the toy (each image's shape, colour, background and
size) and the unsteered zero-shot top concept on other images. A unit agrees when the detected concept is its
steering target (the concept with the largest Δp at the decision strength). Families are compared with a
two-sided permutation test on the agree indicators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sae_vit.analysis.steer.context import attribute_columns


def zero_shot_labels(p0: Tensor, groups: Tensor | None) -> Tensor:
    """[N, V] one-hot labels from the unsteered probabilities ``p0`` [N, V]: the top concept of each image
    (within each attribute when ``groups`` is given)."""
    labels = torch.zeros_like(p0)
    for cols in attribute_columns(groups, p0.shape[1]):
        labels[torch.arange(len(p0)), cols[p0[:, cols].argmax(1)]] = 1.0
    return labels


def detected_concepts(acts: Tensor, labels: Tensor, top: int) -> Tensor:
    """Index of the detected concept [m] for activations ``acts`` [m, N] and labels [N, V] (1 = the image shows
    the concept): the largest enrichment among the unit's top ``top`` images (at most N/4) that are above its
    minimum activation; −1 for a unit whose activation is the same on every image (it detects nothing)."""
    n = acts.shape[1]
    q = max(1, min(top, n // 4))
    values, idx = acts.topk(q, dim=1)                       # [m, q]
    # only images above the unit's minimum count: a feature that fires on 3 images has 3 top images, not 3
    # plus 13 zero-activation ones taken in index order
    low = acts.amin(1, keepdim=True)
    above = (values > low + 1e-6 * (acts.amax(1, keepdim=True) - low)).float()  # [m, q]
    share = (labels[idx] * above[..., None]).sum(1) / above.sum(1, keepdim=True).clamp_min(1)
    detected = (share - labels.mean(0)).argmax(-1)          # largest enrichment over the base rate
    detected[above.sum(1) == 0] = -1  # the same activation on every image: detects nothing
    return detected


def family_agreement(detected: Tensor, target: Tensor, n_words: int) -> dict:
    """Agreement of one family: units with a detection, how many agree, the share, and two chance levels:
    ``chance`` (targets assigned independently of detection, both families' marginals kept: Σ_c P(det = c)
    P(target = c)) and ``chance_uniform`` (a uniformly random target: 1 / V)."""
    has = detected >= 0
    d, t = detected[has], target[has]
    n = int(has.sum())
    p_det = torch.bincount(d, minlength=n_words).float() / max(n, 1)
    p_tgt = torch.bincount(t, minlength=n_words).float() / max(n, 1)
    agree = int((d == t).sum())
    return {"n": n, "no_detection": int((~has).sum()), "agree": agree, "agreement": agree / n if n else None,
            "chance": float(p_det @ p_tgt) if n else None, "chance_uniform": 1.0 / n_words}


def permutation_test(a: Tensor, b: Tensor, n_perm: int = 10_000, seed: int = 0) -> dict:
    """Two-sided permutation test of mean(a) − mean(b) for boolean indicators: pool them, shuffle the family
    labels ``n_perm`` times; p = (1 + #{|shuffled difference| ≥ |observed|}) / (1 + n_perm). None when a
    family is empty."""
    a, b = a.float(), b.float()
    if not len(a) or not len(b):
        return {"difference": None, "p": None, "n_perm": n_perm, "n": [len(a), len(b)]}
    pooled = torch.cat([a, b])
    observed = float(a.mean() - b.mean())
    gen = torch.Generator().manual_seed(seed)
    exceed = 0
    for start in range(0, n_perm, 2048):  # chunks bound the memory at 2048 × (n_a + n_b)
        rows = min(2048, n_perm - start)
        perm = torch.rand(rows, len(pooled), generator=gen).argsort(1)
        x = pooled[perm]
        diff = x[:, :len(a)].mean(1) - x[:, len(a):].mean(1)
        exceed += int((diff.abs() >= abs(observed) - 1e-9).sum())
    return {"difference": observed, "p": (1 + exceed) / (1 + n_perm), "n_perm": n_perm, "n": [len(a), len(b)]}


def agreement_tests(agree: dict[str, Tensor], n_perm: int, seed: int, against: Sequence[str] = ("random", "neuron")
                    ) -> dict:
    """Permutation tests of the features' agree indicators against each family of ``against`` present."""
    if "feature" not in agree:
        return {}
    return {f"feature_vs_{k}": permutation_test(agree["feature"], agree[k], n_perm, seed)
            for k in against if k in agree}
