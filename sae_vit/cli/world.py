"""``saevit world``: export the synthetic world's task splits, retrain the toy CLIP, show samples.

Parsing and printing only; the work is done by :mod:`sae_vit.world.scenes` and :mod:`sae_vit.world.toyclip`.
Torch is imported inside the commands so ``saevit --help`` stays instant. User errors raise ``SaeVitError``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sae_vit.cli._ui import command, out_console, plain, say
from sae_vit.core.errors import SaeVitError

world_app = typer.Typer(help="The built-in synthetic world and the toy CLIP.", no_args_is_help=True,
                        rich_markup_mode=None)


@command(world_app, "export")
def export(
    task: str = typer.Option(..., "--task", help="shapes | typographic | waterbirds | celeba."),
    out: Path = typer.Option(..., "--out", help="Folder to write (real-dataset layout)."),
    n: int = typer.Option(1000, "--n", min=1, help="Images per split (train, val, test)."),
    seed: int = typer.Option(0, "--seed", help="World seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
) -> None:
    """Write a task's train/val/test images in the layout of the real dataset (Waterbirds metadata.csv,
    CelebA list_attr_celeba.txt, or a path,label CSV)."""
    from sae_vit.world import scenes as world

    path = world.export_task(task, out, n=n, seed=seed, overwrite=overwrite)
    say(f"wrote {3 * n} {task} images to {path}")


@command(world_app, "train-clip")
def train_clip(
    out: Path = typer.Option(None, "--out", help="Weights file (default: the shipped sae_vit/assets one)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the initialisation and the training images."),
    minutes: float = typer.Option(
        25.0, "--minutes", min=0.05, help="Wall-clock budget (ignored with --steps)."
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Train for exactly this many steps instead."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=2, help="Images per step (default: the recipe's)."
    ),
    bf16: bool = typer.Option(
        False,
        "--bf16/--fp32",
        help="bf16 autocast for the forward pass (slower than fp32 on the 2-core reference CPU).",
    ),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads (default: all cores)."),
    eval_n: int = typer.Option(
        1200, "--eval-n", min=0, help="Held-out images per task for the final evaluation."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing weights file."),
) -> None:
    """Retrain the toy CLIP from scratch on fresh world images and evaluate it on held-out ones."""
    import dataclasses

    import torch
    from rich.table import Table

    from sae_vit.world import toyclip, toyclip_train

    path = out if out is not None else toyclip.default_path()
    if path.exists() and not overwrite:
        raise SaeVitError(f"{path} exists; choose another --out or pass --overwrite.")
    if threads:
        torch.set_num_threads(threads)
    recipe = dataclasses.replace(toyclip_train.TrainRecipe(), seed=seed, minutes=minutes, steps=steps, bf16=bf16)
    if batch_size:
        recipe = dataclasses.replace(recipe, batch_size=batch_size)

    def progress(point: dict) -> None:
        say(f"step {point['step']:>6}  {point['seconds']:>7.1f}s  loss {point['loss']:.4f}  lr {point['lr']:.2e}")

    clip = toyclip_train.train_toy_clip(recipe, progress=progress, eval_n=eval_n)
    toyclip.save_toy_clip(clip, path, overwrite=overwrite)
    meta = clip.metadata
    table = Table(
        title=f"toy CLIP: {meta['steps']} steps, {meta['images_seen']} images, {meta['train_seconds']:.0f}s"
    )
    table.add_column("zero-shot on held-out world images")
    table.add_column("accuracy", justify="right")
    for key, value in meta.get("accuracies", {}).items():
        table.add_row(*plain(key, f"{100 * value:.1f}%"))
    out_console.print(table)
    say(f"wrote {path}")


@command(world_app, "show")
def show(
    out: Path = typer.Option(Path("world_samples.png"), "--out", help="PNG file to write."),
    task: str = typer.Option(None, "--task", help="A task's test split instead of the CLIP training mix."),
    n: int = typer.Option(32, "--n", min=1, max=1024, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="World seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Save a grid of sample images (and print their captions)."""
    import os

    from sae_vit.world import scenes as world

    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} exists; choose another --out or pass --overwrite.")
    scenes = world.task_scenes(task, "test", n, seed)[0] if task else world.training_scenes(n, seed)
    tmp = out.with_name(f".{out.name}.tmp")
    world.sample_grid(scenes).save(tmp, format="PNG")
    os.replace(tmp, out)
    for i, s in enumerate(scenes[:16]):
        say(f"{i:>3}  {s.caption}")
    say(f"wrote {out}")
