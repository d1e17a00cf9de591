"""``saevit demo``: the paper in miniature on the toy CLIP and the synthetic world, offline, in minutes.

Steps, all under one output folder: cache activations of the toy CLIP over world images (and CLS tokens over
more images), train one TopK SAE per layer x token type and one ReLU+L1 SAE per layer x {cls, patches}, build
the sparsity table, estimate steerability (SAE features against neurons and random
directions), suppress background features on the world's Waterbirds-like task, evaluate the shipped typographic
defence on the world's typographic split, open the feature browser of one SAE (``inspect``), and write
``report.html``, which puts each of the paper's four claims beside what this run measured.

Re-running in the same folder keeps the expensive products (the cache and the SAEs) when they are the demo's own
and were made with the same settings, and regenerates everything derived from them; ``overwrite`` recaches and
retrains. Only the demo's own files are ever removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sae_vit.core.defaults import workdir
from sae_vit.core.errors import SaeVitError

#: The file that records a finished demo run's settings, results and timings (the report is rendered from it).
RESULTS = "demo_results.json"


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in under five minutes on a 2-core CPU."""

    n_images: int = 2048
    """World images to cache (5 % are held out for evaluation)."""
    cls_images: int = 8192
    """World images for the CLS-only cache the CLS SAEs train on (one token per image: 2,048 images would leave
    ~100 held-out tokens, too few to measure dead latents); 0 trains them on the main cache."""
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
    relu_l1: float = 1e-3
    """L1 coefficient of the ReLU+L1 SAEs (the paper's architecture), whose L0 judges the sparsity claim; 0 skips
    them. docs/sparsity.md has the sweep it was picked from (the paper's 8e-5 gives L0 160–195 of 512 on the toy)."""
    relu_n_tokens: int = 200_000
    """Training tokens per ReLU+L1 SAE."""
    relu_lr: float = 4e-3
    """Learning rate of the ReLU+L1 SAEs (the paper's 4e-4 barely moves a 512-latent SAE in a 200-step run)."""
    relu_batch_size: int = 1024
    """Tokens per step of the ReLU+L1 SAEs."""
    seed: int = 0
    """Seed of the world images and of the SAEs' initial weights."""
    steer_features: int = 64
    """Features sampled per SAE for the steerability estimate (0 skips that step)."""
    steer_images: int = 32
    """Probe images for the steerability estimate."""
    suppress_images: int = 400
    """Images per split (train / val / test) of the Waterbirds-like task for suppression (0 skips that step)."""
    suppress_n_features: tuple[int, ...] = (4, 16, 64)
    """Numbers of suppressed features tried on validation (``saevit suppress`` tries 1, 2, 4, ..., 64)."""
    typo_images: int = 600
    """Test images of the world's typographic split for the shipped defence (0 skips that step)."""
    inspect_features: int = 24
    """Features shown in the feature browser (0 skips that step)."""
    inspect_images: int = 256
    """Images the feature browser scans."""
    inspect_top_images: int = 8
    """Top images per feature in the browser."""

    def validate(self, depth: int = 12) -> DemoConfig:
        """Raise :class:`SaeVitError` for a setting the demo cannot run with; return self."""
        from sae_vit.core.backbone import TOKENS

        if not self.layers or min(self.layers) < 0 or max(self.layers) >= depth:
            raise SaeVitError(f"Layers {list(self.layers)} are out of range; the toy CLIP has blocks 0..{depth - 1}.")
        if not self.tokens or any(t not in TOKENS for t in self.tokens):
            raise SaeVitError(f"Token types {list(self.tokens)} must be some of {', '.join(TOKENS)}.")
        if self.n_images < 40:
            raise SaeVitError(f"n_images {self.n_images} is too few; the demo needs at least 40 images.")
        counts = {"n_tokens": self.n_tokens, "expansion": self.expansion, "k": self.k,
                  "relu_n_tokens": self.relu_n_tokens, "relu_batch_size": self.relu_batch_size}
        for name, value in counts.items():
            if value < 1:
                raise SaeVitError(f"{name} must be a positive integer (got {value}).")
        if self.cls_images and self.cls_images < 40 or self.relu_l1 < 0 or self.relu_lr <= 0:
            raise SaeVitError("cls_images must be 0 or at least 40, relu_l1 not negative and relu_lr positive (got "
                              f"{self.cls_images}, {self.relu_l1}, {self.relu_lr}).")
        if self.suppress_images and self.suppress_images < 80:  # the train split's minority groups need images
            raise SaeVitError(f"suppress_images {self.suppress_images} is too few; use 0 to skip or at least 80.")
        if self.suppress_images and (not self.suppress_n_features or min(self.suppress_n_features) < 1):
            raise SaeVitError("suppress_n_features must list positive integers, e.g. 4,16,64.")
        return self


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
    results: dict
    """Every number the report shows, as written to ``demo_results.json``."""
    report: Path | None = None
    """``report.html``."""


