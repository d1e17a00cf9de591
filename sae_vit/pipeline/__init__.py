"""What ``saevit cache``, ``train``, ``sparsity --grid``, ``demo`` and ``defend-typo --make-assets`` do end to end.

The pipeline strings the layers together (a backbone from :mod:`sae_vit.core`, images and caches from
:mod:`sae_vit.io` and :mod:`sae_vit.world`, tables from :mod:`sae_vit.analysis`); only the CLI imports it.
Every function is callable from a notebook with the CLI's arguments; layers are ``list[int]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sae_vit.core.defaults import DEFAULT_MODEL, default_cache_dir, default_layers, default_sae_path
from sae_vit.core.errors import SaeVitError

#: Images the default (synthetic world) cache renders.
DEFAULT_WORLD_IMAGES = 4096


def cache(images: str | os.PathLike | None = None, world: str | None = None,
          out: str | os.PathLike | None = None, model: str = DEFAULT_MODEL,
          weights: str | os.PathLike | None = None, layers: list[int] | str | None = None,
          site: str = "resid_post", tokens: str = "all", dtype: str = "float16", batch_size: int = 64,
          images_per_shard: int = 1024, num_workers: int = 0, max_images: int | None = None, seed: int = 0,
          device: str = "auto", overwrite: bool = False, progress: Callable | None = None,
          precision: str = "fp32") -> dict:
    """Cache activations of ``model`` at ``layers`` (``"all"``: every block; default:
    :func:`~sae_vit.core.defaults.default_layers`) over images (a folder or CSV), or over the synthetic world
    when ``images`` is None. Returns the manifest (with ``path`` added)."""
    from sae_vit.core.backbone import load_backbone
    from sae_vit.io import hub  # noqa: F401 - its guard bounds timm's Hub weight download
    from sae_vit.io.cache import write_cache
    from sae_vit.world.sources import open_source

    out = Path(out) if out is not None else default_cache_dir()
    backbone = load_backbone(model, weights, device)
    layer_list = (list(range(backbone.n_layers)) if layers == "all" else
                  list(layers) if layers is not None else default_layers(backbone.n_layers))
    source = open_source(images, world, n=max_images or DEFAULT_WORLD_IMAGES, seed=seed)
    done = _finished_cache(out, backbone, source, layer_list, site, tokens, dtype) if not overwrite else None
    if done is not None:  # the same cache again: kept, not replaced (a re-run of the quickstart is a no-op here)
        return {**done, "path": str(out), "reused": True}
    manifest = write_cache(backbone, source, out, layer_list, site=site, tokens=tokens, dtype=dtype,
                           batch_size=batch_size, images_per_shard=images_per_shard, num_workers=num_workers,
                           max_images=max_images, overwrite=overwrite, progress=progress, precision=precision)
    return {**manifest, "path": str(out)}


def _finished_cache(out: Path, backbone, source, layers, site, tokens, dtype) -> dict | None:
    """The manifest of a finished cache at ``out`` made with these settings, else None (write_cache then
    resumes an unfinished one, or refuses other settings without --overwrite)."""
    from sae_vit.io.cache import MANIFEST, read_manifest

    if not (out / MANIFEST).is_file():
        return None
    m = read_manifest(out)
    described = m.get("source", {})
    same_source = all(described.get(k) == v for k, v in source.describe().items() if k != "n_images")
    same = (m.get("model"), m.get("weights"), m.get("layers"), m.get("site"), m.get("tokens"), m.get("dtype")) == (
        backbone.name, backbone.weights_id, list(layers), str(site), str(tokens), str(dtype))
    return m if m.get("complete") and same and same_source else None


def train(layer: int | list[int] | None, tokens: str | list[str] = "all",
          cache_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None, config=None,
          n_tokens: int | None = None, epochs: float | None = None, overwrite: bool | str = False,
          progress: Callable | None = None, allow_incomplete: bool = False, *,
          kept: Callable[[Path], None] | None = None):
    """Train one SAE on ``layer`` / ``tokens`` of a cache and save it. Returns ``(sae, path)``.

    The cache must be finished and its shards must agree with its manifest
    (:meth:`~sae_vit.io.cache.CacheReader.verify`); ``allow_incomplete`` trains on an unfinished one.

    ``config`` is a :class:`sae_vit.core.train.TrainConfig`; the training length follows
    :func:`sae_vit.core.train.training_length` (``n_tokens``, ``epochs``, or the default rule).

    Several layers (a list; ``None`` = every cached layer) and/or token types (a list) train one SAE per
    combination from one pass over the cache (:func:`sae_vit.pipeline.training.train_many`) and return a list
    of ``(sae, path)``; ``out`` is then a folder (default: the working folder's ``saes``) holding
    ``layer_{L}/{tokens}/...``, and ``progress`` receives ``(index, state)`` (one SAE: ``(state)``). Under
    ``torchrun`` every rank trains (DistributedDataParallel on disjoint slices of the batches) and rank 0
    evaluates and saves.

    Re-runs lose nothing (:func:`~sae_vit.pipeline.training.train_many`): an interrupted run resumes from the state
    saved beside its checkpoint; a finished checkpoint with the same recipe from the same cache is kept
    (``kept(path)`` is told); any other is replaced only with ``overwrite`` (or retrained with
    ``overwrite=REPLACE_STALE``, see :func:`~sae_vit.pipeline.training.train_many`).
    """
    from sae_vit.core.train import TrainConfig
    from sae_vit.io.cache import CacheReader
    from sae_vit.pipeline.training import Job, train_many

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    reader = CacheReader(cache_dir)
    layers = reader.layers if layer is None else [layer] if isinstance(layer, int) else list(layer)
    token_types = [tokens] if isinstance(tokens, str) else list(tokens)
    if not layers or not token_types:
        raise SaeVitError("Give at least one --layer and one --tokens type, e.g. --layer 8 --tokens cls.")
    for lay in layers:
        reader.check(lay, token_types[0])
    reader.verify(layers, allow_incomplete)
    cfg = config or TrainConfig()
    site = reader.manifest["site"]
    single = len(layers) * len(token_types) == 1
    root = Path(out) if out is not None and not single else None
    jobs = [Job(lay, t, cfg, Path(out) if single and out is not None else default_sae_path(lay, t, site, root))
            for lay in layers for t in token_types]
    report = progress if not single or progress is None else (lambda _i, state: progress(state))
    results = train_many(cache_dir, jobs, n_tokens, epochs, overwrite, report, kept=kept)
    return results[0] if single else results


def train_grid(cache_dir: Path, layers: list[int], token_types: list[str], n_tokens: int | None,
               progress: Callable[[str], None] | None = None, config=None, sae_dir: Path | None = None,
               train_progress: Callable | None = None, allow_incomplete: bool = False) -> list[Path]:
    """Train the SAEs of a layer x token-type grid that do not exist yet under ``sae_dir`` (default: the
    working folder's ``saes``), with the :class:`~sae_vit.core.train.TrainConfig` ``config``, all from one pass
    over the cache; return all paths. ``train_progress(index, state)``."""
    from sae_vit.core.train import TrainConfig
    from sae_vit.io.cache import CacheReader
    from sae_vit.pipeline.training import Job, check_destination, train_many

    reader = CacheReader(cache_dir)
    site = reader.manifest["site"]
    paths, jobs = [], []
    for layer in layers:
        for tokens in token_types:
            path = default_sae_path(layer, tokens, site, sae_dir)
            if not path.exists():
                reader.check(layer, tokens)
                jobs.append(Job(layer, tokens, config or TrainConfig(), path))
            paths.append(path)
    if jobs:
        reader.verify(sorted({job.layer for job in jobs}), allow_incomplete)
        for job in jobs:
            check_destination(job.out)
            if progress:
                progress(f"training layer {job.layer} / {job.tokens} -> {job.out}")
        train_many(cache_dir, jobs, n_tokens=n_tokens, progress=train_progress)
    return paths


def sparsity(saes: list[str | os.PathLike] | None = None, cache: str | os.PathLike | None = None,
             grid: bool = False, layers: list[int] | None = None,
             tokens: list[str] = ("cls", "patches", "all"), n_tokens: int | None = None,
             out: str | os.PathLike | None = None, plot: bool = True, overwrite: bool = False,
             progress: Callable[[str], None] | None = None, config=None,
             sae_dir: str | os.PathLike | None = None, allow_incomplete: bool = False):
    """The sparsity table (:func:`sae_vit.analysis.sparsity.run`), training the grid of ``layers`` (default:
    every cached layer) x ``tokens`` first with ``grid``, with the TrainConfig ``config``, into ``sae_dir``
    (from a finished cache only, unless ``allow_incomplete``)."""
    from sae_vit.analysis import sparsity as table
    from sae_vit.core.backbone import TOKENS, check_choice
    from sae_vit.io.cache import CacheReader

    if not grid:
        return table.run(saes, cache, out, plot, overwrite)
    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    if not (cache_dir / "manifest.json").exists():
        raise SaeVitError("--grid needs a cache; run `saevit cache` first or pass --cache DIR.")
    for t in tokens:
        check_choice(t, TOKENS, "token type")
    layer_list = list(layers) if layers else CacheReader(cache_dir).layers
    table.check_out(out, overwrite)
    paths = train_grid(cache_dir, layer_list, list(tokens), n_tokens, progress, config,
                       Path(sae_dir) if sae_dir is not None else None, allow_incomplete=allow_incomplete)
    return table.run(paths + list(saes or []), cache_dir, out, plot, overwrite)


def make_typo_assets(bundle, out_dir: str | os.PathLike, work: str | os.PathLike, cfg=None, eval_cfg=None,
                     overwrite: bool = False, progress: Callable[[str], None] | None = None):
    """Cache activations, train one SAE per layer, run the world protocol, and write the chosen SAE and its
    feature file to ``out_dir`` as ``typo_sae.safetensors`` and ``typo_features.json``.

    ``work`` keeps the cache and the SAEs: a finished cache of the same images (its source fingerprint, which
    names the recipe), model, layers and tokens is reused, and so is an SAE trained on it with the same recipe
    (the rule of ``saevit cache`` and ``saevit train`` on a re-run); anything else is rebuilt. ``overwrite`` lets
    the outputs in ``out_dir`` be replaced."""
    from sae_vit.analysis import typo
    from sae_vit.core.atomic import atomic_copy
    from sae_vit.core.train import TrainConfig
    from sae_vit.io.cache import write_cache
    from sae_vit.pipeline.training import REPLACE_STALE

    cfg = cfg or typo.AssetConfig()
    eval_cfg = eval_cfg or typo.EvalConfig()
    say = progress or (lambda _m: None)
    out_dir, work = Path(out_dir), Path(work)
    targets = (out_dir / typo.ASSET_SAE, out_dir / typo.ASSET_FEATURES)
    if any(t.exists() for t in targets) and not overwrite:
        raise SaeVitError(f"{targets[0]} already exists; pass --overwrite to replace it or choose another --out.")
    source = typo.sae_training_images(cfg.n_images, cfg.seed)
    cache = work / "cache"
    if _finished_cache(cache, bundle.backbone, source, list(cfg.layers), "resid_post", cfg.tokens, "float16"):
        say(f"reusing the finished cache of the same images in {cache}")
    else:
        say(f"caching {cfg.n_images} images at layers {list(cfg.layers)} into {cache}")
        write_cache(bundle.backbone, source, cache, list(cfg.layers), tokens=cfg.tokens, overwrite=True)
    saes = []
    for layer in cfg.layers:
        path = work / f"sae_layer{layer}.safetensors"
        say(f"layer {layer}: training its SAE ({cfg.n_tokens:,} tokens) unless {path} has one of this recipe")
        tc = TrainConfig(expansion=cfg.expansion, k=cfg.k, seed=cfg.seed, device="cpu")
        sae, _ = train(layer, cfg.tokens, cache, path, tc, n_tokens=cfg.n_tokens, overwrite=REPLACE_STALE,
                       kept=lambda p: say(f"reusing {p} (same recipe, same cache)"))
        saes.append((path, sae))
    report = typo.run_world_eval(bundle, saes, eval_cfg, progress)
    chosen = next(s for p, s in saes if str(p) == report.sae_path)
    atomic_copy(Path(report.sae_path), targets[0])
    report.sae_path = str(targets[0])
    typo.write_report_features(report, chosen, targets[1], eval_cfg, overwrite=True)
    return report, targets[0], targets[1]
