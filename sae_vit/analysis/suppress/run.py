"""Rank on train, choose the layer and N on val, evaluate on test: the suppression experiment.

Selection is kept away from the test split. The layer and the number of suppressed features N are chosen on the
validation split (highest worst-group accuracy, ties broken by average accuracy, then the smaller N); the test
split is evaluated with zero-shot (class prompts through the text head) and a linear probe on the image
embedding trained on the (unedited) train split.

Speed: per batch of images, the residual before each layer is computed once (:meth:`Backbone.capture`, one
pass for every layer) and each forward-pass variant (:class:`Condition`) runs only that layer's block and the
ones after it (:meth:`Backbone.forward_from`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import class_embeddings, zero_shot_logits
from sae_vit.analysis.suppress.data import ImageBatches, TaskData, split_tensors
from sae_vit.analysis.suppress.ranking import (
    RANKINGS,
    LayerRanking,
    LayerStats,
    concept_words,
    feature_effects,
    fit_logistic,
    rank_layer,
)
from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.core.text import DEFAULT_TEMPLATES, TextHead

Progress = Callable[[str, int, int], None]


class Condition(NamedTuple):
    """One forward-pass variant: ``method`` at ``layer`` with ``n`` features (draw ``draw`` for random)."""

    method: str
    layer: int = -1
    n: int = 0
    draw: int = 0


def run_conditions(backbone: Backbone, batches: ImageBatches, conditions: Sequence[Condition],
                   edit_for: Callable[[Condition], tuple[Callable, str, str]],
                   progress: Progress | None = None, what: str = "") -> dict[Condition, Tensor]:
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
    accs = {g: float(correct[group == g].mean()) for g in sorted(group.unique().tolist())}
    out = {"avg": float(correct.mean()), **{f"acc_g{g}": a for g, a in accs.items()}}
    weights = {g: train_share.get(g, 0.0) for g in accs}
    total = sum(weights.values())
    out["avg_weighted"] = (sum(accs[g] * w for g, w in weights.items()) / total) if total else out["avg"]
    out["worst"] = min(accs.values())
    return out


class SuppressResult(NamedTuple):
    """What :func:`run_suppress` returns."""

    table: object
    """DataFrame, one row per (eval, method): the chosen layer and N, validation worst group, and test avg,
    avg_weighted, worst and per-group accuracies (random: mean over draws, with ``worst_std``)."""
    sweep: object
    """DataFrame of every evaluated (eval, method, layer, n, draw, split): val for the full layer × N sweep and
    each layer's projection; test for each layer at its validation-best N, each layer's projection, the
    baseline and the random draws."""
    features: object
    """DataFrame of the suppressed features at each eval's chosen layer: rank, feature, score, density, max
    activation, and top concepts through the text head."""
    summary: dict
    """Chosen layer and N per eval, options, dataset sizes, group names, SAE paths."""


@dataclass(frozen=True)
class SuppressConfig:
    """How to rank, select and evaluate; the defaults are the documented method."""

    n_features: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Numbers of top-ranked features to suppress (the N sweep)."""
    extend_n: bool = True
    """Extend the N sweep past its largest value while validation improves (:func:`extend_n_features`), so the
    chosen N is never at the sweep's edge unless that edge is every live feature."""
    ranking: str = "mean_diff"
    """``mean_diff`` (standardised difference of means), ``auroc``, or ``text`` (needs ``text_query``)."""
    within_class: bool = True
    """Score association with the spurious attribute within each target class, then average over classes."""
    text_query: tuple[str, ...] = ()
    """Words naming the spurious attribute's values (e.g. water, land) for ``ranking='text'``."""
    n_random: int = 3
    """Draws of N random live features at the chosen layer and N, on test (the random baseline is their mean)."""
    probe: bool = True
    """Also evaluate with a linear probe on the image embedding, trained on the train split."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Zero-shot prompt templates."""
    probe_l2: float = 1e-3
    """L2 penalty of the logistic-regression probes (on standardised features)."""
    n_concepts: int = 3
    """Top concept words shown per chosen feature (needs a vocabulary)."""
    n_effect_images: int = 8
    """Train images a feature's decoder direction is added to when finding its concepts."""
    batch_size: int = 64
    """Images per forward pass."""
    seed: int = 0
    """Seeds the random-feature baseline."""


