"""Load a timm VisionTransformer, read activations at hook sites, and splice edits into its forward pass.

Hook sites (named as the paper's released SAEs name them), for 0-based block ``layer``:

- ``resid_post``: the residual stream after ``blocks[layer]`` (its output);
- ``mlp_out``: the MLP's output before it is added to the residual (``blocks[layer].mlp`` output);
- ``mlp_hidden``: the MLP's hidden units (the input of ``blocks[layer].mlp.fc2``).

Token selection: ``cls`` is position 0, ``patches`` the patch tokens (registers excluded), ``all`` both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sae_vit.core.defaults import REAL_CLIP
from sae_vit.core.errors import SaeVitError

SITES = ("resid_post", "mlp_out", "mlp_hidden")
TOKENS = ("cls", "patches", "all")

Edit = Callable[[Tensor], Tensor]


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line :class:`SaeVitError`."""
    if value not in choices:
        raise SaeVitError(f"Unknown {what} {value!r}; use one of: {', '.join(choices)}.")
    return value


@dataclass
class Backbone:
    """A timm VisionTransformer in eval mode, with what the rest of sae-vit needs to know about it."""

    model: nn.Module
    """The timm ``VisionTransformer`` (eval mode, no grad needed)."""
    name: str
    """Model name: ``toy`` or a timm name such as ``vit_base_patch32_clip_224.datacompxl``."""
    weights_id: str
    """What identifies the weights: a file's sha256 prefix, or ``hub:<name>`` for timm's pretrained weights."""
    transform: Callable
    """Preprocessing from a PIL image to a [3, H, W] tensor (timm's data config for this model)."""

    @property
    def n_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def d_model(self) -> int:
        return self.model.embed_dim

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: CLS (if any) plus registers."""
        return self.model.num_prefix_tokens

    @property
    def has_cls(self) -> bool:
        return bool(getattr(self.model, "has_class_token", self.model.cls_token is not None))

    @property
    def n_patches(self) -> int:
        return self.model.patch_embed.num_patches

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def d_site(self, site: str) -> int:
        """Width of the activations at ``site``."""
        check_choice(site, SITES, "hook site")
        if site == "mlp_hidden":
            return self.model.blocks[0].mlp.fc2.in_features
        return self.d_model

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise SaeVitError(f"Layer {layer} is out of range for {self.name} ({self.n_layers} blocks); use "
                              f"0..{self.n_layers - 1}.")
        return layer

    def token_positions(self, tokens: str) -> Tensor:
        """Positions in the full token sequence selected by ``tokens`` (registers never included)."""
        check_choice(tokens, TOKENS, "token selection")
        patches = torch.arange(self.n_prefix, self.n_prefix + self.n_patches)
        if tokens == "patches":
            return patches
        if not self.has_cls:
            raise SaeVitError(f"{self.name} has no CLS token; use --tokens patches.")
        cls = torch.zeros(1, dtype=torch.long)
        return cls if tokens == "cls" else torch.cat([cls, patches])

    def token_ids(self, tokens: str) -> Tensor:
        """Stored token index of each selected token: 0 = CLS, 1..n_patches = patches (registers dropped)."""
        pos = self.token_positions(tokens)
        return torch.where(pos == 0, 0, pos - self.n_prefix + 1) if self.has_cls else pos - self.n_prefix + 1

    # -- forward pieces ---------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """Token sequence before block 0, [B, T, d_model]."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def head(self, x: Tensor) -> Tensor:
        """Final norm, pooling and projection: the image embedding from the last residual, [B, d_out]."""
        return self.model.forward_head(self.model.norm(x))

    def forward_from(self, layer: int, resid: Tensor) -> Tensor:
        """Run blocks ``layer+1 ..`` and the head on ``resid`` (the ``resid_post`` of ``layer``)."""
        x = resid
        for blk in self.model.blocks[layer + 1 :]:
            x = blk(x)
        return self.head(x)

    def image_embedding(self, images: Tensor) -> Tensor:
        """The model's output for preprocessed ``images`` [B, 3, H, W] (for CLIP: the image embedding)."""
        return self.model(images)

    def capture(self, images: Tensor, layers: list[int], site: str = "resid_post", tokens: str = "all"
                ) -> dict[int, Tensor]:
        """Activations at ``site`` of each layer in ``layers`` for the selected tokens, [B, T_sel, d_site].

        One forward pass; it stops after the deepest requested layer.
        """
        check_choice(site, SITES, "hook site")
        for layer in layers:
            self.check_layer(layer)
        pos = self.token_positions(tokens).to(images.device)
        out: dict[int, Tensor] = {}
        handles = [_site_hook(self.model.blocks[layer], site, _capture_into(out, layer, pos))
                   for layer in (layers if site != "resid_post" else [])]
        try:
            x = self.embed(images)
            for i, blk in enumerate(self.model.blocks[: max(layers) + 1]):
                x = blk(x)
                if site == "resid_post" and i in layers:
                    out[i] = x[:, pos]
        finally:
            for h in handles:
                h.remove()
        return out

    @classmethod
    def from_model(cls, model: nn.Module, name: str, weights_id: str = "", device: str | torch.device = "cpu"
                   ) -> Backbone:
        """Wrap a timm VisionTransformer already in memory (eval mode, no grad, timm's preprocessing)."""
        import timm.data

        model = model.eval().requires_grad_(False).to(device)
        cfg = timm.data.resolve_data_config({}, model=model)
        return cls(model, name, weights_id, timm.data.create_transform(**cfg, is_training=False))


