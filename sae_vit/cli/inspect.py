"""``saevit inspect``: top-activating images with patch heatmaps, density and text labels per feature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import LazyProgress, check_images, check_inputs, note, parse_numbers, result, say


def inspect_cmd(
    sae: Annotated[str | None, typer.Option(
        "--sae", help=f"The SAE: {opt.SAE_HELP}. Default: the first in <workdir>/saes.")] = None,
    model: opt.SaeModel = None,
    weights: opt.Weights = None,
    images: opt.Images = None,
    world: opt.World = None,
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Images to scan.")] = 1024,
    features: opt.FeatureIds = None,
    top_steerable: Annotated[int | None, typer.Option(
        "--top-steerable", help="The N most steerable features (needs `saevit steer-score` results).")] = None,
    random: Annotated[int | None, typer.Option("--random", help="N random live features (default 16).")] = None,
    include_dead: Annotated[bool, typer.Option(
        "--include-dead", help="Let --random pick features that never fire on the images too.")] = False,
    top_images: Annotated[int, typer.Option("--top-images", min=1, help="Top images shown per feature.")] = 16,
    old_k: Annotated[int | None, typer.Option(
        "--k", min=1, hidden=True, help="Deprecated spelling of --top-images.")] = None,
    vocab: opt.Vocab = None,
    text_embeddings: opt.TextEmbeddings = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/inspect/...")] = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    overwrite: opt.Regenerated = False,
    as_json: opt.Json = False,
) -> None:
    """Feature browser: top images with patch heatmaps, density, steerability and text labels per feature."""
    from sae_vit.analysis.inspect import inspect_sae
    from sae_vit.io.resolve import find_saes

    if old_k is not None:  # --k is the TopK sparsity everywhere else
        note("--k is deprecated for inspect; use --top-images.", "yellow")
        top_images = old_k
    feature_list = parse_numbers(features, "--features")
    check_images(images, world)
    check_inputs(weights=weights, vocab=vocab, text_embeddings=text_embeddings)
    path = find_saes([sae] if sae else None)[0]  # resolved before the library checks --out
    with LazyProgress("scanning", "what") as bar:
        found = inspect_sae(str(path), model, weights, images, world, n_images, feature_list, top_steerable, random,
                             top_images, vocab, text_embeddings, None, out, seed, 64, overwrite, device,
                             progress=lambda n: bar.update(completed=n, total=n_images, what="images"),
                             include_dead=include_dead)
    result(features=found["features"], index=found["index"])
    for row in found["features"]:
        say(f"feature {row['feature']:>6}  density {100 * row['density']:.2f}%  {row['labels_text']}")
    say(f"open {found['index']} in a browser")
