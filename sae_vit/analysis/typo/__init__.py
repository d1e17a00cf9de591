"""Typographic attacks and their defence by suppressing text-reading SAE features (PAPER.md §3).

Four parts, each usable alone:

- **Attack rendering** (:class:`AttackConfig`, :func:`render_attack`): the recipe of the typographic benchmarks
  (PAINT, Defense-Prefix, Dyslexify): a wrong class name written on the centre-cropped image, fill and stroke
  colours drawn from a palette and never equal, a font size drawn from a range (a fraction of the image side)
  and shrunk until the word fits, a random position. The *control* writes an unrelated pseudo-word of the same
  length with the very same placement, size and colours, so it covers the object equally but says nothing.
- **Evaluation** (:func:`evaluate`): zero-shot with ``"a photo of a {}."`` over the union of true labels and
  attack words; accuracy on clean, attacked and control images and the attack success rate (ASR, the
  prediction equals the written word).
- **Discovery** (:func:`discover_features`): SAE features ranked by how much more they fire on attacked images
  than on the same images without text (paired, so content is controlled), on a discovery split only.
- **Defences**: zeroing the top-N text features in one :func:`~sae_vit.backbone.splice` edit
  (:class:`SaeDefence`), and the baselines: attention-head ablation at the CLS token (:class:`HeadDefence`,
  Dyslexify-style), prompt-side (:class:`PromptDefence`) and projecting out a linear probe's "text present"
  direction (:class:`ProbeDefence`).

On the synthetic world, the splits are the world's own: discovery = ``train``, selection of layer and N =
``val``, reported numbers = ``test``. Nothing chosen ever sees the test split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from torch import Tensor

from sae_vit.analysis.common import ModelBundle, class_embeddings, load_model, zero_shot_logits  # noqa: F401
from sae_vit.core import edits
from sae_vit.core.atomic import atomic_write, write_json, write_text
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE

FEATURES_FORMAT = "sae_vit_typo_features"
FEATURES_VERSION = 1
TEMPLATE = "a photo of a {}."
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
ASSET_SAE = "typo_sae.safetensors"
ASSET_FEATURES = "typo_features.json"


# --------------------------------------------------------------------------------------------- attacks


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


# --------------------------------------------------------------------------------------------- data


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
    description: dict = field(default_factory=dict)


def attack_images(images: Sequence[Image.Image], labels: Sequence[int], classes: Sequence[str], backbone: Backbone,
                  cfg: AttackConfig, seed: int, description: dict | None = None) -> TypoSet:
    """Build a :class:`TypoSet`: each image gets a random wrong class name and a same-length pseudo-word."""
    cfg.validate()
    if len(classes) < 2:
        raise SaeVitError("A typographic attack needs at least two class names (the word must be a wrong class).")
    rng = np.random.default_rng([seed, 0x7790])
    clean, attacked, control, written = [], [], [], []
    for image, label in zip(images, labels, strict=True):
        wrong = [i for i in range(len(classes)) if i != label]
        w = wrong[int(rng.integers(len(wrong)))]
        base = centre_crop(to_rgb(image)) if cfg.crop else to_rgb(image)
        ctrl_word = pseudo_word(len(classes[w]), rng, avoid=classes)
        att, ctrl, _ = render_attack(base, classes[w], rng, replace(cfg, crop=False), control=ctrl_word)
        clean.append(backbone.transform(base))
        attacked.append(backbone.transform(att))
        control.append(backbone.transform(ctrl))
        written.append(w)
    return TypoSet(torch.stack(clean), torch.stack(attacked), torch.stack(control), torch.tensor(list(labels)),
                   torch.tensor(written), list(classes), description or {})


def world_typo_set(backbone: Backbone, split: str, n: int, cfg: AttackConfig = AttackConfig(), seed: int = 0) -> TypoSet:
    """Clean images of the world's ``shapes`` task (``split``), attacked with our recipe; classes = shapes."""
    from sae_vit.world import scenes as world

    scenes, rows = world.task_scenes("shapes", split, n, seed)
    images = [world.render(s) for s in scenes]
    desc = {"source": "world:shapes", "split": split, "n": n, "seed": seed, "attack": asdict(cfg)}
    return attack_images(images, [r["label"] for r in rows], world.SHAPES, backbone, cfg, seed, desc)


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
                   list(world.SHAPES), {"source": "world:typographic", "split": split, "n": n, "seed": seed})


