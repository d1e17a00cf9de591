"""``saevit cache`` (activations of a ViT on disk) and ``saevit train`` (SAEs on a cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import (
    LazyProgress,
    check_images,
    check_inputs,
    check_number,
    note,
    note_default,
    parse_layers,
    parse_names,
    result,
    say,
)
from sae_vit.core.defaults import DEFAULT_MODEL, REAL_CLIP, default_cache_dir
from sae_vit.core.errors import SaeVitError


def cache_cmd(
    images: opt.Images = None,
    world: opt.World = None,
    out: Annotated[Path | None, typer.Option("--out", help="Cache directory. Default: <workdir>/cache.")] = None,
    model: opt.Model = DEFAULT_MODEL,
    weights: opt.Weights = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Comma-separated 0-based blocks, or 'all'. Default: 0,2,4,6,8,10,11.")] = None,
    site: Annotated[opt.Site, typer.Option("--site", help="Hook site.")] = opt.Site.resid_post,
    tokens: Annotated[opt.Tokens, typer.Option("--tokens", help="Token selection.")] = opt.Tokens.all,
    dtype: Annotated[opt.CacheDtype, typer.Option("--dtype", help="Storage dtype.")] = opt.CacheDtype.float16,
    batch_size: opt.BatchSize = 64,
    images_per_shard: Annotated[int, typer.Option("--images-per-shard", min=1)] = 1024,
    num_workers: Annotated[int, typer.Option("--num-workers", min=0, help="DataLoader workers.")] = 0,
    max_images: Annotated[int | None, typer.Option(
        "--max-images", min=1, help="Cache at most this many images (world default: 4096).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic world.")] = 0,
    device: opt.Device = "auto",
    precision: Annotated[opt.Precision, typer.Option(
        "--precision", help="Forward pass in fp32, or under bf16 autocast (faster on AMX CPUs and GPUs).")
    ] = opt.Precision.fp32,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Run a ViT over images and store activations (layers x token selection) on disk; resumable.

    Scale out with PyTorch's launcher: torchrun --nproc-per-node N -m sae_vit.cli cache ...
    """
    import sae_vit.pipeline as api
    check_images(images, world)
    check_inputs(weights=weights)
    if images is None:
        note_default("images", f"synthetic world '{world or 'shapes'}' (pass --images DIR for real images)")
    if out is None:
        note_default("output", default_cache_dir())
    if model == DEFAULT_MODEL and model == "toy":
        note_default("model", f"toy CLIP (pass --model {REAL_CLIP} for real CLIP)")
    start = time.perf_counter()
    with LazyProgress("caching", "rate", "skipped") as bar:

        def progress(p):
            rate = p.done / max(time.perf_counter() - start, 1e-9)
            bar.update(completed=p.done, total=p.total, rate=f"{rate:,.0f} images/s",
                       skipped=f"{p.skipped} unreadable" if p.skipped else "")

        manifest = api.cache(images, world, out, model, weights, parse_layers(layers), site, tokens, dtype, batch_size,
                             images_per_shard, num_workers, max_images, seed, device, overwrite, progress,
                             precision)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if manifest.get("reused"):
        note(f"{manifest['path']} already holds this cache; kept as it is (pass --overwrite to build it again)")
    if manifest["skipped"]:
        note(f"warning: skipped {len(manifest['skipped'])} unreadable images, e.g. {manifest['skipped'][0]}",
             "yellow")
    result(cache=manifest)
    say(f"cached {manifest['n_images_cached']} images, {manifest['n_tokens']:,} tokens per layer, layers "
        f"{manifest['layers']} ({manifest['site']}, tokens={manifest['tokens']}) -> {manifest['path']}")


