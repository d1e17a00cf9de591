"""Typographic attacks and their defence by suppressing text-reading SAE features (PAPER.md §3).

Parts, each usable alone: the attack recipe and the image sets it makes (:mod:`.attacks`), the defences (the
SAE's and the baselines') and their zero-shot evaluation (:mod:`.defences`), the world protocol that discovers
text features and chooses the layer and N (:mod:`.protocol`), and feature files and the shipped assets
(:mod:`.files`).
"""

from sae_vit.analysis.common import ModelBundle, load_model
from sae_vit.analysis.typo.attacks import (
    AttackConfig,
    open_image,
    pseudo_word,
    render_attack,
    to_rgb,
    world_native_set,
    write_attacks,
)
from sae_vit.analysis.typo.defences import HeadDefence, SaeDefence, classify_image, embed_images, folder_eval
from sae_vit.analysis.typo.files import (
    ASSET_FEATURES,
    ASSET_SAE,
    AssetConfig,
    asset_dir,
    default_pair,
    defence_from_files,
    features_path_for,
    load_features,
    resolve_features,
    sae_training_images,
    save_features,
)
from sae_vit.analysis.typo.protocol import (
    EvalConfig,
    TypoReport,
    rank_text_features,
    run_world_eval,
    write_report_features,
)
from sae_vit.core.errors import SaeVitError

__all__ = [
    "ASSET_FEATURES", "ASSET_SAE", "AssetConfig", "AttackConfig", "EvalConfig", "HeadDefence", "ModelBundle",
    "SaeDefence", "SaeVitError", "TypoReport", "asset_dir", "classify_image", "default_pair",
    "defence_from_files", "embed_images", "features_path_for", "folder_eval", "load_features", "load_model",
    "open_image", "pseudo_word", "rank_text_features", "render_attack", "resolve_features", "run_world_eval",
    "sae_training_images", "save_features", "to_rgb", "world_native_set", "write_attacks",
    "write_report_features",
]