def _capture_into(out: dict[int, Tensor], layer: int, pos: Tensor) -> Edit:
    def capture(x: Tensor) -> Tensor:
        out[layer] = x[:, pos]
        return x

    return capture


def _site_hook(block: nn.Module, site: str, fn: Edit):
    """Register ``fn`` on the module of ``site`` in ``block``; ``fn`` maps [B, T, d] to [B, T, d]."""
    if site == "resid_post":
        return block.register_forward_hook(lambda _m, _inp, out: fn(out))
    if site == "mlp_out":
        return block.mlp.register_forward_hook(lambda _m, _inp, out: fn(out))
    # mlp_hidden: replace the input of fc2 (after the activation, dropout and any MLP norm).
    return block.mlp.fc2.register_forward_pre_hook(lambda _m, inp: (fn(inp[0]),) + tuple(inp[1:]))


@contextlib.contextmanager
def splice(backbone: Backbone, layer: int, edit: Edit, site: str = "resid_post", tokens: str = "all"
           ) -> Iterator[Backbone]:
    """Within the ``with`` block, every forward pass replaces the activations at (``layer``, ``site``) of the
    selected tokens by ``edit(x)``, where ``x`` is [B, T_sel, d_site].

    With an SAE, use ``lambda x: sae.edit(x, fn)`` so only the latent change is decoded and the SAE's
    reconstruction error is kept (an edit that changes nothing changes nothing).
    """
    backbone.check_layer(layer)
    check_choice(site, SITES, "hook site")
    pos = backbone.token_positions(tokens)

    def replace(x: Tensor) -> Tensor:
        p = pos.to(x.device)
        x = x.clone()
        x[:, p] = edit(x[:, p]).to(x.dtype)
        return x

    handle = _site_hook(backbone.model.blocks[layer], site, replace)
    try:
        yield backbone
    finally:
        handle.remove()


# -- loading -----------------------------------------------------------------------------------------------

