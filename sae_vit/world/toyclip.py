"""The toy CLIP: a 12-block timm ViT image tower and a small text tower, trained contrastively on the
captions of the synthetic world (:mod:`sae_vit.world.scenes`; the recipe is in :mod:`sae_vit.world.toyclip_train`).
Its weights ship in ``sae_vit/assets``.

File layout (one safetensors file): tensors ``image.<timm state-dict key>`` and ``text.<key>`` (stored as
float16, loaded as float32); ``__metadata__["sae_vit_toyclip"]`` is a JSON string with ``format_version``,
``architecture``, ``vocab``, ``recipe``, ``logit_scale`` and ``accuracies``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sae_vit.core.atomic import atomic_write
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import is_checkpoint
from sae_vit.world import scenes as world

FORMAT_VERSION = 1
METADATA_KEY = "sae_vit_toyclip"
ASSET_NAME = "toy_clip.safetensors"
#: CLIP's input normalisation (the toy model uses the same, so pipelines built for CLIP just work).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eot>")
PROMPT = "a photo of a {}."


@dataclass(frozen=True)
class ToyClipConfig:
    """Architecture of the toy CLIP."""

    img_size: int = 64
    """Input resolution (square)."""
    patch_size: int = 8
    """8×8 patches: 64 patch tokens + CLS."""
    width: int = 64
    """Residual-stream width of the image tower (d_model); small so that it trains in minutes on 2 cores."""
    depth: int = 12
    """Blocks, as in ViT-B/32, so layer numbers mean the same."""
    heads: int = 4
    """Attention heads of the image tower."""
    mlp_ratio: float = 4.0
    """MLP hidden width / d_model."""
    embed_dim: int = 128
    """Joint image-text embedding dimension (the image head's output)."""
    text_width: int = 128
    """Width of the text transformer."""
    text_depth: int = 2
    """Blocks of the text transformer."""
    text_heads: int = 4
    """Attention heads of the text transformer."""
    context: int = 20
    """Maximum tokens per caption (including the end token)."""
    stem: str = "conv"
    """Patch embedding: "conv" (:class:`ConvStemPatchEmbed`) or "linear" (timm's one conv per patch)."""


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with its per-patch projection replaced by a small convolutional stem (two 3×3
    stride-2 convolutions, then a 2×2 stride-2 one): the same 8×8 grid of tokens, with each token seeing
    15 px. Early convolutions make ViTs far more sample-efficient (Xiao et al., 2021); here they let the toy
    ViT learn shapes and letters in minutes on a CPU. Everything after the patch embedding is standard."""

    def __init__(self, *args, in_chans: int = 3, embed_dim: int = 768, bias: bool = True, **kwargs):
        super().__init__(*args, in_chans=in_chans, embed_dim=embed_dim, bias=bias, **kwargs)
        assert self.patch_size == (8, 8), "the conv stem downsamples by exactly 8"
        self.proj = nn.Sequential(nn.Conv2d(in_chans, 32, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(64, embed_dim, 2, stride=2, bias=bias))


def build_toy_vit(config: ToyClipConfig | None = None) -> VisionTransformer:
    """The toy image tower, untrained: a standard timm VisionTransformer (12 blocks, 64×64 input, 8×8
    patches, CLS pooling, pre-norm like CLIP) whose bias-free head is the image projection
    [width → embed_dim]. Its ``pretrained_cfg`` gives CLIP's normalisation to ``timm.data``."""
    c = config or ToyClipConfig()
    model = VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.width, depth=c.depth, num_heads=c.heads,
        mlp_ratio=c.mlp_ratio, class_token=True, global_pool="token", pre_norm=True, num_classes=c.embed_dim,
        embed_layer=ConvStemPatchEmbed if c.stem == "conv" else PatchEmbed)
    model.head = nn.Linear(c.width, c.embed_dim, bias=False)
    cfg = {"architecture": "vit_toy_patch8_64", "input_size": (3, c.img_size, c.img_size), "mean": CLIP_MEAN,
           "std": CLIP_STD, "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
           "num_classes": c.embed_dim}
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model