class TrainPass(NamedTuple):
    """What one pass over the train split gathers."""

    stats: dict[int, LayerStats]
    """Latent statistics per layer."""
    embeddings: Tensor
    """[n, d_emb] image embeddings (the target probe's inputs)."""
    prev: dict[int, Tensor]
    """Residual before each layer (key ``layer - 1``; ``-1`` the patch embedding) of the first few images, from
    which a feature's effect on the output is measured."""


def train_pass(backbone: Backbone, saes: dict[int, tuple[SAE, str]], paths: list[str], label: Tensor, spur: Tensor,
               n_classes: int, cfg: SuppressConfig, progress: Progress | None = None) -> TrainPass:
    """Latent statistics of every SAE, image embeddings and the first images' residuals, in one pass."""
    stats = {layer: LayerStats.empty(n_classes, sae.cfg.d_sae) for layer, (sae, _) in saes.items()}
    keys = sorted({(sae.cfg.site, sae.cfg.tokens) for sae, _ in saes.values()})
    train_emb, effect_prev, start = [], {}, 0
    with torch.no_grad():
        for images in ImageBatches(paths, backbone.transform, cfg.batch_size):
            images = images.to(backbone.device)
            b = slice(start, start + len(images))
            for site, tokens in keys:
                ls = [layer for layer, (sae, _) in saes.items() if (sae.cfg.site, sae.cfg.tokens) == (site, tokens)]
                caps = backbone.capture(images, ls, site, tokens)
                for layer in ls:
                    stats[layer].update(saes[layer][0], caps[layer].float().cpu(), label[b], spur[b],
                                        cfg.ranking == "auroc")
            if not effect_prev:  # the first images also serve to find the features' concepts
                few = images[: cfg.n_effect_images]
                prev_layers = sorted({layer - 1 for layer in saes if layer > 0})
                effect_prev = backbone.capture(few, prev_layers, "resid_post", "all") if prev_layers else {}
                effect_prev[-1] = backbone.embed(few)
            train_emb.append(backbone.image_embedding(images).float().cpu())
            start += len(images)
            if progress:
                progress("train", start, len(paths))
    return TrainPass(stats, torch.cat(train_emb), effect_prev)


class ConditionEdits:
    """The splice edit of each :class:`Condition`: the top-N ranked features zeroed (``sae``), N random live
    features zeroed (``random``; ``random_rate`` / ``random_act``: matched one for one to the top-N on firing rate
    / mean activation), or the spurious probe direction set to its train mean (``projection``)."""

    def __init__(self, saes: dict[int, tuple[SAE, str]], ranked: dict[int, LayerRanking],
                 stats: dict[int, LayerStats], seed: int, device):
        self.saes, self.ranked, self.stats, self.seed, self.device = saes, ranked, stats, seed, device

    def random_features(self, layer: int, n: int, draw: int, matched: str = "") -> Tensor:
        """N random live features; ``matched`` ``rate`` or ``activation``: for each of the top-N ranked features, a
        random one of the :data:`MATCH_POOL` other live features nearest to it in firing rate (images fired on) or
        in mean pooled activation, so the control suppresses as much, or as strongly, as the SAE's pick."""
        st = self.stats[layer]
        alive = (st.fired > 0).nonzero().squeeze(1)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + layer * 10_007 + n * 101 + draw)
        if not matched:
            return alive[torch.randperm(len(alive), generator=g)[: min(n, len(alive))]]
        return matched_features(self.ranked[layer].order[:n], alive, match_key(st, matched), g)

    def __call__(self, c: Condition) -> tuple[edits.Edit, str, str]:
        sae = self.saes[c.layer][0]
        if c.method == "projection":
            r = self.ranked[c.layer]
            return edits.project(r.direction.to(self.device), r.mean), sae.cfg.site, sae.cfg.tokens
        if c.method == "sae":
            idx = self.ranked[c.layer].order[: c.n]
        else:
            idx = self.random_features(c.layer, c.n, c.draw, RANDOM_METHODS[c.method])
        return edits.zero(sae, idx), sae.cfg.site, sae.cfg.tokens


