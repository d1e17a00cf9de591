"""The built-in synthetic world: 64×64 scenes of shapes, colours, textured backgrounds and written words.

A :class:`Scene` is a plain record (what is where, and its caption); :func:`render` draws it with Pillow and
numpy, deterministically, in well under a millisecond. Scenes come from :func:`sample` (free sampling with
constraints), from :func:`training_scenes` (the toy CLIP's training distribution, with its deliberate
biases) and from :func:`make_task` (labelled splits that mirror the paper's datasets):

- ``shapes``: which of six shapes is drawn (no words). Zero-shot classes: :data:`SHAPES`.
- ``typographic``: the same scenes as ``shapes`` with another shape's name written on the image.
- ``waterbirds``: a boat (y=1, "waterbird") or a car (y=0, "landbird") on water (place=1) or land
  (place=0); the background agrees with the label 95 % of the time in train, 50 % in val/test.
- ``celeba``: binary attributes of a scene (:data:`CELEBA_ATTRIBUTES`); the target ``Yellow`` and the
  spurious ``Large`` are confounded in train only.

Nothing here imports torch, so the CLI and the cache command can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sae_vit.core.atomic import atomic_write, write_text
from sae_vit.core.errors import SaeVitError

IMAGE_SIZE = 64

#: The six geometric shapes of the ``shapes`` task (zero-shot class names, in label order).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
#: The two objects of the ``waterbirds`` task: label 0 (the "landbird") and label 1 (the "waterbird").
VEHICLES: tuple[str, ...] = ("car", "boat")
OBJECTS: tuple[str, ...] = SHAPES + VEHICLES
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 30),
    "green": (40, 190, 60),
    "blue": (40, 80, 235),
    "purple": (150, 50, 200),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "water", "land")
SIZES: tuple[str, ...] = ("small", "large")
#: Words that may be written on an image.
WRITABLE: tuple[str, ...] = OBJECTS + tuple(COLOURS)
#: Every word a caption or a zero-shot prompt of this world uses (the toy text tower's vocabulary).
VOCAB: tuple[str, ...] = OBJECTS + tuple(COLOURS) + BACKGROUNDS + SIZES + (
    "a", "an", "photo", "of", "the", "on", "with", "word", "written", "it", "image", "picture", "background",
    "text", "says", "that", "and", "object", "shape", "in", "front",
)

TASKS: tuple[str, ...] = ("shapes", "typographic", "waterbirds", "celeba")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Waterbirds-like task: how often the background agrees with the label, per split.
WATERBIRDS_AGREEMENT = {"train": 0.95, "val": 0.5, "test": 0.5}
#: How often a boat is on water (and a car on land) in the toy CLIP's training images.
CLIP_VEHICLE_BIAS = 0.98
CELEBA_ATTRIBUTES: tuple[str, ...] = ("Red", "Yellow", "Blue", "Large", "Water", "Land", "Star", "Circle",
                                      "Word")
CELEBA_TARGET = "Yellow"
CELEBA_SPURIOUS = "Large"
#: CelebA-like task: P(spurious | target) = P(not spurious | not target) in train; 0.5 (independent) elsewhere.
CELEBA_CONFOUND = {"train": 0.9, "val": 0.5, "test": 0.5}
SMALL_LARGE_THRESHOLD = 19.0
#: Shapes stand upright, tilted by at most this many degrees (a rotated square would be a diamond).
MAX_TILT = 25.0
#: Shape radius range in pixels, and how far (pixels, each axis) the shape's centre may be from the image's.
MIN_SIZE, MAX_SIZE = 14.0, 26.0
MAX_SHIFT = 10.0


@dataclass(frozen=True)
class Scene:
    """One image's content. Coordinates are pixels in the 64×64 image."""

    shape: str | None
    """One of :data:`OBJECTS`, or None for a word-only image."""
    colour: str
    """One of :data:`COLOURS` (the shape's fill)."""
    background: str
    """One of :data:`BACKGROUNDS`."""
    position: tuple[float, float]
    """Centre of the shape (x, y)."""
    size: float
    """Radius of the shape in pixels (about 12 to 26)."""
    rotation: float
    """Rotation of the shape in degrees."""
    word: str | None
    """The word written on the image, or None."""
    word_position: tuple[int, int] = (0, 0)
    """Top-left corner of the written word."""
    word_size: int = 14
    """Font size of the written word."""
    word_dark: bool = False
    """Black letters with a white outline (else white letters with a black outline)."""
    word_ink: str | None = None
    """A colour name of :data:`COLOURS` for the letters (outline black or white, whichever contrasts), or None
    for black / white letters as ``word_dark`` says."""
    texture_seed: int = 0
    """Seed of the background texture and colour jitter."""
    caption: str = ""
    """What the image shows, in words (includes the written word, if any)."""

    @property
    def size_word(self) -> str:
        """'small' or 'large'."""
        return "large" if self.size >= SMALL_LARGE_THRESHOLD else "small"


