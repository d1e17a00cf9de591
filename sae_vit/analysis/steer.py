"""Steerability: how precisely pushing one SAE feature (or one neuron) moves CLIP's output toward a concept.

The authors' procedure (docs/steer.md, ../PAPER.md §2): at the SAE's hook, clamp feature i to a strength s at
every selected token, keeping the SAE's error term (x' = x + (s − f_i) · d_i, d_i the decoder row, scaled back
by the token's normalisation); run the rest of the model; p = softmax(T · ê · Vᵀ) over a vocabulary of concept
words; Δp = mean over probe images of p_steered − p_unsteered; S = Σ_v Δp_v²; steerable ⇔ S > 0.10 at the
largest strength.

Speed: activations below the hook are computed once; each steered pass runs only the blocks after it, and
many (unit, strength, image) triples share one batched forward pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import check_sae_matches
from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig

#: Norm of a layer-normalised ViT-B/32 token (√768): the unit of relative strengths.
REFERENCE_NORM = math.sqrt(768)


@dataclass
class SteerConfig:
    """How to score steerability; defaults are the paper's."""

    alphas: tuple[float, ...] = (-20, -5, 0, 5, 10, 20, 50, 150)
    """Steering strengths; steerability is decided at the largest."""
    threshold: float = 0.10
    """A unit is steerable when S = Σ Δp² exceeds this at the largest strength."""
    temperature: float = 100.0
    """Softmax temperature over the vocabulary (CLIP's logit scale)."""
    tokens: str = "sae"
    """Where to clamp: ``sae`` (the SAE's tokens), ``all``, ``patches`` or ``cls`` (the paper's variant)."""
    strength_unit: str = "auto"
    """``absolute`` (s = α, the paper's, for CLIP ViT-B/32), ``relative`` (s = α · r with r the mean norm of the
    hook's input tokens divided by √768, so α = 150 pushes as hard, relative to the activation scale, as the
    paper's s = 150 on layer-normalised ViT-B/32 tokens), or ``auto`` (absolute for 768-wide CLIP models,
    relative otherwise)."""
    curve_top: int = 8
    """Units for which S is computed at every strength (for the curve plot); the others only at the largest."""
    max_batch: int = 1024
    """Steered image passes per batched forward pass (lower it to save memory)."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` autocast for the steered passes."""


class UnitScores(NamedTuple):
    """Scores of one family of units (SAE features, neurons or random directions)."""

    S: Tensor
    """[m] steerability Σ_v Δp_v² at the largest strength."""
    dp: Tensor
    """[m, V] Δp over the vocabulary at the largest strength."""


@dataclass
class SteerContext:
    """What every steered pass shares: probe activations, the unsteered output, the vocabulary."""

    backbone: Backbone
    layer: int
    site: str
    resid: Tensor
    """[N, T, d_model] resid_post of ``layer`` for the probe images."""
    site_acts: Tensor
    """[N, T_sel, d_site] activations at the hook for the tokens steered."""
    positions: Tensor
    """[T_sel] token positions steered."""
    text: Tensor
    """[V, d_emb] unit text embeddings of the vocabulary."""
    p0: Tensor | None
    """[N, V] unsteered vocabulary probabilities per probe image."""
    temperature: float
    base: Tensor | None = None
    """[N, d_emb] unsteered unit image embeddings."""

    def embeddings(self, resid: Tensor) -> Tensor:
        """Unit image embeddings [B, d_emb] from a (steered) ``resid`` [B, T, d]."""
        return F.normalize(self.backbone.forward_from(self.layer, resid).float(), dim=-1)

    def vocab_probabilities(self, emb: Tensor) -> Tensor:
        """softmax(temperature · ê · Tᵀ) [B, V] for unit embeddings ``emb`` [B, d_emb]."""
        return torch.softmax(self.temperature * emb @ self.text.T, dim=-1)

    def site_to_resid(self, delta: Tensor) -> Tensor:
        """Map a change at the hook [..., d_site] to the change of resid_post [..., d_model]."""
        if self.site == "mlp_hidden":
            return delta @ self.backbone.model.blocks[self.layer].mlp.fc2.weight.T
        return delta  # resid_post, and mlp_out (added to the residual as is)


