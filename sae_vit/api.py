"""The library functions behind the commands, callable from a notebook with the CLI's arguments.

``saevit cache`` is :func:`cache`, ``saevit train`` is :func:`train`; ``saevit sparsity`` lives in
:mod:`sae_vit.sparsity`. The CLI only parses arguments and renders what these return.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .defaults import DEFAULT_MODEL, default_cache_dir, default_sae_path
from .errors import SaeVitError

#: The layers ``saevit cache`` stores by default on a 12-block model: early, middle and late, including 8
#: (the layer the quick-start trains) and the last block.
DEFAULT_LAYERS = (0, 2, 4, 6, 8, 10, 11)
#: Images the default (synthetic world) cache renders.
DEFAULT_WORLD_IMAGES = 4096
#: Training length when none is given: 10 epochs (the paper's recipe) but at least this many tokens, so that
#: small CLS-only caches still train for enough steps.
MIN_DEFAULT_TOKENS = 1_000_000


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``"4,8"`` -> [4, 8]; ``"all"`` -> every block; ``None`` -> the default layers that exist."""
    if text is None:
        return [layer for layer in DEFAULT_LAYERS if layer < n_layers] or list(range(n_layers))
    if text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise SaeVitError(f"Could not read --layers {text!r}; give comma-separated integers like 4,8 or 'all'.") from exc
    return layers


def cache(
    images: str | os.PathLike | None = None,
    world: str | None = None,
    out: str | os.PathLike | None = None,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    layers: str | list[int] | None = None,
    site: str = "resid_post",
    tokens: str = "all",
    dtype: str = "float16",
    batch_size: int = 64,
    images_per_shard: int = 1024,
    num_workers: int = 0,
    max_images: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable | None = None,
    precision: str = "fp32",
) -> dict:
    """Cache activations of ``model`` over images (a folder or CSV), or over the synthetic world when
    ``images`` is None. Returns the manifest (with ``path`` added)."""
    from .backbone import load_backbone
    from .cache import write_cache
    from .data import open_source

    out = Path(out) if out is not None else default_cache_dir()
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    backbone = load_backbone(model, weights, device)
    layer_list = layers if isinstance(layers, list) else parse_layers(layers, backbone.n_layers)
    n_world = max_images or DEFAULT_WORLD_IMAGES
    source = open_source(images, world, n=n_world, seed=seed)
    manifest = write_cache(
        backbone, source, out, layer_list, site=site, tokens=tokens, dtype=dtype, batch_size=batch_size,
        images_per_shard=images_per_shard, num_workers=num_workers, max_images=max_images,
        overwrite=overwrite, progress=progress, precision=precision,
    )
    return {**manifest, "path": str(out)}


def train(
    layer: int,
    tokens: str = "all",
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    config=None,
    n_tokens: int | None = None,
    epochs: float | None = None,
    overwrite: bool = False,
    progress: Callable | None = None,
):
    """Train one SAE on ``layer`` / ``tokens`` of a cache and save it. Returns ``(sae, path)``.

    ``config`` is a :class:`sae_vit.train.TrainConfig`; training length is ``n_tokens``, or ``epochs`` passes
    over the training split, or by default 10 epochs but at least ``MIN_DEFAULT_TOKENS`` tokens.
    """
    from .cache import CacheReader
    from .train import TrainConfig, train_sae

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    reader = CacheReader(cache_dir)
    reader.check(layer, tokens)
    site = reader.manifest["site"]
    out = Path(out) if out is not None else default_sae_path(layer, tokens, site)
    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
    cfg = config or TrainConfig()
    n_train = reader.count(layer, tokens, "train")
    if reader.count(layer, tokens, "eval") == 0:
        raise SaeVitError(
            f"The cache at {cache_dir} holds no held-out image (every 20th image is held out for evaluation); "
            "cache at least 20 images."
        )
    if n_tokens is None:
        n_tokens = int(epochs * n_train) if epochs is not None else max(10 * n_train, MIN_DEFAULT_TOKENS)
    batch_size = min(cfg.batch_size, max(1, n_train))
    cfg = replace(cfg, n_tokens=n_tokens, batch_size=batch_size)
    batches = reader.batches(layer, tokens, batch_size, "train", seed=cfg.seed, epochs=n_tokens / n_train)
    eval_acts = reader.load(layer, tokens, "eval", max_tokens=200_000, seed=cfg.seed)
    init_acts = reader.sample(layer, tokens, 50_000, "train", seed=cfg.seed)
    extra = {"model": reader.manifest["model"], "layer": layer, "site": site, "tokens": tokens}
    sae = train_sae(batches, reader.d_model, cfg, eval_acts=eval_acts, init_acts=init_acts,
                    sae_config_extra=extra, progress=progress)
    sae.cfg.training.update({"cache": str(cache_dir), "cache_weights": reader.manifest["weights"]})
    path = sae.save(out, overwrite=overwrite)
    return sae, path
