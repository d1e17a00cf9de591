"""Typographic attacks and their defence by suppressing text-reading SAE features (PAPER.md §3).

Parts, each usable alone: the attack recipe (:mod:`.attacks`), the image sets it makes (:mod:`.sets`), the
defences (:mod:`.defences`, the SAE's and the baselines'), zero-shot evaluation (:mod:`.evaluation`), the
discovery of text features (:mod:`.features`), the baselines' fitting (:mod:`.baselines`), feature files and
defaults (:mod:`.files`) and the world protocol that chooses the layer and N (:mod:`.protocol`).
"""

from sae_vit.analysis.common import ModelBundle, load_model
from sae_vit.analysis.typo.attacks import AttackConfig, open_image, pseudo_word, render_attack, to_rgb
from sae_vit.analysis.typo.defences import Defence, HeadDefence, ProbeDefence, PromptDefence, SaeDefence
from sae_vit.analysis.typo.evaluation import TypoMetrics, classify_image, embed_images, evaluate, folder_eval
from sae_vit.analysis.typo.features import discover_features, rank_text_features
from sae_vit.analysis.typo.files import (
    ASSET_FEATURES,
    ASSET_SAE,
    asset_dir,
    default_pair,
    defence_from_files,
    features_path_for,
    load_features,
    resolve_features,
    save_features,
)
from sae_vit.analysis.typo.protocol import EvalConfig, TypoReport, run_world_eval, write_report_features
from sae_vit.analysis.typo.sets import (
    AssetConfig,
    TypoSet,
    sae_training_images,
    world_native_set,
    write_attacks,
)
from sae_vit.core.errors import SaeVitError

__all__ = [
    "ASSET_FEATURES", "ASSET_SAE", "AssetConfig", "AttackConfig", "Defence", "EvalConfig", "HeadDefence",
    "ModelBundle", "ProbeDefence", "PromptDefence", "SaeDefence", "SaeVitError", "TypoMetrics", "TypoReport",
    "TypoSet", "asset_dir", "classify_image", "default_pair", "defence_from_files", "discover_features",
    "embed_images", "evaluate", "features_path_for", "folder_eval", "load_features", "load_model", "open_image",
    "pseudo_word", "rank_text_features", "render_attack", "resolve_features", "run_world_eval",
    "sae_training_images", "save_features", "to_rgb", "world_native_set", "write_attacks", "write_report_features",
]
