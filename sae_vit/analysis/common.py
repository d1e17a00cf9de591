"""What every analysis loads or fits the same way: the model with its text head, zero-shot classes, probe
images, the concept vocabulary, figures and the L-BFGS loop of the linear probes.

Written once here so that steer-score, inspect, suppress and defend-typo agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.core.text import DEFAULT_TEMPLATES, TextHead
from sae_vit.world import scenes as world
from sae_vit.world.sources import open_source


class ModelBundle:
    """A backbone, the text head that goes with it and the model's name in reports (``description``, e.g.
    ``toy CLIP (file)``). The head may be given as a function that loads it, called on first use: open_clip's
    text tower is large, and inspect works without one."""

    def __init__(self, backbone: Backbone, head: TextHead | Callable[[], TextHead], description: str = ""):
        self.backbone, self._head, self.description = backbone, head, description

    @property
    def head(self) -> TextHead:
        if not isinstance(self._head, TextHead):
            self._head = self._head()
        return self._head


def load_model(model: str = "toy", weights: str | os.PathLike | None = None,
               text_embeddings: str | os.PathLike | None = None, device: str = "cpu") -> ModelBundle:
    """The backbone and its text head (:meth:`TextHead.for_model`, loaded on first use). For ``toy``, ``weights``
    may be a whole toy-CLIP file (as ``saevit world train-clip`` writes), whose text tower is then used too."""
    from sae_vit.core.backbone import load_backbone
    from sae_vit.io import hub  # noqa: F401 - its guard bounds timm's Hub weight download

    backbone = load_backbone(model, weights, device)
    name = ("toy CLIP" if model == "toy" else model) + (f" ({weights})" if weights else "")
    return ModelBundle(backbone, lambda: TextHead.for_model(model, weights, text_embeddings), name)


def class_embeddings(head: TextHead, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
    """Unit class embeddings [C, d] for zero-shot classification (a class ``a|b`` averages its names')."""
    names = [[n.strip() for n in c.split("|") if n.strip()] for c in classes]
    flat = [n for ns in names for n in ns]
    check_vocabulary(flat, head.vocab)
    rows = head.embed(flat, templates).split([len(ns) for ns in names])
    return torch.stack([r[0] if len(r) == 1 else F.normalize(r.mean(0), dim=-1) for r in rows])


def zero_shot_logits(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """CLIP's zero-shot logits, 100 · cos: image embeddings [n, d] and unit class embeddings [C, d] → [n, C]."""
    return 100 * F.normalize(image_emb.float(), dim=-1) @ class_emb.T.to(image_emb.device)


def load_probe_images(backbone, images: str | os.PathLike | None = None, world: str | None = None,
                      n_images: int = 64, seed: int = 1):
    """Preprocessed probe images [N, 3, H, W] from a folder / CSV, or the synthetic world (test split)."""
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


def concept_vocabulary(model: ModelBundle, vocab: str | os.PathLike | None = None) -> tuple[list[str], Tensor]:
    """``(words, unit embeddings [V, d])``: ``vocab``'s words, else the names of the text-embeddings file, else
    (toy) the world's concept words, embedded by :meth:`TextHead.embed_concepts`."""
    head = model.head
    if vocab is not None:
        words = read_words(vocab)
    elif head.names is not None:
        words = head.names
    else:
        words = default_vocabulary(model.backbone)
    check_vocabulary(words, head.vocab)
    return words, head.embed_concepts(words, templates=("{}",))


def plot(path: Path, draw: Callable[[object], None], **subplots) -> Path | None:
    """Draw on the axes of ``plt.subplots(**subplots)`` with ``draw(axes)`` and save the figure at ``path``
    (matplotlib's file-only Agg backend); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from sae_vit.core.atomic import save_figure

    fig, axes = plt.subplots(**subplots)
    draw(axes)
    fig.tight_layout()
    return save_figure(fig, path)


def minimize(params: list[Tensor], loss: Callable[[], Tensor], max_iter: int) -> None:
    """Minimise ``loss()`` over ``params`` (leaf tensors that require grad) in place: one L-BFGS step of up to
    ``max_iter`` iterations with a strong-Wolfe line search."""
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)


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
