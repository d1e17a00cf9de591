"""The paper's released SAEs by name: ``clip-b32/resid_post/layer_8`` -> ``hf://Prisma-Multimodal/...``.

The SAEs of Joseph et al. (2025) were released by ViT-Prisma on the Hugging Face Hub, one repo per SAE, named
``Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-{L}-hook_{site}-l1-{c}``: ReLU + L1
("vanilla"), x64 (768 -> 49,152 latents), trained on all 50 tokens (CLS + 49 patches) of CLIP ViT-B/32
(LAION DataComp.XL-s13B-b90K; timm ``vit_base_patch32_clip_224.datacompxl``), with per-token layer norm.
Each repo holds ``config.json`` and one weights file; :func:`sae_vit.io.hub.resolve_hf_uri` converts it once.

Names (any of them works wherever an SAE is taken: ``SAE.from_pretrained``, ``load_sae``, every command):

- ``clip-b32/{site}/layer_{L}``: the SAE the authors recommend for that layer and site (the "CLIP Vanilla SAEs
  (All Patches)" table of the ViT-Prisma README), 12 layers x ``resid_post`` / ``mlp_out``;
- ``clip-b32/{site}/layer_{L}/l1-{c}``: a given L1 coefficient, spelled as in the repo name (``1e-05``,
  ``5e-05``, ``8e-05``, ``0.0001``).

Only repos whose exact names were confirmed are registered. The recommended 24 are the ViT-Prisma README
table (its links spell the owner ``prisma-multimodal``; the Hub's own pages spell it ``Prisma-Multimodal``,
which is what the Hub cache folder is named after). The other coefficients are those whose Hub model page,
model card or repo listing was seen. The model cards describe a sweep over {1e-05, 5e-05, 8e-05, 0.0001}; repos
of it not listed here may exist, but their names could not be confirmed, so they are not registered (pass
their ``hf://`` URI directly). Also not registered: the CLS-only TopK (k = 64), CLS-only and patches-only
vanilla families and the CelebA / Waterbirds fine-tunes (other layouts or unconfirmed names; see docs/hub.md).

``l0`` and ``explained_variance`` are the authors' reported numbers (README table for the recommended SAEs,
the model card otherwise; ``None`` where neither was seen): a reference for ``saevit sparsity`` on real CLIP.
Nothing here imports torch.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from sae_vit.core.defaults import REAL_CLIP
from sae_vit.core.errors import SaeVitError

OWNER = "Prisma-Multimodal"
PREFIX = "clip-b32/"
D_IN = 768
EXPANSION = 64
SITES = ("resid_post", "mlp_out")

#: (site, layer) -> (L1 coefficient, reported mean L0, reported % explained variance): the README's table.
_RECOMMENDED: dict[tuple[str, int], tuple[float, float, float]] = {
    ("mlp_out", 0): (1e-05, 604.44, 98.7), ("resid_post", 0): (1e-05, 1110.9, 98.6),
    ("mlp_out", 1): (1e-05, 1476.8, 98.4), ("resid_post", 1): (1e-05, 1508.4, 98.3),
    ("mlp_out", 2): (1e-05, 1799.7, 98.0), ("resid_post", 2): (5e-05, 717.84, 90.6),
    ("mlp_out", 3): (1e-05, 1893.4, 98.1), ("resid_post", 3): (1e-05, 2053.9, 98.1),
    ("mlp_out", 4): (1e-05, 1901.2, 98.1), ("resid_post", 4): (1e-05, 2068.3, 98.0),
    ("mlp_out", 5): (1e-05, 1761.5, 98.2), ("resid_post", 5): (1e-05, 1953.8, 98.1),
    ("mlp_out", 6): (1e-05, 1598.0, 98.3), ("resid_post", 6): (1e-05, 1717.5, 98.2),
    ("mlp_out", 7): (1e-05, 1535.3, 98.2), ("resid_post", 7): (1e-05, 1688.4, 98.2),
    ("mlp_out", 8): (1e-05, 1074.5, 97.8), ("resid_post", 8): (1e-05, 1570.8, 98.2),
    ("mlp_out", 9): (1e-05, 856.68, 97.6), ("resid_post", 9): (1e-05, 1533.5, 98.2),
    ("mlp_out", 10): (1e-05, 788.49, 98.1), ("resid_post", 10): (1e-05, 1292.6, 98.4),
    ("mlp_out", 11): (5e-05, 748.14, 89.7), ("resid_post", 11): (1e-05, 1405.0, 98.4),
}

#: Further coefficients whose repos were seen on the Hub: (site, layer, L1) -> (L0, % explained variance) from the
#: model card, or None where only the repo's page or listing entry was seen.
_OTHERS: dict[tuple[str, int, float], tuple[float, float] | None] = {
    ("resid_post", 0, 5e-05): (687.79, 92.24), ("resid_post", 1, 5e-05): None,
    ("resid_post", 3, 0.0001): (292.96, 81.22), ("resid_post", 4, 0.0001): (285.60, 80.79),
    ("resid_post", 6, 8e-05): None, ("resid_post", 6, 0.0001): None,
    ("resid_post", 8, 5e-05): (511.42, 87.55), ("resid_post", 10, 0.0001): None,
    ("resid_post", 11, 5e-05): None, ("resid_post", 11, 8e-05): (287.60, 79.31),
    ("resid_post", 11, 0.0001): None,
    ("mlp_out", 0, 8e-05): (84.88, 90.99), ("mlp_out", 0, 0.0001): (57.31, 89.21),
    ("mlp_out", 1, 5e-05): (592.62, 90.68), ("mlp_out", 2, 0.0001): None,
    ("mlp_out", 9, 8e-05): (97.83, 84.41), ("mlp_out", 9, 0.0001): (69.74, 81.94),
    ("mlp_out", 10, 8e-05): (78.39, 84.97),
    ("mlp_out", 11, 1e-05): None, ("mlp_out", 11, 8e-05): None, ("mlp_out", 11, 0.0001): None,
}


class ReleasedSAE(NamedTuple):
    """One released SAE: where it lives on the Hub and what it is."""

    name: str
    """The registered name: ``clip-b32/{site}/layer_{L}`` for the recommended SAE, else ``.../l1-{c}``."""
    repo: str
    """Hub repo id (the SAE sits at the repo's root)."""
    layer: int
    """0-based block of CLIP ViT-B/32."""
    site: str
    """``resid_post`` or ``mlp_out``."""
    tokens: str
    """Token selection it was trained on (``all``: CLS + patches)."""
    architecture: str
    """``relu`` (ReLU with an L1 penalty)."""
    expansion: int
    """d_sae / d_in."""
    d_sae: int
    """Number of latents."""
    l1_coefficient: float | None
    """L1 penalty weight (``relu``)."""
    k: int | None
    """Active latents per token (``topk``); None here."""
    model: str
    """Backbone in sae-vit's names (timm)."""
    l0: float | None
    """Mean L0 per token the authors report; None where not seen."""
    explained_variance: float | None
    """% explained variance the authors report; None where not seen."""
    recommended: bool
    """The authors' recommended SAE for this layer and site (it also answers to the short name)."""

    @property
    def uri(self) -> str:
        """The ``hf://`` reference every loader resolves."""
        return f"hf://{self.repo}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this SAE answers to."""
        long = f"{PREFIX}{self.site}/layer_{self.layer}/l1-{self.l1_coefficient}"
        return (self.name, long) if self.recommended else (self.name,)


def _repo(site: str, layer: int, l1: float) -> str:
    # str(float) is the repos' own spelling: 1e-05, 5e-05, 8e-05, 0.0001.
    return f"{OWNER}/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-{layer}-hook_{site}-l1-{l1}"


def _entry(site: str, layer: int, l1: float, stats, recommended: bool) -> ReleasedSAE:
    name = f"{PREFIX}{site}/layer_{layer}" + ("" if recommended else f"/l1-{l1}")
    l0, ev = stats if stats is not None else (None, None)
    return ReleasedSAE(name, _repo(site, layer, l1), layer, site, "all", "relu", EXPANSION, D_IN * EXPANSION, l1,
                       None, REAL_CLIP, l0, ev, recommended)


def _build() -> dict[str, ReleasedSAE]:
    rows = [_entry(site, layer, l1, (l0, ev), True) for (site, layer), (l1, l0, ev) in _RECOMMENDED.items()]
    rows += [_entry(site, layer, l1, stats, False) for (site, layer, l1), stats in _OTHERS.items()]
    return {name: row for row in rows for name in row.names}


_REGISTRY = _build()


def list_released() -> list[ReleasedSAE]:
    """Every registered SAE once (short names for the recommended ones), by site, layer and L1 coefficient:
    the rows of ``saevit list --released``."""
    rows = {row.repo: row for row in _REGISTRY.values()}.values()
    return sorted(rows, key=lambda r: (SITES.index(r.site), r.layer, r.l1_coefficient or 0.0))


def is_released_name(ref: object) -> bool:
    """Whether ``ref`` (a string or path) is spelled like a registered name (``clip-b32/...``), registered or not."""
    return str(ref).startswith(PREFIX)


def get_released(name: str) -> ReleasedSAE:
    """The registered SAE called ``name``; an unknown ``clip-b32/...`` name is a one-line error naming the
    closest registered names."""
    row = _REGISTRY.get(name.strip("/"))
    if row is not None:
        return row
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise SaeVitError(f"{name!r} is not a registered released SAE; {hint}see `saevit list --released` "
                      "(sae_vit.list_released()) or pass its hf:// URI.")


def released_uri(name: str) -> str:
    """``hf://owner/repo`` of the registered SAE called ``name``."""
    return get_released(name).uri
