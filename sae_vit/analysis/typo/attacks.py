"""The typographic attack recipe (a wrong class name written on the centre-cropped image) and the image sets
it makes: paired clean / attacked / control sets (our recipe on the world's shapes, or the world's own
typographic renderer) and attacked image files in the PAINT layout.

The recipe of the typographic benchmarks (PAINT, Defense-Prefix, Dyslexify): fill and stroke colours drawn from
a palette and never equal, a font size drawn from a range (a fraction of the image side) and shrunk until the
word fits, a random position. The *control* writes an unrelated pseudo-word of the same length with the very
same placement, size and colours, so it covers the object equally but says nothing.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from torch import Tensor

from sae_vit.core.atomic import atomic_write, write_text
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError

#: Fill / stroke colours of the benchmark recipe (fill and stroke are always different entries).
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (230, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 230),
    "yellow": (250, 230, 30),
    "orange": (250, 140, 20),
    "purple": (150, 40, 200),
}
POSITIONS = ("random", "top", "middle", "bottom")


@dataclass(frozen=True)
class AttackConfig:
    """How a word is written on an image (every field is an option of ``saevit defend-typo attack``)."""

    font_size: tuple[float, float] = (0.2, 0.28)
    """Font size range, as a fraction of the (cropped) image side; drawn uniformly, then shrunk to fit."""
    palette: tuple[str, ...] = tuple(PALETTE)
    """Colour names (keys of :data:`PALETTE`) for fill and stroke; two different ones are drawn per image."""
    stroke: float = 0.08
    """Stroke (outline) width as a fraction of the font size (at least 1 pixel)."""
    position: str = "random"
    """``random`` (anywhere it fits), or ``top`` / ``middle`` / ``bottom`` (in that third of the image)."""
    crop: bool = True
    """Centre-crop to a square first (what CLIP sees), so the word is never cropped away."""
    font: str | None = None
    """A TrueType font file; default Pillow's bundled font."""
    margin: float = 0.02
    """Free border, as a fraction of the side, that the word must fit inside."""
    stroke_palette: tuple[str, ...] | None = None
    """Colours the stroke is drawn from, when not the fill's ``palette`` (it still never equals the fill)."""

    def validate(self) -> AttackConfig:
        lo, hi = self.font_size
        if not 0 < lo <= hi <= 1:
            raise SaeVitError(f"Font size range {self.font_size} is invalid; give 0 < min <= max <= 1 (fractions of the side).")
        bad = [c for c in (*self.palette, *(self.stroke_palette or ())) if c not in PALETTE]
        if bad:
            raise SaeVitError(f"Unknown palette colour {bad[0]!r}; use some of: {', '.join(PALETTE)}.")
        if len(set(self.palette)) < 2:
            raise SaeVitError("The palette needs at least two colours (fill and stroke must differ).")
        if self.position not in POSITIONS:
            raise SaeVitError(f"Unknown position {self.position!r}; use one of: {', '.join(POSITIONS)}.")
        if self.font is not None and not Path(self.font).is_file():
            raise SaeVitError(f"Font file {self.font} does not exist; pass a .ttf path or leave --font out.")
        return self


#: Rendering families of our recipe: a colour set, a position band, a size range and a stroke width (one font:
#: Pillow's bundled one, the only font every install has). ``discovery`` finds and selects the features;
#: ``shifted`` differs from it but lies inside what the typo SAE trained on; ``held-out`` and ``held-out colours``
#: are kept out of the SAE's training images (:data:`SAE_TRAINING_ATTACKS`) and of discovery and selection, and
#: are reported as test sets of their own.
FAMILIES: dict[str, AttackConfig] = {
    "discovery": AttackConfig(font_size=(0.19, 0.23), palette=("white", "black"), position="top"),
    "shifted": AttackConfig(font_size=(0.23, 0.27), palette=("yellow", "black"), position="middle"),
    "held-out": AttackConfig(font_size=(0.2, 0.26), palette=("white", "black"), position="bottom", stroke=0.14),
    "held-out colours": AttackConfig(font_size=(0.2, 0.26), palette=("red", "green", "blue", "purple"),
                                     stroke_palette=("white", "black"), position="bottom", stroke=0.14),
}
#: The family no SAE training image, discovery image or validation image is drawn in (its position band and
#: stroke width; ``held-out colours`` adds fill colours that no SAE training image has either).
HELD_OUT = "held-out"
#: The recipes written on the typo SAE's training images (one drawn per image): none of the held-out family's
#: colours (as fill or stroke), its position band (the bottom third) or its stroke width.
SAE_TRAINING_ATTACKS: tuple[AttackConfig, ...] = (
    AttackConfig(palette=("white", "black", "yellow", "orange"), position="top"),
    AttackConfig(palette=("white", "black", "yellow", "orange"), position="middle"),
)