#: The random baselines: method -> what its features are matched on ('' = uniform over live features).
RANDOM_METHODS = {"random": "", "random_rate": "rate", "random_act": "activation"}
#: Candidates per matched feature: the nearest live features on the matched statistic, one drawn at random.
MATCH_POOL = 8


def match_key(stats: LayerStats, matched: str) -> Tensor:
    """[d_sae] the statistic a matched control is matched on: images fired on, or mean pooled activation."""
    if matched == "rate":
        return stats.fired.float()
    if matched == "activation":
        return stats.total.sum(dim=(0, 1)).float() / stats.count.sum().clamp_min(1)
    raise SaeVitError(f"Unknown matching {matched!r}; use rate or activation.")


def matched_features(chosen: Tensor, alive: Tensor, key: Tensor, g: torch.Generator) -> Tensor:
    """For each feature in ``chosen``, a distinct random pick among the :data:`MATCH_POOL` live features (not in
    ``chosen``) whose ``key`` is nearest to its own."""
    free = torch.zeros(len(key), dtype=torch.bool)
    free[alive] = True
    free[chosen] = False
    picks = []
    for f in chosen.tolist():
        pool = free.nonzero().squeeze(1)
        if len(pool) == 0:
            break
        near = pool[(key[pool] - key[f]).abs().argsort()[:MATCH_POOL]]
        pick = int(near[torch.randint(len(near), (1,), generator=g)])
        picks.append(pick)
        free[pick] = False
    return torch.tensor(picks, dtype=torch.long)



def evaluate_split(backbone: Backbone, task: TaskData, split: str, conditions: list[Condition],
                   edit_for: ConditionEdits, predictors: dict[str, Callable[[Tensor], Tensor]],
                   share: dict[int, float], cfg: SuppressConfig, progress: Progress | None = None) -> list[dict]:
    """One row of group accuracies per (condition, evaluation) on ``split``."""
    paths, lab, _, grp = split_tensors(task.frame, split)
    embs = run_conditions(backbone, ImageBatches(paths, backbone.transform, cfg.batch_size), conditions, edit_for,
                          progress, split)
    return [{"eval": how, "method": c.method, "layer": c.layer, "n": c.n, "draw": c.draw, "split": split,
             **group_metrics(predict(emb), lab, grp, share)}
            for c, emb in embs.items() for how, predict in predictors.items()]


def extend_n_features(val, live: dict[int, int], evals: list[str]) -> list[Condition]:
    """The N sweep's extension rule, per layer: when the validation-best N of any evaluation (ties go to the
    smaller N) is the largest N tried at that layer and below the layer's number of live features, try twice
    that N (at most every live feature). Returns the new validation conditions (none: the sweep is done)."""
    new = []
    for layer, n_live in live.items():
        part = val[(val["method"] == "sae") & (val["layer"] == layer)]
        top = int(part["n"].max())
        if top < n_live and any(_choose(part[part["eval"] == how])[1] == top for how in evals):
            new.append(Condition("sae", layer, min(2 * top, n_live)))
    return new


def _choose(val) -> tuple[int, int]:
    best = val.sort_values(["worst", "avg", "n", "layer"], ascending=[False, False, True, True]).iloc[0]
    return int(best["layer"]), int(best["n"])


