"""What every steered pass shares: the options, the probe activations and the unsteered output, the batched
steered forward pass, the families of units (SAE features, neurons, random directions) and their strengths."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE

#: Norm of a layer-normalised ViT-B/32 token (√768): the unit of relative strengths.
REFERENCE_NORM = math.sqrt(768)

#: Default decision strength, in mean hooked-token norms (s* = DECIDE_AT × the mean norm of the tokens at the
#: hook, in the space where the unit pushes). Chosen from the measurement of the null edits against strength
#: on the toy CLIP (docs/steer.md, "Choosing the decision strength").
DECIDE_AT = 0.3


@dataclass
class SteerConfig:
    """How to score steerability; the sweep and the threshold are the paper's, the decision strength is not."""

    alphas: tuple[float, ...] = (-20, -5, 0, 5, 10, 20, 50, 150)
    """Steering strengths of the curves (the paper's sweep); see :attr:`strength_unit`."""
    threshold: float = 0.10
    """A unit is steerable when S = Σ Δp² exceeds this (and the null edits, see :attr:`decide_at`)."""
    decide_at: float | None = DECIDE_AT
    """Decision strength in mean hooked-token norms; None decides at the largest |α| of :attr:`alphas` (the
    paper's s = 150). Steerable ⇔ S(s*) > threshold and S(s*) > max(max over seeds of S_noise(s*), S_erase(s*))."""
    temperature: float = 100.0
    """Softmax temperature over the vocabulary (CLIP's logit scale)."""
    tokens: str = "sae"
    """Where to clamp: ``sae`` (the SAE's tokens), ``all``, ``patches`` or ``cls`` (the paper's variant)."""
    strength_unit: str = "auto"
    """``absolute`` (s = α, the paper's, for CLIP ViT-B/32), ``relative`` (s = α · r with r the mean norm of the
    hook's input tokens divided by √768, so α = 150 pushes as hard, relative to the activation scale, as the
    paper's s = 150 on layer-normalised ViT-B/32 tokens), or ``auto`` (absolute for 768-wide CLIP models,
    relative otherwise)."""
    live_only: bool = True
    """Sample features (``max_features``, or all) among those that fire on the probe tokens: a feature that never
    fires there detects nothing, so it cannot enter the steer–detect agreement."""
    null_seeds: int = 8
    """Independent draws of the noise null (its bar is the largest S over them)."""
    agree_top: int = 16
    """Steer–detect agreement: a unit's top-activating probe images (at most a quarter of the probe set)."""
    permutations: int = 10_000
    """Shuffles of the family labels in the agreement permutation test."""
    curve_top: int = 8
    """Units for which S is computed at every strength (for the curve plot); the others only at s*."""
    max_batch: int = 1024
    """Steered image passes per batched forward pass (lower it to save memory)."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` autocast for the steered passes."""


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
    groups: Tensor | None = None
    """[V] attribute index of each word: the softmax runs within each attribute (None: one flat softmax)."""

    def embeddings(self, resid: Tensor) -> Tensor:
        """Unit image embeddings [B, d_emb] from a (steered) ``resid`` [B, T, d]."""
        return F.normalize(self.backbone.forward_from(self.layer, resid).float(), dim=-1)

    def vocab_probabilities(self, emb: Tensor) -> Tensor:
        """softmax(temperature · ê · Tᵀ) [B, V] for unit embeddings ``emb`` [B, d_emb], within each attribute
        of :attr:`groups` (each attribute's probabilities sum to 1)."""
        logits = self.temperature * emb @ self.text.T
        p = torch.empty_like(logits)
        for cols in attribute_columns(self.groups, logits.shape[-1]):
            p[:, cols] = torch.softmax(logits[:, cols], dim=-1)
        return p

    def site_to_resid(self, delta: Tensor) -> Tensor:
        """Map a change at the hook [..., d_site] to the change of resid_post [..., d_model]."""
        if self.site == "mlp_hidden":
            return delta @ self.backbone.model.blocks[self.layer].mlp.fc2.weight.T
        return delta  # resid_post, and mlp_out (added to the residual as is)

    def mean_dp(self, delta: Tensor, precision: str = "fp32") -> Tensor:
        """Δp [c, V] (mean over probe images) for ``c`` edits ``delta`` [c, N, T_sel, d_site] at the hook."""
        c, N = delta.shape[0], self.resid.shape[0]
        with torch.no_grad(), torch.autocast(self.resid.device.type, dtype=torch.bfloat16,
                                             enabled=precision == "bf16"):
            resid = self.resid.repeat(c, 1, 1, 1)  # [c, N, T, d]
            resid[:, :, self.positions] += self.site_to_resid(delta).to(resid.dtype)
            p = self.vocab_probabilities(self.embeddings(resid.flatten(0, 1))).view(c, N, -1)
            return (p - self.p0[None]).mean(dim=1)


def steerability(dp: Tensor, groups: Tensor | None) -> Tensor:
    """S from Δp [..., V]: Σ_v Δp_v² over a flat vocabulary; with attributes, the largest of the per-attribute
    sums (each attribute is its own distribution, so S stays on the paper's scale: at most 2)."""
    return torch.stack([(dp[..., cols] ** 2).sum(-1) for cols in attribute_columns(groups, dp.shape[-1])]).amax(0)


