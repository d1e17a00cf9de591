"""The forward-pass variants of a suppression experiment and the group accuracies they reach.

Speed: per batch of images, the residual before each layer is computed once (:meth:`Backbone.capture`, one
pass for every layer) and each condition runs only that layer's block and the ones after it
(:meth:`Backbone.forward_from`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sae_vit.analysis.suppress.data import ImageBatches
from sae_vit.core.backbone import Backbone, splice


class Condition(NamedTuple):
    """One forward-pass variant: ``method`` at ``layer`` with ``n`` features (draw ``draw`` for random)."""

    method: str
    layer: int = -1
    n: int = 0
    draw: int = 0


def run_conditions(backbone: Backbone, batches: ImageBatches, conditions: Sequence[Condition],
                   edit_for: Callable[[Condition], tuple[Callable, str, str]],
                   progress: Callable[[str, int, int], None] | None = None, what: str = "") -> dict[Condition, Tensor]:
    """Image embeddings [n, d_emb] of every condition. The residual before each layer is captured once per
    batch; each edited condition re-runs only its layer's block (inside :func:`splice`) and those after it."""
    layers = sorted({c.layer for c in conditions if c.method != "none"})
    prev_layers = sorted({layer - 1 for layer in layers if layer > 0})
    out: dict[Condition, list[Tensor]] = {c: [] for c in conditions}
    done = 0
    with torch.no_grad():
        for images in batches:
            images = images.to(backbone.device)
            caps = backbone.capture(images, prev_layers, "resid_post", "all") if prev_layers else {}
            if 0 in layers:
                caps[-1] = backbone.embed(images)
            for c in conditions:
                if c.method == "none":
                    out[c].append(backbone.image_embedding(images).float().cpu())
                    continue
                edit, site, tokens = edit_for(c)
                with splice(backbone, c.layer, edit, site, tokens):
                    out[c].append(backbone.forward_from(c.layer - 1, caps[c.layer - 1]).float().cpu())
            done += len(images)
            if progress:
                progress(what, done, len(batches))
    return {c: torch.cat(v) for c, v in out.items()}


def group_metrics(pred: Tensor, label: Tensor, group: Tensor, train_share: dict[int, float]) -> dict[str, float]:
    """Accuracy per group (``acc_g{id}``), ``avg`` (mean over images), ``avg_weighted`` (group accuracies
    weighted by the train split's group proportions, as group_DRO reports) and ``worst`` (worst group)."""
    correct = (pred == label).float()
    out: dict[str, float] = {"avg": float(correct.mean())}
    accs = {}
    for g in sorted(group.unique().tolist()):
        accs[g] = float(correct[group == g].mean())
        out[f"acc_g{g}"] = accs[g]
    weights = {g: train_share.get(g, 0.0) for g in accs}
    total = sum(weights.values())
    out["avg_weighted"] = (sum(accs[g] * w for g, w in weights.items()) / total) if total else out["avg"]
    out["worst"] = min(accs.values())
    return out
