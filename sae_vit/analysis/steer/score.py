"""``steer-score``: S for every unit of every family at the decision strength, the null edits, the rule, the
steer–detect agreement, and the files it writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sae_vit.analysis.common import check_sae_matches
from sae_vit.analysis.steer.agreement import (
    agreement_tests,
    detected_concepts,
    family_agreement,
    zero_shot_labels,
)
from sae_vit.analysis.steer.context import (
    SteerConfig,
    SteerContext,
    UnitFamily,
    build_context,
    decision_strength,
    neuron_family,
    random_family,
    sae_family,
    steer_batched,
    steerability,
    strength_unit,
    strengths_for,
)
from sae_vit.analysis.steer.nulls import (
    NullScores,
    null_bar,
    null_rows,
    null_summary,
    score_nulls,
    steerable_mask,
)
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig

RULE = ("steerable ⇔ S(s*) > threshold and S(s*) > max(max over noise seeds of S_noise(s*), S_erase(s*)); "
        "the nulls themselves are judged by S > threshold alone")
S_FLAT = "S = Σ_v Δp_v² over the vocabulary (one softmax)"
S_ATTRIBUTES = ("S = max over attributes of Σ_{v in attribute} Δp_v² (one softmax per attribute, so each "
                "attribute is a distribution and S keeps the paper's scale, at most 2)")


class UnitScores(NamedTuple):
    """Scores of one family of units (SAE features, neurons or random directions)."""

    S: Tensor
    """[m] steerability at the decision strength."""
    dp: Tensor
    """[m, V] Δp over the vocabulary at the decision strength."""


class SteerReport(NamedTuple):
    """What :func:`steer_score` returns for one SAE."""

    units: object
    """pandas DataFrame, one row per scored unit and per null edit: kind (feature / neuron / mlp_neuron /
    random / null_noise / null_erase / null_erase_full), index, target (top concept) and target_attribute, S,
    max_dp, steerable (the rule; for a null: S > threshold), steerable_threshold (S > threshold), density
    (features), detected (concept of its top images) and agree, alpha, s and s_token_norms of the decision,
    and S_alpha_<a> for the curve units and the nulls."""
    summary: dict
    """Counts and fractions steerable per kind, the nulls, the agreement and its tests, the strengths (α, s and
    token norms) and the options used."""
    strengths: list[float]
    """The strengths s of the sweep applied to the features (see :attr:`SteerConfig.strength_unit`)."""


def score_family(ctx: SteerContext, family: UnitFamily, indices: Tensor, strength: float, cfg: SteerConfig,
                 progress: Callable[[int, int], None] | None = None) -> UnitScores:
    """S and Δp at one ``strength`` for ``indices`` of a family, in chunks of units."""
    S, dps = [], []
    chunk = 64
    for start in range(0, len(indices), chunk):
        idx = indices[start:start + chunk]
        dp = steer_batched(ctx, family.directions(idx), family.current(idx), family.scale, [strength], cfg.max_batch,
                           cfg.precision)[:, 0]
        S.append(steerability(dp, ctx.groups))
        dps.append(dp)
        if progress:
            progress(min(start + chunk, len(indices)), len(indices))
    V = ctx.text.shape[0]
    return UnitScores(torch.cat(S) if S else torch.zeros(0), torch.cat(dps) if dps else torch.zeros(0, V))


def _family_frame(fctx: SteerContext, fam: UnitFamily, ids: Tensor, cfg: SteerConfig, backbone: Backbone,
                  bar: float, labels: Tensor, words: Sequence[str], attributes: Sequence[str] | None,
                  density: Tensor, progress) -> tuple[object, dict, Tensor]:
    """One family's rows, its summary entry and its agree indicators (units with a detection)."""
    import pandas as pd

    d = decision_strength(cfg, backbone, fam)
    scores = score_family(fctx, fam, ids, d["s"], cfg, progress)
    above = scores.S > cfg.threshold
    steerable = steerable_mask(scores.S, cfg.threshold, bar)
    best = scores.dp.argmax(-1)
    detected = detected_concepts(fam.activations(ids), labels, cfg.agree_top) if len(ids) else best
    frame = pd.DataFrame({
        "kind": fam.name, "index": ids.numpy(), "target": [words[i] for i in best.tolist()],
        "target_attribute": [attributes[i] if attributes else "" for i in best.tolist()],
        "S": scores.S.numpy(), "max_dp": scores.dp.max(-1).values.numpy() if len(ids) else [],
        "steerable": steerable.numpy(), "steerable_threshold": above.numpy(),
        "density": density[ids].numpy() if fam.name == "feature" else float("nan"),
        "detected": [words[i] if i >= 0 else "" for i in detected.tolist()], "agree": (detected == best).numpy(),
        "alpha": d["alpha"], "s": d["s"], "s_token_norms": d["token_norms"],
    })
    _add_curves(frame, fctx, fam, ids, scores.S, cfg, strengths_for(cfg, backbone, fam))
    info = {"scored": len(ids), "steerable": int(steerable.sum()), "fraction": float(steerable.float().mean()) if len(ids) else 0.0,
            "steerable_threshold": int(above.sum()),
            "fraction_threshold": float(above.float().mean()) if len(ids) else 0.0,
            "distinct_targets": int(frame.loc[frame.steerable, "target"].nunique()),
            **family_agreement(detected, best, len(words)),
            "alpha": d["alpha"], "s": d["s"], "s_token_norms": d["token_norms"], "token_norm": fam.unit_norm}
    if fam.name == "feature":
        info["live_on_probe"] = int((density > 0).sum())
    return frame, info, (detected == best)[detected >= 0]