def build_context(backbone: Backbone, layer: int, site: str, images: Tensor, text: Tensor, tokens: str,
                  temperature: float) -> SteerContext:
    """Run the probe images once up to ``layer`` and once fully (the unsteered reference)."""
    if len(images) == 0:
        raise SaeVitError("The probe image set is empty; pass --images with images or use --world.")
    positions = backbone.token_positions(tokens)
    with torch.no_grad():
        resid = backbone.capture(images, [layer], "resid_post", "all")[layer]
        if backbone.n_prefix > 1:  # registers: capture(..., "all") drops them; steer needs the full sequence
            raise SaeVitError(f"{backbone.name} has register tokens; steer-score supports ViTs without registers.")
        site_acts = resid[:, positions] if site == "resid_post" else backbone.capture(images, [layer], site, tokens)[layer]
        ctx = SteerContext(backbone, layer, site, resid, site_acts, positions, text.float(), None, temperature)
        ctx.base = ctx.embeddings(resid)
        ctx.p0 = ctx.vocab_probabilities(ctx.base)
    return ctx


def steer_batched(ctx: SteerContext, directions: Tensor, current: Tensor, scale: Tensor, strengths: Sequence[float],
                  max_batch: int = 1024, precision: str = "fp32") -> Tensor:
    """Δp [m, A, V] for m units clamped to each of A strengths.

    ``directions`` [m, d_site]: the unit's direction at the hook (decoder row, basis vector ...);
    ``current`` [m, N, T_sel]: the unit's value at each steered token (clamping replaces it by s);
    ``scale`` [N, T_sel, 1]: per-token factor from the SAE's normalised space to the hook's (σ for layer norm).
    """
    m, N = directions.shape[0], ctx.resid.shape[0]
    s = torch.tensor(list(strengths), dtype=torch.float32)
    pairs = [(j, a) for j in range(m) for a in range(len(s))]
    per = max(1, max_batch // N)
    out = torch.zeros(m, len(s), ctx.text.shape[0])
    pos = ctx.positions
    with torch.no_grad(), torch.autocast(ctx.resid.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for start in range(0, len(pairs), per):
            chunk = pairs[start:start + per]
            j, a = torch.tensor(chunk).T  # [c] unit and strength indices
            amount = (s[a][:, None, None] - current[j])[..., None] * scale[None]  # [c, N, T_sel, 1]
            delta = ctx.site_to_resid(amount * directions[j][:, None, None, :])    # [c, N, T_sel, d]
            resid = ctx.resid.repeat(len(chunk), 1, 1, 1)                          # [c, N, T, d]
            resid[:, :, pos] += delta.to(resid.dtype)
            p = ctx.vocab_probabilities(ctx.embeddings(resid.flatten(0, 1))).view(len(chunk), N, -1)
            out[j, a] = (p - ctx.p0[None]).mean(dim=1)
    return out


@dataclass
class UnitFamily:
    """A family of units to steer: how to get directions, current values and the scale for a chunk."""

    name: str
    n_units: int
    directions: Callable[[Tensor], Tensor]
    current: Callable[[Tensor], Tensor]
    scale: Tensor
    unit_norm: float
    """Mean norm of the hook's input in the space where clamping happens (for relative strengths)."""


def sae_family(sae: SAE, ctx: SteerContext) -> tuple[UnitFamily, Tensor]:
    """SAE features: directions are decoder rows, current values the latents; also returns density [d_sae]."""
    x = ctx.site_acts
    with torch.no_grad():
        xn, norm_ctx = sae.normalize(x)
        f = sae.activate(sae.pre_activations(xn))
    if sae.cfg.normalization == "layer_norm":
        scale = norm_ctx[1]  # de-normalise with sigma alone, as the SAE does
    elif sae.cfg.normalization == "constant":
        scale = torch.full_like(x[..., :1], 1.0 / float(sae.scale))
    else:
        scale = torch.ones_like(x[..., :1])
    return (UnitFamily("feature", sae.cfg.d_sae, lambda idx: sae.W_dec.detach()[idx],
                       lambda idx: f[..., idx].permute(2, 0, 1), scale, xn.norm(dim=-1).mean().item()),
            (f > 0).float().mean(dim=(0, 1)))


def neuron_family(ctx: SteerContext, name: str = "neuron") -> UnitFamily:
    """The hook's basis dimensions (the paper's neuron baseline): each set directly to s at every token."""
    x = ctx.site_acts
    eye = torch.eye(x.shape[-1])
    return UnitFamily(name, x.shape[-1], lambda idx: eye[idx], lambda idx: x[..., idx].permute(2, 0, 1),
                      torch.ones_like(x[..., :1]), x.norm(dim=-1).mean().item())


def random_family(features: UnitFamily, n: int, seed: int = 0) -> UnitFamily:
    """Control: random unit directions (the decoder rows' norm), added in the SAE's space with strength s."""
    d = features.directions(torch.tensor([0])).shape[-1]
    dirs = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)
    zeros_shape = features.current(torch.tensor([0])).shape[1:]
    return UnitFamily("random", n, lambda idx: dirs[idx], lambda idx: torch.zeros(len(idx), *zeros_shape),
                      features.scale, features.unit_norm)


def strengths_for(cfg: SteerConfig, backbone: Backbone, family: UnitFamily) -> list[float]:
    """The strengths s actually applied (see :attr:`SteerConfig.strength_unit`)."""
    unit = cfg.strength_unit
    if unit == "auto":
        unit = "absolute" if ("clip" in backbone.name and backbone.d_model == 768) else "relative"
    if unit == "absolute":
        return [float(a) for a in cfg.alphas]
    if unit != "relative":
        raise SaeVitError(f"Unknown strength unit {cfg.strength_unit!r}; use auto, absolute or relative.")
    r = family.unit_norm / REFERENCE_NORM
    return [float(a) * r for a in cfg.alphas]


def score_family(ctx: SteerContext, family: UnitFamily, indices: Tensor, strengths: list[float],
                 cfg: SteerConfig, progress: Callable[[int, int], None] | None = None) -> UnitScores:
    """S and Δp at the largest strength for ``indices`` of a family, in chunks of units."""
    top = [max(strengths, key=abs)] if strengths else []
    S, dps = [], []
    chunk = 64
    for start in range(0, len(indices), chunk):
        idx = indices[start:start + chunk]
        dp = steer_batched(ctx, family.directions(idx), family.current(idx), family.scale, top, cfg.max_batch,
                           cfg.precision)[:, 0]
        S.append((dp**2).sum(-1))
        dps.append(dp)
        if progress:
            progress(min(start + chunk, len(indices)), len(indices))
    return UnitScores(torch.cat(S), torch.cat(dps))


def naive_steer(backbone: Backbone, sae: SAE, layer: int, images: Tensor, text: Tensor, feature: int,
                strength: float, tokens: str = "all", temperature: float = 100.0) -> Tensor:
    """Reference implementation: one feature, one strength, full forward passes through :func:`splice`.
    Returns Δp [V]. Slow and obviously correct; the tests check :func:`steer_batched` against it."""
    with torch.no_grad():
        base = F.normalize(backbone.image_embedding(images).float(), dim=-1)
        with splice(backbone, layer, edits.clamp(sae, feature, strength), site=sae.cfg.site, tokens=tokens):
            steered = F.normalize(backbone.image_embedding(images).float(), dim=-1)
    p0 = torch.softmax(temperature * base @ text.T, dim=-1)
    p1 = torch.softmax(temperature * steered @ text.T, dim=-1)
    return (p1 - p0).mean(0)


class SteerReport(NamedTuple):
    """What :func:`steer_score` returns for one SAE."""

    units: object
    """pandas DataFrame, one row per scored unit: kind (feature / neuron / mlp_neuron / random), index,
    target (top concept), S, max_dp, steerable, density (features), and S_alpha_<a> for the curve units."""
    summary: dict
    """Counts and fractions steerable per kind, distinct targets, the strengths and options used."""
    strengths: list[float]
    """The strengths s applied to the features (see :attr:`SteerConfig.strength_unit`)."""


def steer_score(sae: SAE, backbone: Backbone, images: Tensor, words: Sequence[str], text: Tensor,
                cfg: SteerConfig | None = None, features: Sequence[int] | None = None,
                max_features: int | None = None, neurons: bool = True, mlp_neurons: bool = False,
                random_control: int = 0, seed: int = 0, path: str = "",
                progress: Callable[[str, int, int], None] | None = None) -> SteerReport:
    """Score the steerability of an SAE's features (and of neurons / random directions as baselines).

    ``images`` [N, 3, H, W] preprocessed probe images; ``text`` [V, d_emb] unit embeddings of ``words``.
    ``features`` picks features; otherwise all, or ``max_features`` sampled with ``seed``.
    """
    import pandas as pd

    cfg = cfg or SteerConfig()
    check_sae_matches(sae, backbone, path or "the SAE")
    if not words or len(words) != len(text):
        raise SaeVitError(f"Got {len(words)} words for {len(text)} text embeddings; pass a non-empty vocabulary.")
    layer, site = sae.cfg.layer, sae.cfg.site
    tokens = sae.cfg.tokens if cfg.tokens == "sae" else cfg.tokens
    ctx = build_context(backbone, layer, site, images, text, tokens, cfg.temperature)
    feats, density = sae_family(sae, ctx)
    # (family, its units to score or None for all, context)
    families = [(feats, _pick(sae.cfg.d_sae, features, max_features, seed), ctx)]
    if neurons:
        families.append((neuron_family(ctx), None, ctx))
    if mlp_neurons:
        mctx = build_context(backbone, layer, "mlp_hidden", images, text, tokens, cfg.temperature)
        families.append((neuron_family(mctx, "mlp_neuron"), None, mctx))
    if random_control:
        families.append((random_family(feats, random_control, seed), None, ctx))

    rows, summary_kinds, strengths_used = [], {}, {}
    for fam, ids, fctx in families:
        ids = torch.arange(fam.n_units) if ids is None else ids
        strengths = strengths_for(cfg, backbone, fam)
        strengths_used[fam.name] = strengths
        scores = score_family(fctx, fam, ids, strengths, cfg,
                              (lambda d, t, n=fam.name: progress(n, d, t)) if progress else None)
        steerable = scores.S > cfg.threshold
        best = scores.dp.argmax(-1)
        frame = pd.DataFrame({
            "kind": fam.name, "index": ids.numpy(), "target": [words[i] for i in best.tolist()],
            "S": scores.S.numpy(), "max_dp": scores.dp.max(-1).values.numpy(), "steerable": steerable.numpy(),
            "density": density[ids].numpy() if fam.name == "feature" else float("nan"),
        })
        top = scores.S.argsort(descending=True)[: cfg.curve_top]
        if len(top):
            dp = steer_batched(fctx, fam.directions(ids[top]), fam.current(ids[top]), fam.scale, strengths,
                               cfg.max_batch, cfg.precision)
            S_curve = (dp**2).sum(-1)  # [m, A]: S at every strength
            for a, alpha in enumerate(cfg.alphas):
                frame.loc[top.numpy(), f"S_alpha_{alpha:g}"] = S_curve[:, a].numpy()
        rows.append(frame)
        summary_kinds[fam.name] = {"scored": len(ids), "steerable": int(steerable.sum()),
                                   "fraction": float(steerable.float().mean()) if len(ids) else 0.0,
                                   "distinct_targets": int(frame.loc[frame.steerable, "target"].nunique())}
    units = pd.concat(rows, ignore_index=True).sort_values(["kind", "S"], ascending=[True, False])
    summary = {"model": backbone.name, "layer": layer, "site": site, "sae_tokens": sae.cfg.tokens,
               "steer_tokens": tokens, "d_sae": sae.cfg.d_sae, "n_images": len(images), "vocabulary": len(words),
               "threshold": cfg.threshold, "temperature": cfg.temperature, "alphas": list(cfg.alphas),
               "strength_unit": cfg.strength_unit, "strengths": strengths_used, "kinds": summary_kinds,
               "path": str(path)}
    return SteerReport(units.reset_index(drop=True), summary, strengths_used.get("feature", []))


def _pick(n: int, features: Sequence[int] | None, max_features: int | None, seed: int) -> Tensor:
    if features is not None:
        idx = torch.tensor(list(features), dtype=torch.long)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise SaeVitError(f"--features must list indices in 0..{n - 1}.")
        return idx
    if max_features is not None and max_features < n:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_features].sort().values
    return torch.arange(n)


