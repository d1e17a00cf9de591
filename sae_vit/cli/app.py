"""The ``saevit`` command line: parse arguments, call one library function, render the result with rich.

Nothing heavy is imported at start-up (``saevit --help`` must not import torch): every command imports
what it needs inside its body. A :class:`SaeVitError` becomes one red line and exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from sae_vit.cli._ui import (
    LazyProgress,
    guard,
    note,
    note_default,
    out_console,
    parse_floats,
    parse_ints,
    parse_layers,
    parse_names,
    state,
)
from sae_vit.core.defaults import DEFAULT_MODEL, REAL_CLIP, default_cache_dir, workdir
from sae_vit.core.errors import SaeVitError

app = typer.Typer(
    name="saevit",
    help="Sparse autoencoders on CLIP's vision transformer: cache activations, train SAEs, analyse sparsity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
def _version(value: bool) -> None:
    if value:
        from sae_vit import __version__

        out_console.print(f"sae-vit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    state["debug"] = debug


def command(*args, **kwargs):
    """``app.command`` whose user errors print one red line and exit with code 2."""

    def wrap(fn):
        return app.command(*args, **kwargs)(guard(fn))

    return wrap


ModelOpt = Annotated[str, typer.Option(
    "--model", help=f"'toy' (built-in toy CLIP) or a timm ViT name, e.g. {REAL_CLIP}; env SAEVIT_MODEL.")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Local weights file for --model (safetensors or a PyTorch state dict).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


@command("cache")
def cache_cmd(
    images: Annotated[Path | None, typer.Option(
        "--images", help="Folder of images (recursive) or a CSV index with a 'path' column. "
                         "Default: the built-in synthetic world.")] = None,
    world: Annotated[str | None, typer.Option(
        "--world", help="Synthetic-world task to render when no --images: shapes, typographic, waterbirds, "
                        "celeba.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Cache directory. Default: <workdir>/cache.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Comma-separated 0-based blocks, or 'all'. Default: 0,2,4,6,8,10,11.")] = None,
    site: Annotated[str, typer.Option("--site", help="resid_post, mlp_out or mlp_hidden.")] = "resid_post",
    tokens: Annotated[str, typer.Option("--tokens", help="cls, patches or all.")] = "all",
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype: float16, bfloat16, float32.")] = "float16",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    images_per_shard: Annotated[int, typer.Option("--images-per-shard", min=1)] = 1024,
    num_workers: Annotated[int, typer.Option("--num-workers", min=0, help="DataLoader workers.")] = 0,
    max_images: Annotated[int | None, typer.Option(
        "--max-images", min=1, help="Cache at most this many images (world default: 4096).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic world.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK).")] = "cpu",
    precision: Annotated[str, typer.Option(
        "--precision", help="Forward pass in fp32, or under bf16 autocast (faster on AMX CPUs and GPUs).")] = "fp32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a ViT over images and store activations (layers x token types) on disk; resumable.

    Scale out with PyTorch's launcher: torchrun --nproc-per-node N -m sae_vit.cli cache ...
    """
    import sae_vit.pipeline as api

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
    if manifest["skipped"]:
        note(f"warning: skipped {len(manifest['skipped'])} unreadable images, e.g. {manifest['skipped'][0]}",
             "yellow")
    out_console.print(
        f"cached {manifest['n_images_cached']} images, {manifest['n_tokens']:,} tokens per layer, layers "
        f"{manifest['layers']} ({manifest['site']}, tokens={manifest['tokens']}) -> {manifest['path']}"
    )


