"""Defaults shared by every command. Imports nothing heavy, so ``saevit --help`` stays instant.

The working folder is where ``saevit cache`` writes and every later command reads when given no paths,
so that ``saevit cache`` then ``saevit train --layer 8 --tokens cls`` work verbatim.
"""

import os
from pathlib import Path

#: The built-in toy CLIP (weights in ``sae_vit/assets``); ``SAEVIT_MODEL`` switches every default.
DEFAULT_MODEL = os.environ.get("SAEVIT_MODEL", "toy")

#: The paper's base model in timm (weights from the Hugging Face Hub).
REAL_CLIP = "vit_base_patch32_clip_224.datacompxl"


def workdir() -> Path:
    """The default working folder: ``$SAEVIT_HOME`` or ``./saevit_runs``."""
    return Path(os.environ.get("SAEVIT_HOME", "saevit_runs"))


def default_cache_dir() -> Path:
    """Where ``saevit cache`` writes by default and ``train`` / ``sparsity`` read by default."""
    return workdir() / "cache"


def default_sae_dir() -> Path:
    """Where ``saevit train`` writes checkpoints by default: ``layer_{L}/{tokens}/sae.safetensors``."""
    return workdir() / "saes"


def default_sae_path(layer: int, tokens: str, site: str = "resid_post", root: Path | None = None) -> Path:
    """The checkpoint path of one SAE in the Hub layout of DESIGN.md, under ``root`` (default: the
    working folder's ``saes``)."""
    sub = f"layer_{layer}/{tokens}" if site == "resid_post" else f"layer_{layer}/{site}/{tokens}"
    return (root if root is not None else default_sae_dir()) / sub / "sae.safetensors"


#: The layers ``saevit cache`` stores by default on a 12-block model: early, middle and late, including 8
#: (the layer the quick-start trains) and the last block.
DEFAULT_LAYERS = (0, 2, 4, 6, 8, 10, 11)


def default_layers(n_layers: int) -> list[int]:
    """The :data:`DEFAULT_LAYERS` a model of ``n_layers`` blocks has (every block when it has none of them)."""
    return [layer for layer in DEFAULT_LAYERS if layer < n_layers] or list(range(n_layers))
