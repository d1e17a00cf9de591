"""``saevit world``: export the synthetic world's task splits, retrain the toy CLIP, show samples (library:
:mod:`sae_vit.world.scenes` and :mod:`sae_vit.world.toyclip`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import check_number, print_table, say
from sae_vit.core.errors import SaeVitError

world_app = typer.Typer(help="The built-in synthetic world and the toy CLIP.", no_args_is_help=True,
                        rich_markup_mode=None)


@world_app.command("export")
def export(
    task: Annotated[opt.WorldTask, typer.Option("--task", help="The task to export.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (real-dataset layout).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Images per split (train, val, test).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="World seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
    as_json: opt.Json = False,
) -> None:
    """Write a task's train/val/test images in the layout of the real dataset (Waterbirds metadata.csv,
    CelebA list_attr_celeba.txt, or a path,label CSV)."""
    from sae_vit.world import scenes as world

    path = world.export_task(task, out, n=n, seed=seed, overwrite=overwrite)
    say(f"wrote {3 * n} {task} images to {path}")


@world_app.command("train-clip")
def train_clip(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Weights file (default: the shipped sae_vit/assets one).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initialisation and training images.")] = 0,
    minutes: Annotated[float, typer.Option(
        "--minutes", min=0.05, help="Wall-clock budget (ignored with --steps).")] = 25.0,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, help="Train for exactly this many steps instead.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=2, help="Images per step (default: the recipe's).")] = None,
    bf16: Annotated[bool, typer.Option(
        "--bf16/--fp32", help="bf16 autocast for the forward pass (slower than fp32 on the 2-core reference "
                              "CPU).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Torch threads (default: all cores).")] = None,
    eval_n: Annotated[int, typer.Option(
        "--eval-n", min=0, help="Held-out images per task for the final evaluation.")] = 1200,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing weights file.")] = False,
    as_json: opt.Json = False,
) -> None:
    """Retrain the toy CLIP from scratch on fresh world images and evaluate it on held-out ones."""
    import dataclasses

    import torch

    from sae_vit.world import toyclip, toyclip_train

    check_number(minutes, "--minutes", minimum=0.05)
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
    cols = ("zero-shot on held-out world images", "accuracy")
    title = f"toy CLIP: {meta['steps']} steps, {meta['images_seen']} images, {meta['train_seconds']:.0f}s"
    rows = [(key, f"{100 * v:.1f}%") for key, v in meta.get("accuracies", {}).items()]
    print_table(title, cols, rows, left=cols[:1])
    say(f"wrote {path}")


@world_app.command("show")
def show(
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("world_samples.png"),
    task: Annotated[opt.WorldTask | None, typer.Option(
        "--task", help="A task's test split instead of the CLIP training mix.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=1024, help="Number of images.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="World seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    as_json: opt.Json = False,
) -> None:
    """Save a grid of sample images (and print their captions)."""
    from sae_vit.core.atomic import atomic_write
    from sae_vit.world import scenes as world

    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} exists; choose another --out or pass --overwrite.")
    scenes = world.task_scenes(task, "test", n, seed)[0] if task else world.training_scenes(n, seed)
    atomic_write(out, lambda tmp: world.sample_grid(scenes).save(tmp, format="PNG"))
    for i, s in enumerate(scenes[:16]):
        say(f"{i:>3}  {s.caption}")
    say(f"wrote {out}")