# --------------------------------------------------------------------------------------------- defences


class Defence:
    """No defence. Subclasses change the forward pass (:meth:`context`), the class text embeddings
    (:meth:`text`) or the image embedding (:meth:`image`)."""

    name = "none"

    def context(self, backbone: Backbone) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def text(self, class_emb: Tensor) -> Tensor:
        return class_emb

    def image(self, emb: Tensor, written: Tensor | None) -> Tensor:
        return emb

    def describe(self) -> str:
        return "no defence"


class SaeDefence(Defence):
    """Zero the top-``n`` text features of an SAE during the forward pass (one ``splice`` edit)."""

    name = "sae"

    def __init__(self, sae: SAE, features: Sequence[int]):
        self.sae, self.features = sae, [int(i) for i in features]

    def context(self, backbone: Backbone):
        return splice(backbone, self.sae.cfg.layer, edits.zero(self.sae, self.features), self.sae.cfg.site,
                      self.sae.cfg.tokens)

    def describe(self) -> str:
        return f"SAE features, layer {self.sae.cfg.layer}, N={len(self.features)}"


class HeadDefence(Defence):
    """Dyslexify-style: zero chosen attention heads' output at the CLS token."""

    name = "heads"

    def __init__(self, heads: Sequence[tuple[int, int]]):
        self.heads = [(int(layer), int(h)) for layer, h in heads]

    @contextlib.contextmanager
    def context(self, backbone: Backbone) -> Iterator[Backbone]:
        handles = []
        by_layer: dict[int, list[int]] = {}
        for layer, h in self.heads:
            by_layer.setdefault(layer, []).append(h)
        for layer, hs in by_layer.items():
            attn = backbone.model.blocks[layer].attn
            hd = attn.head_dim if hasattr(attn, "head_dim") else backbone.d_model // attn.num_heads

            def hook(_m, inp, hs=hs, hd=hd):
                x = inp[0].clone()
                for h in hs:
                    x[:, 0, h * hd : (h + 1) * hd] = 0
                return (x, *inp[1:])

            handles.append(attn.proj.register_forward_pre_hook(hook))
        try:
            yield backbone
        finally:
            for handle in handles:
                handle.remove()

    def describe(self) -> str:
        return f"{len(self.heads)} heads: " + ", ".join(f"L{layer}H{h}" for layer, h in self.heads)


class ProbeDefence(Defence):
    """Set the component along a linear probe's "text present" direction to its mean on clean images,
    at every token of one layer."""

    name = "probe"

    def __init__(self, layer: int, direction: Tensor, clean_mean: float, tokens: str = "all"):
        self.layer, self.tokens = layer, tokens
        self.direction = F.normalize(direction.float(), dim=0)
        self.clean_mean = float(clean_mean)

    def context(self, backbone: Backbone):
        edit = edits.project(self.direction.to(backbone.device), self.clean_mean)
        return splice(backbone, self.layer, edit, "resid_post", self.tokens)

    def describe(self) -> str:
        return f"probe direction, layer {self.layer}"


