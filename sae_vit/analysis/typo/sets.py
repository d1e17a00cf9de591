"""Image sets for the typographic experiments: paired clean / attacked / control sets (our recipe on the world's
shapes, or the world's own typographic renderer), attacked image files in the PAINT layout, and the images the
shipped text-feature SAE is trained on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sae_vit.analysis.typo.attacks import (
    AttackConfig,
    attack_twins,
    open_image,
    pseudo_word,
    render_attack,
    to_rgb,
)
from sae_vit.core.atomic import atomic_write, write_text
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError


@dataclass
class TypoSet:
    """Paired clean / attacked / control images of one split, preprocessed for the backbone."""

    clean: Tensor
    """Clean images [n, 3, H, W] (None-free; the model's transform applied)."""
    attacked: Tensor
    """The same images with a wrong class name written on them [n, 3, H, W]."""
    control: Tensor
    """The same images with a pseudo-word of the same length, same placement [n, 3, H, W]."""
    labels: Tensor
    """True class index [n] into ``classes``."""
    written: Tensor
    """Index of the written word [n] into ``classes`` (never equal to the label)."""
    classes: list[str]
    """Zero-shot class names: the union of true labels and attack words."""


def attack_images(images: Sequence[Image.Image], labels: Sequence[int], classes: Sequence[str], backbone: Backbone,
                  cfg: AttackConfig, seed: int) -> TypoSet:
    """Build a :class:`TypoSet`: each image gets a random wrong class name and a same-length pseudo-word."""
    cfg.validate()
    if len(classes) < 2:
        raise SaeVitError("A typographic attack needs at least two class names (the word must be a wrong class).")
    rng = np.random.default_rng([seed, 0x7790])
    clean, attacked, control, written = [], [], [], []
    for image, label in zip(images, labels, strict=True):
        wrong = [i for i in range(len(classes)) if i != label]
        w = wrong[int(rng.integers(len(wrong)))]
        base, att, ctrl, _ = attack_twins(to_rgb(image), classes[w], rng, cfg, avoid=classes)
        clean.append(backbone.transform(base))
        attacked.append(backbone.transform(att))
        control.append(backbone.transform(ctrl))
        written.append(w)
    return TypoSet(torch.stack(clean), torch.stack(attacked), torch.stack(control), torch.tensor(list(labels)),
                   torch.tensor(written), list(classes))


def world_typo_set(backbone: Backbone, split: str, n: int, cfg: AttackConfig = AttackConfig(), seed: int = 0) -> TypoSet:
    """Clean images of the world's ``shapes`` task (``split``), attacked with our recipe; classes = shapes."""
    from sae_vit.world import scenes as world

    scenes, rows = world.task_scenes("shapes", split, n, seed)
    images = [world.render(s) for s in scenes]
    return attack_images(images, [r["label"] for r in rows], world.SHAPES, backbone, cfg, seed)


def world_native_set(backbone: Backbone, split: str, n: int, seed: int = 0) -> TypoSet:
    """The world's own ``typographic`` task (its renderer: the word over the object) with its clean twins;
    the control is the world's renderer writing a pseudo-word at the same place."""
    import dataclasses

    from sae_vit.world import scenes as world

    scenes, rows = world.task_scenes("typographic", split, n, seed)
    rng = np.random.default_rng([seed, 0xC7])
    clean, attacked, control = [], [], []
    for s in scenes:
        clean.append(backbone.transform(world.render(dataclasses.replace(s, word=None))))
        attacked.append(backbone.transform(world.render(s)))
        ctrl = dataclasses.replace(s, word=pseudo_word(len(s.word), rng, avoid=world.SHAPES))
        control.append(backbone.transform(world.render(ctrl)))
    return TypoSet(torch.stack(clean), torch.stack(attacked), torch.stack(control),
                   torch.tensor([r["label"] for r in rows]), torch.tensor([r["text_label"] for r in rows]),
                   list(world.SHAPES))


def write_attacks(images: Sequence[str | os.PathLike], out: str | os.PathLike, word: str | None = None,
                  classes: Sequence[str] | None = None, cfg: AttackConfig = AttackConfig(), control: bool = False,
                  seed: int = 0, overwrite: bool = False) -> Path:
    """Render attacks on image files (or every image under folders) into ``out`` in the PAINT layout:
    ``label=<parent folder>_text=<word>_<stem>.png`` plus ``metadata.csv`` (path,label,text,kind). Without ``word``,
    each image gets a random class of ``classes`` other than its label. ``control`` also writes the pseudo-word
    twins (text ``none`` rows are the clean originals, cropped)."""
    from sae_vit.io.datasets import IMAGE_SUFFIXES

    cfg.validate()
    if word is None and not classes:
        raise SaeVitError("Pass --word W (the word to write) or --classes to draw a wrong class name per image.")
    files: list[Path] = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise SaeVitError(f"Image {p} does not exist; check the path.")
    if not files:
        raise SaeVitError("No images to attack; pass image files or folders that hold PNG/JPEG images.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SaeVitError(f"{out} is not empty; choose another --out or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xA77])
    lines = ["path,label,text,kind"]
    for i, f in enumerate(files):
        label = _safe(f.parent.name) or "unknown"
        w = word
        if w is None:
            choices = [c for c in classes if c != label]
            w = choices[int(rng.integers(len(choices)))]
        base, att, ctrl, ctrl_word = attack_twins(open_image(f), w, rng, cfg, list(classes or []) + [w], control)
        stem = _safe(f.stem)
        for kind, text, im in (("attack", w, att), *((("control", ctrl_word, ctrl), ("clean", "none", base))
                                                      if control else ())):
            name = f"label={label}_text={_safe(text)}_{i:05d}{stem and '-' + stem}.png"
            atomic_write(out / name, lambda tmp, im=im: im.save(tmp, format="PNG"))
            lines.append(f"{name},{label},{text},{kind}")
    write_text(out / "metadata.csv", "\n".join(lines) + "\n")
    return out


def _safe(text: str) -> str:
    """A name part without the separators of the PAINT layout (``_``, ``=``, ``.``, ``,``)."""
    return "".join(c if c.isalnum() or c in "-+ " else "-" for c in str(text)).strip()


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


def sae_training_images(n: int, seed: int = 0, attack: AttackConfig = AttackConfig()):
    """An :class:`~sae_vit.data.ImageSource` of ``n`` world images for SAE training: the toy CLIP's training
    distribution (a third of it with written words) with our attack recipe drawn on another third. Disjoint from
    every task split."""
    from sae_vit.io.images import ImageItem, ImageSource
    from sae_vit.world import scenes as world

    scenes = world.training_scenes(n, seed + 991)

    def loader(i, scene):
        def load():
            image = world.render(scene)
            if i % 3 == 0 and scene.word is None and scene.shape is not None:
                rng = np.random.default_rng([seed, i, 0x5AE])
                image = render_attack(image, world.WRITABLE[int(rng.integers(len(world.WRITABLE)))], rng, attack)[0]
            return image
        return load

    return ImageSource("world", f"typo-sae-train/n={n}/seed={seed}",
                       [ImageItem(id=f"typo:{i}", load=loader(i, s)) for i, s in enumerate(scenes)])