@command("train")
def train_cmd(
    layer: Annotated[str, typer.Option(
        "--layer", help="0-based block to train on; several (2,5,8 or all) train one SAE each in one pass.")],
    tokens: Annotated[str, typer.Option(
        "--tokens", help="cls, patches or all; several (cls,patches) train one SAE each in one pass.")] = "all",
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache directory. Default: <workdir>/cache.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Checkpoint path (a folder with several layers/tokens). "
        "Default: <workdir>/saes/layer_{L}/{tokens}/sae.safetensors.")] = None,
    architecture: Annotated[str, typer.Option("--architecture", help="topk or relu (ReLU + L1).")] = "topk",
    k: Annotated[int, typer.Option("--k", min=1, help="Active latents per token (topk).")] = 32,
    expansion: Annotated[int, typer.Option("--expansion", min=1, help="d_sae = expansion x d_in.")] = 16,
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help="L1 weight (relu).")] = 8e-5,
    normalization: Annotated[str, typer.Option(
        "--normalization", help="none, layer_norm (per token, as the paper's SAEs) or constant.")] = "none",
    lr: Annotated[float, typer.Option("--lr")] = 4e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4096,
    n_tokens: Annotated[int | None, typer.Option(
        "--n-tokens", help="Training tokens. Default: 10 epochs, at least 1M tokens.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the training split.")] = None,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps")] = 200,
    grad_clip: Annotated[float, typer.Option("--grad-clip")] = 1.0,
    b_dec_init: Annotated[str, typer.Option("--b-dec-init", help="mean, geometric_median or zeros.")] = "mean",
    precision: Annotated[str, typer.Option("--precision", help="bf16 autocast or fp32.")] = "bf16",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto (CUDA when available).")] = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Train an SAE on one layer and token type of a cache (e.g. --layer 8 --tokens cls), or one per layer and
    token type (--layer 2,5,8 --tokens cls,patches) from one pass. Under torchrun: DistributedDataParallel."""
    import os

    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    if cache is None:
        note_default("cache", default_cache_dir())
    cfg = TrainConfig(architecture=architecture, k=k, expansion=expansion, l1_coefficient=l1_coefficient,
                      normalization=normalization, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps,
                      grad_clip=grad_clip, b_dec_init=b_dec_init, dtype=precision, seed=seed, device=device)
    with LazyProgress("training", "stats") as bar:

        def progress(*args):
            s = args[-1]  # (state) for one SAE, (index, state) for several
            name = f"SAE {args[0] + 1}  " if len(args) == 2 else ""
            bar.update(completed=s.step, total=s.n_steps, stats=f"{name}loss {s.loss:.4g}  L0 {s.l0:.1f}  "
                       f"FVU {s.fvu:.3f}  dead {100 * s.dead_fraction:.1f}%")

        layer_list = parse_layers(layer)
        result = api.train(None if layer_list == "all" else layer_list, parse_names(tokens), cache, out, cfg,
                           n_tokens, epochs, overwrite, progress)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    for sae, path in result if isinstance(result, list) else [result]:
        t = sae.cfg.training
        out_console.print(
            f"trained {sae.cfg.architecture} SAE d_sae={sae.cfg.d_sae} on layer {sae.cfg.layer} ({sae.cfg.tokens}): "
            f"held-out L0 {t.get('l0', float('nan')):.1f}, FVU {t.get('fvu', float('nan')):.4f}, "
            f"dead {100 * t.get('dead_fraction', float('nan')):.1f}% -> {path}"
        )


@command("sparsity")
def sparsity_cmd(
    saes: Annotated[list[Path] | None, typer.Argument(
        help="SAE checkpoints (files or folders searched for *.safetensors). Default: <workdir>/saes.")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Evaluate on this cache's held-out images (default: <workdir>/cache when present).")] = None,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Train one SAE per layer x token type of the cache first (missing ones only).")] = False,
    layers: Annotated[str | None, typer.Option("--layers", help="With --grid: layers (default: all cached).")] = None,
    tokens: Annotated[str, typer.Option("--tokens", help="With --grid: token types.")] = "cls,patches,all",
    n_tokens: Annotated[int | None, typer.Option("--n-tokens", help="With --grid: training tokens per SAE.")] = None,
    architecture: Annotated[str, typer.Option("--architecture", help="With --grid: topk or relu.")] = "topk",
    k: Annotated[int, typer.Option("--k", min=1, help="With --grid: active latents (topk).")] = 32,
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help="With --grid: L1 weight (relu).")] = 8e-5,
    expansion: Annotated[int, typer.Option("--expansion", min=1, help="With --grid: d_sae / d_in.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", help="CSV path. Default: <workdir>/sparsity.csv.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Also write a PNG of L0 by layer.")] = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Table of L0, FVU, MSE, dead % and dense % per layer and token type (the paper's sparsity analysis)."""
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    config = TrainConfig(architecture=architecture, k=k, l1_coefficient=l1_coefficient, expansion=expansion)
    layer_list = parse_layers(layers)
    result = api.sparsity(saes, cache, grid, None if layer_list == "all" else layer_list, parse_names(tokens),
                          n_tokens, out, plot, overwrite, progress=note, config=config)
    _print_sparsity(result)