def run_demo(out: str | os.PathLike | None = None, config: DemoConfig | None = None, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo into ``out`` (default ``<workdir>/demo``) and write ``report.html`` there."""
    from sae_vit.pipeline import demo_steps as steps
    from sae_vit.pipeline.report import write_report
    from sae_vit.world.toyclip import ToyClipConfig

    toy = ToyClipConfig()
    cfg = (config or DemoConfig()).validate(toy.depth)
    out = Path(out) if out is not None else workdir() / "demo"
    if out.exists() and not out.is_dir():
        raise SaeVitError(f"--out {out} is a file; give a folder for the demo.")
    check_products(out, cfg, toy.width, overwrite)  # every check before anything is removed
    if overwrite:
        remove_products(out, cfg)
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    results: dict = {"config": asdict(cfg)}
    n_steps = 8

    def step(i: int, name: str, message: str, fn: Callable[[], object]):
        say(f"{i}/{n_steps} {message}")
        t0 = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t0
        return value

    extra = f", CLS tokens of {cfg.cls_images}" if cfg.cls_images else ""
    manifest = step(1, "cache", f"caching the toy CLIP over {cfg.n_images} synthetic-world images{extra} "
                    f"(layers {list(cfg.layers)})", lambda: steps.cache(out, cfg, overwrite))
    n_saes = len(cfg.layers) * len(cfg.tokens)
    relu = (f" and {len(cfg.layers) * len(steps.relu_tokens(cfg))} ReLU+L1 SAEs (L1 {cfg.relu_l1:g}, "
            f"{cfg.relu_n_tokens:,} tokens each)") if cfg.relu_l1 else ""
    table = step(2, "train", f"training {n_saes} TopK SAEs (k={cfg.k}, x{cfg.expansion}, {cfg.n_tokens:,} tokens "
                 f"each){relu} and the sparsity table", lambda: steps.train_and_sparsity(out, cfg, say))
    results["sparsity"] = steps.sparsity_results(table, manifest, cfg)
    steer = []
    if cfg.steer_features and "all" in cfg.tokens:
        steer = step(3, "steer", f"steerability of {cfg.steer_features} sampled features per layer vs neurons and "
                     "random directions", lambda: steps.steer(out, cfg))
        results["steer"] = steps.steer_results(steer, out)
    bundle = steps.model()
    if cfg.suppress_images:
        results["suppress"] = step(4, "suppress", f"suppressing background features on the Waterbirds-like task "
                                   f"({cfg.suppress_images} images per split)", lambda: steps.suppress(out, cfg, bundle))
    if cfg.typo_images:
        results["typo"] = step(5, "typo", f"the shipped typographic defence on {cfg.typo_images} images of the "
                               "world's typographic split", lambda: steps.typo(out, cfg, bundle))
    if cfg.inspect_features:
        results["inspect"] = step(6, "inspect", f"feature browser of {cfg.inspect_features} features",
                                  lambda: steps.inspect(out, cfg))
    results["timings"] = timings
    report = step(7, "report", "writing report.html", lambda: write_report(out, results))
    results["timings"] = timings
    steps.write_results(out / RESULTS, results)
    say(f"8/{n_steps} open {report} in a browser")
    return DemoResult(out, manifest, table, steer, timings, results, report)


def sae_paths(out: Path, cfg: DemoConfig) -> list[Path]:
    """The checkpoints the demo trains: TopK per layer x token type, then ReLU+L1 per layer x {cls, patches}."""
    from sae_vit.pipeline.demo_steps import demo_jobs

    return [job.out for jobs in demo_jobs(out, cfg).values() for job in jobs]


def check_products(out: Path, cfg: DemoConfig, d_model: int, overwrite: bool) -> None:
    """Refuse, before anything is written or removed, to mix this run's settings with a cache or SAEs that an
    earlier run in ``out`` made with other ones (unless ``overwrite``), and anything of the user's in their place."""
    from sae_vit.pipeline.demo_steps import CLS_CACHE, demo_jobs

    for (cache_dir, _), jobs in demo_jobs(out, cfg).items():
        for job in jobs:
            check_sae(job, cache_dir, cfg, d_model, overwrite)
    _check_cache(out / "cache", overwrite, ("toy", list(cfg.layers), cfg.n_images, "all"))
    if cfg.cls_images:
        _check_cache(out / CLS_CACHE, overwrite, ("toy", list(cfg.layers), cfg.cls_images, "cls"))


def check_sae(job, cache_dir: Path, cfg: DemoConfig, d_model: int, overwrite: bool) -> None:
    """Refuse a folder at ``job.out``, or (unless ``overwrite``) a checkpoint there made with other settings."""
    path = job.out
    if path.is_dir():
        raise SaeVitError(f"{path} is a folder; move it away or choose another --out.")
    if path.exists() and not overwrite:
        why = _sae_mismatch(path, job, cache_dir, cfg, d_model)
        if why:
            raise SaeVitError(f"{path} was trained with other settings ({why}); pass --overwrite to retrain "
                              "the demo's SAEs or choose another --out.")


def _check_cache(cache: Path, overwrite: bool, want: tuple) -> None:
    """Refuse a cache folder holding files sae-vit did not write (with ``overwrite``) or a cache made with other
    settings (model, layers, images, tokens) than ``want`` (without)."""
    import json

    from sae_vit.io.cache import foreign_files

    foreign = foreign_files(cache) if overwrite and cache.is_dir() else []
    if foreign:  # the cache's writer would refuse them after the SAEs were gone: refuse first, remove nothing
        raise SaeVitError(f"{cache} holds {foreign[0]}, which sae-vit did not write; move it away before "
                          "--overwrite (it only ever replaces the demo's own files) or choose another --out.")
    manifest = cache / "manifest.json"
    if manifest.is_file() and not overwrite:
        try:
            m = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SaeVitError(f"{manifest} is not a readable cache manifest; pass --overwrite or choose another "
                              "--out.") from exc
        have = (m.get("model"), m.get("layers"), m.get("n_images"), m.get("tokens"))
        if have != want:
            raise SaeVitError(f"{cache} holds a cache made with other settings (model, layers, images, "
                              f"tokens: {have}, this run: {want}); pass --overwrite to recache or choose another --out.")


def _sae_mismatch(path: Path, job, cache_dir: Path, cfg: DemoConfig, d_model: int) -> str:
    """Why the checkpoint at ``path`` is not the one ``job`` would train on ``cache_dir`` ('' when it is)."""
    from sae_vit.core.sae import SAE

    try:
        c = SAE.load(path).cfg
    except SaeVitError as exc:
        return f"not a readable SAE: {exc}"
    recipe = c.training.get("recipe", {})
    relu = job.config.architecture == "relu"
    have = {"model": c.model, "architecture": c.architecture, "k": c.k, "l1": c.l1_coefficient, "d_sae": c.d_sae,
            "n_tokens": recipe.get("n_tokens"), "seed": recipe.get("seed"),
            "cache": Path(c.training.get("cache", "")).name}
    want = {"model": "toy", "architecture": job.config.architecture, "k": None if relu else cfg.k,
            "l1": cfg.relu_l1 if relu else None, "d_sae": cfg.expansion * d_model,
            "n_tokens": cfg.relu_n_tokens if relu else cfg.n_tokens, "seed": cfg.seed, "cache": cache_dir.name}
    if relu:  # TopK SAEs take the default lr rule, ReLU ones the demo's (a batch is clamped to the cache: train
        have["lr"], want["lr"] = recipe.get("lr"), cfg.relu_lr  # refuses another one by its re-run rules)
    return ", ".join(f"{k} {have[k]} instead of {v}" for k, v in want.items() if have[k] != v)


#: Files the demo writes besides the cache and the SAEs (regenerated on every run), relative to ``out``.
DERIVED = ("sparsity.csv", "sparsity.png", "report.html", RESULTS, "typo/typo_results.json", "typo/typo_defence.png",
           "steer/steer_summary.csv", "steer/steer_by_layer.png", "inspect/index.html", "inspect/features.csv")


def remove_products(out: Path, cfg: DemoConfig) -> None:
    """Remove what an earlier demo wrote in ``out`` (for ``overwrite``): this grid's SAE checkpoints and the
    derived outputs, by name (the cache's own files go when it is rewritten). A file of the user's stays
    (one inside ``out/cache`` is refused first by :func:`check_products`)."""
    from sae_vit.analysis.suppress import OUTPUT_FILES
    from sae_vit.pipeline.demo_steps import remove_tiles

    for path in sae_paths(out, cfg):  # the cache is removed by its own writer (write_cache's overwrite)
        path.unlink(missing_ok=True)
    for name in DERIVED + tuple(f"suppress/{f}" for f in OUTPUT_FILES):
        (out / name).unlink(missing_ok=True)
    for pattern in ("steer/steer_layer*_*.csv", "steer/steer_layer*_*.json", "steer/steer_layer*_*.png",
                    "suppress/data/metadata.csv", "suppress/data/00?.*/waterbirds_*.png"):
        for path in out.glob(pattern):
            path.unlink()
    remove_tiles(out / "inspect" / "tiles")