def _check(cfg: SuppressConfig) -> None:
    if cfg.ranking not in RANKINGS:
        raise SaeVitError(f"Unknown ranking {cfg.ranking!r}; use one of: {', '.join(RANKINGS)}.")
    if cfg.ranking == "text" and not cfg.text_query:
        raise SaeVitError("--ranking text needs --text-query with words for the spurious attribute, e.g. water,land.")
    if not cfg.n_features or min(cfg.n_features) < 1:
        raise SaeVitError("--n-features must list positive integers, e.g. 1,2,4,8.")


def run_suppress(backbone: Backbone, head: TextHead, saes: dict[int, tuple[SAE, str]], task: TaskData,
                 cfg: SuppressConfig = SuppressConfig(), vocab: tuple[list[str], Tensor] | None = None,
                 progress: Progress | None = None) -> SuppressResult:
    """Rank on train, choose (layer, N) on val, evaluate on test; see the module docstring."""
    import pandas as pd

    _check(cfg)
    class_emb = class_embeddings(head, task.classes, cfg.templates).to(backbone.device)
    layers = list(saes)

    # -- 1. train split: latent statistics, probes, rankings --------------------------------------
    paths, label, spur, group = split_tensors(task.frame, "train")
    share = {int(g): float(c) / len(group) for g, c in zip(*group.unique(return_counts=True), strict=True)}
    train = train_pass(backbone, saes, paths, label, spur, len(task.classes), cfg, progress)
    predictors = {"zero_shot": lambda emb: zero_shot_logits(emb, class_emb).argmax(1)}
    if cfg.probe:
        target_probe = fit_logistic(train.embeddings, label, l2=cfg.probe_l2)
        predictors["probe"] = lambda emb: target_probe.logits(emb).argmax(1)
    text_query = None
    if cfg.ranking == "text":
        text_query = F.normalize(head.embed(list(cfg.text_query), cfg.templates), dim=-1)
    ranked = {layer: rank_layer(backbone, sae, train.stats[layer], train.prev[layer - 1], label, spur, group,
                                cfg.ranking, cfg.within_class, text_query, cfg.probe_l2)
              for layer, (sae, _) in saes.items()}
    edit_for = ConditionEdits(saes, ranked, train.stats, cfg.seed, backbone.device)

    # -- 2. validation: the full sweep; choose layer and N ---------------------------------------
    conds = [Condition("none")]
    conds += [Condition("sae", layer, n) for layer in layers for n in cfg.n_features]
    conds += [Condition("projection", layer) for layer in layers]
    rows = evaluate_split(backbone, task, "val", conds, edit_for, predictors, share, cfg, progress)
    val = pd.DataFrame(rows)
    evals = list(predictors)
    live = {layer: int((train.stats[layer].fired > 0).sum()) for layer in layers}
    while cfg.extend_n and (more := extend_n_features(val, live, evals)):
        rows += evaluate_split(backbone, task, "val", more, edit_for, predictors, share, cfg, progress)
        val = pd.DataFrame(rows)
    chosen = {how: _choose(val[(val["eval"] == how) & (val["method"] == "sae")]) for how in evals}
    chosen_proj = {how: _choose(val[(val["eval"] == how) & (val["method"] == "projection")]) for how in evals}
    best_n = {(how, layer): _choose(val[(val["eval"] == how) & (val["method"] == "sae") & (val["layer"] == layer)])[1]
              for how in evals for layer in layers}

    # -- 3. test: baseline, each layer at its best N, projections, random draws -------------------
    tconds = {Condition("none")}
    tconds |= {Condition("sae", layer, n) for (_, layer), n in best_n.items()}
    tconds |= {Condition("projection", layer) for layer in layers}
    for layer, n in chosen.values():
        tconds |= {Condition(method, layer, n, d) for method in RANDOM_METHODS for d in range(cfg.n_random)}
    rows += evaluate_split(backbone, task, "test", sorted(tconds), edit_for, predictors, share, cfg, progress)
    sweep = pd.DataFrame(rows)

    features = _feature_rows(backbone, saes, chosen, ranked, train, vocab, cfg)
    summary = _summary(backbone, head, task, share, chosen, chosen_proj, saes, cfg)
    sae_val = val[val["method"] == "sae"]
    summary["n_tried"] = {str(layer): sorted(int(n) for n in set(sae_val[sae_val["layer"] == layer]["n"]))
                          for layer in layers}
    summary["n_live"] = {str(layer): n for layer, n in live.items()}
    return SuppressResult(results_table(sweep, evals, chosen, chosen_proj), sweep, pd.DataFrame(features), summary)


