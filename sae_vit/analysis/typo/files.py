"""Text-feature files (the chosen features of an SAE, as JSON beside it) and the shipped assets: the SAE and
feature file used when none is given, and how ``--make-assets`` builds them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae_vit.analysis.typo.attacks import HELD_OUT, SAE_TRAINING_ATTACKS, AttackConfig, render_attack
from sae_vit.analysis.typo.defences import SaeDefence
from sae_vit.core.atomic import write_json
from sae_vit.core.backbone import file_sha256
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE

FEATURES_FORMAT = "sae_vit_typo_features"
FEATURES_VERSION = 1
ASSET_SAE = "typo_sae.safetensors"
ASSET_FEATURES = "typo_features.json"


def save_features(path: str | os.PathLike, sae_path: str | os.PathLike, sae: SAE, features: list[dict], n_selected: int,
                  discovery: dict, selection: dict | None = None, overwrite: bool = False) -> Path:
    """Write the chosen text-feature set as JSON beside the SAE (atomic; refuses to replace unless asked)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SaeVitError(f"{path} already exists; pass --overwrite to replace it or choose another --out.")
    c = sae.cfg
    return write_json(path, {
        "format": FEATURES_FORMAT, "version": FEATURES_VERSION,
        "sae": Path(sae_path).name if Path(sae_path).parent == path.parent else str(sae_path),
        "sae_sha256": file_sha256(sae_path)[:16],
        "model": c.model, "layer": c.layer, "site": c.site, "tokens": c.tokens, "n_selected": int(n_selected),
        "features": features, "discovery": discovery, "selection": selection or {},
    })


def load_features(path: str | os.PathLike, sae: SAE | None = None, sae_path: str | os.PathLike | None = None) -> dict:
    """Read a feature file; checks it belongs to ``sae`` (layer, width) and, when given, ``sae_path``'s hash."""
    p = Path(path)
    if not p.is_file():
        raise SaeVitError(f"Feature file {p} does not exist; make one with `saevit defend-typo --eval world --sae SAE`.")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaeVitError(f"{p} is not valid JSON; re-create it with `saevit defend-typo --eval world`.") from exc
    if obj.get("format") != FEATURES_FORMAT:
        raise SaeVitError(f"{p} is not a defend-typo feature file (format {obj.get('format')!r}); pass the JSON it wrote.")
    if sae is not None:
        if obj.get("layer") != sae.cfg.layer or any(f["index"] >= sae.cfg.d_sae for f in obj["features"]):
            raise SaeVitError(f"{p} was made for another SAE (layer {obj.get('layer')}); pass the SAE it names ({obj.get('sae')}).")
        if sae_path is not None and obj.get("sae_sha256") not in (None, file_sha256(sae_path)[:16]):
            raise SaeVitError(f"{p} was made for a different SAE file than {sae_path}; pass the SAE it names ({obj.get('sae')}).")
    obj["path"] = str(p)
    return obj


def asset_dir() -> Path:
    """The package's ``assets`` folder, which holds the shipped SAE and feature file."""
    return Path(__file__).parents[2] / "assets"


def default_pair() -> tuple[Path, Path]:
    """The SAE and feature file used by default: ``<workdir>/typo``'s if both exist, else the shipped ones."""
    from sae_vit.core.defaults import workdir

    for root in (workdir() / "typo", asset_dir()):
        if (root / ASSET_SAE).is_file() and (root / ASSET_FEATURES).is_file():
            return root / ASSET_SAE, root / ASSET_FEATURES
    raise SaeVitError(f"No text-feature SAE in {workdir() / 'typo'} or the package assets; pass --sae and "
                      "--features, or run `saevit defend-typo --make-assets`.")


def resolve_features(sae_path: str | os.PathLike | None, features_path: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """(SAE path, feature-file path or None) from the user's options, filling in defaults."""
    if sae_path is None and features_path is None:
        return default_pair()
    if sae_path is None:  # the SAE the feature file names, relative to the file's folder
        return Path(features_path).parent / load_features(features_path)["sae"], Path(features_path)
    if features_path is None:
        beside = Path(sae_path).with_name(ASSET_FEATURES)
        if beside.is_file():
            return Path(sae_path), beside
        guess = features_path_for(sae_path)
        return Path(sae_path), guess if guess.is_file() else None
    return Path(sae_path), Path(features_path)


def features_path_for(sae_path: str | os.PathLike) -> Path:
    """Where a feature file for ``sae_path`` is written by default: ``<sae>.typo.json`` beside it."""
    return Path(str(sae_path)).with_suffix(".typo.json")


def defence_from_files(sae_path: str | os.PathLike, features_path: str | os.PathLike | None, n: int | None,
                       device: str = "cpu") -> tuple[SaeDefence, dict]:
    """An :class:`SaeDefence` from an SAE and its feature file (``n`` overrides the file's chosen N)."""
    sae = SAE.load(sae_path, device)
    if features_path is None:
        raise SaeVitError(f"No feature file for {sae_path}; pass --features FILE or make one with "
                          f"`saevit defend-typo --eval world --sae {sae_path}`.")
    feats = load_features(features_path, sae, sae_path if not str(sae_path).startswith("hf://") else None)
    k = feats["n_selected"] if n is None else n
    if k < 0:
        raise SaeVitError(f"--n must be zero or more (got {k}).")
    return SaeDefence(sae, [f["index"] for f in feats["features"][:k]]), feats


@dataclass(frozen=True)
class AssetConfig:
    """How ``saevit defend-typo --make-assets`` builds the shipped SAE and feature file for the toy CLIP."""

    layers: tuple[int, ...] = (2, 4, 6, 8)
    """Blocks to train SAEs on; the defence picks one on the validation split."""
    n_images: int = 3000
    """Training images (the toy CLIP's training distribution, plus our attack recipe on a third)."""
    expansion: int = 8
    """d_sae / d_model (128 → 1,024 latents: about 1 MB per SAE)."""
    k: int = 16
    """TopK active latents per token."""
    n_tokens: int = 1_000_000
    """Training tokens per SAE."""
    tokens: str = "all"
    seed: int = 0


def sae_training_images(n: int, seed: int = 0, attacks: tuple[AttackConfig, ...] = SAE_TRAINING_ATTACKS):
    """An :class:`~sae_vit.data.ImageSource` of ``n`` world images for SAE training, disjoint from every task
    split: the toy CLIP's training distribution (a third with written words, all in black or white ink here),
    and on another third one of ``attacks`` (drawn per image). The default ``attacks`` and the black-and-white
    ink keep the held-out rendering family (:data:`~sae_vit.analysis.typo.attacks.HELD_OUT`) out: none of its
    colours, its position band or its stroke width."""
    from sae_vit.io.images import ImageItem, ImageSource
    from sae_vit.world import scenes as world

    scenes = world.training_scenes(n, seed + 991, world.TrainingMix(p_colour_ink=0.0))

    def loader(i, scene):
        def load():
            image = world.render(scene)
            if i % 3 == 0 and scene.word is None and scene.shape is not None:
                rng = np.random.default_rng([seed, i, 0x5AE])
                word = world.WRITABLE[int(rng.integers(len(world.WRITABLE)))]
                image = render_attack(image, word, rng, attacks[int(rng.integers(len(attacks)))])[0]
            return image
        return load

    # the ids name the recipe, so a cache of another recipe is never taken for this one (see make_typo_assets)
    return ImageSource("world", f"typo-sae-train/n={n}/seed={seed}/without={HELD_OUT}",
                       [ImageItem(id=f"typo:{i}:without={HELD_OUT}", load=loader(i, s)) for i, s in enumerate(scenes)])
