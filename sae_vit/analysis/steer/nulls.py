"""Null edits: pushes that carry no concept, scored like the units so that S can be read against them.

- ``null_noise``: every hooked token gets its own independent random direction of norm s (per image, per
  token; one draw per seed): a push of the units' norm in no particular direction.
- ``null_erase``: every hooked token moves toward the probe set's mean token at its position (the mean over the
  probe images: CLS toward the mean CLS, each patch toward the mean patch there) by min(s, its distance to
  it): a norm-matched partial erase of the image.
- ``null_erase_full``: every hooked token replaced by that mean token (strength-independent, for reference):
  the average image, which shows no concept.

Strengths are in mean hooked-token norms (s / the mean L2 norm of the tokens at the hook), the same unit as
the units' ``s_token_norms``. The rule (:func:`null_bar`): a unit is steerable at s* when S(s*) > threshold
and S(s*) > max(largest S_noise(s*) over the seeds, S_erase(s*)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.steer.context import SteerContext, steerability

NULL_KINDS: tuple[str, ...] = ("null_noise", "null_erase", "null_erase_full")


class NullScores(NamedTuple):
    """Δp and S of the null edits on one context."""

    token_norms: list[float]
    """[A] strengths in mean hooked-token norms (positive, sorted)."""
    noise_dp: Tensor
    """[seeds, A, V] Δp of the noise null, per seed and strength."""
    erase_dp: Tensor
    """[A, V] Δp of the norm-matched partial erase."""
    full_dp: Tensor
    """[V] Δp of the full erase (tokens replaced by the mean token)."""
    noise_S: Tensor
    """[seeds, A] S of the noise null."""
    erase_S: Tensor
    """[A] S of the partial erase."""
    full_S: float
    """S of the full erase."""
    full_token_norms: float = float("nan")
    """The full erase's mean displacement, in mean hooked-token norms (it is not norm-matched)."""

    def at(self, t: float) -> int:
        """Index of the strength ``t`` (token norms) in :attr:`token_norms`."""
        return min(range(len(self.token_norms)), key=lambda a: abs(self.token_norms[a] - t))


def null_grid(token_norms: Sequence[float]) -> list[float]:
    """The positive strengths at which the nulls are scored: |t| of every non-zero ``t`` (a random direction
    has no sign and an erase has no negative)."""
    return sorted({round(abs(float(t)), 6) for t in token_norms if t != 0})


def score_nulls(ctx: SteerContext, token_norms: Sequence[float], n_seeds: int = 8, seed: int = 0,
                max_batch: int = 1024, precision: str = "fp32") -> NullScores:
    """Score the three null edits at every strength of ``token_norms`` (see :func:`null_grid`) on ``ctx``'s
    probe images, tokens and vocabulary."""
    grid = null_grid(token_norms)
    x = ctx.site_acts.float()
    norm = x.norm(dim=-1).mean()
    to_mean = x.mean(dim=0, keepdim=True) - x  # [N, T_sel, d]: toward the mean token at each position
    dist = to_mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    noise = [F.normalize(torch.randn(x.shape, generator=gen), dim=-1) for _ in range(n_seeds)]

    def edit(i: int) -> Tensor:
        """Edit ``i``: the full erase, then per strength the partial erase and one noise push per seed (made
        when its batch runs, so that only one batch of edits is ever held)."""
        if i == 0:
            return to_mean
        a, j = divmod(i - 1, 1 + n_seeds)
        s = grid[a] * norm
        return to_mean * (s / dist).clamp(max=1.0) if j == 0 else s * noise[j - 1]

    n_edits, per = 1 + len(grid) * (1 + n_seeds), max(1, max_batch // x.shape[0])
    dp = torch.cat([ctx.mean_dp(torch.stack([edit(i) for i in range(i0, min(i0 + per, n_edits))]).to(x.device),
                                precision) for i0 in range(0, n_edits, per)])  # [1 + A (1 + seeds), V]
    full_dp, rest = dp[0], dp[1:].view(len(grid), 1 + n_seeds, -1)
    erase_dp, noise_dp = rest[:, 0], rest[:, 1:].transpose(0, 1)
    return NullScores(grid, noise_dp, erase_dp, full_dp, steerability(noise_dp, ctx.groups),
                      steerability(erase_dp, ctx.groups), float(steerability(full_dp, ctx.groups)),
                      float(dist.mean() / norm))


def null_bar(nulls: NullScores, t: float) -> float:
    """What a unit's S must beat at strength ``t`` (token norms): max(largest S_noise over the seeds, S_erase)."""
    a = nulls.at(t)
    return max(float(nulls.noise_S[:, a].max()) if nulls.noise_S.numel() else 0.0, float(nulls.erase_S[a]))


def steerable_mask(S: Tensor, threshold: float, bar: float) -> Tensor:
    """The rule: S > threshold and S > the nulls' bar (:func:`null_bar`) at the decision strength."""
    return (S > threshold) & (S > bar)


def null_rows(nulls: NullScores, t: float, words: Sequence[str], attributes: Sequence[str] | None,
              threshold: float, curve: Sequence[tuple[str, float]] = ()) -> list[dict]:
    """One row per null at strength ``t`` for the units table: kind, index (the noise seed), S, target, max_dp
    and the fixed-threshold verdict (``steerable``: S > threshold), which is how a null is judged; plus S at
    each ``(column, token norms)`` of ``curve`` (0 at strength 0)."""
    a = nulls.at(t)

    def curve_of(kind: str, index: int) -> dict:
        def S(tn: float) -> float:
            if kind == "null_erase_full":
                return nulls.full_S
            if tn == 0:
                return 0.0
            b = nulls.at(abs(tn))
            return float(nulls.noise_S[index, b] if kind == "null_noise" else nulls.erase_S[b])
        return {col: S(tn) for col, tn in curve}

    rows = []
    cases = [("null_noise", k, nulls.noise_dp[k, a], nulls.noise_S[k, a]) for k in range(nulls.noise_dp.shape[0])]
    cases += [("null_erase", 0, nulls.erase_dp[a], nulls.erase_S[a]), ("null_erase_full", 0, nulls.full_dp, nulls.full_S)]
    for kind, index, dp, S in cases:
        S = float(S)
        best = int(dp.argmax())
        rows.append({"kind": kind, "index": index, "target": words[best],
                     "target_attribute": attributes[best] if attributes else "", "S": S,
                     "max_dp": float(dp.max()), "steerable": S > threshold, "steerable_threshold": S > threshold,
                     "s_token_norms": nulls.full_token_norms if kind == "null_erase_full" else nulls.token_norms[a],
                     **curve_of(kind, index)})
    return rows


def null_summary(nulls: NullScores, t: float, threshold: float) -> dict:
    """The nulls at ``t`` for the JSON summary: S (the noise's largest and median over seeds), the fixed-threshold
    verdict, the bar a unit must beat, and S of every null at every strength (the curve)."""
    a = nulls.at(t)
    noise = nulls.noise_S[:, a]
    entries = {"null_noise": float(noise.max()), "null_erase": float(nulls.erase_S[a]),
               "null_erase_full": nulls.full_S}
    return {
        **{k: {"S": v, "steerable": v > threshold} for k, v in entries.items()},
        "null_noise_median": float(noise.median()), "null_noise_seeds": int(len(noise)),
        "null_erase_full_token_norms": nulls.full_token_norms, "bar": null_bar(nulls, t),
        "curve": {"token_norms": nulls.token_norms, "null_noise_max": nulls.noise_S.amax(0).tolist(),
                  "null_erase": nulls.erase_S.tolist()},
    }

