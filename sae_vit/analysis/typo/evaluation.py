"""Zero-shot evaluation under a defence: accuracy on clean, attacked and control images and the attack success
rate (the prediction equals the written word), with ``"a photo of a {}."`` over the union of true labels and
attack words; also single images and typographic sets on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from sae_vit.analysis.common import ModelBundle, class_embeddings, zero_shot_logits
from sae_vit.analysis.typo.attacks import open_image
from sae_vit.analysis.typo.defences import Defence
from sae_vit.analysis.typo.sets import TypoSet
from sae_vit.core.backbone import Backbone

TEMPLATE = "a photo of a {}."


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


def better(m: TypoMetrics, best: TypoMetrics | None, clean_ref: float, max_clean_drop: float) -> bool:
    """Whether ``m`` beats ``best`` on attacked accuracy while its clean accuracy is at most ``max_clean_drop``
    below ``clean_ref`` (the selection rule of every setting)."""
    if clean_ref - m.clean > max_clean_drop + 1e-9:
        return False
    return best is None or m.attacked > best.attacked + 1e-9


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
