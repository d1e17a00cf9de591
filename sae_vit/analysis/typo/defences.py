"""Defences against typographic attacks (the SAE's and the baselines'), each changing the forward pass, the
class text embeddings or the image embedding, and their zero-shot evaluation with ``"a photo of a {}."`` over
the union of true labels and attack words."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import ModelBundle, class_embeddings, zero_shot_logits
from sae_vit.analysis.typo.attacks import TypoSet, open_image
from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.sae import SAE

TEMPLATE = "a photo of a {}."


class Defence:
    """No defence. Subclasses change the forward pass (:meth:`context`), the class text embeddings
    (:meth:`text`) or the image embedding (:meth:`image`)."""

    def context(self, backbone: Backbone) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def text(self, class_emb: Tensor) -> Tensor:
        return class_emb

    def image(self, emb: Tensor, written: Tensor | None) -> Tensor:
        return emb

    def describe(self) -> str:
        return "no defence"

    @property
    def changes_forward(self) -> bool:
        """Whether :meth:`context` changes the image tower's forward pass (else the undefended image embeddings
        serve: :func:`undefended`)."""
        return type(self).context is not Defence.context


class SaeDefence(Defence):
    """Zero the top-``n`` text features of an SAE during the forward pass (one ``splice`` edit)."""

    def __init__(self, sae: SAE, features: Sequence[int]):
        self.sae, self.features = sae, [int(i) for i in features]

    def context(self, backbone: Backbone):
        return splice(backbone, self.sae.cfg.layer, edits.zero(self.sae, self.features), self.sae.cfg.site,
                      self.sae.cfg.tokens)

    def describe(self) -> str:
        return f"SAE features, layer {self.sae.cfg.layer}, N={len(self.features)}"


class HeadDefence(Defence):
    """Dyslexify-style: zero chosen attention heads' output at the CLS token."""

    def __init__(self, heads: Sequence[tuple[int, int]]):
        self.heads = [(int(layer), int(h)) for layer, h in heads]

    @contextlib.contextmanager
    def context(self, backbone: Backbone) -> Iterator[Backbone]:
        with contextlib.ExitStack() as hooks:
            for layer, h in self.heads:
                attn = backbone.model.blocks[layer].attn
                hd = getattr(attn, "head_dim", backbone.d_model // attn.num_heads)

                def hook(_m, inp, head=slice(h * hd, (h + 1) * hd)):  # the head's slice of the input to proj
                    x = inp[0].clone()
                    x[:, 0, head] = 0
                    return (x, *inp[1:])

                hooks.callback(attn.proj.register_forward_pre_hook(hook).remove)
            yield backbone

    def describe(self) -> str:
        return f"{len(self.heads)} heads: " + ", ".join(f"L{layer}H{h}" for layer, h in self.heads)

    @property
    def changes_forward(self) -> bool:
        return bool(self.heads)


class ProbeDefence(Defence):
    """At every token of a layer, set the part along a probe's "text present" direction to its clean mean."""

    def __init__(self, layer: int, direction: Tensor, clean_mean: float, tokens: str = "all"):
        self.layer, self.tokens, self.clean_mean = layer, tokens, float(clean_mean)
        self.direction = F.normalize(direction.float(), dim=0)

    def context(self, backbone: Backbone):
        edit = edits.project(self.direction.to(backbone.device), self.clean_mean)
        return splice(backbone, self.layer, edit, "resid_post", self.tokens)

    def describe(self) -> str:
        return f"probe direction, layer {self.layer}"


class PromptDefence(Defence):
    """Prompt side. ``class``: each class embedding minus ``strength`` × the embedding of "the word {class}."
    (needs no knowledge of the attack). ``oracle``: the image embedding with ``strength`` × its component along
    the written word's embedding removed (needs the written word)."""

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


@torch.no_grad()
def embed_images(backbone: Backbone, images: Tensor, defence: Defence = Defence(), batch_size: int = 256) -> Tensor:
    """Image embeddings [n, d] under ``defence``."""
    with defence.context(backbone):
        return torch.cat([backbone.image_embedding(x.to(backbone.device)).float().cpu()
                          for x in images.split(batch_size)])


@torch.no_grad()
def predict(backbone: Backbone, images: Tensor, class_emb: Tensor, defence: Defence = Defence(),
            written: Tensor | None = None, plain: Tensor | None = None) -> Tensor:
    """Zero-shot probabilities [n, n_classes] (softmax of 100 · cos) under ``defence``; ``plain``, the
    undefended embeddings of ``images``, replaces the forward pass when the defence does not change it."""
    emb = plain if plain is not None and not defence.changes_forward else embed_images(backbone, images, defence)
    return zero_shot_logits(defence.image(emb, written), defence.text(class_emb)).softmax(-1)


@dataclass
class TypoMetrics:
    """Zero-shot results of one defence on one :class:`TypoSet` (fractions in [0, 1]; gains in fractions too)."""

    clean: float
    """Accuracy on clean images."""
    attacked: float
    """Accuracy on attacked images."""
    control: float
    """Accuracy on images with a same-length pseudo-word (covering without meaning)."""
    asr: float
    """Attack success rate: the prediction is the written word."""
    n_images: int
    attack_gain: float = float("nan")
    """Attacked accuracy minus the undefended model's on the same images (NaN when not compared)."""
    control_gain: float = float("nan")
    """Control accuracy minus the undefended model's on the same images."""
    reading_gain: float = float("nan")
    """Reading-specific gain, ``attack_gain - control_gain``: what the defence recovers on the attack beyond
    what it recovers on the unrelated-word control (i.e. beyond undoing the occlusion of any written text)."""

    def as_dict(self) -> dict:
        return asdict(self)

    def against(self, base: TypoMetrics) -> TypoMetrics:
        """These metrics with their gains over ``base`` (the undefended model on the same images)."""
        return replace(self, **gains(self.attacked, self.control, base.attacked, base.control))


def gains(attacked: float, control: float, base_attacked: float, base_control: float) -> dict[str, float]:
    """A defence's accuracy gains over no defence on the same images: on the attack, on the unrelated-word
    control, and the reading-specific gain (attack gain − control gain)."""
    attack, ctrl = attacked - base_attacked, control - base_control
    return {"attack_gain": attack, "control_gain": ctrl, "reading_gain": attack - ctrl}


def undefended(backbone: Backbone, data: TypoSet) -> dict[str, Tensor]:
    """The undefended image embeddings of ``data``'s clean, attacked and control images, for :func:`evaluate`'s
    ``plain``: one forward pass per image for every defence that leaves the forward pass alone."""
    return {k: embed_images(backbone, getattr(data, k)) for k in ("clean", "attacked", "control")}


def evaluate(backbone: Backbone, data: TypoSet, class_emb: Tensor, defence: Defence = Defence(),
             control: bool = True, base: TypoMetrics | None = None,
             plain: dict[str, Tensor] | None = None) -> TypoMetrics:
    """Accuracy on clean, attacked and control images and the ASR, under ``defence`` (``control=False`` skips
    the control images and reports NaN for them); with ``base`` (no defence, same images), the gains too.
    ``plain`` (:func:`undefended` of ``data``) stands in for the forward pass of a defence that does not change
    it (no defence, prompt defences, zero heads)."""
    kinds = ("clean", "attacked", "control") if control else ("clean", "attacked")
    pred = {k: predict(backbone, getattr(data, k), class_emb, defence, data.written,
                       None if plain is None else plain[k]).argmax(-1)
            for k in kinds}
    acc = {k: float((p == data.labels).float().mean()) for k, p in pred.items()}
    m = TypoMetrics(acc["clean"], acc["attacked"], acc.get("control", float("nan")),
                    float((pred["attacked"] == data.written).float().mean()), len(data.labels))
    return m.against(base) if base is not None else m


def best_setting(metrics: Sequence[TypoMetrics], clean_ref: float, max_clean_drop: float) -> int:
    """The selection rule of every setting: the index of the highest reading-specific gain
    (:attr:`TypoMetrics.reading_gain`) among the settings whose clean accuracy is at most ``max_clean_drop``
    below ``clean_ref`` (the first on ties, so list the no-defence setting first; 0 if none is eligible)."""
    best = None
    for i, m in enumerate(metrics):
        eligible = clean_ref - m.clean <= max_clean_drop + 1e-9
        if eligible and (best is None or m.reading_gain > metrics[best].reading_gain + 1e-9):
            best = i
    return best or 0


#: An input image whose shorter side exceeds this many times the model's input side gets a resize warning.
RESIZE_WARN_FACTOR = 2.0


def input_side(backbone: Backbone) -> int:
    """The side in pixels of the square the model sees (its preprocessing resizes and centre-crops to it)."""
    import timm.data

    return int(timm.data.resolve_data_config({}, model=backbone.model)["input_size"][-1])


def resize_warning(image: str | os.PathLike, size: tuple[int, int], side: int) -> str | None:
    """One line when an image of ``size`` (w, h) is shrunk far below its size for a model that sees ``side`` px:
    its shorter side is more than :data:`RESIZE_WARN_FACTOR` × ``side``. None otherwise."""
    w, h = size
    if min(w, h) <= RESIZE_WARN_FACTOR * side:
        return None
    return (f"{image} is {w}x{h} px; the model sees it at {side}x{side} px (shorter side shrunk "
            f"{min(w, h) / side:.1f}x, then centre-cropped), so small text on it may not be readable to the model.")


def classify_image(bundle: ModelBundle, image: str | os.PathLike, classes: Sequence[str],
                   defence: Defence) -> tuple[Tensor, Tensor]:
    """Zero-shot probabilities [n_classes] of one image file without and with ``defence``."""
    x = bundle.backbone.transform(open_image(image))[None]
    emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    return predict(bundle.backbone, x, emb)[0], predict(bundle.backbone, x, emb, defence)[0]


def _folder_kinds(directory: str | os.PathLike, frame) -> list[str]:
    """``attack``, ``control`` or ``clean`` per row of a typographic set: from ``metadata.csv``'s ``kind`` column
    (sets written by ``defend-typo attack --control``), else ``clean`` for empty / ``none`` text, else ``attack``."""
    import pandas as pd

    meta = Path(directory) / "metadata.csv"
    if meta.is_file() and "kind" in (kinds := pd.read_csv(meta)).columns and len(kinds) == len(frame):
        return [k if k in ("attack", "control", "clean") else "attack" for k in kinds["kind"].astype(str)]
    texts = frame["text"].astype(str).str.strip().str.lower()
    return ["clean" if t in ("", "none", "nan", "clean") else "attack" for t in texts]


def folder_eval(bundle: ModelBundle, directory: str | os.PathLike, defence: Defence) -> dict[str, TypoMetrics | dict]:
    """A typographic set on disk (PAINT / RTA-100 names or a ``path,label,text[,kind]`` CSV): accuracy and ASR on
    its attacked images, accuracy on its clean ones (text empty or ``none``) and on its unrelated-word controls
    (``kind`` = ``control``), without and with ``defence``; with controls, the gains and the reading-specific gain
    (NaN without). Classes: the union of labels and written words (controls' pseudo-words are not classes)."""
    from sae_vit.io.datasets import read_typographic

    frame = read_typographic(directory)
    kinds = _folder_kinds(directory, frame)
    mask = {k: torch.tensor([x == k for x in kinds]) for k in ("attack", "control", "clean")}
    classes = sorted(set(frame["label_name"]) | {t for t, k in zip(frame["text"], kinds, strict=True) if k == "attack"})
    index = {c: i for i, c in enumerate(classes)}
    images = torch.stack([bundle.backbone.transform(open_image(p)) for p in frame["path"]])
    labels = torch.tensor([index[n] for n in frame["label_name"]])
    written = torch.tensor([index.get(t, -1) if k == "attack" else -1 for t, k in zip(frame["text"], kinds, strict=True)])
    emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    out: dict = {"classes": classes}

    def rate(hit: Tensor, m: Tensor) -> float:
        return float(hit[m].float().mean()) if m.any() else float("nan")

    for name, d in (("none", Defence()), ("sae", defence)):
        pred = predict(bundle.backbone, images, emb, d).argmax(-1)
        out[name] = {"attacked": rate(pred == labels, mask["attack"]), "clean": rate(pred == labels, mask["clean"]),
                     "control": rate(pred == labels, mask["control"]), "asr": rate(pred == written, mask["attack"]),
                     "n_attacked": int(mask["attack"].sum()), "n_clean": int(mask["clean"].sum()),
                     "n_control": int(mask["control"].sum())}
    none, sae = out["none"], out["sae"]
    sae.update(gains(sae["attacked"], sae["control"], none["attacked"], none["control"]))
    return out
