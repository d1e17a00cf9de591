"""Defences against typographic attacks: each changes the forward pass, the class text embeddings or the image
embedding. The SAE defence zeroes the top-N text features in one splice edit; the baselines ablate attention
heads at the CLS token (Dyslexify-style), act on the prompts, or remove a linear probe's "text present"
direction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor

from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.sae import SAE


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