def results_stem(cfg: SAEConfig) -> str:
    """The file name, without suffix, of steer-score's results for an SAE (inspect reads them too)."""
    return f"steer_layer{cfg.layer}_{cfg.site}_{cfg.tokens}"


def plot_curves(units, path) -> object:
    """PNG of S against the strength for the units that have a curve; None without matplotlib."""
    from sae_vit.analysis.common import plot

    cols = [c for c in units.columns if c.startswith("S_alpha_")]
    xs = [float(c[len("S_alpha_"):]) for c in cols]
    with_curve = units[units[cols].notna().all(axis=1)] if cols else units.iloc[:0]

    styles = {"feature": ("tab:blue", "-"), "neuron": ("tab:red", "--"), "mlp_neuron": ("tab:purple", "-."),
              "random": ("tab:grey", ":")}

    def draw(ax):
        for kind, group in with_curve.groupby("kind", sort=False):
            colour, line = styles.get(kind, ("black", "-"))
            for n, (_, row) in enumerate(group.iterrows()):
                ax.plot(xs, [row[c] for c in cols], color=colour, linestyle=line, marker="o", markersize=3,
                        alpha=0.8, label=f"{kind}s (top {len(group)} by S)" if n == 0 else None)
        ax.axhline(0.10, color="black", linestyle="--", linewidth=0.8, label="steerable threshold 0.10")
        ax.set(xlabel="steering strength alpha (see the summary for s)", ylabel="steerability S = Σ Δp²")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))

    return plot(path, draw, figsize=(8, 4))