def _print_sparsity(result) -> None:
    from rich.table import Table

    rows = result.rows
    # Columns that are the same for every SAE go into the title, so the table fits a terminal.
    same = {c: rows[c].iloc[0] for c in ("site", "architecture", "d_sae", "evaluated_on") if rows[c].nunique() == 1}
    title = "SAE sparsity (held-out tokens" + "".join(f"; {k} {v}" for k, v in same.items()) + ")"
    table = Table(title=title)
    cols = [("layer", "layer"), ("tokens", "tokens"), ("site", "site"), ("arch", "architecture"),
            ("d_sae", "d_sae"), ("L0", "l0"), ("FVU", "fvu"), ("MSE", "mse"), ("dead %", "dead_fraction"),
            ("dense %", "dense_fraction"), ("eval", "evaluated_on")]
    cols = [(name, key) for name, key in cols if key not in same]
    fmt = {"l0": "{:.1f}", "fvu": "{:.3f}", "mse": "{:.3g}"}
    for name, key in cols:
        table.add_column(name, justify="left" if key in ("tokens", "site", "architecture", "evaluated_on") else "right")
    for r in rows.to_dict("records"):
        cells = []
        for _, key in cols:
            v = r[key]
            if key in ("dead_fraction", "dense_fraction"):
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(fmt.get(key, "{}").format(v))
        table.add_row(*cells)
    out_console.print(table)
    out_console.print(f"table -> {result.csv_path}" + (f", plot -> {result.plot_path}" if result.plot_path else ""))


@command("steer-score")
def steer_score_cmd(
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help="SAE checkpoint, folder or hf:// URI (repeatable). Default: every SAE in <workdir>/saes.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Backbone; default: the model the SAE was trained on (toy by default).")] = None,
    weights: WeightsOpt = None,
    vocab: Annotated[Path | None, typer.Option("--vocab", help="Concept words, one per line.")] = None,
    text_embeddings: Annotated[Path | None, typer.Option(
        "--text-embeddings", help="safetensors with 'embeddings' [n, d] and 'names' in its metadata.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Probe images (folder or CSV).")] = None,
    world: Annotated[str | None, typer.Option("--world", help="Synthetic-world task for probe images.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Probe images (paper: 192).")] = 64,
    alphas: Annotated[str, typer.Option("--alphas", help="Strengths (paper's sweep).")] = "-20,-5,0,5,10,20,50,150",
    strength_unit: Annotated[str, typer.Option(
        "--strength-unit", help="auto (absolute for CLIP ViT-B/32, relative to the activation norm otherwise), "
                                "absolute or relative.")] = "auto",
    threshold: Annotated[float, typer.Option("--threshold", help="Steerable if S exceeds it.")] = 0.10,
    temperature: Annotated[float, typer.Option("--temperature")] = 100.0,
    tokens: Annotated[str, typer.Option("--tokens", help="Where to clamp: sae (its own tokens), all, patches, cls.")] = "sae",
    features: Annotated[str | None, typer.Option("--features", help="Feature indices, e.g. 3,17; default: all.")] = None,
    max_features: Annotated[int, typer.Option("--max-features", help="Sample this many features (quick estimate).")] = 256,
    full: Annotated[bool, typer.Option("--full", help="Score every feature (ignores --max-features).")] = False,
    neurons: Annotated[bool, typer.Option("--neurons/--no-neurons", help="Residual-basis neuron baseline.")] = True,
    mlp_neurons: Annotated[bool, typer.Option("--mlp-neurons", help="Also the MLP hidden units.")] = False,
    random_control: Annotated[int, typer.Option("--random-control", help="Random unit directions as a control.")] = 256,
    precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 for the steered passes.")] = "fp32",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/steer.")] = None,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """How precisely each SAE feature (and, as baselines, each neuron and random direction) steers CLIP's output."""

    from sae_vit.analysis.steer import SteerConfig, score_saes

    alpha_list = parse_floats(alphas, "--alphas")
    feature_list = parse_ints(features, "--features")
    if tokens not in ("sae", "all", "patches", "cls"):
        raise SaeVitError(f"Unknown --tokens {tokens!r}; use sae, all, patches or cls.")
    if not sae:
        note_default("SAEs", "every checkpoint in <workdir>/saes")
    cfg = SteerConfig(alphas=alpha_list, threshold=threshold, temperature=temperature, tokens=tokens,
                      strength_unit=strength_unit, precision=precision)
    with LazyProgress("steering", "what") as bar:
        reports = score_saes(
            sae, model, weights, vocab, text_embeddings, images, world, n_images, cfg, feature_list,
            None if full else max_features, neurons, mlp_neurons, random_control, seed, out, overwrite, device,
            progress=lambda kind, done, total: bar.update(completed=done, total=total, what=kind),
        )
    _print_steer(reports)
    if reports:
        st = reports[0].summary
        out_console.print(f"strength unit {st['strength_unit']}; feature strengths {st['strengths'].get('feature')}; "
                          f"{st['n_images']} probe images, {st['vocabulary']} words; results in "
                          f"{out or workdir() / 'steer'}", highlight=False)