def _add_curves(frame, fctx: SteerContext, fam: UnitFamily, ids: Tensor, S: Tensor, cfg: SteerConfig,
                strengths: list[float]) -> None:
    """S at every strength of the sweep for the ``curve_top`` units of highest S (columns S_alpha_<a>)."""
    top = S.argsort(descending=True)[: cfg.curve_top]
    if not len(top) or not strengths:
        return
    dp = steer_batched(fctx, fam.directions(ids[top]), fam.current(ids[top]), fam.scale, strengths, cfg.max_batch,
                       cfg.precision)
    S_curve = steerability(dp, fctx.groups)  # [m, A]
    for a, alpha in enumerate(cfg.alphas):
        frame.loc[top.numpy(), f"S_alpha_{alpha:g}"] = S_curve[:, a].numpy()


def _families(sae: SAE, backbone: Backbone, ctx: SteerContext, images: Tensor, tokens: str,
              cfg: SteerConfig, features, max_features, neurons: bool, mlp_neurons: bool, random_control: int,
              seed: int):
    """(family, its units to score, its context) for each family asked for; and the features' density."""
    feats, density = sae_family(sae, ctx)
    live = (density > 0) if cfg.live_only else None
    families = [(feats, _pick(sae.cfg.d_sae, features, max_features, seed, live), ctx)]
    if neurons:
        families.append((neuron_family(ctx), None, ctx))
    if mlp_neurons:
        # the same probe passes and unsteered output; only the hook moves to the MLP's hidden units
        with torch.no_grad():
            hidden = backbone.capture(images, [ctx.layer], "mlp_hidden", tokens)[ctx.layer]
        mctx = dataclasses.replace(ctx, site="mlp_hidden", site_acts=hidden)
        families.append((neuron_family(mctx, "mlp_neuron"), None, mctx))
    if random_control:
        families.append((random_family(feats, random_control, seed), None, ctx))
    return [(f, torch.arange(f.n_units) if ids is None else ids, c) for f, ids, c in families], density


