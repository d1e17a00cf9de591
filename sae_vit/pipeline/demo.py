"""``saevit demo``: the paper in miniature on the toy CLIP and the synthetic world, offline, in minutes.

Steps, all under one output folder: cache activations of the toy CLIP over world images, train one SAE per
layer x token type, build the sparsity table, and estimate steerability (SAE features against neurons and
random directions) for the ``all``-token SAE of each layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sae_vit.core.defaults import workdir
from sae_vit.core.errors import SaeVitError


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in a few minutes on a 2-core CPU."""

    n_images: int = 2048
    """World images to cache (5 % are held out for evaluation)."""
    layers: tuple[int, ...] = (2, 5, 8, 11)
    """Blocks of the toy CLIP to analyse (12 blocks, like ViT-B/32)."""
    tokens: tuple[str, ...] = ("cls", "patches", "all")
    """Token types, one SAE each per layer."""
    n_tokens: int = 400_000
    """Training tokens per SAE."""
    expansion: int = 8
    """d_sae / d_in."""
    k: int = 16
    """Active latents per token (TopK)."""
    seed: int = 0
    """Seed of the world images and of the SAEs' initial weights."""
    steer_features: int = 64
    """Features sampled per SAE for the steerability estimate (0 skips that step)."""
    steer_images: int = 32
    """Probe images for the steerability estimate."""


@dataclass
class DemoResult:
    """What :func:`run_demo` returns."""

    out: Path
    manifest: dict
    sparsity: object
    """The :class:`sae_vit.sparsity.SparsityResult`."""
    steer: list
    """One :class:`sae_vit.steer.SteerReport` per scored SAE (empty when skipped)."""
    timings: dict
    """Seconds per step."""


def run_demo(out: str | os.PathLike | None = None, config: DemoConfig | None = None, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo into ``out`` (default ``<workdir>/demo``)."""
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    cfg = config or DemoConfig()
    out = Path(out) if out is not None else workdir() / "demo"
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SaeVitError(f"{out} already holds a demo; pass --overwrite to run it again or choose --out.")
        _clear_demo(out)
    say = progress or (lambda _msg: None)
    timings = {}

    t0 = time.perf_counter()
    say(f"1/4 caching the toy CLIP over {cfg.n_images} synthetic-world images (layers {list(cfg.layers)})")
    manifest = api.cache(out=out / "cache", model="toy", layers=list(cfg.layers), tokens="all",
                         max_images=cfg.n_images, seed=cfg.seed, batch_size=128)
    timings["cache"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_saes = len(cfg.layers) * len(cfg.tokens)
    say(f"2/4 training {n_saes} TopK SAEs (k={cfg.k}, x{cfg.expansion}, {cfg.n_tokens:,} tokens each)")
    train_cfg = TrainConfig(k=cfg.k, expansion=cfg.expansion, seed=cfg.seed)
    table = api.sparsity(
        cache=out / "cache", grid=True, layers=list(cfg.layers), tokens=list(cfg.tokens),
        n_tokens=cfg.n_tokens, out=out / "sparsity.csv", config=train_cfg, sae_dir=out / "saes", progress=say,
    )
    timings["train"] = time.perf_counter() - t0
    say("3/4 sparsity table written")

    steer = []
    if cfg.steer_features and "all" in cfg.tokens:
        t0 = time.perf_counter()
        say(f"4/4 steerability of {cfg.steer_features} sampled features per layer vs neurons and random directions")
        from sae_vit.analysis.steer import SteerConfig, score_saes
        from sae_vit.core.defaults import default_sae_path

        paths = [default_sae_path(layer, "all", root=out / "saes") for layer in cfg.layers]
        # The paper's strongest push (alpha 150) saturates the toy's 19-word vocabulary for every direction, so
        # the demo sweeps up to alpha 20, where features, neurons and random directions can differ.
        steer = score_saes(paths, model="toy", n_images=cfg.steer_images,
                                config=SteerConfig(alphas=(-5, 0, 5, 10, 20)),
                                max_features=cfg.steer_features, random_control=cfg.steer_features,
                                seed=cfg.seed, out=out / "steer")
        timings["steer"] = time.perf_counter() - t0
    return DemoResult(out, manifest, table, steer, timings)


def _clear_demo(out: Path) -> None:
    """Remove only what a demo writes."""
    import shutil

    for name in ("cache", "saes", "steer"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("sparsity.csv", "sparsity.png"):
        (out / name).unlink(missing_ok=True)