def _print_steer(reports) -> None:
    from rich.table import Table

    table = Table(title="Steerability (S > threshold at the largest strength)")
    for col in ("layer", "tokens", "units", "scored", "steerable", "%", "distinct targets"):
        table.add_column(col)
    tops = []
    for r in reports:
        s = r.summary
        feats = r.units[(r.units.kind == "feature")].head(3)
        tops.append(f"layer {s['layer']} ({s['steer_tokens']}): " + ", ".join(
            f"{int(i)} -> {t} (S {v:.2f})" for i, t, v in zip(feats["index"], feats["target"], feats["S"], strict=True)))
        for kind, k in s["kinds"].items():
            table.add_row(str(s["layer"]), s["steer_tokens"], kind, str(k["scored"]), str(k["steerable"]),
                          f"{100 * k['fraction']:.1f}", str(k["distinct_targets"]))
    out_console.print(table)
    out_console.print("top features: " + "; ".join(tops), highlight=False)


@command("inspect")
def inspect_cmd(
    sae: Annotated[str | None, typer.Option("--sae", help="SAE checkpoint or hf:// URI. Default: first in <workdir>/saes.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Backbone; default: the SAE's model.")] = None,
    weights: WeightsOpt = None,
    images: Annotated[Path | None, typer.Option("--images", help="Images (folder or CSV).")] = None,
    world: Annotated[str | None, typer.Option("--world", help="Synthetic-world task (default: shapes).")] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Images to scan.")] = 1024,
    features: Annotated[str | None, typer.Option("--features", help="Feature indices, e.g. 12,40.")] = None,
    top_steerable: Annotated[int | None, typer.Option(
        "--top-steerable", help="The N most steerable features (needs `saevit steer-score` results).")] = None,
    random: Annotated[int | None, typer.Option("--random", help="N random features (default 16).")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Top images per feature.")] = 16,
    vocab: Annotated[Path | None, typer.Option("--vocab", help="Words for text labels, one per line.")] = None,
    text_embeddings: Annotated[Path | None, typer.Option("--text-embeddings", help="Text embeddings file.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/inspect/...")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Top-activating images with patch heatmaps, density and text labels per feature; PNGs + index.html."""
    from sae_vit.analysis.inspect import inspect_sae

    feature_list = parse_ints(features, "--features")
    with LazyProgress("scanning", "what") as bar:
        result = inspect_sae(sae, model, weights, images, world, n_images, feature_list, top_steerable, random, k,
                             vocab, text_embeddings, None, out, seed, 64, overwrite, device,
                             progress=lambda n: bar.update(completed=n, total=n_images, what="images"))
    for row in result["features"]:
        out_console.print(f"feature {row['feature']:>6}  density {100 * row['density']:.2f}%  {row['labels']}",
                          highlight=False)
    out_console.print(f"open {result['index']} in a browser")


@command("demo")
def demo_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/demo.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=40, help="World images to cache.")] = 2048,
    layers: Annotated[str, typer.Option("--layers", help="Toy CLIP blocks to analyse.")] = "2,5,8,11",
    n_tokens: Annotated[int, typer.Option("--n-tokens", min=1, help="Training tokens per SAE.")] = 400_000,
    overwrite: OverwriteOpt = False,
) -> None:
    """The paper in miniature on the toy CLIP and the synthetic world: cache, train SAEs, sparsity table."""
    from sae_vit.pipeline.demo import DemoConfig, run_demo

    layer_list = parse_layers(layers)
    cfg = DemoConfig(n_images=n_images, layers=tuple(range(12) if layer_list == "all" else layer_list),
                     n_tokens=n_tokens)
    start = time.perf_counter()
    result = run_demo(out, cfg, overwrite, progress=lambda msg: note(msg, "cyan"))
    _print_sparsity(result.sparsity)
    if result.steer:
        _print_steer(result.steer)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    out_console.print(f"demo finished in {time.perf_counter() - start:.0f} s ({steps}); everything is in {result.out}")


def _mount_subapps() -> None:
    from sae_vit.cli.hub import register as register_hub

    register_hub(app, command)
    from sae_vit.cli.typo import register as register_typo

    register_typo(app, command)
    from sae_vit.cli.suppress import register as register_suppress

    register_suppress(app, command)
    from sae_vit.cli.world import world_app

    for info in world_app.registered_commands:
        info.callback = guard(info.callback)
    app.add_typer(world_app, name="world", help="The built-in synthetic world and toy CLIP.")


_mount_subapps()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["app", "main", "workdir"]
