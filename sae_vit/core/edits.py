"""Edits of a hook's activations, for :func:`sae_vit.core.backbone.splice`: the one place an edit is written.

Each function returns ``edit(x) -> x'`` for activations ``x`` [..., d]. The SAE edits (:func:`zero`,
:func:`clamp`, :func:`add`) change latents and go through :meth:`SAE.edit <sae_vit.core.sae.SAE.edit>`, which
decodes only the change, ``x' = x + W_decᵀ (f' − f)`` (de-normalised per token), so the SAE's reconstruction
error stays in ``x'`` and an edit that changes no latent returns ``x`` exactly. :func:`project` acts on ``x``
itself (the probe-direction baselines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sae_vit.core.sae import SAE

Edit = Callable[[Tensor], Tensor]


def latent_edit(sae: SAE, fn: Callable[[Tensor], Tensor]) -> Edit:
    """The edit that maps the latents ``f`` [..., d_sae] to ``fn(f)`` and keeps the reconstruction error."""
    return lambda x: sae.edit(x, fn)


def zero(sae: SAE, features: Sequence[int] | Tensor) -> Edit:
    """Set ``features`` to 0 at every token (suppression); no features is the identity."""
    idx = torch.as_tensor(features, dtype=torch.long)

    def fn(f: Tensor) -> Tensor:
        if idx.numel() == 0:
            return f
        f = f.clone()
        f[..., idx.to(f.device)] = 0
        return f

    return latent_edit(sae, fn)


def clamp(sae: SAE, features: Sequence[int] | Tensor | int, value: float | Tensor) -> Edit:
    """Set ``features`` to ``value`` at every token, whatever they were (the steering edit)."""
    idx = torch.as_tensor(features, dtype=torch.long)

    def fn(f: Tensor) -> Tensor:
        f = f.clone()
        f[..., idx.to(f.device)] = value
        return f

    return latent_edit(sae, fn)


def add(sae: SAE, amount: Tensor) -> Edit:
    """Add ``amount`` (broadcast against the latents [..., d_sae]) to the latents at every token."""
    return latent_edit(sae, lambda f: f + amount)


def project(direction: Tensor, value: float | Tensor = 0.0) -> Edit:
    """Set the component of ``x`` along the unit ``direction`` [d] to ``value`` at every token (0 removes it)."""
    return lambda x: x - ((x @ direction) - value)[..., None] * direction
