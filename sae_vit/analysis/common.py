"""What every analysis loads the same way: probe images, the text head with its concept vocabulary.

Written once here so that steer-score, inspect, suppress and defend-typo agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.world import scenes as world
from sae_vit.world.sources import open_source


def load_probe_images(backbone, images: str | os.PathLike | None = None, world: str | None = None,
                      n_images: int = 64, seed: int = 1):
    """Preprocessed probe images [N, 3, H, W] from a folder / CSV, or the synthetic world (test split)."""
    import torch

    source = open_source(images, world, n=n_images, seed=seed, split="val")
    tensors = []
    for item in source.items[:n_images]:
        try:
            tensors.append(backbone.transform(item.open()))
        except (OSError, ValueError, SyntaxError):
            continue
    if not tensors:
        raise SaeVitError(f"No readable probe images in {source.location}; pass --images with images.")
    return torch.stack(tensors).to(backbone.device)


def text_head_and_vocabulary(backbone, vocab: str | os.PathLike | None = None,
                             text_embeddings: str | os.PathLike | None = None,
                             weights: str | os.PathLike | None = None):
    """``(words, unit embeddings [V, d])``: the names of an embeddings file (or ``vocab``'s words looked up in
    it), or a word list embedded by the model's text tower (toy, or open_clip for real CLIP), or by default the
    toy world's concept words."""
    from sae_vit.core.text import TextHead

    head = TextHead.for_model(backbone.name, weights, text_embeddings)
    if vocab is not None:
        words = read_words(vocab)
    elif head.names is not None:
        words = head.names
    else:
        words = default_vocabulary(backbone)
    check_vocabulary(words, head.vocab)
    return words, head.embed_concepts(words, templates=("{}",))


def read_words(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise SaeVitError(f"Vocabulary file {p} does not exist; pass a text file with one word per line.")
    words = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not words:
        raise SaeVitError(f"Vocabulary file {p} is empty; put one word per line.")
    return list(dict.fromkeys(words))


def default_vocabulary(backbone: Backbone) -> list[str]:
    """The world's concept words for the toy CLIP; real models need ``--vocab`` or ``--text-embeddings``."""
    if backbone.name != "toy":
        raise SaeVitError(f"No default vocabulary for {backbone.name}; pass --vocab words.txt or --text-embeddings FILE.")
    return list(world.OBJECTS) + list(world.COLOURS) + list(world.BACKGROUNDS) + list(world.SIZES)


def check_vocabulary(words: Sequence[str], known: set[str] | None) -> None:
    """Refuse words a word-level text tower (the toy's) cannot embed, instead of embedding <unk>."""
    if not words:
        raise SaeVitError("The vocabulary is empty; pass words with --vocab (one per line).")
    if known is not None:
        unknown = [w for w in words if any(part not in known for part in w.lower().split())]
        if unknown:
            raise SaeVitError(f"The toy text tower cannot embed {unknown[0]!r} (not a world word); use words from "
                              "sae_vit.world.VOCAB.")


def check_sae_matches(sae: SAE, backbone: Backbone, path) -> None:
    """An SAE trained on another model, hook or width cannot steer this backbone."""
    c = sae.cfg
    if c.model and c.model != backbone.name:
        raise SaeVitError(f"{path} was trained on model {c.model!r}, not {backbone.name!r}; pass --model {c.model} "
                          "or an SAE for this model.")
    if c.layer is None:
        raise SaeVitError(f"{path} does not record its layer; re-train or convert it with its layer.")
    backbone.check_layer(c.layer)
    if c.d_in != backbone.d_site(c.site):
        raise SaeVitError(f"{path} has d_in={c.d_in} but {backbone.name}'s {c.site} has width "
                          f"{backbone.d_site(c.site)}; pick an SAE for this model and hook.")