def steer_score(sae: SAE, backbone: Backbone, images: Tensor, words: Sequence[str], text: Tensor,
                cfg: SteerConfig | None = None, features: Sequence[int] | None = None,
                max_features: int | None = None, neurons: bool = True, mlp_neurons: bool = False,
                random_control: int = 0, seed: int = 0, path: str = "",
                progress: Callable[[str, int, int], None] | None = None, attributes: Sequence[str] | None = None,
                labels: Tensor | None = None) -> SteerReport:
    """Score the steerability of an SAE's features (and of neurons / random directions as baselines) against
    the null edits, with the steer–detect agreement of every family.

    ``images`` [N, 3, H, W] preprocessed probe images; ``text`` [V, d_emb] unit embeddings of ``words``.
    ``features`` picks features; otherwise all, or ``max_features`` sampled with ``seed``. ``attributes`` [V]
    names each word's attribute (softmax and S within attributes; None: one flat vocabulary). ``labels`` [N, V]
    says which concepts each probe image shows (None: its unsteered zero-shot top concept).
    """
    import pandas as pd

    cfg = cfg or SteerConfig()
    check_sae_matches(sae, backbone, path or "the SAE")
    if not words or len(words) != len(text):
        raise SaeVitError(f"Got {len(words)} words for {len(text)} text embeddings; pass a non-empty vocabulary.")
    if attributes is not None and len(attributes) != len(words):
        raise SaeVitError(f"Got {len(attributes)} attributes for {len(words)} words; give one per word.")
    tokens = sae.cfg.tokens if cfg.tokens == "sae" else cfg.tokens
    groups = None if attributes is None else _attribute_index(attributes)
    ctx = build_context(backbone, sae.cfg.layer, sae.cfg.site, images, text, tokens, cfg.temperature, groups)
    families, density = _families(sae, backbone, ctx, images, tokens, cfg, features, max_features, neurons,
                                  mlp_neurons, random_control, seed)
    feats = families[0][0]
    t_star = decision_strength(cfg, backbone, feats)["token_norms"]
    sweep = [s / feats.unit_norm for s in strengths_for(cfg, backbone, feats)]
    nulls = score_nulls(ctx, [*sweep, t_star], cfg.null_seeds, seed, cfg.max_batch, cfg.precision)
    bar = null_bar(nulls, t_star)
    world_labels = labels is not None
    labels = zero_shot_labels(ctx.p0, groups) if labels is None else labels.float()
    frames, kinds, agree = [], {}, {}
    for fam, ids, fctx in families:
        frame, kinds[fam.name], agree[fam.name] = _family_frame(
            fctx, fam, ids, cfg, backbone, bar, labels, words, attributes, density,
            (lambda d, t, n=fam.name: progress(n, d, t)) if progress else None)
        frames.append(frame)
    curve = [(f"S_alpha_{a:g}", t) for a, t in zip(cfg.alphas, sweep, strict=True)]
    frames.append(pd.DataFrame(null_rows(nulls, t_star, words, attributes, cfg.threshold, curve)))
    units = pd.concat(frames, ignore_index=True).sort_values(["kind", "S"], ascending=[True, False])
    summary = _summary(sae, backbone, cfg, tokens, images, words, attributes, world_labels, families, kinds,
                       nulls, t_star, agreement_tests(agree, cfg.permutations, seed), path)
    return SteerReport(units.reset_index(drop=True), summary, strengths_for(cfg, backbone, feats))