def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex sha256 of a file (of its first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = limit
        while chunk := fh.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read model weights from a local file without unpickling: safetensors, or PyTorch with
    ``torch.load(weights_only=True)`` (tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise SaeVitError(f"Weights file {path} does not exist; check the --weights path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the user's file
        raise SaeVitError(f"Could not read weights from {path} ({type(exc).__name__}); is it a model file?") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SaeVitError(f"{path} does not hold a flat dict of tensors; save the model's state_dict instead.")
    return state


#: Context-manager factory wrapped around a download of timm's Hub weights. ``sae_vit.io.hub`` installs its own on
#: import (timeouts, one reachability check, the local Hub cache when the Hub does not answer, no retry noise);
#: core itself cannot import io.
HUB_GUARD: list[Callable] = []


def _timm_model(name: str, pretrained: bool) -> nn.Module:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(name):
        raise SaeVitError(f"Unknown model {name!r}; use 'toy' or a timm ViT name such as {REAL_CLIP} "
                          "(see timm.list_models('*clip*')).")
    with torch.device("meta"):  # the architecture first, without allocating weights or downloading any
        is_vit = isinstance(timm.create_model(name, pretrained=False), VisionTransformer)
    if not is_vit:
        raise SaeVitError(f"{name} is not a timm VisionTransformer; sae-vit hooks ViT blocks only.")
    if not pretrained:
        return timm.create_model(name, pretrained=False)
    try:
        with (HUB_GUARD[0] if HUB_GUARD else contextlib.nullcontext)():
            return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SaeVitError(
            f"Could not fetch weights for {name} from the Hugging Face Hub ({type(exc).__name__}); "
            "connect to the network once, or pass --weights FILE with a local copy."
        ) from exc


def load_weights(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load a state dict, converting OpenCLIP / OpenAI CLIP layouts with timm's own filter when needed; a state dict
    without the classifier head leaves the model headless (``image_embedding`` is then the pooled features)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    own = model.state_dict()
    if not set(own) <= set(state):
        try:
            state = checkpoint_filter_fn(state, model)
        except Exception:  # noqa: BLE001 - fall through to the clear mismatch error below
            pass
    missing = sorted(set(own) - set(state))
    if missing and not any(k.startswith("head.") for k in state) and all(k.startswith("head.") for k in missing):
        # Saved from ``timm.create_model(name, num_classes=0)``: no classifier, which activations never need.
        model.reset_classifier(0)
        own, missing = model.state_dict(), []
    if missing:
        raise SaeVitError(
            f"{path} does not match the architecture ({len(missing)} missing tensors, e.g. {missing[0]!r}); "
            "check that --model names the architecture these weights belong to."
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise SaeVitError(
            f"{path}: tensor {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the model expects "
            f"{tuple(own[bad[0]].shape)}; check that --model names the right architecture."
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


#: Entry-point group of named backbones besides timm's: ``name = "module:factory"``, where
#: ``factory(weights: str | None) -> (nn.Module, weights_id)``. sae-vit registers ``toy`` (the toy CLIP,
#: :func:`sae_vit.world.toyclip.toy_backbone`) in its own pyproject.toml; other packages may add theirs.
MODEL_GROUP = "sae_vit.models"


def registered_models() -> dict[str, Callable]:
    """Named backbone factories (``name -> factory``) from the :data:`MODEL_GROUP` entry points."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=MODEL_GROUP)}


def load_backbone(name: str = "toy", weights: str | os.PathLike | None = None,
                  device: str | torch.device = "auto") -> Backbone:
    """Load a ViT by name: a registered name (``toy``: the shipped toy CLIP, or ``weights`` = a toy-CLIP file or an
    image-tower state dict), a timm name with Hub weights, or a timm name plus a local ``weights`` file
    (safetensors, or a PyTorch state dict read with ``weights_only=True``). ``device``: see
    :func:`sae_vit.core.dist.resolve_device`."""
    from sae_vit.core.dist import resolve_device

    dev = resolve_device(device)
    factory = registered_models().get(name)
    if factory is not None:
        model, weights_id = factory.load()(weights)
    elif weights is not None:
        model = _timm_model(name, pretrained=False)
        load_weights(model, read_state_dict(weights), Path(weights))
        weights_id = file_sha256(weights)[:16]
    else:
        model = _timm_model(name, pretrained=True)
        weights_id = f"hub:{name}"
    return Backbone.from_model(model, name, weights_id, dev)