def attribute_columns(groups: Tensor | None, n_words: int) -> list[Tensor]:
    """The vocabulary's column indices of each attribute of ``groups`` [V] (one group of all ``n_words`` columns
    when None: a flat vocabulary)."""
    if groups is None:
        return [torch.arange(n_words)]
    return [(groups == g).nonzero().squeeze(1) for g in groups.unique().tolist()]


def build_context(backbone: Backbone, layer: int, site: str, images: Tensor, text: Tensor, tokens: str,
                  temperature: float, groups: Tensor | None = None) -> SteerContext:
    """Run the probe images once up to ``layer`` and once fully (the unsteered reference)."""
    if len(images) == 0:
        raise SaeVitError("The probe image set is empty; pass --images with images or use --world.")
    positions = backbone.token_positions(tokens)
    with torch.no_grad():
        resid = backbone.capture(images, [layer], "resid_post", "all")[layer]
        if backbone.n_prefix > 1:  # registers: capture(..., "all") drops them; steer needs the full sequence
            raise SaeVitError(f"{backbone.name} has register tokens; steer-score supports ViTs without registers.")
        site_acts = resid[:, positions] if site == "resid_post" else backbone.capture(images, [layer], site, tokens)[layer]
        ctx = SteerContext(backbone, layer, site, resid, site_acts, positions, text.float(), None, temperature,
                           groups=groups)
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
    for start in range(0, len(pairs), per):
        j, a = torch.tensor(pairs[start:start + per]).T  # [c] unit and strength indices
        amount = (s[a][:, None, None] - current[j])[..., None] * scale[None]  # [c, N, T_sel, 1]
        out[j, a] = ctx.mean_dp(amount * directions[j][:, None, None, :], precision)
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
    """Mean norm of the hook's input in the space where clamping happens (the token norm of its strengths)."""
    readout: Callable[[Tensor], Tensor] | None = None
    """What units ``idx`` read at each probe token [m, N, T_sel] (steer–detect agreement); None: ``current``."""
    inputs: Tensor | None = None
    """[N, T_sel, d] the hook's input in the family's space (the random control projects it)."""

    def activations(self, idx: Tensor) -> Tensor:
        """Per-image activation [m, N]: the unit's reading averaged over the hooked tokens."""
        return (self.readout or self.current)(idx).float().mean(-1)


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
                       lambda idx: f[..., idx].permute(2, 0, 1), scale, xn.norm(dim=-1).mean().item(),
                       inputs=xn.detach()),
            (f > 0).float().mean(dim=(0, 1)))


def neuron_family(ctx: SteerContext, name: str = "neuron") -> UnitFamily:
    """The hook's basis dimensions (the paper's neuron baseline): each set directly to s at every token."""
    x = ctx.site_acts
    eye = torch.eye(x.shape[-1])
    return UnitFamily(name, x.shape[-1], lambda idx: eye[idx], lambda idx: x[..., idx].permute(2, 0, 1),
                      torch.ones_like(x[..., :1]), x.norm(dim=-1).mean().item())


def random_family(features: UnitFamily, n: int, seed: int = 0) -> UnitFamily:
    """Control: random unit directions (the decoder rows' norm), added in the SAE's space with strength s; a
    direction "detects" by its projection of the SAE's input."""
    d = features.directions(torch.tensor([0])).shape[-1]
    dirs = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)
    zeros_shape = features.current(torch.tensor([0])).shape[1:]
    inputs = features.inputs
    readout = None if inputs is None else (lambda idx: (inputs.float() @ dirs[idx].T).permute(2, 0, 1))
    return UnitFamily("random", n, lambda idx: dirs[idx], lambda idx: torch.zeros(len(idx), *zeros_shape),
                      features.scale, features.unit_norm, readout)


def strength_unit(cfg: SteerConfig, backbone: Backbone) -> str:
    """``absolute`` or ``relative`` (see :attr:`SteerConfig.strength_unit`)."""
    unit = cfg.strength_unit
    if unit == "auto":
        unit = "absolute" if ("clip" in backbone.name and backbone.d_model == 768) else "relative"
    if unit not in ("absolute", "relative"):
        raise SaeVitError(f"Unknown strength unit {cfg.strength_unit!r}; use auto, absolute or relative.")
    return unit


def alpha_scale(cfg: SteerConfig, backbone: Backbone, family: UnitFamily) -> float:
    """s / α for this family: 1 (absolute) or its mean token norm / √768 (relative)."""
    return 1.0 if strength_unit(cfg, backbone) == "absolute" else family.unit_norm / REFERENCE_NORM


def strengths_for(cfg: SteerConfig, backbone: Backbone, family: UnitFamily) -> list[float]:
    """The strengths s of the sweep :attr:`SteerConfig.alphas` actually applied."""
    r = alpha_scale(cfg, backbone, family)
    return [float(a) * r for a in cfg.alphas]


def decision_strength(cfg: SteerConfig, backbone: Backbone, family: UnitFamily) -> dict:
    """The decision strength of a family as ``{"alpha", "s", "token_norms"}`` (s / the family's token norm)."""
    r = alpha_scale(cfg, backbone, family)
    if cfg.decide_at is None:
        if not cfg.alphas:
            raise SaeVitError("--alphas is empty; give at least one strength.")
        alpha = float(max(cfg.alphas, key=abs))
        s = alpha * r
    else:
        s = float(cfg.decide_at) * family.unit_norm
        alpha = s / r
    return {"alpha": alpha, "s": s, "token_norms": s / family.unit_norm if family.unit_norm else float("nan")}


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