def _summary(sae: SAE, backbone: Backbone, cfg: SteerConfig, tokens: str, images: Tensor, words, attributes,
             world_labels: bool, families, kinds: dict, nulls: NullScores, t_star: float, tests: dict,
             path: str) -> dict:
    groups = None if attributes is None else {a: [w for w, b in zip(words, attributes, strict=True) if b == a]
                                              for a in dict.fromkeys(attributes)}
    return {
        "model": backbone.name, "layer": sae.cfg.layer, "site": sae.cfg.site, "sae_tokens": sae.cfg.tokens,
        "steer_tokens": tokens, "d_sae": sae.cfg.d_sae, "n_images": len(images), "vocabulary": len(words),
        "attributes": groups, "S_definition": S_FLAT if groups is None else S_ATTRIBUTES,
        "threshold": cfg.threshold, "temperature": cfg.temperature, "alphas": list(cfg.alphas),
        "strength_unit": strength_unit(cfg, backbone),
        "strengths": {f.name: strengths_for(cfg, backbone, f) for f, _, _ in families},
        "strengths_token_norms": {f.name: [s / f.unit_norm for s in strengths_for(cfg, backbone, f)]
                                  for f, _, _ in families},
        "token_norm": {f.name: f.unit_norm for f, _, _ in families},
        "decision": {"token_norms": t_star, "paper": cfg.decide_at is None,
                     "alpha": {k: v["alpha"] for k, v in kinds.items()}, "s": {k: v["s"] for k, v in kinds.items()}},
        "rule": RULE, "nulls": null_summary(nulls, t_star, cfg.threshold), "kinds": kinds,
        "live_only": cfg.live_only, "agreement_tests": tests, "agreement_labels": "world" if world_labels else "zero-shot top concept",
        "agree_top": cfg.agree_top, "path": str(path),
    }


def _attribute_index(attributes: Sequence[str]) -> Tensor:
    names = list(dict.fromkeys(attributes))
    return torch.tensor([names.index(a) for a in attributes])


def _pick(n: int, features: Sequence[int] | None, max_features: int | None, seed: int,
          live: Tensor | None = None) -> Tensor:
    """The features to score: ``features``; else ``max_features`` sampled with ``seed`` (all when None), among
    the ``live`` ones [n] (bool) when given."""
    if features is not None:
        idx = torch.tensor(list(features), dtype=torch.long)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise SaeVitError(f"--features must list indices in 0..{n - 1}.")
        return idx
    pool = torch.arange(n) if live is None else live.nonzero().squeeze(1).cpu()
    if max_features is not None and max_features < len(pool):
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:max_features]
        return pool[pick].sort().values
    return pool


def results_stem(cfg: SAEConfig) -> str:
    """The file name, without suffix, of steer-score's results for an SAE (inspect reads them too)."""
    return f"steer_layer{cfg.layer}_{cfg.site}_{cfg.tokens}"


def plot_curves(units, path) -> object:
    """PNG of S against the strength for the units that have a curve and the nulls; None without matplotlib."""
    from sae_vit.analysis.common import plot

    cols = [c for c in units.columns if c.startswith("S_alpha_")]
    xs = [float(c[len("S_alpha_"):]) for c in cols]
    with_curve = units[units[cols].notna().all(axis=1)] if cols else units.iloc[:0]

    styles = {"feature": ("tab:blue", "-"), "neuron": ("tab:red", "--"), "mlp_neuron": ("tab:purple", "-."),
              "random": ("tab:grey", ":"), "null_noise": ("tab:orange", "-"), "null_erase": ("black", "-"),
              "null_erase_full": ("black", ":")}

    def draw(ax):
        for kind, group in with_curve.groupby("kind", sort=False):
            colour, line = styles.get(kind, ("black", "-"))
            label = f"{kind} (seeds)" if kind == "null_noise" else kind if kind.startswith("null") else \
                f"{kind}s (top {len(group)} by S)"
            for n, (_, row) in enumerate(group.iterrows()):
                ax.plot(xs, [row[c] for c in cols], color=colour, linestyle=line, marker="o", markersize=3,
                        alpha=0.8, label=label if n == 0 else None)
        ax.axhline(0.10, color="black", linestyle="--", linewidth=0.8, label="steerable threshold 0.10")
        ax.set(xlabel="steering strength alpha (see the summary for s and token norms)", ylabel="steerability S")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))

    return plot(path, draw, figsize=(8, 4))
