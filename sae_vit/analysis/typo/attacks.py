"""The typographic attack recipe: a wrong class name written on the centre-cropped image.

The recipe of the typographic benchmarks (PAINT, Defense-Prefix, Dyslexify): fill and stroke colours drawn from
a palette and never equal, a font size drawn from a range (a fraction of the image side) and shrunk until the
word fits, a random position. The *control* writes an unrelated pseudo-word of the same length with the very
same placement, size and colours, so it covers the object equally but says nothing.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

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
    """``random`` (anywhere the word fits), or ``top`` / ``middle`` / ``bottom`` (a third of the image, random
    within it)."""
    crop: bool = True
    """Centre-crop to a square first (what CLIP sees), so the word is never cropped away."""
    font: str | None = None
    """A TrueType font file; default Pillow's bundled font."""
    margin: float = 0.02
    """Free border, as a fraction of the side, that the word must fit inside."""

    def validate(self) -> AttackConfig:
        lo, hi = self.font_size
        if not 0 < lo <= hi <= 1:
            raise SaeVitError(f"Font size range {self.font_size} is invalid; give 0 < min <= max <= 1 (fractions of the side).")
        bad = [c for c in self.palette if c not in PALETTE]
        if bad:
            raise SaeVitError(f"Unknown palette colour {bad[0]!r}; use some of: {', '.join(PALETTE)}.")
        if len(set(self.palette)) < 2:
            raise SaeVitError("The palette needs at least two colours (fill and stroke must differ).")
        if self.position not in POSITIONS:
            raise SaeVitError(f"Unknown position {self.position!r}; use one of: {', '.join(POSITIONS)}.")
        if self.font is not None and not Path(self.font).is_file():
            raise SaeVitError(f"Font file {self.font} does not exist; pass a .ttf path or leave --font out.")
        return self


#: Discovery settings of the shipped feature set: smaller words in the upper part, black and white only.
DISCOVERY_ATTACK = AttackConfig(font_size=(0.19, 0.23), palette=("white", "black"), position="top")
#: A different recipe for the generalisation check: larger words in yellow and black, across the middle.
SHIFTED_ATTACK = AttackConfig(font_size=(0.23, 0.27), palette=("yellow", "black"), position="middle")


@dataclass(frozen=True)
class Placement:
    """Where and how one word was written (so a control word can be written identically)."""

    size: int
    xy: tuple[int, int]
    fill: str
    stroke: str
    stroke_width: int


def _font(font: str | None, size: int) -> ImageFont.FreeTypeFont:
    if font is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(font, size=size)


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
    fill, stroke = rng.choice(len(cfg.palette), size=2, replace=False)
    x = int(rng.integers(margin, max(margin, w - margin - tw) + 1)) - x0
    if cfg.position == "random":
        lo, hi = margin, h - margin - th
    else:
        band = ("top", "middle", "bottom").index(cfg.position)
        lo = max(margin, int(band * h / 3 + h / 6 - th / 2) - h // 8)
        hi = min(h - margin - th, int(band * h / 3 + h / 6 - th / 2) + h // 8)
    y = int(rng.integers(min(lo, hi), max(lo, hi) + 1)) - y0
    return Placement(size, (x, y), cfg.palette[int(fill)], cfg.palette[int(stroke)], sw)


def draw_word(image: Image.Image, word: str, placement: Placement, font: str | None = None) -> Image.Image:
    """A copy of ``image`` with ``word`` drawn as ``placement`` says."""
    out = image.convert("RGB").copy()
    ImageDraw.Draw(out).text(
        placement.xy, word, font=_font(font, placement.size), fill=PALETTE[placement.fill],
        stroke_width=placement.stroke_width, stroke_fill=PALETTE[placement.stroke],
    )
    return out


def render_attack(image: Image.Image, word: str, rng: np.random.Generator, cfg: AttackConfig = AttackConfig(),
                  control: str | None = None) -> tuple[Image.Image, Image.Image | None, Placement]:
    """Write ``word`` on (the centre crop of) ``image``; also ``control`` with the same placement when given.

    Returns ``(attacked, control_image_or_None, placement)``.
    """
    base = to_rgb(image)
    if cfg.crop:
        base = centre_crop(base)
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