@dataclass(frozen=True)
class Placement:
    """Where and how one word was written (so a control word can be written identically)."""

    size: int
    xy: tuple[int, int]
    fill: str
    stroke: str
    stroke_width: int


def _font(font: str | None, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size) if font is None else ImageFont.truetype(font, size=size)


def centre_crop(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image``."""
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def choose_placement(image_size: tuple[int, int], word: str, rng: np.random.Generator, cfg: AttackConfig) -> Placement:
    """Draw font size, colours and position for ``word`` on an image of ``image_size`` (w, h)."""
    w, h = image_size
    side = min(w, h)
    margin = int(round(cfg.margin * side))
    size = max(6, int(round(rng.uniform(*cfg.font_size) * side)))
    while True:  # shrink to fit
        sw = max(1, int(round(cfg.stroke * size)))
        x0, y0, x1, y1 = _font(cfg.font, size).getbbox(word, stroke_width=sw)
        tw, th = x1 - x0, y1 - y0
        if (tw <= w - 2 * margin and th <= h - 2 * margin) or size <= 6:
            break
        size -= 1
    if cfg.stroke_palette is None:
        fill, stroke = (cfg.palette[int(i)] for i in rng.choice(len(cfg.palette), size=2, replace=False))
    else:
        fill = cfg.palette[int(rng.integers(len(cfg.palette)))]
        others = [c for c in cfg.stroke_palette if c != fill]
        stroke = others[int(rng.integers(len(others)))]
    x = int(rng.integers(margin, max(margin, w - margin - tw) + 1)) - x0
    if cfg.position == "random":
        lo, hi = margin, h - margin - th
    else:
        band = ("top", "middle", "bottom").index(cfg.position)
        lo = max(margin, int(band * h / 3 + h / 6 - th / 2) - h // 8)
        hi = min(h - margin - th, int(band * h / 3 + h / 6 - th / 2) + h // 8)
    y = int(rng.integers(min(lo, hi), max(lo, hi) + 1)) - y0
    return Placement(size, (x, y), fill, stroke, sw)


def draw_word(image: Image.Image, word: str, placement: Placement, font: str | None = None) -> Image.Image:
    """A copy of ``image`` with ``word`` drawn as ``placement`` says."""
    out = image.convert("RGB").copy()
    ImageDraw.Draw(out).text(placement.xy, word, font=_font(font, placement.size),
                             fill=PALETTE[placement.fill], stroke_width=placement.stroke_width,
                             stroke_fill=PALETTE[placement.stroke])
    return out


def render_attack(image: Image.Image, word: str, rng: np.random.Generator, cfg: AttackConfig = AttackConfig(),
                  control: str | None = None) -> tuple[Image.Image, Image.Image | None, Placement]:
    """``(attacked, control image or None, placement)``: ``word`` written on (the centre crop of) ``image``,
    and ``control`` with the same placement when given."""
    base = centre_crop(to_rgb(image)) if cfg.crop else to_rgb(image)
    placement = choose_placement(base.size, word, rng, cfg)
    attacked = draw_word(base, word, placement, cfg.font)
    ctrl = draw_word(base, control, placement, cfg.font) if control is not None else None
    return attacked, ctrl, placement


def attack_twins(image: Image.Image, word: str, rng: np.random.Generator, cfg: AttackConfig, avoid: Sequence[str] = (),
                 control: bool = True) -> tuple[Image.Image, Image.Image, Image.Image | None, str | None]:
    """``(clean, attacked, control, control word)``: ``image`` (centre-cropped when ``cfg.crop``) without text, with
    ``word`` and, when ``control``, with a same-length pseudo-word (never one of ``avoid``) placed identically."""
    base = centre_crop(image) if cfg.crop else image
    ctrl_word = pseudo_word(len(word), rng, avoid=avoid) if control else None
    attacked, ctrl, _ = render_attack(base, word, rng, replace(cfg, crop=False), control=ctrl_word)
    return base, attacked, ctrl, ctrl_word


def pseudo_word(length: int, rng: np.random.Generator, avoid: Sequence[str] = ()) -> str:
    """A pronounceable non-word of ``length`` letters (consonant-vowel), never one of ``avoid``."""
    vowels, consonants = "aeiou", "".join(c for c in string.ascii_lowercase if c not in "aeiou")
    while True:
        word = "".join((consonants if i % 2 == 0 else vowels)[int(rng.integers(5 if i % 2 else 21))]
                       for i in range(max(1, length)))
        if word not in avoid:
            return word


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white (not black, as a bare ``convert`` would)."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; a missing or unreadable file is a one-line :class:`SaeVitError`."""
    p = Path(path)
    if not p.is_file():
        raise SaeVitError(f"Image {p} does not exist; check the path.")
    try:
        with Image.open(p) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SaeVitError(f"{p} is not a readable image ({type(exc).__name__}); pass a PNG or JPEG file.") from exc


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
    written_words: list[str] = field(default_factory=list)
    """The word written on each attacked image (empty when unknown)."""
    control_words: list[str] = field(default_factory=list)
    """The pseudo-word written on each control image, one for one with ``written_words``."""


def _typo_set(backbone: Backbone, twins, labels: Sequence[int], written: Sequence[int], classes,
              words: Sequence[tuple[str, str]] = ()) -> TypoSet:
    """A :class:`TypoSet` from ``(clean, attacked, control)`` PIL images, preprocessed for ``backbone``;
    ``words``: the (written word, control word) of each image."""
    clean, attacked, control = (torch.stack([backbone.transform(im) for im in ims])
                                for ims in zip(*twins, strict=True))
    return TypoSet(clean, attacked, control, torch.tensor(list(labels)), torch.tensor(list(written)),
                   list(classes), [w for w, _ in words], [c for _, c in words])


def world_typo_set(backbone: Backbone, split: str, n: int, cfg: AttackConfig = AttackConfig(), seed: int = 0) -> TypoSet:
    """Clean images of the world's ``shapes`` task (``split``), each attacked with our recipe (a random wrong
    shape name) and a same-length pseudo-word placed identically; classes = shapes."""
    from sae_vit.world import scenes as world

    cfg.validate()
    scenes, rows = world.task_scenes("shapes", split, n, seed)
    images = [world.render(s) for s in scenes]
    rng = np.random.default_rng([seed, 0x7790])
    twins, written, words = [], [], []
    for image, row in zip(images, rows, strict=True):
        wrong = [i for i in range(len(world.SHAPES)) if i != row["label"]]
        written.append(wrong[int(rng.integers(len(wrong)))])
        *images3, ctrl_word = attack_twins(to_rgb(image), world.SHAPES[written[-1]], rng, cfg, avoid=world.SHAPES)
        twins.append(images3)
        words.append((world.SHAPES[written[-1]], ctrl_word))
    return _typo_set(backbone, twins, [r["label"] for r in rows], written, world.SHAPES, words)


def world_native_set(backbone: Backbone, split: str, n: int, seed: int = 0) -> TypoSet:
    """The world's own ``typographic`` task (its renderer: the word over the object) with its clean twins;
    the control is the world's renderer writing a pseudo-word at the same place."""
    from sae_vit.world import scenes as world

    scenes, rows = world.task_scenes("typographic", split, n, seed)
    rng = np.random.default_rng([seed, 0xC7])
    words = [(s.word, pseudo_word(len(s.word), rng, avoid=world.SHAPES)) for s in scenes]
    twins = [(world.render(replace(s, word=None)), world.render(s), world.render(replace(s, word=c)))
             for s, (_, c) in zip(scenes, words, strict=True)]
    labels, written = [r["label"] for r in rows], [r["text_label"] for r in rows]
    return _typo_set(backbone, twins, labels, written, world.SHAPES, words)


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