class Tokenizer:
    """Word-level tokenizer over the world vocabulary: lower-cased words, unknown words map to <unk>,
    every caption ends with <eot>, padded with <pad> (id 0) to the context length."""

    def __init__(self, vocab: Sequence[str], context: int):
        self.vocab = list(vocab)
        self.context = context
        self.ids = {w: i for i, w in enumerate(SPECIAL_TOKENS + tuple(self.vocab))}

    @property
    def size(self) -> int:
        return len(self.ids)

    def words(self, text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """Token ids [n, context] (int64)."""
        out = torch.zeros(len(texts), self.context, dtype=torch.long)
        unk, eot = self.ids["<unk>"], self.ids["<eot>"]
        for i, text in enumerate(texts):
            ids = [self.ids.get(w, unk) for w in self.words(text)][: self.context - 1] + [eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TextTower(nn.Module):
    """A small transformer over word tokens; the embedding is the projected end-token state."""

    def __init__(self, vocab_size: int, c: ToyClipConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context, c.text_width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.text_width, c.text_heads, 4 * c.text_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.text_depth, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [n, context] → text embeddings [n, embed_dim] (not normalised)."""
        pad = tokens == 0
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.transformer(x, src_key_padding_mask=pad)
        eot = (~pad).sum(1) - 1
        x = self.ln_final(x[torch.arange(len(tokens)), eot])
        return self.proj(x)


class ToyClip(nn.Module):
    """The toy CLIP: ``.image`` (timm ViT), ``.text`` (:class:`TextTower`), ``.tokenize``, ``.vocab``."""

    def __init__(self, config: ToyClipConfig | None = None, vocab: Sequence[str] = world.VOCAB):
        super().__init__()
        self.config = config or ToyClipConfig()
        self.vocab = list(vocab)
        self.tokenize = Tokenizer(self.vocab, self.config.context)
        self.image = build_toy_vit(self.config)
        self.text = TextTower(self.tokenize.size, self.config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.metadata: dict[str, Any] = {}

    def encode_image(self, x: Tensor) -> Tensor:
        """Normalised images [n, 3, 64, 64] → unit image embeddings [n, embed_dim]."""
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Captions or prompts → unit text embeddings [n, embed_dim]."""
        device = next(self.text.parameters()).device
        return F.normalize(self.text(self.tokenize(list(texts)).to(device)), dim=-1)


def preprocess(images: np.ndarray | Tensor) -> Tensor:
    """uint8 images [n, 64, 64, 3] → CLIP-normalised float tensor [n, 3, 64, 64] (what timm's eval
    transform gives for this model's data config at 64×64)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------- save / load


def default_path() -> Path:
    """The shipped weights, ``sae_vit/assets/toy_clip.safetensors``."""
    return Path(str(resources.files("sae_vit").joinpath("assets", ASSET_NAME)))


def save_toy_clip(clip: ToyClip, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the weights (float16) and metadata atomically; refuses to overwrite unless asked."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise SaeVitError(f"{path} exists; choose another --out or pass --overwrite.")
    tensors = {f"image.{k}": v.detach().half().contiguous() for k, v in clip.image.state_dict().items()}
    tensors.update({f"text.{k}": v.detach().half().contiguous() for k, v in clip.text.state_dict().items()})
    own = {"format_version": FORMAT_VERSION, "architecture": asdict(clip.config), "vocab": clip.vocab}
    meta = {**own, "logit_scale": math.exp(clip.logit_scale.item()),
            **{k: v for k, v in clip.metadata.items() if k not in own}}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)}))


def load_toy_clip(path: str | os.PathLike | None = None) -> ToyClip:
    """Load a toy CLIP (the shipped one when ``path`` is None), in eval mode, float32, on CPU."""
    from safetensors import safe_open

    p = Path(path) if path is not None else default_path()
    if not p.is_file():
        hint = "run `saevit world train-clip`"
        hint = hint if path is None else "check the path or " + hint
        raise SaeVitError(f"Toy CLIP weights not found at {p}; {hint}.")
    with safe_open(str(p), framework="pt") as f:
        meta_raw = (f.metadata() or {}).get(METADATA_KEY)
        if meta_raw is None:
            raise SaeVitError(f"{p} is not a toy CLIP file (no '{METADATA_KEY}' metadata); pass a file "
                              "written by `saevit world train-clip`.")
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    meta = json.loads(meta_raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise SaeVitError(f"{p} has toy CLIP format {meta.get('format_version')}, this sae-vit reads "
                          f"{FORMAT_VERSION}; retrain it with `saevit world train-clip`.")
    clip = ToyClip(ToyClipConfig(**meta["architecture"]), meta["vocab"])
    clip.image.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("image.")})
    clip.text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    clip.logit_scale.data.fill_(math.log(meta.get("logit_scale", 1 / 0.07)))
    clip.metadata = meta
    return clip.eval().requires_grad_(False)


def toy_backbone(weights: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """The ``toy`` entry of :func:`sae_vit.core.backbone.load_backbone`: the shipped toy CLIP's image tower, or
    that of ``weights`` (a whole toy-CLIP file, or an image-tower state dict). Returns (model, weights id)."""
    from sae_vit.core.backbone import file_sha256, load_weights, read_state_dict

    if weights is None or is_checkpoint(weights, METADATA_KEY):
        path = weights if weights is not None else default_path()
        return load_toy_clip(path).image, file_sha256(path)[:16]
    model = build_toy_vit()
    load_weights(model, read_state_dict(weights), Path(weights))
    return model, file_sha256(weights)[:16]


def toy_text_head(weights: str | os.PathLike | None = None):
    """The ``toy`` entry of :meth:`sae_vit.core.text.TextHead.for_model`: the toy text tower (of ``weights`` when
    that is a whole toy-CLIP file, else the shipped one); any words or prompts made of the world vocabulary."""
    from sae_vit.core.text import TextHead

    path = weights if weights is not None and is_checkpoint(weights, METADATA_KEY) else None
    clip = load_toy_clip(path)
    return TextHead(encode=clip.encode_text, source=f"toy:{path or 'shipped'}", vocab=clip.vocab,
                    concept_prompts=world.concept_prompts)


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def zero_shot_predict(clip: ToyClip, images: np.ndarray, names: Sequence[str], prompt: str = PROMPT,
                      batch_size: int = 500) -> np.ndarray:
    """argmax over ``names`` of 100·cos(image, text) for uint8 images [n, 64, 64, 3]. ``prompt`` is one
    template, or a list of templates whose embeddings are averaged (prompt ensembling)."""
    templates = [prompt] if isinstance(prompt, str) else list(prompt)
    text = torch.stack([clip.encode_text([t.format(n) for t in templates]).mean(0) for n in names])
    text = F.normalize(text, dim=-1)
    preds = []
    for i in range(0, len(images), batch_size):
        emb = clip.encode_image(preprocess(images[i : i + batch_size]))
        preds.append((100 * emb @ text.T).argmax(1).numpy())
    return np.concatenate(preds)


def _task_arrays(task: str, n: int, seed: int):
    scenes, rows = world.task_scenes(task, "test", n, seed)
    import pandas as pd

    return pd.DataFrame(rows), np.stack([world.render_array(s) for s in scenes])


def evaluate(clip: ToyClip, n: int = 1200, seed: int = 10_000) -> dict[str, float]:
    """Zero-shot accuracies on fresh test images of the world (seed stream disjoint from training):
    ``shapes`` (clean, 6 classes), ``typographic`` (and how often the written word wins), ``waterbirds``
    (car vs boat: average, per group ``waterbirds_g{2y+place}`` and the worst group), plus colour and background."""
    was_training = clip.training
    clip.eval()
    out: dict[str, float] = {}
    df, ims = _task_arrays("shapes", n, seed)
    pred = zero_shot_predict(clip, ims, world.SHAPES)
    out["shapes"] = float((pred == df.label.values).mean())
    # a colour alone is never a caption; ensemble "a photo of a red star." etc. over the shapes
    colour_prompts = [f"a photo of a {{}} {shape}." for shape in world.SHAPES]
    colour_pred = zero_shot_predict(clip, ims, list(world.COLOURS), prompt=colour_prompts)
    out["colour"] = float((np.array(list(world.COLOURS))[colour_pred] == df.colour.values).mean())
    bg_pred = zero_shot_predict(clip, ims, world.BACKGROUNDS, prompt="a photo of a {} background.")
    out["background"] = float((np.array(world.BACKGROUNDS)[bg_pred] == df.background.values).mean())
    df, ims = _task_arrays("typographic", n, seed)
    pred = zero_shot_predict(clip, ims, world.SHAPES)
    out["typographic"] = float((pred == df.label.values).mean())
    out["typographic_follows_word"] = float((pred == df.text_label.values).mean())
    df, ims = _task_arrays("waterbirds", n, seed)
    correct = zero_shot_predict(clip, ims, world.VEHICLES) == df.label.values
    out["waterbirds"] = float(correct.mean())
    groups = {g: float(correct[df.group.values == g].mean()) for g in range(4)}
    out.update({f"waterbirds_g{g}": v for g, v in groups.items()})
    out["waterbirds_worst"] = min(groups.values())
    clip.train(was_training)
    return out