def parse_lr(text: str) -> float | str:
    """``--lr``: a positive number, or ``auto`` (the learning rate scaled with d_sae, see TrainConfig.lr)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        lr = float(text)
    except ValueError:
        lr = float("nan")
    if not 0 < lr < float("inf"):
        raise SaeVitError(f"Could not read --lr {text!r}; give a positive number like 4e-4, or 'auto'.")
    return lr


def train_cmd(
    layer: Annotated[str, typer.Option(
        "--layer", help="0-based block to train on; several (2,5,8 or all) train one SAE each in one pass.")],
    tokens: Annotated[str, typer.Option(
        "--tokens", help="cls, patches or all; several (cls,patches): one SAE each, in one pass.")] = "all",
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache directory. Default: <workdir>/cache.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Checkpoint path (a folder with several layers/tokens). "
        "Default: <workdir>/saes/layer_{L}/{tokens}/sae.safetensors.")] = None,
    architecture: opt.Architecture = opt.Arch.topk,
    k: opt.K = 32,
    expansion: opt.Expansion = 16,
    d_sae: Annotated[int | None, typer.Option(
        "--d-sae", min=1, help="Number of latents (overrides --expansion).")] = None,
    l1_coefficient: opt.L1 = 8e-5,
    normalization: Annotated[opt.Normalization, typer.Option(
        "--normalization", help="layer_norm: per token, as the paper's SAEs.")] = opt.Normalization.none,
    lr: Annotated[str, typer.Option(
        "--lr", help="Peak learning rate, or 'auto': for topk 1.75e-3 x sqrt(2^14 / d_sae) x sqrt(768 / d_in) x "
                     "sqrt(batch / 4096), for relu 4e-4.")] = "auto",
    batch_size: opt.BatchSize = 4096,
    n_tokens: Annotated[int | None, typer.Option(
        "--n-tokens", min=1, help="Training tokens. Default: 10 epochs, at least 1M tokens.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the training split.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(
        "--warmup-steps", min=0, help="Linear warm-up steps. Default: 5 % of the run, at most 1000.")] = None,
    schedule: Annotated[str, typer.Option(
        "--schedule", help="wsd (constant, then linear decay over the last 20 %), cosine, linear or constant.")]
    = "wsd",
    grad_clip: Annotated[float, typer.Option("--grad-clip")] = 1.0,
    b_dec_init: Annotated[opt.BDecInit, typer.Option("--b-dec-init")] = opt.BDecInit.mean,
    precision: Annotated[opt.Precision, typer.Option("--precision", help="bf16 autocast or fp32.")] = opt.Precision.bf16,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    allow_incomplete: Annotated[bool, typer.Option(
        "--allow-incomplete", help="Train on an unfinished cache (by default training needs a finished one).")]
    = False,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Train an SAE on one layer and token selection of a cache (e.g. --layer 8 --tokens cls), or one per layer
    and token selection (--layer 2,5,8 --tokens cls,patches) from one pass. Under torchrun: DistributedDataParallel."""
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    check_number(grad_clip, "--grad-clip")
    check_number(l1_coefficient, "--l1-coefficient")
    check_number(epochs, "--epochs", strict=True)
    if cache is None:
        note_default("cache", default_cache_dir())
    cfg = TrainConfig(architecture=architecture, k=k, expansion=expansion, d_sae=d_sae,
                      l1_coefficient=l1_coefficient, normalization=normalization, lr=parse_lr(lr),
                      batch_size=batch_size, warmup_steps=warmup_steps, schedule=schedule, grad_clip=grad_clip,
                      b_dec_init=b_dec_init, dtype=precision, seed=seed, device=device)
    cfg.validate()
    layer_list = parse_layers(layer)
    with LazyProgress("training", "stats") as bar:

        def progress(*args):
            s = args[-1]  # (state) for one SAE, (index, state) for several
            name = f"SAE {args[0] + 1}  " if len(args) == 2 else ""
            bar.update(completed=s.step, total=s.n_steps, stats=f"{name}loss {s.loss:.4g}  L0 {s.l0:.1f}  "
                       f"FVU {s.fvu:.3f}  dead {100 * s.dead_fraction:.1f}%")

        kept = []
        result = api.train(None if layer_list == "all" else layer_list, parse_names(tokens), cache, out, cfg,
                           n_tokens, epochs, overwrite, progress, allow_incomplete, kept=kept.append)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        _report_trained(result if isinstance(result, list) else [result], kept)


def _report_trained(results: list, kept: list) -> None:
    """One line per trained SAE (held-out L0, FVU, dead %), with a note when its held-out split is too small to
    trust; a note per checkpoint kept from an earlier run."""
    from sae_vit.analysis.sparsity import MIN_EVAL_TOKENS, reliable

    for sae, path in results:
        if path in kept:
            note(f"{path} was already trained with these settings on this cache; kept it (pass --overwrite to "
                 "train it again).", "yellow")
            continue
        t = sae.cfg.training
        say(f"trained {sae.cfg.architecture} SAE d_sae={sae.cfg.d_sae} on layer {sae.cfg.layer} ({sae.cfg.tokens}): "
            f"held-out L0 {t.get('l0', float('nan')):.1f}, FVU {t.get('fvu', float('nan')):.4f}, "
            f"dead {100 * t.get('dead_fraction', float('nan')):.1f}% -> {path}")
        if "eval_tokens" in t and not reliable(t["eval_tokens"]):
            note(f"  held-out tokens: {t['eval_tokens']}, fewer than {MIN_EVAL_TOKENS}: a latent that fires on 1 % of "
                 "tokens can miss them all, so dead % counts live latents as dead; cache more images for a reliable "
                 "figure.", "yellow")