class PromptDefence(Defence):
    """Prompt side. ``class``: each class embedding minus ``strength`` × the embedding of "the word {class}."
    (needs no knowledge of the attack). ``oracle``: the image embedding with ``strength`` × its component along
    the written word's embedding removed (needs the written word)."""

    name = "prompt"

    def __init__(self, kind: str, strength: float, word_emb: Tensor):
        self.kind, self.strength, self.word_emb = kind, float(strength), F.normalize(word_emb.float(), dim=-1)

    def text(self, class_emb: Tensor) -> Tensor:
        if self.kind != "class":
            return class_emb
        return F.normalize(class_emb - self.strength * self.word_emb.to(class_emb.device), dim=-1)

    def image(self, emb: Tensor, written: Tensor | None) -> Tensor:
        if self.kind != "oracle" or written is None:
            return emb
        e = F.normalize(emb.float(), dim=-1)
        t = self.word_emb.to(e.device)[written]
        return e - self.strength * (e * t).sum(-1, keepdim=True) * t

    def describe(self) -> str:
        return f"prompt ({self.kind}), strength {self.strength:g}"


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed_images(backbone: Backbone, images: Tensor, defence: Defence = Defence(), batch_size: int = 256) -> Tensor:
    """Image embeddings [n, d] under ``defence``."""
    out = []
    with defence.context(backbone):
        for i in range(0, len(images), batch_size):
            out.append(backbone.image_embedding(images[i : i + batch_size].to(backbone.device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def predict(backbone: Backbone, images: Tensor, class_emb: Tensor, defence: Defence = Defence(),
            written: Tensor | None = None) -> Tensor:
    """Zero-shot probabilities [n, n_classes] (softmax of 100 · cos) under ``defence``."""
    emb = defence.image(embed_images(backbone, images, defence), written)
    text = defence.text(class_emb)
    return zero_shot_logits(emb, text).softmax(-1)


@dataclass
class TypoMetrics:
    """Zero-shot results of one defence on one :class:`TypoSet` (fractions in [0, 1])."""

    clean: float
    """Accuracy on clean images."""
    attacked: float
    """Accuracy on attacked images."""
    control: float
    """Accuracy on images with a same-length pseudo-word (covering without meaning)."""
    asr: float
    """Attack success rate: the prediction is the written word."""
    n_images: int

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(backbone: Backbone, data: TypoSet, class_emb: Tensor, defence: Defence = Defence(),
             control: bool = True) -> TypoMetrics:
    """Accuracy on clean, attacked and control images and the ASR, under ``defence`` (``control=False`` skips
    the control images and reports NaN for them, to save time in sweeps)."""
    res = {}
    for kind in ("clean", "attacked", "control") if control else ("clean", "attacked"):
        res[kind] = predict(backbone, getattr(data, kind), class_emb, defence, data.written).argmax(-1)
    return TypoMetrics(
        clean=float((res["clean"] == data.labels).float().mean()),
        attacked=float((res["attacked"] == data.labels).float().mean()),
        control=float((res["control"] == data.labels).float().mean()) if control else float("nan"),
        asr=float((res["attacked"] == data.written).float().mean()),
        n_images=len(data.labels),
    )


# --------------------------------------------------------------------------------------------- discovery


@torch.no_grad()
def latent_means(backbone: Backbone, sae: SAE, images: Tensor, pool: str = "mean", batch_size: int = 256) -> Tensor:
    """Per-image pooled SAE latents [n, d_sae] at the SAE's hook (``mean`` or ``max`` over its tokens)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(backbone.device)
        acts = backbone.capture(x, [sae.cfg.layer], sae.cfg.site, sae.cfg.tokens)[sae.cfg.layer]
        f = sae.encode(acts.float())
        out.append((f.mean(1) if pool == "mean" else f.amax(1)).cpu())
    return torch.cat(out)


def rank_text_features(clean: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Rank features by the standardised paired difference (mean of text − clean over the pooled std).

    ``clean`` and ``text`` are pooled latents [n, d_sae] of the same images; returns ``(indices, scores)``
    sorted by score, highest first (features that never fire score 0)."""
    diff = (text - clean).mean(0)
    pooled = ((clean.var(0) + text.var(0)) / 2).sqrt()
    score = torch.where(pooled > 0, diff / (pooled + 1e-6), torch.zeros_like(diff))
    order = score.argsort(descending=True)
    return order, score[order]


def discover_features(backbone: Backbone, sae: SAE, data: TypoSet, pool: str = "mean", max_features: int = 256) -> list[dict]:
    """Text features of ``sae`` on a discovery :class:`TypoSet`: ``[{"index", "score"}]``, best first."""
    clean = latent_means(backbone, sae, data.clean, pool)
    text = latent_means(backbone, sae, data.attacked, pool)
    order, scores = rank_text_features(clean, text)
    keep = scores > 0
    return [{"index": int(i), "score": round(float(s), 4)} for i, s in zip(order[keep][:max_features],
                                                                             scores[keep][:max_features], strict=True)]


@torch.no_grad()
def rank_heads(backbone: Backbone, data: TypoSet, class_emb: Tensor, max_images: int = 128) -> list[tuple[int, int, float]]:
    """Every attention head ranked by how much its ablation (at CLS) lowers the ASR on ``data``:
    ``[(layer, head, asr_drop)]``, largest drop first."""
    imgs, written = data.attacked[:max_images], data.written[:max_images]
    base = float((predict(backbone, imgs, class_emb).argmax(-1) == written).float().mean())
    out = []
    for layer in range(backbone.n_layers):
        for h in range(backbone.model.blocks[layer].attn.num_heads):
            pred = predict(backbone, imgs, class_emb, HeadDefence([(layer, h)])).argmax(-1)
            out.append((layer, h, base - float((pred == written).float().mean())))
    return sorted(out, key=lambda t: -t[2])


@torch.no_grad()
def fit_probe(backbone: Backbone, data: TypoSet, layer: int, tokens: str = "all", steps: int = 200) -> ProbeDefence:
    """A logistic-regression probe (text present or not) on token-mean residuals at ``layer``; its unit
    weight vector becomes the direction a :class:`ProbeDefence` removes."""
    def pooled(images: Tensor) -> Tensor:
        return torch.cat([backbone.capture(images[i : i + 256].to(backbone.device), [layer], "resid_post", tokens)[layer]
                          .float().mean(1).cpu() for i in range(0, len(images), 256)])

    xc, xa = pooled(data.clean), pooled(data.attacked)
    x = torch.cat([xc, xa])
    y = torch.cat([torch.zeros(len(xc)), torch.ones(len(xa))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    direction = F.normalize((w.detach() / sd), dim=0)  # back to the residual's own coordinates
    # the clean mean of the projection, over every token (the edit acts per token)
    acts = torch.cat([backbone.capture(data.clean[i : i + 256].to(backbone.device), [layer], "resid_post", tokens)[layer]
                      .float().cpu() for i in range(0, len(data.clean), 256)])
    return ProbeDefence(layer, direction, float((acts @ direction).mean()), tokens)


# --------------------------------------------------------------------------------------------- selection


def _better(m: TypoMetrics, best: TypoMetrics | None, clean_ref: float, max_clean_drop: float) -> bool:
    if clean_ref - m.clean > max_clean_drop + 1e-9:
        return False
    return best is None or m.attacked > best.attacked + 1e-9


def select_n(backbone: Backbone, sae: SAE, ranked: Sequence[int], val: TypoSet, class_emb: Tensor,
             ns: Sequence[int], max_clean_drop: float = 0.02) -> tuple[int, list[dict]]:
    """The number of suppressed features with the best attacked accuracy on ``val`` whose clean accuracy drops
    at most ``max_clean_drop``; returns ``(n, rows)`` with every tried N."""
    base = evaluate(backbone, val, class_emb, control=False)
    rows, best, best_n = [], None, 0
    for n in ns:
        if n > len(ranked):
            continue
        m = base if n == 0 else evaluate(backbone, val, class_emb, SaeDefence(sae, ranked[:n]), control=False)
        rows.append({"layer": sae.cfg.layer, "n": n, **m.as_dict()})
        if _better(m, best, base.clean, max_clean_drop):
            best, best_n = m, n
    return best_n, rows


# --------------------------------------------------------------------------------------------- feature files


def sae_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_features(path: str | os.PathLike, sae_path: str | os.PathLike, sae: SAE, features: list[dict], n_selected: int,
                  discovery: dict, selection: dict | None = None, overwrite: bool = False) -> Path:
    """Write the chosen text-feature set as JSON beside the SAE (atomic; refuses to replace unless asked)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SaeVitError(f"{path} already exists; pass --overwrite to replace it or choose another --out.")
    obj = {
        "format": FEATURES_FORMAT,
        "version": FEATURES_VERSION,
        "sae": Path(sae_path).name if Path(sae_path).parent == path.parent else str(sae_path),
        "sae_sha256": sae_hash(sae_path),
        "model": sae.cfg.model,
        "layer": sae.cfg.layer,
        "site": sae.cfg.site,
        "tokens": sae.cfg.tokens,
        "n_selected": int(n_selected),
        "features": features,
        "discovery": discovery,
        "selection": selection or {},
    }
    return write_json(path, obj)


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
        if sae_path is not None and obj.get("sae_sha256") not in (None, sae_hash(sae_path)):
            raise SaeVitError(f"{p} was made for a different SAE file than {sae_path}; pass the SAE it names ({obj.get('sae')}).")
    obj["path"] = str(p)
    return obj


# --------------------------------------------------------------------------------------------- defaults


def asset_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("sae_vit").joinpath("assets")))


def default_pair() -> tuple[Path, Path]:
    """The SAE and feature file used when none is given: ``<workdir>/typo`` if it has both, else the shipped
    ones in ``sae_vit/assets``."""
    from sae_vit.core.defaults import workdir

    for root in (workdir() / "typo", asset_dir()):
        if (root / ASSET_SAE).is_file() and (root / ASSET_FEATURES).is_file():
            return root / ASSET_SAE, root / ASSET_FEATURES
    raise SaeVitError(
        f"No text-feature SAE in {workdir() / 'typo'} or the package assets; pass --sae and --features, or run "
        "`saevit defend-typo --make-assets`."
    )


def resolve_features(sae_path: str | os.PathLike | None, features_path: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """(SAE path, feature-file path or None) from the user's options, filling in defaults."""
    if sae_path is None and features_path is None:
        return default_pair()
    if sae_path is None:
        obj = load_features(features_path)
        cand = Path(obj["sae"])
        if not cand.is_absolute():
            cand = Path(features_path).parent / cand
        return cand, Path(features_path)
    if features_path is None:
        beside = Path(sae_path).with_name(ASSET_FEATURES)
        if beside.is_file():
            return Path(sae_path), beside
        guess = Path(str(sae_path)).with_suffix(".typo.json")
        return Path(sae_path), guess if guess.is_file() else None
    return Path(sae_path), Path(features_path)


def features_path_for(sae_path: str | os.PathLike) -> Path:
    """Where a feature file for ``sae_path`` is written by default: ``<sae>.typo.json`` beside it."""
    return Path(str(sae_path)).with_suffix(".typo.json")


@dataclass(frozen=True)
class EvalConfig:
    """The world protocol: splits, sizes, attack recipes and the selection grid."""

    n_discovery: int = 512
    """Images of the world's ``train`` split used to discover features, heads and the probe."""
    n_val: int = 600
    """Images of the ``val`` split used to choose layer, N and each baseline's setting (enough to resolve the
    2-point clean-accuracy limit: 300 were not)."""
    n_test: int = 600
    """Images of the ``test`` split on which numbers are reported."""
    discovery_attack: AttackConfig = DISCOVERY_ATTACK
    """Recipe for discovery, validation and the in-distribution test."""
    shifted_attack: AttackConfig = SHIFTED_ATTACK
    """A different size, colour and position: the generalisation test."""
    ns: tuple[int, ...] = (0, 2, 4, 8, 16, 32, 64)
    """Numbers of suppressed features tried on the validation split."""
    head_counts: tuple[int, ...] = (0, 1, 2, 4, 8)
    """Numbers of ablated heads tried (the baseline)."""
    prompt_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Prompt-side strengths tried."""
    max_clean_drop: float = 0.02
    """A setting is eligible only if its validation clean accuracy drops at most this much."""
    pool: str = "mean"
    """How latents are pooled over tokens for discovery: ``mean`` or ``max``."""
    seed: int = 0
    """World seed (scenes and attack draws)."""
    baselines: bool = True
    """Also run the head-ablation, prompt and probe baselines."""
    test_sets: tuple[str, ...] = ("discovery", "shifted", "world")
    """Which test sets to report: our recipe as in discovery, the shifted recipe, the world's own renderer."""


@dataclass
class TypoReport:
    """What :func:`run_world_eval` returns."""

    sweep: list[dict]
    """Validation rows: one per (layer, N) with clean / attacked / control accuracy and ASR."""
    layer: int
    """Chosen layer."""
    n: int
    """Chosen number of suppressed features."""
    sae_path: str
    features: list[dict]
    """Ranked text features of the chosen SAE (index, score), best first."""
    results: dict[str, dict[str, TypoMetrics]]
    """Test set name -> defence name -> metrics."""
    settings: dict[str, str]
    """Defence name -> what was chosen for it."""
    model: str = ""


def run_world_eval(bundle: ModelBundle, saes: Sequence[tuple[str | os.PathLike, SAE]], cfg: EvalConfig = EvalConfig(),
                   progress: Callable[[str], None] | None = None) -> TypoReport:
    """Discover text features of each SAE on the world's train split, choose the layer and N on val, and report
    every defence on three test sets: the discovery recipe, the shifted recipe and the world's own typographic
    split (each with clean and control twins)."""
    say = progress or (lambda _msg: None)
    if not saes:
        raise SaeVitError("No SAE to evaluate; pass --sae with at least one checkpoint.")
    bb = bundle.backbone
    classes = _world_classes()
    class_emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    say(f"rendering discovery ({cfg.n_discovery}), validation ({cfg.n_val}) and test ({cfg.n_test}) images")
    disc = world_typo_set(bb, "train", cfg.n_discovery, cfg.discovery_attack, cfg.seed)
    val = world_typo_set(bb, "val", cfg.n_val, cfg.discovery_attack, cfg.seed)
    makers = {
        "discovery": ("test (discovery recipe)", lambda: world_typo_set(bb, "test", cfg.n_test, cfg.discovery_attack,
                                                                        cfg.seed)),
        "shifted": ("test (shifted recipe)", lambda: world_typo_set(bb, "test", cfg.n_test, cfg.shifted_attack,
                                                                    cfg.seed + 1)),
        "world": ("test (world typographic)", lambda: world_native_set(bb, "test", cfg.n_test, cfg.seed)),
    }
    unknown = [t for t in cfg.test_sets if t not in makers]
    if unknown:
        raise SaeVitError(f"Unknown test set {unknown[0]!r}; use some of: {', '.join(makers)}.")
    tests = {makers[t][0]: makers[t][1]() for t in cfg.test_sets}
    base_val = evaluate(bb, val, class_emb, control=False)
    sweep, best = [], None
    ranked_by_sae = {}
    for path, sae in saes:
        _check_sae(sae, bb, path)
        say(f"discovering text features of layer {sae.cfg.layer} ({path})")
        ranked = discover_features(bb, sae, disc, cfg.pool, max_features=max(cfg.ns))
        ranked_by_sae[str(path)] = ranked
        n, rows = select_n(bb, sae, [f["index"] for f in ranked], val, class_emb, cfg.ns, cfg.max_clean_drop)
        sweep.extend(rows)
        m = next(r for r in rows if r["n"] == n)
        if best is None or (m["attacked"], -n) > (best[0]["attacked"], -best[2]):
            best = (m, (path, sae), n)
    _, (best_path, best_sae), best_n = best
    features = ranked_by_sae[str(best_path)]
    defences: dict[str, Defence] = {"none": Defence(),
                                    "sae": SaeDefence(best_sae, [f["index"] for f in features[:best_n]])}
    if cfg.baselines:
        say("baselines: ranking attention heads, fitting the probe, tuning the prompt defences")
        defences.update(_tune_baselines(bundle, disc, val, class_emb, classes, best_sae.cfg.layer, best_sae.cfg.tokens,
                                        base_val.clean, cfg))
    results = {}
    for name, data in tests.items():
        say(f"evaluating on {name}")
        results[name] = {d: evaluate(bb, data, class_emb, defence) for d, defence in defences.items()}
    return TypoReport(sweep, best_sae.cfg.layer, best_n, str(best_path), features, results,
                      {d: defence.describe() for d, defence in defences.items()}, bundle.description)


def _world_classes() -> list[str]:
    from sae_vit.world import scenes as world

    return list(world.SHAPES)


def _check_sae(sae: SAE, backbone: Backbone, path) -> None:
    if sae.cfg.layer is None or not 0 <= sae.cfg.layer < backbone.n_layers:
        raise SaeVitError(f"{path} has no usable layer ({sae.cfg.layer}); it must be trained on this model's blocks.")
    if sae.cfg.d_in != backbone.d_site(sae.cfg.site):
        raise SaeVitError(
            f"{path} expects width {sae.cfg.d_in} but {backbone.name} has {backbone.d_site(sae.cfg.site)} at "
            f"{sae.cfg.site}; pass an SAE trained on this model."
        )


def _tune_baselines(bundle: ModelBundle, disc: TypoSet, val: TypoSet, class_emb: Tensor, classes: Sequence[str],
                    layer: int, tokens: str, clean_ref: float, cfg: EvalConfig) -> dict[str, Defence]:
    bb = bundle.backbone
    out: dict[str, Defence] = {}
    heads = rank_heads(bb, disc, class_emb)
    out["heads"] = _choose(bb, val, class_emb, [HeadDefence([(h[0], h[1]) for h in heads[:k]]) for k in cfg.head_counts],
                           clean_ref, cfg.max_clean_drop)
    word_emb = bundle.head.embed(list(classes), ("the word {}.",))
    out["prompt (class)"] = _choose(bb, val, class_emb, [Defence()] + [PromptDefence("class", s, word_emb)
                                                                       for s in cfg.prompt_strengths],
                                    clean_ref, cfg.max_clean_drop)
    bare = bundle.head.embed(list(classes), ("{}",))
    out["prompt (oracle word)"] = _choose(bb, val, class_emb, [Defence()] + [PromptDefence("oracle", s, bare)
                                                                             for s in cfg.prompt_strengths],
                                          clean_ref, cfg.max_clean_drop)
    out["probe"] = fit_probe(bb, disc, layer, tokens)
    return out


def _choose(backbone: Backbone, val: TypoSet, class_emb: Tensor, candidates: Sequence[Defence], clean_ref: float,
            max_clean_drop: float) -> Defence:
    best, best_m = candidates[0], None
    for d in candidates:
        m = evaluate(backbone, val, class_emb, d, control=False)
        if _better(m, best_m, clean_ref, max_clean_drop):
            best, best_m = d, m
    return best


def write_report_features(report: TypoReport, sae: SAE, out: str | os.PathLike | None, cfg: EvalConfig,
                          overwrite: bool = False) -> Path:
    """Save the chosen SAE's feature set (default: ``<sae>.typo.json`` beside it)."""
    path = Path(out) if out is not None else features_path_for(report.sae_path)
    discovery = {"source": "world:shapes", "split": "train", "n_images": cfg.n_discovery, "seed": cfg.seed,
                 "attack": asdict(cfg.discovery_attack), "pool": cfg.pool, "score": "standardised paired difference",
                 "template": TEMPLATE}
    selection = {"split": "val", "n_images": cfg.n_val, "ns": list(cfg.ns), "max_clean_drop": cfg.max_clean_drop,
                 "sweep": report.sweep}
    return save_features(path, report.sae_path, sae, report.features, report.n, discovery, selection, overwrite)


# --------------------------------------------------------------------------------------------- single images, folders


def defence_from_files(sae_path: str | os.PathLike, features_path: str | os.PathLike | None, n: int | None,
                       device: str = "cpu") -> tuple[SaeDefence, dict]:
    """An :class:`SaeDefence` from an SAE and its feature file (``n`` overrides the file's chosen N)."""
    sae = SAE.load(sae_path, device)
    if features_path is None:
        raise SaeVitError(
            f"No feature file for {sae_path}; pass --features FILE or make one with "
            f"`saevit defend-typo --eval world --sae {sae_path}`."
        )
    feats = load_features(features_path, sae, sae_path if not str(sae_path).startswith("hf://") else None)
    k = feats["n_selected"] if n is None else n
    if k < 0:
        raise SaeVitError(f"--n must be zero or more (got {k}).")
    return SaeDefence(sae, [f["index"] for f in feats["features"][:k]]), feats


def classify_image(bundle: ModelBundle, image: str | os.PathLike, classes: Sequence[str],
                   defence: Defence) -> tuple[Tensor, Tensor]:
    """Zero-shot probabilities [n_classes] of one image file without and with ``defence``."""
    x = bundle.backbone.transform(open_image(image))[None]
    emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    return predict(bundle.backbone, x, emb)[0], predict(bundle.backbone, x, emb, defence)[0]


def folder_eval(bundle: ModelBundle, directory: str | os.PathLike, defence: Defence) -> dict[str, TypoMetrics | dict]:
    """A typographic set on disk (PAINT / RTA-100 names or a ``path,label,text`` CSV): accuracy and ASR on its
    attacked images (and accuracy on its clean ones, rows whose text is empty or ``none``), without and with
    ``defence``. Classes: the union of labels and written words."""
    import pandas as pd

    from sae_vit.io.datasets import read_typographic

    frame = read_typographic(directory)
    texts = frame["text"].astype(str).str.strip().str.lower()
    is_clean = texts.isin(["", "none", "nan", "clean"])
    meta = Path(directory) / "metadata.csv"
    if meta.is_file() and "kind" in (kinds := pd.read_csv(meta)).columns and len(kinds) == len(frame):
        # sets written by `defend-typo attack --control`: keep only the attacks (controls are not classes)
        keep = kinds["kind"].astype(str).isin(["attack", "clean"]).values
        frame, is_clean = frame[keep].reset_index(drop=True), is_clean[keep].reset_index(drop=True)
    classes = sorted(set(frame["label_name"]) | set(frame.loc[~is_clean, "text"]))
    index = {c: i for i, c in enumerate(classes)}
    images = torch.stack([bundle.backbone.transform(open_image(p)) for p in frame["path"]])
    labels = torch.tensor([index[n] for n in frame["label_name"]])
    written = torch.tensor([index.get(t, -1) if not c else -1 for t, c in zip(frame["text"], is_clean, strict=True)])
    emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    out: dict = {"classes": classes}
    mask_a, mask_c = torch.tensor((~is_clean).values), torch.tensor(is_clean.values)
    for name, d in (("none", Defence()), ("sae", defence)):
        pred = predict(bundle.backbone, images, emb, d).argmax(-1)
        ok = (pred == labels).float()
        out[name] = {
            "attacked": float(ok[mask_a].mean()) if mask_a.any() else float("nan"),
            "clean": float(ok[mask_c].mean()) if mask_c.any() else float("nan"),
            "asr": float((pred == written)[mask_a].float().mean()) if mask_a.any() else float("nan"),
            "n_attacked": int(mask_a.sum()), "n_clean": int(mask_c.sum()),
        }
    return out


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
        image = open_image(f)
        base = centre_crop(image) if cfg.crop else image
        ctrl_word = pseudo_word(len(w), rng, avoid=list(classes or []) + [w]) if control else None
        att, ctrl, _ = render_attack(base, w, rng, replace(cfg, crop=False), control=ctrl_word)
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


# --------------------------------------------------------------------------------------------- shipped assets


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