# --------------------------------------------------------------------------------------------- drawing


def _shape_points(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Polygon outline of a shape (the vehicles' wheels are drawn separately)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.9
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.78
    elif shape == "triangle":
        t = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 1.05 + [0, 0.15]
    elif shape == "star":
        t = np.deg2rad(np.arange(10) * 36 - 90)
        rad = np.where(np.arange(10) % 2 == 0, 1.05, 0.42)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * rad[:, None]
    elif shape == "cross":
        a, b = 0.3, 0.95
        pts = np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a],
                        [-b, a], [-b, -a], [-a, -a]])
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2], 1) / 16.5
    elif shape == "boat":  # hull (wide on top) with a triangular sail
        pts = np.array([[-1.0, 0.15], [1.0, 0.15], [0.6, 0.6], [-0.6, 0.6], [-1.0, 0.15], [-0.05, 0.15],
                        [-0.05, -0.95], [0.7, 0.05], [0.05, 0.05], [0.05, 0.15]])
    elif shape == "car":  # body with a cabin on top (wheels added by the caller)
        pts = np.array([[-1.0, -0.05], [-0.5, -0.1], [-0.3, -0.55], [0.4, -0.55], [0.6, -0.1], [1.0, -0.05],
                        [1.0, 0.4], [-1.0, 0.4]])
    else:
        raise SaeVitError(f"Unknown shape {shape!r}; use one of {', '.join(OBJECTS)}.")
    th = np.deg2rad(rotation)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    pts = pts @ rot.T * r + [cx, cy]
    return [tuple(p) for p in pts.tolist()]


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 64×64×3 uint8 texture: plain (flat grey-ish), water (blue waves) or land (blotchy earth/grass)."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    if kind == "plain":
        grey = rng.uniform(150, 235)
        tint = rng.uniform(-12, 12, 3)
        img = np.broadcast_to(grey + tint, (s, s, 3)).astype(np.float32)
    elif kind == "water":
        base = np.array([30, 95, 175], np.float32) + rng.uniform(-20, 20, 3)
        wavelength = rng.uniform(5, 9)
        wobble = rng.uniform(1.0, 3.0) * np.sin(xx / rng.uniform(6, 12) + rng.uniform(0, 2 * np.pi))
        waves = np.sin(2 * np.pi * (yy + wobble) / wavelength + rng.uniform(0, 2 * np.pi))
        crest = np.clip(waves, 0.6, 1.0) - 0.6  # thin bright crests
        img = base + (waves * 18 + crest * 150)[..., None] * np.array([0.7, 0.9, 1.0], np.float32)
    elif kind == "land":
        palette = np.array([[125, 90, 50], [95, 125, 45], [170, 145, 90]], np.float32)
        base = palette[rng.integers(3)] + rng.uniform(-15, 15, 3)
        coarse = rng.normal(0, 1, (5, 5)).astype(np.float32)
        blotch = np.asarray(Image.fromarray(coarse).resize((s, s), Image.Resampling.BICUBIC))
        speckle = rng.normal(0, 1, (s, s)).astype(np.float32)
        img = base + (blotch * 22 + speckle * 14)[..., None]
    else:
        raise SaeVitError(f"Unknown background {kind!r}; use one of {', '.join(BACKGROUNDS)}.")
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=4096)
def _word_sprite(word: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(fill, outline) alpha masks of a word, rendered once and reused: drawing text is the slow part."""
    font = _font(size)
    x0, y0, x1, y1 = font.getbbox(word, stroke_width=1)
    w, h = x1 - x0 + 2, y1 - y0 + 2
    outline = Image.new("L", (w, h), 0)
    ImageDraw.Draw(outline).text((1 - x0, 1 - y0), word, font=font, fill=255, stroke_width=1, stroke_fill=255)
    fill = Image.new("L", (w, h), 0)
    ImageDraw.Draw(fill).text((1 - x0, 1 - y0), word, font=font, fill=255)
    return np.asarray(fill, np.float32) / 255, np.asarray(outline, np.float32) / 255


def word_extent(word: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of a written word at a font size."""
    fill, _ = _word_sprite(word, size)
    return fill.shape[1], fill.shape[0]


def render_array(scene: Scene) -> np.ndarray:
    """Draw a scene as a uint8 array [64, 64, 3]; deterministic in the scene."""
    rng = np.random.default_rng(scene.texture_seed)
    img = Image.fromarray(_background(scene.background, rng))
    if scene.shape is not None:
        draw = ImageDraw.Draw(img)
        jitter = rng.integers(-18, 19, 3)
        fill = tuple(int(v) for v in np.clip(np.array(COLOURS[scene.colour]) + jitter, 0, 255))
        cx, cy = scene.position
        pts = _shape_points(scene.shape, cx, cy, scene.size, scene.rotation)
        draw.polygon(pts, fill=fill, outline=(20, 20, 20), width=1)
        if scene.shape == "car":
            th = np.deg2rad(scene.rotation)
            rw = 0.24 * scene.size
            for dx in (-0.55, 0.55):
                wx = cx + scene.size * (dx * np.cos(th) - 0.42 * np.sin(th))
                wy = cy + scene.size * (dx * np.sin(th) + 0.42 * np.cos(th))
                draw.ellipse([wx - rw, wy - rw, wx + rw, wy + rw], fill=(25, 25, 25))
    arr = np.asarray(img, np.float32)
    if scene.word is not None:
        fill, outline = _word_sprite(scene.word, scene.word_size)
        h, w = fill.shape
        x, y = scene.word_position
        # clip the sprite to the image (a word may hang over the edge)
        sx0, sy0 = max(0, -x), max(0, -y)
        sx1, sy1 = min(w, IMAGE_SIZE - x), min(h, IMAGE_SIZE - y)
        if sx1 > sx0 and sy1 > sy0:
            region = arr[y + sy0 : y + sy1, x + sx0 : x + sx1]
            f = fill[sy0:sy1, sx0:sx1, None]
            o = outline[sy0:sy1, sx0:sx1, None]
            ink, edge = (0.0, 255.0) if scene.word_dark else (255.0, 0.0)
            if scene.word_ink is not None:
                ink = np.array(COLOURS[scene.word_ink], np.float32)
                edge = 0.0 if float(ink @ _LUMA) > 128 else 255.0
            region[:] = region * (1 - o) + edge * o
            region[:] = region * (1 - f) + ink * f
    return arr.astype(np.uint8)


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 64×64 RGB PIL image."""
    return Image.fromarray(render_array(scene), "RGB")


# --------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


#: Luma weights: a coloured word gets a black outline when its ink is light, a white one when dark.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

_PHOTO = "a photo of {a_sh} {sh}."
_PHOTO_COLOURED = "a photo of {a_col} {col} {sh}."
_PHOTO_ON = "a photo of {a_sh} {sh} on {bg}."
_SIZED = "{a_sz} {sz} {sh}."
#: Caption templates of scenes with a shape (drawn uniformly by :func:`caption_for`).
SCENE_CAPTIONS: tuple[str, ...] = (
    _PHOTO, _PHOTO_COLOURED, "{a_col} {col} {sh}.", "{a_sz} {sz} {col} {sh} on {bg}.",
    "{a_col} {col} {sh} on {bg}.", _PHOTO_ON, _SIZED,
    "{a_col} {col} {sh} in front of {a_bg} {bg} background.",
)


def concept_prompts(word: str) -> list[str]:
    """Captions of the toy CLIP's training distribution (templates of :data:`SCENE_CAPTIONS`) that name ``word``
    as a property of the scene, one per shape (a colour: "a photo of a red star."; a background: "a photo of a
    star on water."; a size: "a small star."), or "a photo of a {word}." for an object. A bare word is how the
    world captions an image of that word *written*, so concept probes (steer-score's vocabulary, inspect's
    labels) use these instead. Other words are returned as they are."""
    if word in OBJECTS:
        return [_PHOTO.format(a_sh=_article(word), sh=word)]
    if word in COLOURS:
        return [_PHOTO_COLOURED.format(a_col=_article(word), col=word, sh=s) for s in SHAPES]
    if word in BACKGROUNDS:
        return [_PHOTO_ON.format(a_sh=_article(s), sh=s, bg=word) for s in SHAPES]
    if word in SIZES:
        return [_SIZED.format(a_sz=_article(word), sz=word, sh=s) for s in SHAPES]
    return [word]


def caption_for(scene: Scene, rng: np.random.Generator, p_transcribe: float = 0.5) -> str:
    """A caption of a scene, drawn from a few templates.

    Captions of clean images range from the bare zero-shot prompt form ("a photo of a star.") to full
    descriptions ("a large red star on water."). Images with a written word mention the word: a full
    description ("a red star on water, with the word 'circle' written on it") or, with probability
    ``p_transcribe``, only the word, as web alt-texts often transcribe the text in an image; this is what
    teaches the toy CLIP to read (and to be fooled by typographic attacks).
    """
    w = scene.word
    if scene.shape is None:
        templates = ["{w}", "the word {w}.", "a photo of the word {w}.", "the word {w} written on {bg}.",
                     "an image with the text {w}.", "a photo of a {w}."]
        return templates[rng.integers(len(templates))].format(w=w, bg=scene.background)
    if w is not None and rng.random() < p_transcribe:
        templates = ["a photo of {aw} {w}.", "{w}", "the word {w}.", "a picture of {aw} {w}."]
        return templates[rng.integers(len(templates))].format(w=w, aw=_article(w))
    sh, col, bg, sz = scene.shape, scene.colour, scene.background, scene.size_word
    text = SCENE_CAPTIONS[rng.integers(len(SCENE_CAPTIONS))].format(
        sh=sh, col=col, bg=bg, sz=sz, a_sh=_article(sh), a_col=_article(col), a_sz=_article(sz),
        a_bg=_article(bg))
    if w is not None:
        text = text.rstrip(".") + f", with the word '{w}' written on it."
    return text


# --------------------------------------------------------------------------------------------- sampling


def _place_word(rng: np.random.Generator, word: str, shape: str | None, cy: float, size: float
                ) -> tuple[int, tuple[int, int]]:
    """Font size and top-left corner of a written word: anywhere for word-only images, else over the shape."""
    word_size = int(rng.integers(13, 19) if shape is None else rng.integers(12, 17))
    while word_size > 9 and word_extent(word, word_size)[0] > IMAGE_SIZE - 2:
        word_size -= 1
    ww, wh = word_extent(word, word_size)
    wx = int(rng.integers(0, max(1, IMAGE_SIZE - ww + 1)))
    if shape is None:
        wy = int(rng.integers(0, max(1, IMAGE_SIZE - wh + 1)))
    else:  # over the shape, as a label stuck on the object
        wy = int(np.clip(cy - wh / 2 + rng.uniform(-size / 2, size / 2), 0, IMAGE_SIZE - wh))
    return word_size, (wx, wy)


def _draw_scene(rng: np.random.Generator, shape: str | None, colour: str, background: str, word: str | None
                ) -> Scene:
    """Random geometry (position, size, rotation, word placement) for given content."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    # near the centre: a small ViT trained for minutes learns shapes much faster without full translation
    lo = max(size * 0.85, IMAGE_SIZE / 2 - MAX_SHIFT)
    hi = min(IMAGE_SIZE - size * 0.85, IMAGE_SIZE / 2 + MAX_SHIFT)
    cx = float(rng.uniform(lo, hi))
    cy = float(rng.uniform(lo, hi))
    rotation = float(rng.uniform(-15, 15) if shape in VEHICLES else rng.uniform(-MAX_TILT, MAX_TILT))
    word_size, word_pos = 14, (0, 0)
    if word is not None:
        word_size, word_pos = _place_word(rng, word, shape, cy, size)
    return Scene(shape=shape, colour=colour, background=background, position=(cx, cy), size=size,
                 rotation=rotation, word=word, word_position=word_pos, word_size=word_size,
                 word_dark=bool(rng.random() < 0.3), texture_seed=int(rng.integers(2**31)))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample(n: int, seed: int, *, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS),
           backgrounds: Sequence[str] = BACKGROUNDS, p_word: float = 0.0, words: Sequence[str] = WRITABLE,
           p_transcribe: float = 0.0) -> list[Scene]:
    """``n`` random scenes, deterministic in ``seed``.

    Constraints restrict the choices (``shapes=("star",)``, ``backgrounds=("water",)``); with probability
    ``p_word`` a word from ``words`` (never the shape's own name) is written on the image.
    """
    _check(shapes, OBJECTS, "shape")
    _check(colours, tuple(COLOURS), "colour")
    _check(backgrounds, BACKGROUNDS, "background")
    rng = np.random.default_rng([seed, 0x5CE7E])
    out = []
    for _ in range(n):
        shape = _pick(rng, shapes)
        word = None
        if rng.random() < p_word:
            word = _pick(rng, [w for w in words if w != shape] or list(words))
        scene = _draw_scene(rng, shape, _pick(rng, colours), _pick(rng, backgrounds), word)
        out.append(dataclasses.replace(scene, caption=caption_for(scene, rng, p_transcribe)))
    return out


def _check(values: Iterable[str], allowed: Sequence[str], what: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SaeVitError(f"Unknown {what} {bad[0]!r}; use one of {', '.join(allowed)}.")


@dataclass(frozen=True)
class TrainingMix:
    """The toy CLIP's training distribution (what fraction of images are of which kind)."""

    p_word_only: float = 0.1
    """Images with only a written word (no shape); caption: the word."""
    p_vehicle: float = 0.2
    """Shape images that show a car or a boat (background biased, see ``vehicle_bias``)."""
    vehicle_bias: float = CLIP_VEHICLE_BIAS
    """P(boat on water) = P(car on land); the rest split between the other two backgrounds."""
    p_word: float = 0.35
    """Shape images with a (misleading) word written on them."""
    p_transcribe: float = 0.5
    """Captions of shape-and-word images that give only the word."""
    p_colour_ink: float = 0.4
    """Written words in a colour of :data:`COLOURS` instead of black or white (real text comes in every colour;
    the captions do not mention it)."""


def training_scene(rng: np.random.Generator, mix: TrainingMix = TrainingMix()) -> Scene:
    """One scene of the toy CLIP's training distribution, with its caption."""
    colour = _pick(rng, tuple(COLOURS))
    if rng.random() < mix.p_word_only:
        scene = _draw_scene(rng, None, colour, _pick(rng, BACKGROUNDS), _pick(rng, WRITABLE))
        scene = _ink(rng, scene, mix)
        return dataclasses.replace(scene, caption=caption_for(scene, rng))
    if rng.random() < mix.p_vehicle:
        shape = _pick(rng, VEHICLES)
        home = "water" if shape == "boat" else "land"
        away = [b for b in BACKGROUNDS if b != home]
        background = home if rng.random() < mix.vehicle_bias else _pick(rng, away)
    else:
        shape = _pick(rng, SHAPES)
        background = _pick(rng, BACKGROUNDS)
    word = None
    if rng.random() < mix.p_word:
        word = _pick(rng, [w for w in WRITABLE if w != shape])
    scene = _draw_scene(rng, shape, colour, background, word)
    scene = _ink(rng, scene, mix)
    return dataclasses.replace(scene, caption=caption_for(scene, rng, mix.p_transcribe))


def _ink(rng: np.random.Generator, scene: Scene, mix: TrainingMix) -> Scene:
    """Colour a training scene's written word with probability ``mix.p_colour_ink``."""
    if scene.word is None or rng.random() >= mix.p_colour_ink:
        return scene
    return dataclasses.replace(scene, word_ink=_pick(rng, tuple(COLOURS)))


def training_scenes(n: int, seed: int, mix: TrainingMix = TrainingMix()) -> list[Scene]:
    """``n`` scenes of the toy CLIP's training distribution. Seeds live in their own stream, so no
    training image equals an image of :func:`make_task` for any seed."""
    rng = np.random.default_rng([seed, 0x7EA1])
    return [training_scene(rng, mix) for _ in range(n)]


# --------------------------------------------------------------------------------------------- tasks


def _task_rng(task: str, split: str, seed: int) -> np.random.Generator:
    if task not in TASKS:
        raise SaeVitError(f"Unknown world task {task!r}; use one of {', '.join(TASKS)}.")
    if split not in SPLITS:
        raise SaeVitError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    stream = TASKS.index("shapes" if task == "typographic" else task)  # typographic = shapes + words
    return np.random.default_rng([seed, 0x7A5C, stream, SPLITS.index(split)])


def task_scenes(task: str, split: str, n: int, seed: int = 0) -> tuple[list[Scene], list[dict]]:
    """Scenes of one task split and their label rows (see :func:`make_task`)."""
    rng = _task_rng(task, split, seed)
    scenes, rows = [], []
    for i in range(n):
        row: dict = {"id": f"{task}_{split}_{i:06d}", "split": split}
        if task in ("shapes", "typographic"):
            shape = _pick(rng, SHAPES)
            scene = _draw_scene(rng, shape, _pick(rng, tuple(COLOURS)), _pick(rng, BACKGROUNDS), None)
            row.update(label=SHAPES.index(shape), class_name=shape)
            if task == "typographic":
                # same scene as the shapes task (same rng stream); the word comes from its own stream
                wrng = np.random.default_rng([scene.texture_seed, 0x7E47])
                text = _pick(wrng, [s for s in SHAPES if s != shape])
                word_size, word_pos = _place_word(wrng, text, shape, scene.position[1], scene.size)
                scene = dataclasses.replace(scene, word=text, word_position=word_pos, word_size=word_size,
                                            word_dark=bool(wrng.random() < 0.3))
                row.update(text=text, text_label=SHAPES.index(text))
        elif task == "waterbirds":
            y = int(rng.integers(2))
            agree = rng.random() < WATERBIRDS_AGREEMENT[split]
            place = y if agree else 1 - y
            scene = _draw_scene(rng, VEHICLES[y], _pick(rng, tuple(COLOURS)), ("land", "water")[place], None)
            row.update(label=y, y=y, place=place, group=2 * y + place, class_name=VEHICLES[y])
        else:  # celeba
            target = rng.random() < 0.3
            spurious = target if rng.random() < CELEBA_CONFOUND[split] else not target
            colour = "yellow" if target else _pick(rng, [c for c in COLOURS if c != "yellow"])
            scene = _draw_scene(rng, _pick(rng, SHAPES), colour, _pick(rng, BACKGROUNDS),
                                _pick(rng, WRITABLE) if rng.random() < 0.2 else None)
            lo, hi = ((SMALL_LARGE_THRESHOLD, MAX_SIZE) if spurious
                      else (MIN_SIZE, SMALL_LARGE_THRESHOLD - 0.01))
            scene = dataclasses.replace(scene, size=float(rng.uniform(lo, hi)))
            attrs = celeba_attributes(scene)
            row.update({k: int(v) for k, v in attrs.items()})
            label = int(attrs[CELEBA_TARGET])
            row.update(label=label, group=2 * label + int(attrs[CELEBA_SPURIOUS]))
        # captions from their own stream, so typographic scenes stay in step with the shapes task
        caption_rng = np.random.default_rng([scene.texture_seed, 0xCA9])
        scene = dataclasses.replace(scene, caption=caption_for(scene, caption_rng, p_transcribe=0.0))
        row.update(shape=scene.shape, colour=scene.colour, background=scene.background, word=scene.word,
                   caption=scene.caption)
        scenes.append(scene)
        rows.append(row)
    return scenes, rows


def celeba_attributes(scene: Scene) -> dict[str, bool]:
    """The binary attributes of the ``celeba`` task for a scene."""
    return {
        "Red": scene.colour == "red",
        "Yellow": scene.colour == "yellow",
        "Blue": scene.colour == "blue",
        "Large": scene.size >= SMALL_LARGE_THRESHOLD,
        "Water": scene.background == "water",
        "Land": scene.background == "land",
        "Star": scene.shape == "star",
        "Circle": scene.shape == "circle",
        "Word": scene.word is not None,
    }


def make_task(task: str, split: str, n: int, seed: int = 0):
    """A labelled split of a world task: ``(frame, images)``.

    ``frame`` is a pandas DataFrame with one row per image: ``id``, ``label`` (int), ``split``, ``caption``,
    ``shape``, ``colour``, ``background``, ``word`` and the task's own columns (``class_name``; ``text`` for
    typographic; ``y``, ``place``, ``group`` for waterbirds; the attribute columns and ``group`` for celeba).
    ``images`` is a list of 64×64 RGB PIL images in the same order.
    """
    import pandas as pd

    scenes, rows = task_scenes(task, split, n, seed)
    return pd.DataFrame(rows), [render(s) for s in scenes]


def world_images(task: str = "shapes", split: str = "test", n: int = 1000, seed: int = 0
                 ) -> list[tuple[str, Image.Image]]:
    """``(id, image)`` pairs of a task split; torch-free, for the cache command."""
    scenes, rows = task_scenes(task, split, n, seed)
    return [(row["id"], render(s)) for row, s in zip(rows, scenes, strict=True)]


# --------------------------------------------------------------------------------------------- export


def _save_image(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def export_task(task: str, out_dir: str | os.PathLike, n: int = 1000, seed: int = 0, *,
                overwrite: bool = False, splits: Sequence[str] = SPLITS) -> Path:
    """Write ``n`` images per split of a world task to ``out_dir`` in the layout of the real dataset.

    - ``waterbirds``: ``metadata.csv`` (img_id, img_filename, y, split, place, place_filename), split 0/1/2.
    - ``celeba``: ``img_align_celeba/``, ``list_attr_celeba.txt`` (+1/−1), ``list_eval_partition.txt``.
    - ``shapes`` / ``typographic``: ``images/<split>/...png`` and ``metadata.csv`` (path, label, split, ...);
      typographic files are named ``label=<shape>_text=<word>_<i>.png`` as in PAINT / RTA-100.

    Returns the directory. Refuses to write into a non-empty directory unless ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SaeVitError(f"{out} is not empty; choose another --out or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for split in splits:
        scenes, rows = task_scenes(task, split, n, seed)
        for row, scene in zip(rows, scenes, strict=True):
            row["image"] = render(scene)
        frames.extend(rows)
    if task == "waterbirds":
        lines = ["img_id,img_filename,y,split,place,place_filename"]
        for i, r in enumerate(frames, 1):
            fname = f"{r['y']:03d}.{VEHICLES[r['y']]}/{r['id']}.png"
            _save_image(out / fname, r["image"])
            place_name = ("/l/land", "/w/water")[r["place"]]
            split = SPLITS.index(r["split"])
            lines.append(f"{i},{fname},{r['y']},{split},{r['place']},{place_name}/{i:08d}.png")
        write_text(out / "metadata.csv", "\n".join(lines) + "\n")
    elif task == "celeba":
        attr_lines = [str(len(frames)), " ".join(CELEBA_ATTRIBUTES)]
        part_lines = []
        for i, r in enumerate(frames, 1):
            fname = f"{i:06d}.png"
            _save_image(out / "img_align_celeba" / fname, r["image"])
            attr_lines.append(fname + " " + " ".join(" 1" if r[a] else "-1" for a in CELEBA_ATTRIBUTES))
            part_lines.append(f"{fname} {SPLITS.index(r['split'])}")
        write_text(out / "list_attr_celeba.txt", "\n".join(attr_lines) + "\n")
        write_text(out / "list_eval_partition.txt", "\n".join(part_lines) + "\n")
    elif task in ("shapes", "typographic"):
        text_col = ",text" if task == "typographic" else ""
        lines = ["path,label,split,class_name,shape,colour,background" + text_col]
        for i, r in enumerate(frames):
            if task == "typographic":
                fname = f"images/{r['split']}/label={r['class_name']}_text={r['text']}_{i:06d}.png"
            else:
                fname = f"images/{r['split']}/{r['id']}.png"
            _save_image(out / fname, r["image"])
            line = f"{fname},{r['label']},{r['split']},{r['class_name']},{r['shape']},{r['colour']},{r['background']}"
            lines.append(line + (f",{r['text']}" if task == "typographic" else ""))
        write_text(out / "metadata.csv", "\n".join(lines) + "\n")
    else:
        raise SaeVitError(f"Unknown world task {task!r}; use one of {', '.join(TASKS)}.")
    return out


def sample_grid(scenes: Sequence[Scene], columns: int = 8, scale: int = 2) -> Image.Image:
    """A contact sheet of rendered scenes (for ``saevit world show``)."""
    rows = math.ceil(len(scenes) / columns)
    s = IMAGE_SIZE * scale
    grid = Image.new("RGB", (columns * s, rows * s), (255, 255, 255))
    for i, scene in enumerate(scenes):
        img = render(scene).resize((s, s), Image.Resampling.NEAREST)
        grid.paste(img, ((i % columns) * s, (i // columns) * s))
    return grid


# --------------------------------------------------------------------------------------------- concepts


def concept_attributes() -> dict[str, tuple[str, ...]]:
    """The world's concept words by attribute (object, colour, background, size): steer-score's default
    vocabulary scores each attribute's concepts among themselves."""
    return {"object": OBJECTS, "colour": tuple(COLOURS), "background": BACKGROUNDS, "size": SIZES}


def scene_concepts(scene: Scene) -> tuple[str, ...]:
    """The concept words a scene shows (its object, colour, background and size; no object for a word-only
    image): ground-truth labels for the concepts of :func:`concept_attributes`."""
    shown = (scene.colour, scene.background, scene.size_word)
    return shown if scene.shape is None else (scene.shape, *shown)