def _feature_rows(backbone: Backbone, saes: dict[int, tuple[SAE, str]], chosen: dict, ranked: dict[int, LayerRanking],
                  train: TrainPass, vocab: tuple[list[str], Tensor] | None, cfg: SuppressConfig) -> list[dict]:
    """The suppressed features at each evaluation's chosen layer, with their top concept words."""
    rows = []
    n_train = len(train.embeddings)
    for how, (layer, n) in chosen.items():
        sae, st = saes[layer][0], train.stats[layer]
        idx = ranked[layer].order[:n]
        concepts = [""] * len(idx)
        if vocab is not None:
            eff = feature_effects(backbone, sae, layer, train.prev[layer - 1], idx, st.max_act[idx]).cpu()
            concepts = concept_words(eff, vocab[0], vocab[1].cpu(), cfg.n_concepts)
        for r, (f, con) in enumerate(zip(idx.tolist(), concepts, strict=True)):
            rows.append({"eval": how, "layer": layer, "rank": r + 1, "feature": f,
                         "score": float(ranked[layer].scores[f]), "density": float(st.fired[f]) / n_train,
                         "max_activation": float(st.max_act[f]), "concepts": con})
    return rows


def _summary(backbone: Backbone, head: TextHead, task: TaskData, share: dict[int, float], chosen: dict,
             chosen_proj: dict, saes: dict[int, tuple[SAE, str]], cfg: SuppressConfig) -> dict:
    frame = task.frame
    return {
        "model": backbone.name, "weights": backbone.weights_id, "target": task.target, "spurious": task.spurious,
        "classes": task.classes, "groups": {str(k): v for k, v in task.group_names.items()},
        "train_group_share": {str(k): v for k, v in share.items()},
        "n_images": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "chosen": {how: {"layer": int(layer), "n": int(n)} for how, (layer, n) in chosen.items()},
        "chosen_projection_layer": {how: int(layer) for how, (layer, _) in chosen_proj.items()},
        "layers": list(saes), "saes": {str(layer): p for layer, (_, p) in saes.items()},
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "text_head": head.source,
    }


def results_table(sweep, evals: list[str], chosen: dict, chosen_proj: dict):
    """One row per (eval, method) from the ``sweep``: each method at the layer and N chosen on validation."""
    import pandas as pd

    rows = []
    test_cols = ("avg", "avg_weighted", "worst", *sorted(c for c in sweep.columns if c.startswith("acc_g")))
    for how in evals:
        layer, n = chosen[how]
        for method, lay, nn in (("none", -1, 0), ("sae", layer, n), *((m, layer, n) for m in RANDOM_METHODS),
                                ("projection", chosen_proj[how][0], 0)):
            sel = sweep[(sweep["eval"] == how) & (sweep["method"] == method) & (sweep["layer"] == lay)
                        & (sweep["n"] == nn)]
            val, test = sel[sel["split"] == "val"], sel[sel["split"] == "test"]
            rows.append({"eval": how, "method": method, "layer": None if lay < 0 else lay, "n": nn or None,
                         "val_worst": float(val["worst"].mean()) if len(val) else float("nan"),
                         **{f"test_{col}": float(test[col].mean()) for col in test_cols},
                         "test_worst_std": float(test["worst"].std()) if len(test) > 1 else 0.0,
                         "draws": len(test)})
    return pd.DataFrame(rows)