def score_saes(saes: list[str | os.PathLike] | None = None, model: str | None = None,
               weights: str | os.PathLike | None = None, vocab: str | os.PathLike | None = None,
               text_embeddings: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
               world: str | None = None, n_images: int = 64, config=None, features: list[int] | None = None,
               max_features: int | None = 256, neurons: bool = True, mlp_neurons: bool = False,
               random_control: int = 0, seed: int = 0, out: str | os.PathLike | None = None,
               overwrite: bool = False, device: str = "auto", progress: Callable | None = None) -> list:
    """Score every SAE in ``saes`` (default: the working folder's); write ``steer_<layer>_<tokens>.csv`` per
    SAE, ``steer_summary.csv`` and a PNG of S against strength under ``out``. Returns the reports."""
    import json

    import pandas as pd

    from sae_vit.analysis.common import concept_vocabulary, load_model, load_probe_images
    from sae_vit.core.atomic import write_csv, write_json
    from sae_vit.core.defaults import DEFAULT_MODEL, workdir
    from sae_vit.core.dist import resolve_device
    from sae_vit.io.resolve import find_saes

    device = resolve_device(device)
    out = Path(out) if out is not None else workdir() / "steer"
    loaded = [(p, SAE.load(p, device)) for p in find_saes(saes)]
    for _path, sae in loaded:  # before any work or any folder is made
        _pick(sae.cfg.d_sae, features, max_features, seed)
    bundle = load_model(model or loaded[0][1].cfg.model or DEFAULT_MODEL, weights, text_embeddings, device)
    backbone = bundle.backbone
    words, text = concept_vocabulary(bundle, vocab)
    probe = load_probe_images(backbone, images, world, n_images, seed=seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    reports, summary_rows = [], []
    for path, sae in loaded:
        report = steer_score(sae, backbone, probe, words, text.to(device), config, features, max_features, neurons,
                       mlp_neurons, random_control, seed, str(path), progress)
        stem = results_stem(sae.cfg)
        write_csv(out / f"{stem}.csv", report.units)
        write_json(out / f"{stem}.json", report.summary)
        plot_curves(report.units, out / f"{stem}.png")
        for kind, k in report.summary["kinds"].items():
            summary_rows.append({"layer": sae.cfg.layer, "site": sae.cfg.site, "tokens": sae.cfg.tokens, "kind": kind,
                                 **k, "strengths": json.dumps(report.summary["strengths"][kind]), "sae": str(path)})
        reports.append(report)
    write_csv(out / "steer_summary.csv", pd.DataFrame(summary_rows))
    return reports
